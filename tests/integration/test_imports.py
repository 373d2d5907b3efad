"""Import discipline: what each command's process imports, read from ``python -X importtime``.

A command that starts like a C tool imports only what it needs (bench/run times the
commands against ``python -c pass`` and dtc + iasl): every module listed here costs
milliseconds at every start.  ``pvdesc check`` on a DTB renders nothing and reads no
YAML; ``pvdesc build`` runs no check, audit, map, boot or external validator, and
reads the schema through the generated fast path (not jsonschema).  A test failing
here names the module and the import chain that brought it (``-X importtime`` lists
each module under the one that imported it): import it inside the function that
needs it instead.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT, run

from pvdesc.emit import build

#: Never imported by ``pvdesc check --dtb`` (no --acpi): the text renderer and its parser,
#: YAML and the description, the schema checkers, the DT writer, every other command's
#: modules, and what ``check`` was made to start without: json, shutil, dataclasses (with the
#: inspect, ast, dis and tokenize it brings), threading, struct, the emit layer, signal's
#: enums (:mod:`pvdesc.tools.signals` uses ``_signal``), libfdt's Python classes (the reader
#: calls its compiled functions, ``_libfdt``), argparse, gettext and locale (a plain command
#: line is read by :mod:`pvdesc.commands.plain`).  ``typing`` is allowed: the records are
#: ``typing.NamedTuple`` classes, and ``import typing`` (~2 ms, once) costs less than
#: ``import dataclasses`` (~7 ms) plus ~0.3-0.45 ms per frozen dataclass at import.
CHECK_FORBIDDEN = (
    "jinja2",
    "yaml",
    "jsonschema",
    "fastjsonschema",
    "fdt",
    "libfdt",
    "pvdesc.read.acpitables",
    "pvdesc.emit.build",
    "pvdesc.description.load",
    "pvdesc.audit.diff",
    "pvdesc.layout.allocate",
    "pvdesc.commands.map.draw",
    "pvdesc.commands.prove.tcg",
    "pvdesc.emit.templating",
    "pvdesc.commands.validate",
    "pvdesc.tools.validators",
    "json",
    "shutil",
    "dataclasses",
    "inspect",
    "threading",
    "signal",
    "struct",
    "pvdesc.emit",
    "argparse",
    "gettext",
    "locale",
)
#: Not imported by ``check`` either, though the editable install's import hook loads them into
#: every Python of the dev venv (seen only without it, ``imported(site=False)``): pathlib and
#: what it imports cost a regular install's check about 3 ms.
CHECK_HOOKLESS_FORBIDDEN = ("pathlib", "urllib", "ipaddress", "fnmatch")
#: With a hypervisor config (JSON), json and its reader (pvdesc.emit.hypervisor) come in;
#: with --acpi, the tables' decoder (and struct, which it decodes with) too, and argparse
#: reads the command line (--acpi takes several files).
CHECK_CONFIG_FORBIDDEN = tuple(m for m in CHECK_FORBIDDEN if m not in ("json", "pvdesc.emit"))
CHECK_ACPI_FORBIDDEN = tuple(
    m
    for m in CHECK_CONFIG_FORBIDDEN
    if m not in ("pvdesc.read.acpitables", "struct", "argparse", "gettext", "locale")
)
#: Never imported by ``pvdesc build`` (a uefi-acpi description: iasl runs): libfdt and the
#: DTB reader (only --into), the schema validators of the slow path, every other
#: command's modules, Jinja2, dataclasses with its inspect (the records are
#: ``typing.NamedTuple`` classes), and decimal (the generated schema check takes no Decimal).
#: (``pvdesc.audit.check`` is imported: ``layout.verify`` judges every layout with check's one
#: rule set, :func:`pvdesc.audit.check.judge`.)
BUILD_FORBIDDEN = (
    "jsonschema",
    "fastjsonschema",
    "decimal",
    "libfdt",
    "_libfdt",
    "pvdesc.read.acpitables",
    "pvdesc.audit.diff",
    "pvdesc.read.dtb",
    "pvdesc.commands.prove.guest",
    "pvdesc.commands.map.draw",
    "pvdesc.emit.patch",
    "pvdesc.commands.prove.tcg",
    "pvdesc.commands.validate",
    "pvdesc.tools.validators",
    # Templates render with their generated modules: no Jinja2 (nor what it brings: pickle,
    # tempfile ...), no template translator, and no escaping for the text outputs.
    "jinja2",
    "pvdesc.emit.templategen",
    "markupsafe",
    "pickle",
    "dataclasses",
    "inspect",
    # Temporary names come from os.urandom (pvdesc.emit.dirfd.random_hex): not secrets and hmac.
    "secrets",
    "hmac",
    # A plain build command line is read without argparse (pvdesc.commands.plain).
    "argparse",
    "gettext",
)
#: Never imported by a pvdesc module of the build's path, at any depth (lazy imports too):
#: ``-X importtime`` shows only the first importer of a module, so these are read from the
#: modules' source.
BUILD_MODULES_NEVER_IMPORT = ("dataclasses", "inspect")
#: Not imported by ``pvdesc build`` (describe acpi) before iasl starts: iasl is the longest
#: step, so the DT writer, the publisher and the VMM files are imported while it runs.
BUILD_BEFORE_IASL_FORBIDDEN = (
    "fdt",
    "pvdesc.emit.devicetree",
    "pvdesc.emit.hypervisor",
    "pvdesc.emit.vmmconfig",
    "pvdesc.emit.publish",
    "pvdesc.emit.store",
    "pvdesc.emit.dirfd",
    "shlex",
    "hashlib",
    "json",
)
#: Runs ``pvdesc ARGS`` and prints the modules imported when the first tool started.
_AT_FIRST_TOOL = """
import sys
from pvdesc.commands import cli
from pvdesc.tools import proc
real, seen = proc.start, []
def start(*args, **kwargs):
    seen.append(seen or sorted(sys.modules))
    return real(*args, **kwargs)
