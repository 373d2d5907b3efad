"""Negative controls: the external checkers the suite relies on do catch bad trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DtValidate, dtc_check, run

BAD_RESERVED = """/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <2>;
    compatible = "linux,dummy-virt"; model = "bad";
    memory@40000000 { device_type = "memory"; reg = <0 0x40000000 0 0x80000000>; };
    reserved-memory {
        #address-cells = <2>; #size-cells = <2>;
        stolen-time@bfff0000 { reg = <0 0xbfff0000 0 0x10000>; no-map; reusable; };
    };
};
"""

BAD_MEMORY = """/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <2>;
    compatible = "linux,dummy-virt"; model = "bad";
    memory@40000000 { reg = <0 0x40000000 0 0x80000000>; };
};
"""

BAD_UNIT = """/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <2>;
    compatible = "linux,dummy-virt"; model = "bad";
    memory { device_type = "memory"; reg = <0 0x40000000 0 0x80000000>; };
};
"""

#: Warnings dtc gives outside pvdesc's DTC_CHECKS (like those in a VMM's own blob).
WARNS = """/dts-v1/;
/ {
    #address-cells = <2>; #size-cells = <2>;
    compatible = "linux,dummy-virt"; model = "warns";
    memory@40000000 { device_type = "memory"; reg = <0 0x40000000 0 0x80000000>; };
    uart@9000000 { compatible = "arm,pl011"; reg = <0 0x9000000 0 0x1000>; interrupts = <0 1 4>; };
};
"""
CLEAN = WARNS.replace(" interrupts = <0 1 4>;", "")


def _compile(tmp_path: Path, text: str, name: str = "bad") -> Path:
    src = tmp_path / f"{name}.dts"
    src.write_text(text)
    out = tmp_path / f"{name}.dtb"
    res = run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(src)])
    assert res.returncode == 0, res.stderr
    return out


def test_dt_validate_reports_reserved_memory_errors(
    tmp_path: Path, dt_validate: DtValidate
) -> None:
    messages = " ".join(
        str(e["message"]) for e in dt_validate.errors(_compile(tmp_path, BAD_RESERVED))
    )
    assert "'ranges' is a required property" in messages
    assert "reusable" in messages


def test_dt_validate_reports_memory_errors(tmp_path: Path, dt_validate: DtValidate) -> None:
    messages = " ".join(
        str(e["message"]) for e in dt_validate.errors(_compile(tmp_path, BAD_MEMORY))
    )
    assert "'device_type' is a required property" in messages


def test_dtc_check_rejects_reg_without_unit_address(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="unit_address_vs_reg"):
        dtc_check(_compile(tmp_path, BAD_UNIT))


def test_dtc_check_allows_only_the_baselines_warnings(tmp_path: Path) -> None:
    warns = _compile(tmp_path, WARNS, "warns")
    clean = _compile(tmp_path, CLEAN, "clean")
    assert "uart@9000000" in dtc_check(clean)
    with pytest.raises(AssertionError, match="interrupts_property"):
        dtc_check(warns)
    with pytest.raises(AssertionError, match="interrupts_property"):
        dtc_check(warns, baseline=clean)
    assert "uart@9000000" in dtc_check(warns, baseline=_compile(tmp_path, WARNS, "base"))
