"""Outputs: all old or all new whatever instant a build is killed at; foreign files; name escapes.

The kill tests are exhaustive: every filesystem call :mod:`pvdesc.emit.publish` makes
(``os.open``, ``write``, ``fsync``, ``mkdir``, ``symlink``, ``link``, ``replace``,
``unlink``, ``rmdir``) is counted, and for every N a forked child is SIGKILLed
(kill -9, no cleanup) just before its Nth call.  The directory must then read
exactly as the old outputs or exactly as the new ones, through the plain names
and through :func:`pvdesc.emit.publish.read_outputs`; and the next build must finish
the job and leave no leftovers.  A second test kills a real ``pvdesc build``
process from outside at a spread of those points.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT, SLOW, cli_in_process, cli_subprocess

from pvdesc.emit import build, publish
from pvdesc.errors import OutputError

#: The os functions a publish uses to change (or read, for fsync) the filesystem.
CALLS = ("open", "write", "fsync", "mkdir", "symlink", "link", "replace", "unlink", "rmdir")
V1 = """name: vm
vcpus: 2
max_vcpus: 8
memory:
  - {base: 0x40000000, size: 1G}
"""
#: Same VM, other RAM, describe acpi: no .dts but an SSDT, so names go and come.
V2 = """name: vm
vcpus: 4
max_vcpus: 8
boot: uefi-acpi
memory:
  - {base: 0x40000000, size: 2G}
"""

Files = dict[str, bytes]


def rendered(tmp: Path, text: str, drop_dts: bool = False) -> tuple[build.Output, ...]:
    """A build's outputs; ``drop_dts``: as ``--into`` (V1's DTB as the base) renders them."""
    path = tmp / "vm.yaml"
    path.write_text(text)
    if not drop_dts:
        return build.plan(path).outputs
    base = tmp / "base.dtb"
    base.write_bytes(next(o.data for o in rendered(tmp, V1) if o.kind == "dtb"))
    path.write_text(text)
    return build.plan(path, into=base).outputs


def as_files(outputs: tuple[build.Output, ...]) -> Files:
    return {o.name: o.data for o in outputs}


def observe(outdir: Path) -> Files:
    """What a reader sees through the plain names (a dangling link reads as absent)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(outdir.iterdir())
        if p.name.startswith("vm.") and p.exists()
    }


def leftovers(outdir: Path) -> list[str]:
    store = outdir / ".pvdesc" / "vm"
    junk = [p.name for p in outdir.iterdir() if p.name.endswith(".pvdesc-tmp")]
    junk += [p.name for p in store.iterdir() if p.name.startswith(".")]
    gens = [p.name for p in store.iterdir() if p.name.startswith("g-")]
    if len(gens) > 2:
        junk += gens
    junk += [p.name for p in outdir.iterdir() if p.is_symlink() and not p.exists()]
    return junk


def legacy_layout(outdir: Path, files: Files) -> None:
    """Plain files and a plain manifest, as pvdesc wrote them before generations existed."""
    outdir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (outdir / name).write_bytes(data)


