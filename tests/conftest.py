"""Fixtures only; the helpers tests import are in helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import DtValidate


@pytest.fixture(scope="session")
def dt_validate(tmp_path_factory: pytest.TempPathFactory) -> DtValidate:
    return DtValidate(tmp_path_factory.mktemp("dtschema"))
