"""``-`` for standard input and output, as dtc, fdtget and fdtput read it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT, cli_subprocess

HOLE = EXAMPLES / "generic-hole.yaml"
QEMU = EXAMPLES / "qemu-virt.yaml"


def refused(res: subprocess.CompletedProcess[bytes]) -> str:
    """The one error line of a refusal (exit 2, nothing on stdout, no traceback)."""
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert res.stdout == b""
    assert err.startswith("pvdesc: error: ") and err.count("\n") == 1, err
    return err


def test_build_reads_the_description_from_stdin(tmp_path: Path) -> None:
    from_file = cli_subprocess("build", str(HOLE), "-q", "-o", str(tmp_path / "file"), text=False)
    from_pipe = cli_subprocess(
        "build", "-", "-q", "-o", str(tmp_path / "pipe"), stdin=HOLE.read_bytes(), text=False
    )
    assert from_file.returncode == 0 and from_pipe.returncode == 0, from_pipe.stderr
    for suffix in ("dtb", "hypervisor.json"):
        name = f"generic-hole.{suffix}"
        assert (tmp_path / "pipe" / name).read_bytes() == (tmp_path / "file" / name).read_bytes()
    for suffix in ("dts", "h", "rs"):  # their header names the source: <stdin>
        name = f"generic-hole.{suffix}"
        text = (tmp_path / "file" / name).read_text().replace("generic-hole.yaml", "<stdin>", 1)
        assert (tmp_path / "pipe" / name).read_text() == text
    manifest = (tmp_path / "pipe" / "generic-hole.manifest.json").read_text()
    assert '"path": "<stdin>"' in manifest


def test_stdin_errors_name_stdin_with_line_and_column() -> None:
    text = HOLE.read_text().replace("vcpus: 4", "vcpus: 0", 1)
    err = refused(cli_subprocess("build", "-", "-o", "out-never", stdin=text.encode(), text=False))
    line = next(n for n, s in enumerate(text.splitlines(), 1) if s.startswith("vcpus:"))
    assert err.startswith(f"pvdesc: error: <stdin>:{line}:"), err
    assert not (ROOT / "out-never").exists()


@pytest.mark.parametrize("suffix", ["dtb", "dts", "hypervisor.json", "qemu.args", "manifest.json"])
def test_only_writes_one_output_to_stdout_identical_to_the_file(
    tmp_path: Path, suffix: str
) -> None:
    assert cli_subprocess("build", str(QEMU), "-q", "-o", str(tmp_path), text=False).returncode == 0
    res = cli_subprocess("build", str(QEMU), "--only", suffix, "-o", "-", text=False)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert res.stdout == (tmp_path / f"qemu-virt.{suffix}").read_bytes()


def test_dash_o_without_only_is_refused_and_makes_no_folder(tmp_path: Path) -> None:
    err = refused(cli_subprocess("build", str(HOLE), "-o", "-", cwd=tmp_path, text=False))
    assert (
        "pvdesc: error: -o: -o - writes one output to standard output: name it with --only" in err
    )
    assert list(tmp_path.iterdir()) == []
    err = refused(
        cli_subprocess("build", str(HOLE), "--only", "dtb", "-o", str(tmp_path / "d"), text=False)
    )
    assert "--only goes with -o -" in err
    err = refused(cli_subprocess("build", str(HOLE), "--only", "dtbx", "-o", "-", text=False))
    assert "has no output generic-hole.dtbx; it has: dts, dtb," in err
    assert list(tmp_path.iterdir()) == []


def test_check_map_and_diff_read_stdin(tmp_path: Path) -> None:
    assert cli_subprocess("build", str(HOLE), "-q", "-o", str(tmp_path), text=False).returncode == 0
    dtb = (tmp_path / "generic-hole.dtb").read_bytes()
    config = str(tmp_path / "generic-hole.hypervisor.json")
    piped = cli_subprocess(
        "check", "--dtb", "-", "--hypervisor-config", config, stdin=dtb, text=False
    )
    named = cli_subprocess(
        "check",
        "--dtb",
        str(tmp_path / "generic-hole.dtb"),
        "--hypervisor-config",
        config,
        text=False,
    )
    assert piped.returncode == 0 and piped.stdout == named.stdout
    config_piped = cli_subprocess(
        "check", "--dtb", str(tmp_path / "generic-hole.dtb"), "--hypervisor-config", "-",
        stdin=Path(config).read_bytes(), text=False,
    )  # fmt: skip
    assert config_piped.returncode == 0
    assert config_piped.stdout == named.stdout.replace(config.encode(), b"<stdin>")
    # a broken DTB on stdin is named <stdin>
    err = refused(
        cli_subprocess(
            "check", "--dtb", "-", "--hypervisor-config", config, stdin=dtb[:100], text=False
        )
    )
    assert err.startswith("pvdesc: error: <stdin>"), err
    piped = cli_subprocess("map", "-", "--color", "never", stdin=HOLE.read_bytes(), text=False)
    named = cli_subprocess("map", str(HOLE), "--color", "never", text=False)
    assert piped.returncode == 0 and piped.stdout == named.stdout
    res = cli_subprocess(
        "diff", str(HOLE), "-", "--format", "json", stdin=Path(config).read_bytes(), text=False
    )
    assert res.returncode == 0 and b'"compatible": true' in res.stdout, res.stderr
    text = cli_subprocess(
        "diff", str(HOLE), "-", stdin=HOLE.read_bytes(), text=False
    ).stdout.decode()
    assert f"{HOLE} -> <stdin>: compatible" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "-", "-o", "x", "--into", "-"],
        ["check", "--dtb", "-", "--hypervisor-config", "-"],
        ["check", "--dtb", "-", "--region", "0x10000:64K", "--vcpus", "1", "--acpi", "-"],
        ["map", "-", "--svg", "-", "--html", "-"],
        ["diff", "-", "-"],
    ],
    ids=["build", "check", "check-acpi", "map-out", "diff"],
)
def test_only_one_dash_per_direction(tmp_path: Path, argv: list[str]) -> None:
    err = refused(cli_subprocess(*argv, stdin=HOLE.read_bytes(), cwd=tmp_path, text=False))
    assert "can be - (standard" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["svg", "html"])
def test_map_document_to_stdout_equals_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"map.{kind}"
    assert (
        cli_subprocess(
            "map", str(HOLE), f"--{kind}", str(path), "--color", "never", text=False
        ).returncode
        == 0
    )
    res = cli_subprocess(
        "map", str(HOLE), f"--{kind}", "-", "--color", "never", cwd=tmp_path, text=False
    )
    assert res.returncode == 0
    assert res.stdout == path.read_bytes()
    assert res.stderr.startswith(b"generic-hole ")  # the terminal map moved to stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"map.{kind}"]


def test_junit_to_stdout_equals_the_file(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    args = ["validate", "--no-external", "--jobs", "1", str(HOLE)]
    to_file = cli_subprocess(*args, "--junit", str(report), text=False)
    to_stdout = cli_subprocess(*args, "--junit", "-", cwd=tmp_path, text=False)
    assert to_file.returncode == 0 and to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout == report.read_bytes()
    assert to_stdout.stderr == to_file.stdout  # the usual report, on stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.xml"]