def foreign(outdir: Path) -> Files:
    """Files that are not vm's outputs and must survive anything a build of vm does."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "notes.txt").write_text("mine\n")
    (outdir / "other-vm.dtb").write_bytes(b"another VM's output")
    return {"notes.txt": b"mine\n", "other-vm.dtb": b"another VM's output"}


def fork_publish(outdir: Path, files: Files, kill_at: int) -> bool:
    """Publish in a forked child SIGKILLed before its ``kill_at``-th filesystem call.

    Returns True if the child was killed, False if it finished first.
    """
    pid = os.fork()
    if pid == 0:  # the child: count calls, kill -9 itself at the chosen one
        try:
            count = [0]

            def hook(fn: Callable[..., object]) -> Callable[..., object]:
                def wrapper(*args: object, **kwargs: object) -> object:
                    count[0] += 1
                    if count[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)

                return wrapper

            for name in CALLS:
                setattr(os, name, hook(getattr(os, name)))
            publish.publish(outdir, "vm", files)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def scenarios(tmp: Path) -> Iterator[tuple[str, Callable[[Path], object], Files, Files]]:
    """(name, set up the old state in a directory, old outputs, new outputs)."""
    v1 = as_files(rendered(tmp, V1))
    v2 = as_files(rendered(tmp, V2, drop_dts=True))
    yield "first build", lambda d: None, {}, v1
    yield "rebuild v1 -> v2", lambda d: publish.publish(d, "vm", v1), v1, v2
    yield "same again", lambda d: publish.publish(d, "vm", v1), v1, v1
    yield "adopt plain files", lambda d: legacy_layout(d, v1), v1, v2


def test_kill_at_every_step_leaves_old_or_new(tmp_path: Path) -> None:
    for name, setup, old, new in scenarios(tmp_path):
        template = tmp_path / f"template-{name.replace(' ', '-')}"
        others = foreign(template)
        setup(template)
        assert observe(template) == old, name
        kills = 0
        for kill_at in range(1, 1000):
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(template, work, symlinks=True)
            killed = fork_publish(work, new, kill_at)
            seen = observe(work)
            assert seen in (old, new), f"{name}, killed before call {kill_at}: a mix"
            if old or seen == new:
                assert publish.read_outputs(work, "vm") == seen, f"{name}, call {kill_at}"
            else:
                with pytest.raises(OutputError):
                    publish.read_outputs(work, "vm")
            assert {n: (work / n).read_bytes() for n in others} == others
            publish.publish(work, "vm", new)  # the next build finishes the job
            assert observe(work) == new and publish.read_outputs(work, "vm") == new
            assert leftovers(work) == [], f"{name}, call {kill_at}"
            assert {n: (work / n).read_bytes() for n in others} == others
            if not killed:
                break
            kills += 1
        assert kills >= 10, f"{name}: only {kills} kill points"


KILLER = """
import os, signal, sys, time
from pathlib import Path
from pvdesc.commands import cli
pause_at, marker = int(sys.argv[1]), Path(sys.argv[2])
count = [0]
def hook(fn):
    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] == pause_at:
            marker.write_text(str(os.getpid()))
            time.sleep(600)
        return fn(*args, **kwargs)
    return wrapper
from pvdesc.emit import publish
real = publish.staging
def counted(*args, **kwargs):
    for name in {calls!r}:
        setattr(os, name, hook(getattr(os, name)))
    return real(*args, **kwargs)
