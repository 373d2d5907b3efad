"""The external validators ``pvdesc validate`` runs on a build's outputs.

Each validator is a real consumer of the output, run as an argument list (no
shell) with a timeout, in the build's temporary directory with *relative* file
names, so that what it prints never names a temporary path and a report is the
same from one run to the next:

- ``dtc`` decompiles the DTB with the structural checks made errors (``-E``);
  any stderr at all is a failure.  The DTS is then compiled again and must give
  the same bytes as the DTB.
- ``dt-validate`` (dtschema) checks the DTB against the core schemas plus
  ``pvdesc/tools/dtschema/`` (a ``/reserved-memory`` parent schema), compiled once per
  run by :func:`compile_schema`.  dt-validate exits 0 even when the tree fails
  a schema, so its ``--json-output`` is read instead of its exit status.
- ``iasl`` disassembles every ACPI table (``iasl -d``) and compiles the
  disassembly again; the bytes must be identical (:mod:`pvdesc.tools.acpica`).
- ``acpiexec`` loads the SSDT, evaluates ``\\_SB.PVTM._STA`` (must be 0xF) and
  decodes ``_CRS``, which must claim exactly the region (:mod:`pvdesc.tools.acpica`).

A validator that rejects an output returns :class:`Problem` values; only an
unusable setup (a schema that will not compile) raises.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from pvdesc.core.ranges import Range
from pvdesc.errors import PvdescError, ToolError
from pvdesc.tools import acpica, crs, proc

#: Seconds one dtc/dt-validate/dt-mk-schema run may take (they take well under one).
TIMEOUT = 120.0
#: dtc checks made errors with ``-E``: the ones that concern ``reg``, ``ranges`` and unit
#: addresses, where a wrong stolen-time description would show.
DTC_CHECKS = (
    "reg_format",
    "ranges_format",
    "unique_unit_address",
    "unit_address_vs_reg",
    "unit_address_format",
    "avoid_default_addr_size",
    "simple_bus_reg",
)
#: Where :func:`dtc` has dtc compile the DTS again (an existing file there is overwritten).
RECOMPILED = ".{}.recompiled"
#: Beside a schema while its :class:`SchemaCompilation` runs.
PENDING = ".{}.pending"
#: The package folder of extra dtschema schemas compiled with the core ones.
SCHEMA_PACKAGE_DIR = "dtschema"
#: The PV-time device's path in the SSDT (templates/ssdt.asl.j2).
PVTM = "\\_SB.PVTM"
#: _STA of a present, enabled, shown and functioning device.
STA_PRESENT = 0xF


class Validator(enum.StrEnum):
    """An external validator, by the name reports use."""

    DTC = "dtc"
    DT_VALIDATE = "dt-validate"
    IASL = "iasl"
    ACPIEXEC = "acpiexec"


#: The programs each validator needs, and where they come from.
PROGRAMS: dict[Validator, tuple[str, ...]] = {
    Validator.DTC: ("dtc",),
    Validator.DT_VALIDATE: ("dt-validate", "dt-mk-schema"),
    Validator.IASL: ("iasl",),
    Validator.ACPIEXEC: ("acpiexec",),
}
INSTALL: dict[Validator, str] = {
    Validator.DTC: "apt-get install device-tree-compiler",
    Validator.DT_VALIDATE: "pip install dtschema",
    Validator.IASL: "apt-get install acpica-tools",
    Validator.ACPIEXEC: "apt-get install acpica-tools",
}


class Problem(NamedTuple):
    """One thing an external validator rejected.

    Attributes:
        validator: which validator.
        message: one line: the output file concerned and the tool's own words.
    """

    validator: Validator
    message: str


def missing_programs(validator: Validator) -> tuple[str, ...]:
    """The programs ``validator`` needs that cannot be found."""
    return tuple(p for p in PROGRAMS[validator] if proc.find_program(p) is None)


def first_line(text: str, limit: int = 400) -> str:
    """``text``'s first non-empty line (tabs and runs of blanks squeezed), ``(+N lines)``."""
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no message"
    first = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."
    return first + (f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else "")


