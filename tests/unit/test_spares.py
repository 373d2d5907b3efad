"""Spare scratch files (pvdesc.commands.validate.spares): lent under new names, never recreated.

A file lent to a name holds exactly the bytes given (a longer text before it
leaves nothing behind), exists under that name only during the block, and the
same file (inode) serves the next name; a file is created only when none is idle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvdesc.commands.validate.spares import Spares


def test_one_file_serves_one_name_after_another(tmp_path: Path) -> None:
    spares = Spares(tmp_path)
    inodes = []
    for name, data in (("a.dts", b"a longer first text"), ("b.dts", b"short"), ("c.dts", b"")):
        path = tmp_path / name
        with spares.holding(path, data):
            assert path.read_bytes() == data
            inodes.append(path.stat().st_ino)
        assert not path.exists()
    assert len(set(inodes)) == 1 and spares.made == 1
    assert [p.name for p in tmp_path.iterdir()] == [".spare-0"]


def test_files_held_at_once_are_distinct_and_come_back(tmp_path: Path) -> None:
    spares = Spares(tmp_path)
    sub = tmp_path / "00003"
    sub.mkdir()
    for _ in range(2):
        with spares.holding(sub / "x.dts", b"dts"), spares.holding(sub / ".x.dtb.r", b""):
            assert (sub / "x.dts").read_bytes() == b"dts"
            assert (sub / ".x.dtb.r").stat().st_ino != (sub / "x.dts").stat().st_ino
        assert sorted(p.name for p in sub.iterdir()) == []
    assert spares.made == 2 and len(spares.idle) == 2


def test_a_file_that_cannot_be_written_raises_and_is_not_kept(tmp_path: Path) -> None:
    spares = Spares(tmp_path)
    with pytest.raises(OSError), spares.holding(tmp_path / "missing" / "x.dts", b"x"):
        pass
    assert spares.idle == []