publish.staging = counted
sys.exit(cli.main(sys.argv[3:]))
"""


def test_killing_a_real_build_process(tmp_path: Path) -> None:
    """``pvdesc build`` in its own interpreter, paused at a publish step and killed from outside.

    The build publishes through :func:`pvdesc.emit.publish.staging` (while iasl runs, for
    describe acpi): every filesystem call from its start on is a point to pause at.
    """
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(V1)
    v2.write_text(V2)
    template = tmp_path / "template"
    assert cli_subprocess("build", "-q", str(v1), "-o", str(template), timeout=SLOW).returncode == 0
    old = observe(template)
    new_dir = tmp_path / "fresh"
    assert cli_subprocess("build", "-q", str(v2), "-o", str(new_dir), timeout=SLOW).returncode == 0
    new = observe(new_dir)
    script = KILLER.format(calls=CALLS)
    # A build killed with SIGKILL cannot remove its iasl folder: it lands here, not in /tmp.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    for kills, pause_at in enumerate(range(1, 200, 4)):
        left = sorted(scratch.iterdir())
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work, symlinks=True)
        marker = tmp_path / "paused"
        marker.unlink(missing_ok=True)
        argv = [sys.executable, "-c", script, str(pause_at), str(marker)]
        proc = subprocess.Popen(
            [*argv, "build", "-q", str(v2), "-o", str(work)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(1200):  # hang guard: wait for the pause, or for the end
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        finished = proc.poll() is not None
        if not finished:
            while not marker.read_text():
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert observe(work) in (old, new), f"killed at call {pause_at}: a mix"
        if finished:
            assert proc.returncode == 0, err
            assert observe(work) == new
            assert kills >= 5
            assert sorted(scratch.iterdir()) == left  # the build that finished left nothing
            break
        assert proc.returncode == -signal.SIGKILL
    else:
        pytest.fail("the build never finished: more than 200 filesystem calls?")


# --------------------------------------------------------------------------- foreign files


def test_foreign_file_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "generic-hole.dtb").write_bytes(b"my own DTB")
    desc = str(EXAMPLES / "generic-hole.yaml")
    code, stdout, err = cli_in_process(["build", desc, "-o", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert err == (
        f"pvdesc: error: {out / 'generic-hole.dtb'}: exists and pvdesc did not write it (it is "
        "not one of pvdesc's links, nor listed with this content by a pvdesc manifest); remove "
        "it or pass --force\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["generic-hole.dtb"]  # nothing else written
    assert (out / "generic-hole.dtb").read_bytes() == b"my own DTB"
    code, _, err = cli_in_process(["build", "-q", desc, "-o", str(out), "--force"], capsys)
    assert (code, err) == (0, "")
    assert (out / "generic-hole.dtb").read_bytes() == publish.read_outputs(out, "generic-hole")[
        "generic-hole.dtb"
    ]


def test_own_outputs_are_replaced_and_recognised(tmp_path: Path) -> None:
    out = tmp_path / "out"
    v1 = rendered(tmp_path, V1)
    build.publish_outputs(out, "vm", v1)
    build.publish_outputs(out, "vm", v1)  # rebuilding is never a foreign-file refusal
    v2 = rendered(tmp_path, V2, drop_dts=True)
    build.publish_outputs(out, "vm", v2)
    assert observe(out) == as_files(v2)
    assert not (out / "vm.dts").is_symlink()  # a name the new build lacks is removed
    assert leftovers(out) == []


def test_plain_outputs_of_an_older_pvdesc_are_adopted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    v1 = as_files(rendered(tmp_path, V1))
    legacy_layout(out, v1)
    v2 = rendered(tmp_path, V2, drop_dts=True)
    build.publish_outputs(out, "vm", v2)
    assert observe(out) == as_files(v2)
    # an edited plain file is no longer what pvdesc wrote: refused
    legacy = tmp_path / "legacy"
    legacy_layout(legacy, v1)
    (legacy / "vm.hypervisor.json").write_text("{}")
    with pytest.raises(OutputError, match=r"vm\.hypervisor\.json: exists and pvdesc did not write"):
        build.publish_outputs(legacy, "vm", v2)


def test_a_user_link_or_directory_in_the_way_is_foreign(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "elsewhere.dtb").write_bytes(b"x")
    (out / "vm.dtb").symlink_to("elsewhere.dtb")
    (out / "vm.dts").mkdir()
    files = as_files(rendered(tmp_path, V1))
    with pytest.raises(OutputError, match=r"vm\.dtb: exists and pvdesc did not write it"):
        publish.publish(out, "vm", files)
    assert os.readlink(out / "vm.dtb") == "elsewhere.dtb" and not (out / ".pvdesc").exists()
    (out / "vm.dtb").unlink()
    with pytest.raises(OutputError, match=r"vm\.dts: exists and pvdesc did not write it"):
        publish.publish(out, "vm", files)
    with pytest.raises(OutputError, match="cannot write outputs"):
        publish.publish(out, "vm", files, force=True)  # --force never deletes a directory


def test_store_that_is_not_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".pvdesc").write_text("not a directory")
    with pytest.raises(OutputError, match=r"\.pvdesc: is not a directory pvdesc made"):
        publish.publish(out, "vm", as_files(rendered(tmp_path, V1)))


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["../vm.dtb", "/etc/vm.dtb", "sub/vm.dtb", ".vm.dtb", "vm.dtb\0", "vm", "..", "other.dtb",
     "vm.DTB", "vm.dtb/"],
)  # fmt: skip
def test_output_names_cannot_escape(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="refusing to write"):
        publish.publish(out, "vm", {name: b"x"})
    assert not out.exists()
    assert not (tmp_path / "vm.dtb").exists()


@pytest.mark.parametrize("vm", ["../x", "x/y", ".pvdesc", "", "X"])
def test_vm_names_cannot_escape(tmp_path: Path, vm: str) -> None:
    with pytest.raises(OutputError, match="refusing to publish VM"):
        publish.publish(tmp_path / "out", vm, {f"{vm}.dtb": b"x"})
    assert not (tmp_path / "out").exists()


def test_name_resolving_outside_is_refused(tmp_path: Path) -> None:
    """A symlinked output directory is followed as a whole, but a name never leaves it."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    publish.publish(tmp_path / "link", "vm", {"vm.dtb": b"x"})
    assert (real / "vm.dtb").read_bytes() == b"x"
    assert publish.check_name(real, "vm.dtb", "vm") == real / "vm.dtb"


