"""Every output of every command, for every shipped example, byte for byte as recorded.

``tests/data/golden/outputs.json`` holds, for each example, the sha256 of every file
``pvdesc build`` writes, and of the standard output (and exit status) of ``check``
(text and JSON, on the built DTB and hypervisor config), ``map`` (terminal, SVG,
HTML), ``diff`` of the example against itself and ``validate --no-external`` (text
and JSON); plus ``profiles`` in both formats.  A restructuring, or a speed-up, must
leave every one unchanged; a change in what pvdesc writes shows up here as the
list of outputs that moved.

After an intended change of output, record the new figures with
``PVDESC_GOLDEN_RECORD=1 .venv/bin/python -m pytest tests/integration/test_golden_outputs.py``
and commit the data file with the change that explains it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libfdt
from helpers import EXAMPLES, ROOT, cli_subprocess

GOLDEN = ROOT / "tests" / "data" / "golden" / "outputs.json"
RECORD = os.environ.get("PVDESC_GOLDEN_RECORD") == "1"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli(*args: str, cwd: Path) -> tuple[int, bytes]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    res = cli_subprocess(*args, cwd=cwd, env=env, text=False)
    assert b"Traceback" not in res.stderr, res.stderr.decode()
    return res.returncode, res.stdout


def _first_ram(dtb: Path) -> str:
    """``BASE:4K`` at the first ``/memory`` node's base (two address and two size cells)."""
    fdt = libfdt.Fdt(dtb.read_bytes())
    node = fdt.path_offset("/")
    node = fdt.first_subnode(node)
    while not fdt.get_name(node).startswith("memory"):
        node = fdt.next_subnode(node)
    reg = fdt.getprop(node, "reg")
    return f"{int.from_bytes(reg[:8], 'big'):#x}:4K"


def _example(example: Path, work: Path) -> dict[str, str]:
    """Every output of one example, as ``{what: "exit sha256"}`` (files: ``sha256``)."""
    name = example.stem
    out = work / name
    out.mkdir()
    # The description is copied in and named by its bare name: what is recorded (the
    # manifest's path, messages naming the file) must not depend on where the checkout is.
    desc = example.name
    shutil.copyfile(example, out / desc)
    got: dict[str, str] = {}

    def record(what: str, code: int, data: bytes) -> None:
        got[what] = f"{code} {_sha(data)}"

    record("build", *_cli("build", desc, "-o", "o", cwd=out))
    for f in sorted((out / "o").glob(f"{name}.*")):
        got[f"file {f.name}"] = _sha(f.read_bytes())
    hyp = f"o/{name}.hypervisor.json"
    for fmt in ("text", "json"):
        record(
            f"check {fmt}",
            *_cli(
                "check",
                "--dtb",
                f"o/{name}.dtb",
                "--hypervisor-config",
                hyp,
                "--format",
                fmt,
                cwd=out,
            ),
        )
        record(f"diff {fmt}", *_cli("diff", desc, hyp, "--format", fmt, cwd=out))
        record(
            f"validate {fmt}",
            *_cli("validate", "--no-external", "-j", "1", "--format", fmt, desc, cwd=out),
        )
    # An unsafe region (the first byte of RAM, as the DTB says) and the map of a DTB.
    unsafe = _first_ram(out / "o" / f"{name}.dtb")
    for fmt in ("text", "json"):
        record(
            f"check unsafe {fmt}",
            *_cli(
                "check",
                "--dtb",
                f"o/{name}.dtb",
                "--region",
                unsafe,
                "--vcpus",
                "2",
                "--format",
                fmt,
                cwd=out,
            ),
        )
    record(
        "map dtb",
        *_cli(
            "map",
            "--dtb",
            f"o/{name}.dtb",
            "--region",
            unsafe,
            "--color",
            "never",
            cwd=out,
        ),
    )
    record("map", *_cli("map", desc, "--color", "never", cwd=out))
    record(
        "map svg",
        *_cli("map", desc, "--svg", "m.svg", "--html", "m.html", "--color", "never", cwd=out),
    )
    got["file m.svg"] = _sha((out / "m.svg").read_bytes())
    got["file m.html"] = _sha((out / "m.html").read_bytes())
    return got


def _all(work: Path) -> dict[str, dict[str, str]]:
    examples = sorted(EXAMPLES.glob("*.yaml"))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda e: _example(e, work), examples))
    table = {e.stem: r for e, r in zip(examples, results, strict=True)}
    runs = {fmt: _cli("profiles", "--format", fmt, cwd=work) for fmt in ("text", "json")}
    table["(profiles)"] = {f"profiles {fmt}": f"{c} {_sha(d)}" for fmt, (c, d) in runs.items()}
    return table


def test_every_output_is_as_recorded(tmp_path: Path) -> None:
    got = _all(tmp_path)
    if RECORD:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    moved = [
        f"{ex}: {what}"
        for ex in sorted(set(want) | set(got))
        for what in sorted(set(want.get(ex, {})) | set(got.get(ex, {})))
        if want.get(ex, {}).get(what) != got.get(ex, {}).get(what)
    ]
    assert not moved, "outputs that changed:\n" + "\n".join(moved)
    # Sanity of the record itself: every example built, and wrote its files.
    for ex, outputs in want.items():
        if ex != "(profiles)":
            assert outputs["build"].startswith("0 "), ex
            assert any(k.endswith(".dtb") or k.endswith(".manifest.json") for k in outputs), ex