def _run(argv: Sequence[str], cwd: Path) -> proc.Result:
    """Run a validator through :func:`pvdesc.tools.proc.run` (process group, timeout, no shell)."""
    return proc.run_checked(argv, timeout=TIMEOUT, cwd=cwd)


def _program(name: str) -> str:
    """Where validator program ``name`` is (:func:`pvdesc.tools.proc.program`)."""
    return proc.program(name, "run scripts/setup --test")


# --------------------------------------------------------------------------- dtc


def dtc(workdir: Path, dtb: str, dts: str | None) -> list[Problem]:
    """``dtc -I dtb -E <checks>`` on ``workdir/dtb`` (any stderr fails); the DTS must recompile.

    ``dts`` (when pvdesc wrote one) is compiled again with dtc; the result must
    equal the DTB byte for byte.
    """
    exe = _program("dtc")
    flags = [f for check in DTC_CHECKS for f in ("-E", check)]
    out: list[Problem] = []
    try:
        res = _run([exe, "-I", "dtb", "-O", "dts", "-o", os.devnull, *flags, dtb], workdir)
        if res.returncode != 0 or res.stderr.strip():
            out.append(
                Problem(
                    Validator.DTC,
                    f"{dtb}: dtc -E checks (exit {res.returncode}): {first_line(res.stderr)}",
                )
            )
        if dts is not None:
            again = RECOMPILED.format(dtb)
            res = _run([exe, "-I", "dts", "-O", "dtb", "-o", again, dts], workdir)
            if res.returncode != 0 or res.stderr.strip():
                out.append(
                    Problem(
                        Validator.DTC,
                        f"{dts}: dtc cannot compile it (exit {res.returncode}): "
                        f"{first_line(res.stderr)}",
                    )
                )
            elif (workdir / again).read_bytes() != (workdir / dtb).read_bytes():
                out.append(Problem(Validator.DTC, f"{dts}: compiles to other bytes than {dtb}"))
    except ToolError as err:
        out.append(Problem(Validator.DTC, f"{dtb}: {err}"))
    return out


# --------------------------------------------------------------------------- dt-validate


class SchemaCompilation:
    """``dt-mk-schema -j`` started: the core schemas plus the shipped ones, once per run.

    The shipped schemas are copied out of the package first, so this works from
    an installed wheel as well as from the source tree.  dt-mk-schema writes a
    hidden file that :meth:`finish` renames to :attr:`path`, so a process waiting
    for the schema (``pvdesc.commands.validate.chunk``, while a ``.pending`` file beside it
    says it is on its way) never reads half of it.  Leaving the ``with`` block
    stops a dt-mk-schema nobody waited for.

    Attributes:
        path: where the compiled schema is once :meth:`finish` returned.
    """

    def __init__(self, workdir: Path) -> None:
        exe = _program("dt-mk-schema")
        extra = workdir / "schemas"
        extra.mkdir(parents=True, exist_ok=True)
        for entry in resources.files(__package__).joinpath(SCHEMA_PACKAGE_DIR).iterdir():
            if entry.name.endswith(".yaml"):
                (extra / entry.name).write_bytes(entry.read_bytes())
        self.path = workdir / "processed-schema.json"
        self._part = workdir / f".{self.path.name}.part"
        self._pending = workdir / PENDING.format(self.path.name)
        self._pending.touch()
        argv = [exe, "-j", "-o", self._part.name, str(extra)]
        self._job = proc.start(argv, timeout=TIMEOUT, cwd=workdir)

    def finish(self) -> Path:
        """Wait for dt-mk-schema; :attr:`path`, or a :class:`ToolError`."""
        try:
            res = self._job.wait()
            if res.timed_out:
                raise proc.timeout_error(res, TIMEOUT)
            if res.returncode != 0 or not self._part.is_file():
                raise ToolError(
                    f"cannot compile the devicetree schemas (exit {res.returncode}): "
                    f"{first_line(res.stderr + res.stdout)}",
                    "dt-mk-schema",
                )
            self._part.rename(self.path)
            return self.path
        finally:  # only once the schema is in place: a waiting worker would go on without it
            self._pending.unlink(missing_ok=True)

    def __enter__(self) -> SchemaCompilation:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._job.close()
        self._pending.unlink(missing_ok=True)