# --------------------------------------------------------------------------- staging


class Boom(Exception):
    """The caller's work failing in the middle of a staged publish."""


def test_rebuild_stages_into_an_invisible_generation_then_switches(tmp_path: Path) -> None:
    out = tmp_path / "out"
    v1, v2 = as_files(rendered(tmp_path, V1)), as_files(rendered(tmp_path, V2))
    publish.publish(out, "vm", v1)
    before = generations(out)
    with publish.staging(out, "vm", frozenset(v2)) as put:
        for name, data in v2.items():
            put(name, data)
            # Written at once into a new generation nobody reads yet.
            staged = generations(out) - before
            assert len(staged) == 1
            assert (out / ".pvdesc" / "vm" / staged.pop() / name).read_bytes() == data
            assert observe(out) == v1 and publish.read_outputs(out, "vm") == v1
    assert observe(out) == v2 and publish.read_outputs(out, "vm") == v2
    assert leftovers(out) == []


def test_rebuild_failing_while_staged_removes_its_generation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    v1, v2 = as_files(rendered(tmp_path, V1)), as_files(rendered(tmp_path, V2))
    publish.publish(out, "vm", v1)
    before, entries = generations(out), sorted(p.name for p in out.iterdir())
    with pytest.raises(Boom), publish.staging(out, "vm", frozenset(v2)) as put:
        for name, data in v2.items():
            put(name, data)
        assert len(generations(out)) == len(before) + 1  # staged, not yet published
        raise Boom
    assert generations(out) == before
    assert sorted(p.name for p in out.iterdir()) == entries
    assert observe(out) == v1 and publish.read_outputs(out, "vm") == v1
    assert leftovers(out) == []


def test_first_build_failing_while_staged_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    v1 = as_files(rendered(tmp_path, V1))
    with pytest.raises(Boom), publish.staging(out, "vm", frozenset(v1)) as put:
        for name, data in v1.items():
            put(name, data)
        raise Boom
    assert not (tmp_path / "new").exists()
    with publish.staging(out, "vm", frozenset(v1)) as put:  # and without the failure
        for name, data in v1.items():
            put(name, data)
    assert observe(out) == v1 and leftovers(out) == []


@pytest.mark.parametrize("rebuild", [False, True])
def test_staging_refuses_a_file_it_was_not_told_of_or_one_missing(
    tmp_path: Path, rebuild: bool
) -> None:
    out = tmp_path / "out"
    v1, old = as_files(rendered(tmp_path, V1)), as_files(rendered(tmp_path, V2))
    if rebuild:
        publish.publish(out, "vm", old)
    unknown = r"internal: 'vm\.other' is not a file still to write"
    with pytest.raises(OutputError, match=unknown), publish.staging(out, "vm", v1.keys()) as put:
        put("vm.other", b"x")
    twice = r"internal: 'vm\.dtb' is not a file still to write"
    with pytest.raises(OutputError, match=twice), publish.staging(out, "vm", v1.keys()) as put:
        put("vm.dtb", b"x")
        put("vm.dtb", b"x")
    missing = r"internal: never written: vm\.dtbo, "
    with pytest.raises(OutputError, match=missing), publish.staging(out, "vm", v1.keys()) as put:
        put("vm.dtb", v1["vm.dtb"])
    if rebuild:
        assert observe(out) == old and publish.read_outputs(out, "vm") == old
        assert leftovers(out) == [] and len(generations(out)) == 1
    else:
        assert not out.exists()


