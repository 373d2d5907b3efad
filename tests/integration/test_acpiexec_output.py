"""acpiexec's failures read the same however its two threads were scheduled.

acpiexec's command thread prints one newline of its own while the main thread
is still loading the tables (:mod:`pvdesc.tools.acpica_text`).  It once split
``Firmware Warning (ACPI): `` from the rest of its message in a CI run, and the
report quoted only the prefix.  These tests take real acpiexec output, put that
newline at every place it can land, and require the same failures.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from helpers import EXAMPLES, checksum_broken, example_ssdt

from pvdesc.tools import acpica, acpica_text, proc, validators

#: Where one print call ends and another may begin: line ends, after a message's
#: prefix, before its `` (20200925/module-line)`` suffix.
_BOUNDARY = re.compile(r"\n|(?<=\(ACPI\): )|(?<=ACPI Error: )|(?= \([0-9A-F]{8}/[\w.]+-\d+\)\n)")


def _corrupt_ssdt() -> bytes:
    """An SSDT whose header checksum is wrong: acpiexec warns, then refuses the table."""
    return checksum_broken(example_ssdt(EXAMPLES / "uefi-acpi-hole.yaml"))


def _real_output(tmp_path: Path) -> str:
    (tmp_path / "t0.aml").write_bytes(_corrupt_ssdt())
    (tmp_path / "commands.txt").write_text("quit\n")
    result = proc.run(
        [acpica.tool("acpiexec"), "t0.aml"],
        timeout=acpica.TIMEOUT,
        cwd=tmp_path,
        stdin=tmp_path / "commands.txt",
    )
    return result.stdout


def test_a_newline_anywhere_before_the_first_command_changes_no_failure(tmp_path: Path) -> None:
    text = _real_output(tmp_path)
    # The stray newline lands before the first command's output; move it out, then put
    # it back at each place one print call meets another.
    before, prompt, after = text.partition("\n- quit")
    assert prompt, text
    expected = acpica_text.failures(text)
    assert [f.split(":")[0] for f in expected] == ["Firmware Warning (ACPI)"] * 2 + ["ACPI Error"]
    assert all(re.search(r" \(20\d{6}/[\w.]+-\d+\)$", f) for f in expected), expected
    places = [m.start() for m in _BOUNDARY.finditer(before)]
    assert len(places) > 20
    for at in places:
        moved = before[:at] + "\n" + before[at:] + prompt + after
        assert acpica_text.failures(moved) == expected, moved[: at + 80]


def test_a_message_split_on_acpiexec_s_own_output_is_reported_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real acpiexec, its output split as in the CI run, through ``validators.evaluate``."""
    aml = _corrupt_ssdt()
    alone = validators.evaluate(aml)
    assert alone.error is not None
    assert alone.error.startswith("acpiexec: Firmware Warning (ACPI): Incorrect checksum in table")
    assert alone.error.endswith("(20200925/tbprint-234)"), alone.error
    fake = tmp_path / "bin" / "acpiexec"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f"'{acpica.tool('acpiexec')}' \"$@\" | "
        "sed '0,/Firmware Warning (ACPI): /s//Firmware Warning (ACPI): \\n/'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    assert acpica.tool("acpiexec") == str(fake)
    split = validators.evaluate(aml)
    assert split == alone
