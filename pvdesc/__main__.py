"""``python -m pvdesc``: the ``pvdesc`` command (:mod:`pvdesc.commands.cli`)."""

from __future__ import annotations

import sys

from pvdesc.commands.cli import run

if __name__ == "__main__":
    sys.exit(run())