# --------------------------------------------------------------------------- readers


def test_reader_detects_a_tampered_generation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = as_files(rendered(tmp_path, V1))
    publish.publish(out, "vm", files)
    assert publish.read_outputs(out, "vm") == files
    target = out / "vm.hypervisor.json"
    real = target.resolve()
    real.chmod(0o644)
    real.write_text("{}")
    with pytest.raises(OutputError, match=r"vm\.hypervisor\.json does not match its manifest"):
        publish.read_outputs(out, "vm")


def test_generations_are_read_only_and_pruned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for text in (V1, V2, V1, V2):
        publish.publish(out, "vm", as_files(rendered(tmp_path, text)))
    gens = sorted((out / ".pvdesc" / "vm").glob("g-*"))
    assert len(gens) == 2  # the current one and the previous one
    for f in gens[0].iterdir():
        assert f.stat().st_mode & 0o222 == 0
    manifest = json.loads((out / "vm.manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} | {"vm.manifest.json"} == set(observe(out))


def test_single_file_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "map.svg"
    publish.write_file_atomic(path, b"one")
    publish.write_file_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["map.svg"]


# --------------------------------------------------------------------------- hostile store


def snapshot(root: Path) -> dict[str, str | bytes]:
    """Every entry under ``root`` (links not followed): link targets and file contents."""
    out: dict[str, str | bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


DECOY = "g-0123456789abcdef"
LINK_REFUSAL = (
    "is a symbolic link pvdesc did not make; pvdesc never follows it, writes or deletes "
    "through it: move it away"
)


@pytest.mark.parametrize("link", [".pvdesc/vm", "lock", "current", DECOY, "previous"])
def test_links_in_the_store_are_refused_never_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    """A store folder, ``lock``, pointer or generation that is a link pvdesc did not make."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (elsewhere / DECOY).mkdir(parents=True)  # a decoy generation outside DIR
    (elsewhere / DECOY / "keep.txt").write_text("not pvdesc's\n")
    (elsewhere / "current").symlink_to(DECOY)
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(V1)
    v2.write_text(V2)
    store = out / ".pvdesc" / "vm"
    if link == ".pvdesc/vm":
        store.parent.mkdir(parents=True)
        store.symlink_to(elsewhere)
        where = store
    else:
        assert cli_in_process(["build", "-q", str(v1), "-o", str(out)], capsys)[0] == 0
        where = store / link
        if link == "lock":
            where.unlink()
            where.symlink_to(elsewhere / "created-through-lock")
        elif link == "current":
            os.replace(store / "current", tmp_path / "saved")
            where.symlink_to(f"../../../elsewhere/{DECOY}")
        elif link == DECOY:  # a g-* link to a folder outside: never deleted through
            where.symlink_to(elsewhere / DECOY)
        else:  # previous -> a g-* name that is itself a link
            (store / DECOY).symlink_to(elsewhere / DECOY)
            where.symlink_to(DECOY)
            where = store / DECOY
    before, outputs = snapshot(elsewhere), observe(out)
    code, stdout, err = cli_in_process(["build", str(v2), "-o", str(out)], capsys)
    if link == "current":
        assert err == (
            f"pvdesc: error: {where}: points to '../../../elsewhere/{DECOY}', not to a "
            "generation pvdesc made; move it away\n"
        )
    else:
        assert err == f"pvdesc: error: {where}: {LINK_REFUSAL}\n"
    assert (code, stdout) == (2, "")
    assert snapshot(elsewhere) == before  # nothing written, created or deleted there
    assert observe(out) == outputs


def test_hand_edit_through_a_link_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root can write a read-only generation file through ``DIR/NAME.dtb``: that edit is kept."""
    out = tmp_path / "out"
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(V1)
    v2.write_text(V2)
    assert cli_in_process(["build", "-q", str(v1), "-o", str(out)], capsys)[0] == 0
    if os.geteuid() != 0:  # only root ignores the mode; anyone else has to chmod first
        (out / "vm.dtb").resolve().chmod(0o644)
    with (out / "vm.dtb").open("r+b") as fh:  # in place, through the link
        fh.write(b"\xd0\x0d\xfe\xed edited by hand")
    edited = (out / "vm.dtb").read_bytes()
    code, stdout, err = cli_in_process(["build", str(v2), "-o", str(out)], capsys)
    assert (code, stdout) == (2, "")
    assert err == (
        f"pvdesc: error: {out / 'vm.dtb'}: was edited after pvdesc wrote it (its sha256 is not "
        "the one its manifest lists); keep your copy elsewhere, or pass --force to replace it\n"
    )
    assert (out / "vm.dtb").read_bytes() == edited
    assert cli_in_process(["build", "-q", str(v2), "-o", str(out), "--force"], capsys)[:2] == (
        0,
        "",
    )
    assert observe(out) == publish.read_outputs(out, "vm")


# --------------------------------------------------------------------------- full disk


def generations(outdir: Path) -> set[str]:
    return {p.name for p in (outdir / ".pvdesc" / "vm").glob("g-*")}


#: The calls that can fail with ENOSPC (an ``open`` only when it creates).
CREATING = ("open", "write", "fsync", "mkdir", "symlink", "link", "replace")


def enospc_at_every_write(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Publish with ENOSPC injected at the Nth creating call, for every N; returns the count.

    Each time the visible outputs stay the old ones, both kept generations stay,
    nothing is left over, and the error names the path being created under DIR.
    """
    v1, v2 = as_files(rendered(tmp, V1)), as_files(rendered(tmp, V2, drop_dts=True))
    template = tmp / "template"
    publish.publish(template, "vm", v1)
    publish.publish(template, "vm", v2)  # two generations: current and previous
    kept = generations(template)
    assert len(kept) == 2
    real = {name: getattr(os, name) for name in CREATING}
    for fail_at in range(1, 1000):
        work = tmp / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work, symlinks=True)
        count = [0]

        def hook(
            name: str, count: list[int] = count, fail_at: int = fail_at
        ) -> Callable[..., object]:
            def wrapper(*args: object, **kwargs: object) -> object:
                creating = name != "open" or int(args[1]) & os.O_CREAT  # type: ignore[call-overload]
                if creating:
                    count[0] += 1
                    if count[0] == fail_at:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real[name](*args, **kwargs)

            return wrapper

        for name in CREATING:
            monkeypatch.setattr(os, name, hook(name))
        try:
            publish.publish(work, "vm", v1)
        except OutputError as err:
            failed: OutputError | None = err
        else:
            failed = None
        finally:
            for name in CREATING:
                monkeypatch.setattr(os, name, real[name])
        if failed is None:  # the failure was absorbed (makedirs of an existing DIR) or past the end
            assert observe(work) == v1 and leftovers(work) == []
            if count[0] < fail_at:
                return fail_at - 1
            continue
        where = str(failed.where)
        assert failed.message == "cannot write outputs: No space left on device", fail_at
        assert where.startswith(str(work)) and "/current/" not in where, (fail_at, where)
        seen = observe(work)
        assert seen in (v1, v2) and publish.read_outputs(work, "vm") == seen, fail_at
        if seen == v2:  # not published: all as before
            assert generations(work) == kept, f"ENOSPC at call {fail_at}: generations changed"
            assert leftovers(work) == [], fail_at
        else:  # failed after the switch (an fsync, the tidying): the previous one is kept
            assert os.readlink(template / ".pvdesc" / "vm" / "current") in generations(work)
    pytest.fail("the publish never finished")


def test_enospc_at_every_write_keeps_outputs_and_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert enospc_at_every_write(tmp_path, monkeypatch) >= 20


@contextlib.contextmanager
def small_tmpfs(where: Path, options: str) -> Iterator[bool]:
    """A tmpfs mounted at ``where`` (True), or False where this machine cannot mount one."""
    where.mkdir()
    mount = shutil.which("mount")
    res = None
    if mount is not None and os.geteuid() == 0:
        res = subprocess.run(
            [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            check=False,
        )
    if res is None or res.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run([shutil.which("umount") or "umount", str(where)], check=True)


def fill(directory: Path) -> None:
    """Write into ``directory`` until the filesystem has no byte left."""
    with (directory / "filler").open("wb", buffering=0) as fh:
        for chunk in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)


def test_full_tmpfs_keeps_outputs_and_generations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB tmpfs filled to the brim (as root; elsewhere ENOSPC is simulated at every write)."""
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "size=1m,nr_inodes=4096") as mounted:
        if not mounted:
            assert enospc_at_every_write(tmp_path, monkeypatch) >= 20
            return
        out = mnt / "out"
        v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
        v1.write_text(V1)
        v2.write_text(V2)
        for desc in (v1, v2):
            assert cli_in_process(["build", "-q", str(desc), "-o", str(out)], capsys)[:2] == (0, "")
        old, kept = observe(out), generations(out)
        fill(mnt)
        code, stdout, err = cli_in_process(["build", "-q", str(v1), "-o", str(out)], capsys)
        assert (code, stdout) == (2, "")
        assert re.fullmatch(
            rf"pvdesc: error: {re.escape(str(out))}/\.pvdesc/vm/g-[0-9a-f]{{16}}(/vm\.[a-z.]+)?: "
            r"cannot write outputs: No space left on device\n",
            err,
        ), err
        assert observe(out) == old and publish.read_outputs(out, "vm") == old
        assert generations(out) == kept  # the failed one removed, the previous one kept
        assert leftovers(out) == []
        (mnt / "filler").unlink()
        assert cli_in_process(["build", "-q", str(v1), "-o", str(out)], capsys)[:2] == (0, "")
        assert len(generations(out)) == 2


def test_full_inode_table_names_the_path_being_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first build with 0, 1, 2, ... inodes left: each failure names what it was creating."""
    mnt = tmp_path / "mnt"
    files = as_files(rendered(tmp_path, V1))
    with small_tmpfs(mnt, "size=4m,nr_inodes=256") as mounted:
        if not mounted:
            assert enospc_at_every_write(tmp_path, monkeypatch) >= 20
            return
        named: set[str] = set()
        for free in range(40):
            out = mnt / "out"
            shutil.rmtree(out, ignore_errors=True)
            fillers = mnt / "fillers"
            shutil.rmtree(fillers, ignore_errors=True)
            out.mkdir()
            fillers.mkdir()
            n = 0
            while os.statvfs(mnt).f_ffree > free:
                (fillers / str(n)).touch()
                n += 1
            try:
                publish.publish(out, "vm", files)
            except OutputError as err:
                where = str(err.where)
                assert err.message == "cannot write outputs: No space left on device"
                assert where.startswith(str(out)) and "/current/" not in where, where
                assert not Path(where).exists() or Path(where) == out / ".pvdesc" / "vm", where
                named.add(Path(where).name)
                assert observe(out) == {} and generations(out) == set()
                assert leftovers(out) == [] if (out / ".pvdesc" / "vm").is_dir() else True
            else:
                assert observe(out) == files
                break
        else:
            pytest.fail("40 free inodes were not enough for a first build")
        assert free >= 10
        assert "vm.dtb" in named  # the link being made, never its target .pvdesc/vm/current/...