def compile_schema(workdir: Path) -> Path:
    """:class:`SchemaCompilation`, waited for."""
    with SchemaCompilation(workdir) as job:
        return job.finish()


def _dt_validate_run(workdir: Path, dtbs: Sequence[str], schema: Path) -> tuple[Any, str | None]:
    """One dt-validate process over ``dtbs``: its ``--json-output`` list, or why there is none."""
    report = f".{Path(dtbs[0]).name}.dt-validate.json" if len(dtbs) == 1 else ".dt-validate.json"
    try:
        exe = _program("dt-validate")
        res = _run([exe, "-s", str(schema), "--json-output", report, *dtbs], workdir)
    except ToolError as err:
        return None, str(err)
    path = workdir / report
    if res.returncode != 0 or not path.is_file():
        return None, (
            f"dt-validate failed to run (exit {res.returncode}): "
            f"{first_line(res.stderr + res.stdout)}"
        )
    try:
        found = json.loads(path.read_text(encoding="utf-8") or "[]")
    except ValueError as exc:
        return None, f"unreadable --json-output: {exc}"
    if not isinstance(found, list):
        return None, "--json-output is not a list"
    return found, None


def _dt_validate_message(dtb: str, item: Any) -> str:
    """One dt-validate diagnostic as a :class:`Problem` message about ``dtb``."""
    if isinstance(item, dict):
        node = item.get("node") or "/"
        text = item.get("message") or item.get("formatted") or "schema violation"
        schema_id = item.get("schema")
        origin = f" (schema {schema_id})" if schema_id else ""
        return f"{dtb}: {node}: {first_line(str(text))}{origin}"
    return f"{dtb}: {first_line(str(item))}"


def dt_validate(workdir: Path, dtb: str, schema: Path) -> list[Problem]:
    """dt-validate's diagnostics for ``workdir/dtb``, read from its JSON (it exits 0 on them)."""
    found, why = _dt_validate_run(workdir, [dtb], schema)
    if found is None:
        return [Problem(Validator.DT_VALIDATE, f"{dtb}: {why}")]
    return [Problem(Validator.DT_VALIDATE, _dt_validate_message(dtb, item)) for item in found]


def dt_validate_many(
    workdir: Path, dtbs: Sequence[tuple[str, str]], schema: Path
) -> list[list[Problem]] | None:
    """:func:`dt_validate` for many DTBs in one dt-validate process (one schema load).

    ``dtbs`` holds ``(path under workdir, name in messages)`` pairs, e.g.
    ``("00012/vm.dtb", "vm.dtb")``: dt-validate names each diagnostic's DTB in
    its ``file`` field (relative to its working directory, the path given), which
    maps it back.  The messages are exactly :func:`dt_validate`'s for each DTB
    alone, in its order.  ``None`` when the batch as a whole gave no usable
    answer (the process failed, or a diagnostic names no DTB of the batch): the
    caller then runs :func:`dt_validate` on each DTB, so one broken input costs
    time, never a different report.
    """
    if not dtbs:
        return []
    found, _why = _dt_validate_run(workdir, [path for path, _ in dtbs], schema)
    if found is None:
        return None
    index = {path: i for i, (path, _) in enumerate(dtbs)}
    out: list[list[Problem]] = [[] for _ in dtbs]
    for item in found:
        where = item.get("file") if isinstance(item, dict) else None
        i = index.get(where) if isinstance(where, str) else None
        if i is None:
            return None
        out[i].append(Problem(Validator.DT_VALIDATE, _dt_validate_message(dtbs[i][1], item)))
    return out


