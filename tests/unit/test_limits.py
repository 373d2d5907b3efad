"""Inputs past sane bounds are refused with a clear message; big but sane ones are answered.

The pathological-but-legal inputs here used to take quadratic time (39 s for the
check of a 1 MB DTB, 112 s to map 20,000 devices).  Each runs in a fresh pvdesc
process whose timeout is only a hang guard: a regression to quadratic time
blows through it, while no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from helpers import ROOT, cli_subprocess
from mutators import Node, fdt_blob, u32

from pvdesc.description import load as description
from pvdesc.emit import hypervisor
from pvdesc.emit.hypervisor import ConfigError
from pvdesc.errors import AcpiError, DescriptionError, DTError
from pvdesc.read import acpitables, dtb
from pvdesc.tools import inputs

#: Seconds a pathological input may take before the test calls it a hang.
HANG = 120.0
CELLS = [("#address-cells", u32(2)), ("#size-cells", u32(2))]


def one_line_error(err: str, path: Path | str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"pvdesc: error: {path}: "), err
    return err.removeprefix(f"pvdesc: error: {path}: ").rstrip("\n")


# --------------------------------------------------------------------------- file sizes


def test_100_mb_description_is_refused_by_its_size(tmp_path: Path) -> None:
    """A 100 MB file (sparse: no disk used) is refused from fstat, before any read."""
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.write(b"name: big\n")
        fh.truncate(100 << 20)
    res = cli_subprocess("build", str(big), "-o", str(tmp_path / "out"), timeout=HANG)
    code, out, err = res.returncode, res.stdout, res.stderr
    assert code == 2 and out == ""
    assert one_line_error(err, big) == (
        f"file is {100 << 20} bytes; descriptions are limited to {description.MAX_FILE_BYTES}"
    )
    assert not (tmp_path / "out").exists()


def test_endless_input_is_read_only_up_to_the_limit() -> None:
    """/dev/zero never ends: reading stops one byte past the limit."""
    res = cli_subprocess("build", "/dev/zero", "-o", "/nonexistent/out", timeout=HANG)
    code, _, err = res.returncode, res.stdout, res.stderr
    assert code == 2
    assert one_line_error(err, "/dev/zero") == (
        f"file is more than {description.MAX_FILE_BYTES} bytes; descriptions are limited to "
        f"{description.MAX_FILE_BYTES}"
    )


@pytest.mark.parametrize(
    ("limit", "error", "what"),
    [
        (dtb.MAX_DTB_BYTES, DTError, "DTBs"),
        (acpitables.MAX_TABLE_BYTES, AcpiError, "ACPI tables"),
        (hypervisor.MAX_CONFIG_BYTES, ConfigError, "hypervisor configs"),
    ],
)
def test_every_input_file_is_bounded(
    tmp_path: Path, limit: int, error: type[Exception], what: str
) -> None:
    big = tmp_path / "big"
    with big.open("wb") as fh:
        fh.truncate(limit + 1)
    with pytest.raises(error, match=f"file is {limit + 1} bytes; {what} are limited to {limit}"):
        inputs.read_bounded(big, limit, error, what)  # type: ignore[arg-type]


@pytest.mark.parametrize("buffer", [False, True])
def test_a_file_that_grows_after_fstat_is_read_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer: bool
) -> None:
    """A regular file is read at its fstat size and one byte more; if that byte exists, on."""
    grown = tmp_path / "grown"
    grown.write_bytes(bytes(range(100)))
    read = inputs.read_bounded_buffer if buffer else inputs.read_bounded
    got = read(grown, 100, DTError, "DTBs")
    assert (got, type(got)) == (bytes(range(100)), bytearray if buffer else bytes)
    real_fstat = os.fstat

    def stale(fd: int) -> os.stat_result:  # the size the file had a moment ago
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, *st[1:6], 10, *st[7:]))

    monkeypatch.setattr(os, "fstat", stale)
    assert read(grown, 100, DTError, "DTBs") == bytes(range(100))
    with pytest.raises(DTError, match="file is more than 99 bytes; DTBs are limited to 99"):
        read(grown, 99, DTError, "DTBs")


def test_check_and_into_refuse_oversized_dtbs(tmp_path: Path) -> None:
    big = tmp_path / "big.dtb"
    with big.open("wb") as fh:
        fh.truncate(dtb.MAX_DTB_BYTES + 1)
    res = cli_subprocess(
        "check", "--dtb", str(big), "--region", "0x090a0000:64K", "--vcpus", "1", timeout=HANG
    )
    code, _, err = res.returncode, res.stdout, res.stderr
    assert code == 2 and "DTBs are limited to" in one_line_error(err, big)
    desc = str(ROOT / "examples" / "qemu-virt.yaml")
    res = cli_subprocess("build", desc, "-o", str(tmp_path / "o"), "--into", str(big), timeout=HANG)
    code, _, err = res.returncode, res.stdout, res.stderr
    assert code == 2 and "base DTBs are limited to" in one_line_error(err, big)


# --------------------------------------------------------------------------- counts


def test_bank_and_device_counts(tmp_path: Path) -> None:
    banks = "".join(f"  - {{base: {(1 << 32) + i * 0x10000:#x}, size: 64K}}\n" for i in range(1025))
    path = tmp_path / "banks.yaml"
    path.write_text(f"name: b\nvcpus: 1\nmemory:\n{banks}")
    with pytest.raises(DescriptionError, match="1025 entries: at most 1024 are allowed"):
        description.load(path)
    devs = "".join(f"  - {{name: d, base: {i * 0x1000:#x}, size: 4K}}\n" for i in range(4097))
    path.write_text(f"name: b\nvcpus: 1\nmemory:\n  - {{base: 1G, size: 1G}}\ndevices:\n{devs}")
    with pytest.raises(DescriptionError, match="4097 entries: at most 4096 are allowed"):
        description.load(path)


def test_largest_legal_description_builds(tmp_path: Path) -> None:
    """1024 banks and 4096 devices (the schema's limits): answered, and mapped."""
    banks = "".join(f"  - {{base: {(1 << 32) + i * 0x20000:#x}, size: 64K}}\n" for i in range(1024))
    devs = "".join(f"  - {{name: d{i}, base: {i * 0x1000:#x}, size: 4K}}\n" for i in range(4096))
    path = tmp_path / "big.yaml"
    path.write_text(f"name: big\nvcpus: 1\nmax_vcpus: 512\nmemory:\n{banks}devices:\n{devs}")
    res = cli_subprocess("build", "-q", str(path), "-o", str(tmp_path / "out"), timeout=HANG)
    code, _, err = res.returncode, res.stdout, res.stderr
    assert (code, err) == (0, "")
    res = cli_subprocess("map", str(path), "--color", "never", timeout=HANG)
    code, out, err = res.returncode, res.stdout, res.stderr
    assert code == 0 and err == "" and out.count("\n") > 5000


def test_too_many_entries_or_steps(tmp_path: Path) -> None:
    one = [("#address-cells", u32(1)), ("#size-cells", u32(1))]
    many_regs = fdt_blob(("", one, [("d@0", [("reg", u32(0x1000, 0x10) * 1_000_001)], [])]))
    with pytest.raises(DTError, match="more than 1000000 reg/ranges entries"):
        dtb.parse(many_regs)
    windows = b"".join(u32(0xF0000000 + i, 0, 1) for i in range(10_000)) + u32(0, 0, 0x1000)
    kids: list[Node] = [(f"d@{i:x}", [("reg", u32(0x10, 0x10))], []) for i in range(1000)]
    bus = fdt_blob(("", one, [("bus", [*one, ("ranges", windows)], kids)]))
    with pytest.raises(DTError, match="takes more than 5000000 steps"):
        dtb.parse(bus)


def test_deep_tree_is_refused_at_linux_depth() -> None:
    node: Node = ("leaf", [], [])
    for i in range(100_000):
        node = (f"n{i}", [], [node])
    with pytest.raises(DTError, match="deeper than 64 levels"):
        dtb.parse(fdt_blob(("", CELLS, [node])))


# --------------------------------------------------------------------------- big but legal


def stacked(tmp: Path, count: int) -> Path:
    """``count`` identical /memory nodes and ``count`` overlapping no-map reservations."""
    mems: list[Node] = [
        (f"memory@{i:x}", [("device_type", b"memory\0"), ("reg", u32(0, 1 << 30, 0, 1 << 30))], [])
        for i in range(count)
    ]
    res: list[Node] = [
        (
            f"r@{i:x}",
            [("reg", u32(0, 0x7FFE0000 + (i % 2) * 0x10000, 0, 0x20000)), ("no-map", b"")],
            [],
        )
        for i in range(count)
    ]
    tree: Node = ("", CELLS, [*mems, ("reserved-memory", [*CELLS, ("ranges", b"")], res)])
    path = tmp / "stacked.dtb"
    path.write_bytes(fdt_blob(tree))
    return path


def test_stacked_memory_and_reservations_are_answered(tmp_path: Path) -> None:
    path = stacked(tmp_path, 16_000)
    res = cli_subprocess(
        "check", "--dtb", str(path), "--region", "0x7fff0000:64K", "--vcpus", "512",
        "--format", "json", timeout=HANG,
    )  # fmt: skip
    code, out, err = res.returncode, res.stdout, res.stderr
    assert code == 0, err
    assert json.loads(out)["verdict"] == "safe"  # every structure is inside a no-map child


def test_map_of_many_devices_is_answered_and_too_many_refused(tmp_path: Path) -> None:
    def devices(n: int) -> Path:
        kids: list[Node] = [
            (f"d@{i:x}", [("reg", u32(0, 0x100000 + i * 0x1000, 0, 0x100))], []) for i in range(n)
        ]
        path = tmp_path / f"dev{n}.dtb"
        path.write_bytes(fdt_blob(("", CELLS, kids)))
        return path

    args = ("--region", "0x7fff0000:64K", "--vcpus", "4", "--color", "never")
    res = cli_subprocess("map", "--dtb", str(devices(5000)), *args, timeout=HANG)
    code, out, err = res.returncode, res.stdout, res.stderr
    assert code == 0 and err == "" and out.count("\n") > 5000
    many = devices(20_000)
    res = cli_subprocess("map", "--dtb", str(many), *args, timeout=HANG)
    code, _, err = res.returncode, res.stdout, res.stderr
    assert code == 2
    assert one_line_error(err, many).startswith(
        "the map would have 40003 rows, more than the 20000"
    )


def _ssdt(body: bytes) -> bytes:
    header = (
        b"SSDT"
        + struct.pack("<I", 36 + len(body))
        + b"\x02\x00PVDESCPVTIME  \x01\x00\x00\x00INTL\x00\x00\x00\x00"
    )
    table = bytearray(header + body)
    table[9] = (-sum(table)) % 256
    return bytes(table)


def test_acpi_table_with_many_scopes(tmp_path: Path) -> None:
    claim = b"\x08_CRS\x11\x3f\xff\x0a\x00" + b"\x20" * 4000
    ok = _ssdt(b"\x5b\x82\x05PVTM" * 60_000 + claim * 100)
    assert len(acpitables.parse(ok).claims) == 0  # small descriptors only
    with pytest.raises(AcpiError, match="more than 65536 Device scopes"):
        acpitables.parse(_ssdt(b"\x5b\x82\x05PVTM" * 70_000))
    path = tmp_path / "ssdt.aml"
    path.write_bytes(ok)
    res = cli_subprocess(
        "check", "--dtb", str(stacked(tmp_path, 1)), "--region", "0x090a0000:64K", "--vcpus", "1",
        "--boot", "uefi-acpi", "--acpi", str(path), timeout=HANG,
    )  # fmt: skip
    code, _, err = res.returncode, res.stdout, res.stderr
    assert code == 0, err


NODE_LIMIT = "description has more than 100000 YAML nodes (or an alias bomb)"


def mib_of(head: bytes, unit: bytes, tail: bytes = b"") -> bytes:
    """``head``, ``unit`` repeated, ``tail``: exactly at the 1 MiB size limit (or just under)."""
    count = (description.MAX_FILE_BYTES - len(head) - len(tail)) // len(unit)
    return head + unit * count + tail


def test_unclosed_flow_list_is_refused_at_the_node_limit() -> None:
    """``x: [1,1,1,...`` without ``]``, 1 MiB, was once refused only after 15.6 s and
    340 MB, by the end of the file.  It is refused at its 100,001st node (speed: bench/)."""
    with pytest.raises(DescriptionError) as info:
        description.loads(mib_of(b"x: [", b"1,"), "x.yaml")
    assert str(info.value) == f"x.yaml:1:199999: {NODE_LIMIT}"
    with pytest.raises(DescriptionError) as info:  # closed: the same place
        description.loads(mib_of(b"x: [", b"1,", b"1]"), "x.yaml")
    assert str(info.value) == f"x.yaml:1:199999: {NODE_LIMIT}"


def test_syntax_error_far_into_a_large_description_keeps_libyaml_words() -> None:
    """Past 16 KiB the pure-Python parser is not asked again for its wording."""
    near = b"name: vm\nvcpus: 2\nx: [1, 2\ny: 3\n"
    with pytest.raises(DescriptionError) as info:
        description.loads(near, "x.yaml")
    assert str(info.value) == "x.yaml:4:2: YAML syntax: expected ',' or ']', but got ':'"
    far = mib_of(b"name: vm\nvcpus: 2\nx: [", b"1234567890,")
    with pytest.raises(DescriptionError) as info:
        description.loads(far, "x.yaml")
    assert str(info.value) == "x.yaml:4:1: YAML syntax: did not find expected node content"


def test_deepest_nesting_and_longest_lists_are_refused_in_one_line() -> None:
    with pytest.raises(DescriptionError) as info:
        description.loads(mib_of(b"x: ", b"["), "x.yaml")
    assert str(info.value) == "x.yaml: YAML nested too deeply"
    banks = b"name: vm\nvcpus: 2\nmemory:\n" + b"  - {base: 0, size: 1}\n" * 19_990
    with pytest.raises(DescriptionError) as info:  # items past maxItems are not validated
        description.loads(banks, "x.yaml")
    assert str(info.value) == (
        "x.yaml:4:3: memory: 19990 entries: at most 1024 are allowed (a limit on input size; "
        "a real VM has a handful)"
    )
