"""Jinja2's bytecode cache for the templates: used only where it is safe, and optional."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jinja2
import pytest
from tools import ROOT, run

from pvdesc import templating


def test_cache_in_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bcc = templating.bytecode_cache({})
    assert isinstance(bcc, jinja2.FileSystemBytecodeCache)
    directory = tmp_path / "pvdesc" / "jinja2"
    assert Path(bcc.directory) == directory
    assert directory.stat().st_mode & 0o777 == 0o700


def test_cache_off_with_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert templating.bytecode_cache({"PVDESC_NO_CACHE": "1"}) is None
    assert not (tmp_path / "pvdesc").exists()


def test_cache_refused_when_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = tmp_path / "pvdesc" / "jinja2"
    directory.mkdir(parents=True)
    directory.chmod(0o777)
    assert templating.bytecode_cache({}) is None


def test_cache_refused_when_not_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "pvdesc").mkdir()
    (tmp_path / "pvdesc" / "jinja2").write_text("not a directory")
    assert templating.bytecode_cache({}) is None


def test_cached_and_uncached_builds_agree(tmp_path: Path) -> None:
    """A cold build, a build from the cache and one without it write the same bytes."""
    example = ROOT / "examples" / "uefi-acpi-numa.yaml"
    outs = []
    for i, extra in enumerate(({}, {}, {"PVDESC_NO_CACHE": "1"})):
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}
        out = tmp_path / f"out{i}"
        res = run(
            [sys.executable, "-m", "pvdesc.cli", "build", str(example), "-o", str(out), "-q"],
            env=env,
        )
        assert res.returncode == 0, res.stderr
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1] == outs[2]
    assert any((tmp_path / "cache" / "pvdesc" / "jinja2").iterdir())
