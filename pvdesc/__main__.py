"""``python -m pvdesc``: the ``pvdesc`` command (:mod:`pvdesc.commands.cli`)."""

from __future__ import annotations

from pvdesc.commands.cli import entry

if __name__ == "__main__":
    entry()
