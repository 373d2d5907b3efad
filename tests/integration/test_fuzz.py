"""Short fuzz runs: hostile DTBs, ACPI tables, hypervisor configs and descriptions.

Each test mutates real inputs (DTBs pvdesc emits, QEMU's own ``dumpdtb`` DTBs,
hand-written trees compiled by dtc, the shipped examples) with hypothesis and
feeds them to a target from :mod:`fuzzing`.  The target raises on a crash or a
wrong answer; the input is then saved under ``.fuzz-crashes/``, or the folder
``PVDESC_FUZZ_CRASHES`` names (see :func:`run_target`), so it can be added to
``tests/data/fuzz/``.  ``bench/fuzz.py`` runs the same targets for much longer (and
with atheris).

``PVDESC_FUZZ_EXAMPLES`` scales every test's example count (default 1: about a
minute and a half in all, some 10,000 inputs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import (
    DIFF_SEPARATOR,
    ROOT,
    dtc_seeds,
    pvdesc_outputs,
    qemu_seeds,
    yaml_seeds,
)
from fuzzing import (
    TARGETS as T,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutators import (
    apply_bytes,
    apply_fdt,
    apply_yaml,
    byte_ops,
    dump_yaml,
    fdt_ops,
    yaml_ops,
    yaml_trees,
)

SCALE = float(os.environ.get("PVDESC_FUZZ_EXAMPLES", "1"))
CRASHES = Path(os.environ.get("PVDESC_FUZZ_CRASHES") or ROOT / ".fuzz-crashes")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


def run_target(name: str, data: bytes) -> None:
    """Run one target; on any failure save the input and re-raise with where it went."""
    try:
        T[name](data)
    except Exception as exc:
        CRASHES.mkdir(parents=True, exist_ok=True)
        path = CRASHES / f"{name}-{hashlib.sha256(data).hexdigest()[:12]}.bin"
        path.write_bytes(data)
        raise AssertionError(f"{name} target failed on {path}: {exc!r}") from exc


@pytest.fixture(scope="module")
def dtb_seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    work = tmp_path_factory.mktemp("seeds")
    seeds = pvdesc_outputs("dtb") + dtc_seeds(work) + qemu_seeds(work)
    assert len(seeds) >= 15
    return seeds


def test_seeds_are_answered(dtb_seeds: list[bytes]) -> None:
    """Unmutated seeds parse (so the mutations start from real, valid inputs)."""
    from pvdesc.read import dtb

    for blob in dtb_seeds:
        dtb.parse(blob)
        run_target("dtb", blob)
        run_target("into", blob)
    for text in yaml_seeds():
        run_target("yaml", text)


@fuzz_settings(2000)
@given(st.data())
def test_fuzz_dtb_bytes(dtb_seeds: list[bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(dtb_seeds))
    run_target("dtb", apply_bytes(seed, data.draw(st.lists(byte_ops, min_size=1, max_size=6))))


@fuzz_settings(1500)
@given(st.data())
def test_fuzz_dtb_structure(dtb_seeds: list[bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(dtb_seeds))
    blob = apply_fdt(seed, data.draw(st.lists(fdt_ops, min_size=1, max_size=8)))
    if data.draw(st.booleans()):
        blob = apply_bytes(blob, data.draw(st.lists(byte_ops, max_size=2)))
    run_target("dtb", blob)


@fuzz_settings(800)
@given(st.data())
def test_fuzz_into(dtb_seeds: list[bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(dtb_seeds))
    run_target("into", apply_fdt(seed, data.draw(st.lists(fdt_ops, min_size=1, max_size=6))))


@fuzz_settings(300)
@given(st.sampled_from(yaml_seeds()), st.lists(yaml_ops, min_size=1, max_size=5))
def test_fuzz_yaml_mutations(seed: bytes, ops: list[tuple[object, ...]]) -> None:
    run_target("yaml", apply_yaml(seed, ops))


@fuzz_settings(1000)
@given(yaml_trees, st.sampled_from([None, True, False]))
def test_fuzz_random_yaml(tree: object, flow: bool | None) -> None:
    run_target("yaml", dump_yaml(tree, flow))


@fuzz_settings(1000)
@given(st.binary(max_size=512))
def test_fuzz_yaml_raw_bytes(raw: bytes) -> None:
    run_target("yaml", raw)


@fuzz_settings(1500)
@given(st.data())
def test_fuzz_acpi(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(pvdesc_outputs("ssdt-aml") + pvdesc_outputs("srat-aml")))
    blob = apply_bytes(seed, data.draw(st.lists(byte_ops, min_size=1, max_size=6)))
    if data.draw(st.booleans()) and len(blob) >= 36:  # fix the checksum to get past it
        body = bytearray(blob)
        body[9] = 0
        body[9] = (-sum(body[: int.from_bytes(body[4:8], "little")])) % 256
        blob = bytes(body)
    run_target("acpi", blob)


@fuzz_settings(1500)
@given(st.data())
def test_fuzz_hypervisor_config(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(pvdesc_outputs("hypervisor-config")))
    doc = json_mutation(seed, data)
    run_target("config", doc)


@fuzz_settings(150)
@given(st.data())
def test_fuzz_diff(data: st.DataObject) -> None:
    """Pairs of configs and descriptions, each possibly mutated."""
    seeds = pvdesc_outputs("hypervisor-config") + yaml_seeds()
    parts = []
    for _ in range(2):
        seed = data.draw(st.sampled_from(seeds))
        if seed.lstrip()[:1] == b"{":
            seed = json_mutation(seed, data) if data.draw(st.booleans()) else seed
        elif data.draw(st.booleans()):
            seed = apply_yaml(seed, data.draw(st.lists(yaml_ops, min_size=1, max_size=2)))
        parts.append(seed)
    run_target("diff", parts[0] + DIFF_SEPARATOR + parts[1])


def json_mutation(seed: bytes, data: st.DataObject) -> bytes:
    """Replace one value anywhere in a JSON document with a hostile one."""
    doc = json.loads(seed)
    hostile: st.SearchStrategy[object] = st.one_of(
        st.integers(-(2**70), 2**70),
        st.sampled_from([None, True, "0x10", [], {}, 10**400, 2**64, -1, 1.5, float("inf")]),
        st.lists(st.integers(0, 2**64), max_size=3),
    )
    paths: list[list[object]] = []

    def walk(node: object, path: list[object]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:4]):
                walk(v, [*path, i])

    walk(doc, [])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        if not path:
            continue
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = copy.deepcopy(data.draw(hostile))
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(doc, allow_nan=True)
    return text.encode()


def test_crashes_dir_is_ignored_by_git() -> None:
    assert ".fuzz-crashes/" in (ROOT / ".gitignore").read_text().splitlines()


def test_atheris_harness_runs_every_target(tmp_path: Path) -> None:
    """bench/fuzz.py's coverage-guided engine, briefly: every target, fixed seed and runs."""
    crashes = tmp_path / "crashes"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fuzz.py"),
            "--runs",
            "200",
            "--crashes",
            str(crashes),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    # libFuzzer's "Done N runs" may count a replayed seed or two beyond -runs on a busy
    # machine (1202 seen): at least 200 inputs for each of the 6 targets, and no failure.
    assert summary["engine"] == "atheris" and summary["inputs"] >= 1200, res.stdout
    assert (summary["failures"], summary["sites"]) == (0, []), res.stdout
    assert res.returncode == 0
