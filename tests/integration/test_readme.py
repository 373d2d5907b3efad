"""The README's two commands stay true: the output it shows, and CI running its test command."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ROOT, cli_subprocess

README = (ROOT / "README.md").read_text()


def _blocks() -> list[str]:
    return re.findall(r"```\n(.*?)```", README, re.S)


def test_quick_start_output_is_what_build_prints(tmp_path: Path) -> None:
    main = "scripts/setup && .venv/bin/pvdesc build examples/qemu-virt-8cpu.yaml -o out/\n"
    blocks = _blocks()
    assert main in blocks
    shown = blocks[blocks.index(main) + 1]
    res = cli_subprocess(
        "build", str(ROOT / "examples" / "qemu-virt-8cpu.yaml"), "-o", "out/", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == shown


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = "scripts/setup --test && .venv/bin/python -m pytest\n"
    assert test_cmd in _blocks()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd.strip() in ci
    # ... in a clean environment: HOME and CI only, and the system's own PATH.
    clean = [ln for ln in ci if ln.startswith("exec env -i ")]
    assert clean == [
        'exec env -i HOME="$HOME" CI="${CI:-}" '
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\"
    ]