# --------------------------------------------------------------------------- ACPICA


def _first_difference(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def round_trip_faults(aml: bytes) -> list[str]:
    """``iasl -d`` then recompile: what is wrong with ``aml``, each without a file name.

    iasl runs in a fresh temporary directory under a fixed file name
    (:mod:`pvdesc.tools.acpica`), so the answer depends on the table's bytes alone:
    equal tables get equal answers, and :func:`iasl_round_trip` prefixes each with
    the table's own name.
    """
    try:
        again = acpica.recompile(acpica.disassemble(aml, "table"), "table")
    except PvdescError as err:
        return [f"round trip: {first_line(err.message)}"]
    if again != aml:
        at = _first_difference(aml, again)
        return [
            f"iasl -d and recompiling gives {len(again)} bytes, not the same "
            f"{len(aml)} (first difference at offset {at:#x})"
        ]
    return []


def iasl_round_trip(name: str, aml: bytes) -> list[Problem]:
    """``iasl -d`` then recompile: the bytes must equal ``aml`` (:func:`round_trip_faults`)."""
    return [Problem(Validator.IASL, f"{name}: {fault}") for fault in round_trip_faults(aml)]


_STA_RE = re.compile(r"\[Integer\] = (?P<value>[0-9A-Fa-f]+)\s*$", re.MULTILINE)


class Evaluation(NamedTuple):
    """What acpiexec answered for one SSDT (:func:`evaluate`).

    Attributes:
        output: its output (resource-trace lines dropped), "" when it failed.
        error: the first line of its failure, or ``None``.
    """

    output: str
    error: str | None


#: What acpiexec is asked about an SSDT.
EVALUATE = (f"evaluate {PVTM}._STA", f"resources {PVTM}")


def evaluate(ssdt: bytes, started: acpica.Execution | None = None) -> Evaluation:
    """Load the SSDT into acpiexec, evaluate ``_STA`` and decode ``_CRS`` (no file name in it).

    acpiexec runs in a fresh temporary directory under a fixed file name
    (:class:`pvdesc.tools.acpica.Execution`), so the answer depends on the table's
    bytes alone.  ``started``: that run of :data:`EVALUATE` on ``ssdt``, started
    by the caller (this waits for it and closes it).
    """
    try:
        with started or acpica.Execution([ssdt], EVALUATE) as job:
            return Evaluation(job.output(), None)
    except PvdescError as err:
        return Evaluation("", first_line(str(err)))


def evaluation_problems(name: str, answer: Evaluation, region: Range) -> list[Problem]:
    """The problems of SSDT ``name`` in acpiexec's ``answer``: ``_STA`` 0xF, ``_CRS`` ``region``."""
    if answer.error is not None:
        return [Problem(Validator.ACPIEXEC, f"{name}: {answer.error}")]
    output = answer.output
    out: list[Problem] = []
    sta_part = output.split(f"Evaluating {PVTM}._STA", 1)[-1]
    sta = _STA_RE.search(sta_part)
    if sta is None or int(sta["value"], 16) != STA_PRESENT:
        got = (sta["value"].lstrip("0") or "0") if sta else "nothing"
        out.append(
            Problem(Validator.ACPIEXEC, f"{name}: {PVTM}._STA returned {got}, not F (present)")
        )
    claims, odd = crs.crs_claims(output)
    out += [Problem(Validator.ACPIEXEC, f"{name}: {PVTM}._CRS: {o}") for o in odd]
    if claims != [region]:
        text = ", ".join(str(r) for r in claims) or "nothing"
        out.append(
            Problem(
                Validator.ACPIEXEC,
                f"{name}: {PVTM}._CRS claims {text}, not the region {region}",
            )
        )
    return out


def acpiexec(name: str, ssdt: bytes, region: Range) -> list[Problem]:
    """Load the SSDT into acpiexec: ``_STA`` must be 0xF and ``_CRS`` claim exactly ``region``."""
    return evaluation_problems(name, evaluate(ssdt), region)
