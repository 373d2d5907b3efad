"""pvdesc map --html, rendered by a real headless Chromium to PNG (Debian ``chromium``).

Chromium is installed by ``scripts/setup --test``; a missing browser fails the test.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from helpers import cli_subprocess, program

WINDOW = (1240, 1000)


def chromium() -> str:
    return program("chromium")


def screenshot(url: str, png: Path, profile: Path, timeout: float = 120) -> str:
    """Run headless Chromium on ``url``; kill its whole process group on a hang."""
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        url,
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium hung for {timeout} s on {url}")
    assert proc.returncode == 0, out
    return out


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """A small PNG reader (8-bit RGB/RGBA, non-interlaced): width, height, pixel rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def colours(rows: list[bytes]) -> dict[tuple[int, int, int], int]:
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for i in range(0, len(row), 3):
            px = (row[i], row[i + 1], row[i + 2])
            counts[px] = counts.get(px, 0) + 1
    return counts


def hex_rgb(value: str) -> tuple[int, int, int]:
    return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))


@pytest.mark.parametrize("name", ["numa-2node", "qemu-virt-8cpu"])
def test_html_renders_in_chromium(name: str, tmp_path: Path) -> None:
    from pvdesc.commands.map.draw import DESCRIBER_FILL, FILL, RAM_FILLS
    from pvdesc.commands.map.model import Describer, SegmentKind

    html = tmp_path / "out" / f"{name}.html"
    res = cli_subprocess("map", f"examples/{name}.yaml", "--html", str(html))
    assert res.returncode == 0, res.stderr
    png = tmp_path / f"{name}.png"
    screenshot(html.as_uri(), png, tmp_path / "profile")
    data = png.read_bytes()
    assert len(data) > 20_000, f"suspiciously small screenshot: {len(data)} bytes"
    width, height, rows = decode_png(data)
    assert (width, height) == WINDOW
    counts = colours(rows)
    assert len(counts) > 50, "the page rendered nearly blank"
    white = counts.get((255, 255, 255), 0)
    assert white < 0.97 * width * height, "the page is (almost) all white"
    # The map's own fills are on screen in visible amounts: RAM, devices, region, memory node.
    for fill in (
        RAM_FILLS[0],
        FILL[SegmentKind.DEVICE],
        FILL[SegmentKind.REGION],
        DESCRIBER_FILL[Describer.MEMORY_NODE],
    ):
        assert counts.get(hex_rgb(fill), 0) > 200, f"{fill} missing from the rendering"
