"""Remembered compilations (pvdesc.emit.compiled): the same ASL text runs iasl once per block.

Outside a ``remembering`` block every table is compiled (``pvdesc build``); inside
one, a text compiled before gives the remembered AML without iasl, a different
text (or the same text under another template or name) is compiled, and a
failure is never remembered.  A whole build in a block gives the same outputs
as one outside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT

from pvdesc.description.load import load
from pvdesc.emit import acpi, build, compiled
from pvdesc.errors import AcpiError
from pvdesc.layout import allocate as layout
from pvdesc.tools import acpica

EXAMPLES = ROOT / "examples"


def _source(example: str) -> str:
    return acpi.ssdt_source(layout.allocate(load(EXAMPLES / example).description))


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The text of every table iasl is started on."""
    started: list[str] = []
    real = acpica.Compilation.__init__

    def init(self: acpica.Compilation, source: str, **kw: str) -> None:
        started.append(source)
        real(self, source, **kw)

    monkeypatch.setattr(acpica.Compilation, "__init__", init)
    return started


def _aml(source: str, template: str = acpi.SSDT_TEMPLATE, name: str = "ssdt") -> bytes:
    with compiled.start(source, template=template, name=name) as job:
        return job.aml()


def test_a_text_compiled_before_is_not_compiled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    hole, numa = _source("uefi-acpi-hole.yaml"), _source("uefi-acpi-numa.yaml")
    assert hole != numa
    plain = {
        s: acpica.compile_asl(s, template=acpi.SSDT_TEMPLATE, name="ssdt") for s in (hole, numa)
    }
    started = _counting(monkeypatch)
    store: dict[tuple[str, str, str], bytes] = {}
    with compiled.remembering(store):
        got = [_aml(s) for s in (hole, numa, hole, numa, hole)]
        assert _aml(hole, name="other") == plain[hole]  # another name: compiled again
    assert got == [plain[hole], plain[numa], plain[hole], plain[numa], plain[hole]]
    assert started == [hole, numa, hole]
    assert _aml(hole) == plain[hole] and started == [hole, numa, hole, hole]  # block left


def test_a_failed_compilation_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _source("uefi-acpi-hole.yaml").replace("Device (PVTM)", "Device (PVTM", 1)
    started = _counting(monkeypatch)
    store: dict[tuple[str, str, str], bytes] = {}
    with compiled.remembering(store):
        for _ in range(2):
            with pytest.raises(AcpiError, match="syntax error"):
                _aml(broken)
    assert started == [broken, broken] and store == {}


def test_builds_in_a_block_are_the_builds_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [EXAMPLES / n for n in ("uefi-acpi-numa.yaml", "numa-4node-acpi.yaml")]
    plain = [build.plan(p).outputs for p in paths]
    started = _counting(monkeypatch)
    with compiled.remembering({}):
        again = [build.plan(p).outputs for p in [*paths, *paths]]
    assert again == plain + plain
    assert len(started) == 4  # each example's SSDT and SRAT, once