proc.start = start
code = cli.main(sys.argv[1:])
print("\\n".join(seen[0]) if seen else "")
sys.exit(code)
"""
_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)\s*$")


def imported(*args: str, site: bool = True) -> list[tuple[int, str]]:
    """``(depth, module)`` for every module a fresh ``pvdesc ARGS`` imports, in order.

    Without ``site`` the interpreter starts with ``-S``: no ``.pth`` file runs, so the
    editable install's import hook (which imports pathlib, re, contextlib ...) hides
    nothing that ``pvdesc`` itself imports; the source tree and this venv's
    site-packages are on ``PYTHONPATH``, as a regular install's paths are.
    """
    argv = [sys.executable, *([] if site else ["-S"]), "-X", "importtime", "-m", "pvdesc"]
    env = None
    if not site:
        paths = [str(ROOT), sysconfig.get_paths()["purelib"]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = run([*argv, *args], cwd=ROOT, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    out = []
    for line in proc.stderr.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((len(m.group(1)) // 2, m.group(2)))
    assert out, "no -X importtime output"
    return out


def offenders(modules: list[tuple[int, str]], forbidden: tuple[str, ...]) -> list[str]:
    """Each forbidden module imported, with the chain of modules that imported it."""
    found = []
    for i, (depth, name) in enumerate(modules):
        if not any(name == f or name.startswith(f + ".") for f in forbidden):
            continue
        # importtime prints a module after its imports: its importer is the next line
        # with a smaller depth.
        chain, want = [name], depth
        for d, parent in modules[i + 1 :]:
            if d < want:
                chain.append(parent)
                want = d
        found.append(" <- ".join(chain))
    return found


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A uefi-acpi VM's outputs (DTB, SSDT and SRAT AML), built in this process."""
    out = tmp_path_factory.mktemp("imports")
    result = build.build(EXAMPLES / "numa-4node-acpi.yaml", out)
    assert any(o.name.endswith(".srat.aml") for o in result.outputs)
    return out


def _name(outputs: Path, suffix: str) -> str:
    return str(next(outputs.glob(f"*{suffix}")))


def test_check_imports_nothing_it_does_not_need(outputs: Path) -> None:
    dtb = _name(outputs, ".dtb")
    modules = imported("check", "--dtb", dtb, "--region", "0x090a0000:64K", "--vcpus", "8")
    assert offenders(modules, CHECK_FORBIDDEN) == []
    # Without the editable install's hook, which imports pathlib at start-up for every Python.
    modules = imported(
        "check", "--dtb", dtb, "--region", "0x090a0000:64K", "--vcpus", "8", site=False
    )
    assert "pvdesc.audit.check" in {name for _, name in modules}
    assert offenders(modules, (*CHECK_FORBIDDEN, *CHECK_HOOKLESS_FORBIDDEN)) == []
    modules = imported(
        "check", "--dtb", dtb, "--hypervisor-config", _name(outputs, ".hypervisor.json")
    )
    assert offenders(modules, CHECK_CONFIG_FORBIDDEN) == []


def test_check_acpi_imports_the_table_decoder_only(outputs: Path) -> None:
    modules = imported(
        "check",
        "--dtb",
        _name(outputs, ".dtb"),
        "--hypervisor-config",
        _name(outputs, ".hypervisor.json"),
        "--boot",
        "uefi-acpi",
        "--acpi",
        _name(outputs, ".ssdt.aml"),
        _name(outputs, ".srat.aml"),
    )
    assert "pvdesc.read.acpitables" in {name for _, name in modules}
    assert offenders(modules, CHECK_ACPI_FORBIDDEN) == []


def test_build_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    modules = imported("build", str(EXAMPLES / "numa-4node-acpi.yaml"), "-o", str(tmp_path), "-q")
    names = {name for _, name in modules}
    assert {"pvdesc.emit.build", "pvdesc.tools.acpica", "yaml"} <= names
    assert "pvdesc.emit.templating" in names
    assert "pvdesc.emit.templates_compiled.ssdt_asl_j2" in names
    assert offenders(modules, BUILD_FORBIDDEN) == []
    pvdesc_modules = sorted(n for n in names if n == "pvdesc" or n.startswith("pvdesc."))
    assert "pvdesc.core.ranges" in pvdesc_modules
    assert {m: found for m in pvdesc_modules if (found := never_imported(source(m)))} == {}


def source(module: str) -> Path:
    """The source file of a ``pvdesc`` module (a package's ``__init__.py``)."""
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.exists() else ROOT.joinpath(*module.split("."), "__init__.py")


def never_imported(path: Path) -> list[str]:
    """Which of :data:`BUILD_MODULES_NEVER_IMPORT` the file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.partition(".")[0])
    return sorted(found & set(BUILD_MODULES_NEVER_IMPORT))


def test_never_imported_reads_lazy_imports(tmp_path: Path) -> None:
    """The source scan sees a module-level and a function-level import alike."""
    mod = tmp_path / "mod.py"
    mod.write_text("from dataclasses import dataclass\n\n\ndef f():\n    import inspect.x\n")
    assert never_imported(mod) == ["dataclasses", "inspect"]
    mod.write_text("import typing\nfrom pvdesc import inspect\n")
    assert never_imported(mod) == []


def test_build_starts_iasl_before_importing_what_can_wait(tmp_path: Path) -> None:
    desc = str(EXAMPLES / "numa-4node-acpi.yaml")
    proc = run([sys.executable, "-c", _AT_FIRST_TOOL, "build", desc, "-o", str(tmp_path), "-q"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = set(proc.stdout.split())
    assert {"pvdesc.emit.build", "pvdesc.emit.acpi", "pvdesc.tools.acpica"} <= before
    early = [
        m
        for m in sorted(before)
        for f in BUILD_BEFORE_IASL_FORBIDDEN
        if m == f or m.startswith(f + ".")
    ]
    assert early == []
    assert (tmp_path / "numa-4node-acpi.srat.aml").exists()  # and the build went on


def test_offenders_names_the_chain() -> None:
    modules = [
        (2, "shutil"),
        (1, "argparse"),
        (2, "json"),
        (1, "pvdesc.errors"),
        (0, "pvdesc.commands.cli"),
    ]
    assert offenders(modules, ("shutil", "json")) == [
        "shutil <- argparse <- pvdesc.commands.cli",
        "json <- pvdesc.errors <- pvdesc.commands.cli",
    ]
