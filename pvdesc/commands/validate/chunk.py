"""A chunk of descriptions validated together: which external validators run, and running them.

Within a chunk the outputs a tool reads from a file (:data:`READS`) are written
under its own names, in a folder of its own when a description before it in the
chunk had the same VM name, and the external validators run in batches where the
tool takes several inputs: one dt-validate process (one schema load) checks every
DTB of the chunk, and its findings go back to their description by the file each
one names (:func:`pvdesc.tools.validators.dt_validate_many`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pvdesc.commands.validate.memo import Memo
from pvdesc.commands.validate.results import Externals, FileReport, ValidateUsageError
from pvdesc.commands.validate.single import Built, prepare
from pvdesc.emit import compiled
from pvdesc.errors import ToolError
from pvdesc.tools import signals, validators
from pvdesc.tools.validators import Validator

#: The outputs each validator reads from a file (the others take bytes): only these are written.
READS: dict[Validator, frozenset[str]] = {
    Validator.DTC: frozenset({"dtb"}),  # and the DTS, lent a file as dtc runs (_dtc)
    Validator.DT_VALIDATE: frozenset({"dtb"}),
    Validator.IASL: frozenset(),
    Validator.ACPIEXEC: frozenset(),
}


def resolve_externals(
    mode: bool | None, workdir: Path
) -> tuple[Externals, validators.SchemaCompilation | None]:
    """The validators to run: all (``True``), none (``False``) or those available (``None``).

    With ``True`` a missing program is a :class:`ValidateUsageError` naming every
    missing one.  When dt-validate runs, its schemas start compiling into
    ``workdir``: the compilation comes back with the validators, for the caller
    to wait for (:func:`schema_ready`) while the work starts.
    """
    if mode is False:
        return Externals("off", (), (), None), None
    missing = tuple((v, progs) for v in Validator if (progs := validators.missing_programs(v)))
    if mode is True and missing:
        text = "; ".join(
            f"{v} needs {', '.join(progs)} ({validators.INSTALL[v]})" for v, progs in missing
        )
        raise ValidateUsageError(
            f"cannot run every external validator: {text}; or use --no-external", "--external"
        )
    absent = {v for v, _ in missing}
    enabled = tuple(v for v in Validator if v not in absent)
    job = None
    if Validator.DT_VALIDATE in enabled:
        try:
            job = validators.SchemaCompilation(workdir)
        except ToolError as err:
            raise ValidateUsageError(str(err), "--external") from None
    schema = None if job is None else str(job.path)
    return Externals("on" if mode else "auto", enabled, missing, schema), job


def schema_ready(job: validators.SchemaCompilation | None) -> None:
    """Wait for the schemas :func:`resolve_externals` started; a :class:`ValidateUsageError`."""
    if job is not None:
        try:
            job.finish()
        except ToolError as err:
            raise ValidateUsageError(str(err), "--external") from None


def await_schema(path: Path, timeout: float = validators.TIMEOUT) -> None:
    """Wait, in 5 ms sleeps, while the main process compiles the schema ``path``.

    A :class:`~pvdesc.tools.validators.SchemaCompilation` marks its compilation as
    under way (:data:`~pvdesc.tools.validators.PENDING`); nothing is waited for
    when none does, and at most ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = path.with_name(validators.PENDING.format(path.name))
    while pending.exists() and not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def run_validators(built: Sequence[Built], ext: Externals, workdir: Path, memo: Memo) -> None:
    """Run every enabled validator over ``built`` (outputs under ``workdir``), in batches.

    dt-validate takes every DTB of the chunk in one process (one schema load);
    each problem is mapped back to its description, and a batch without a usable
    answer is run again one DTB at a time (:func:`validators.dt_validate_many`).
    dtc, the iasl round trip and acpiexec run per description: dtc takes one input,
    and iasl and acpiexec load every file given into one ACPI namespace, where two
    SSDTs that both define ``\\_SB.PVTM`` collide.  The iasl round trip and acpiexec
    run once per distinct table in the run (``memo``, :mod:`pvdesc.commands.validate.memo`);
    the acpiexec runs start first and run while the other validators do.
    """
    acpiexec = Validator.ACPIEXEC in ext.enabled
    ssdts = [(b, ssdt) for b in built if acpiexec and (ssdt := b.ssdt()) is not None]
    with memo.evaluating(ssdt for _, ssdt in ssdts):  # acpiexec runs meanwhile
        for v in ext.enabled:
            if v is not Validator.ACPIEXEC:
                _run_one(v, [b for b in built if b.applies(v, ext)], ext, workdir, memo)
    for b, ssdt in ssdts:
        b.problems[Validator.ACPIEXEC] = validators.evaluation_problems(
            f"{b.name}.ssdt.aml", memo.evaluate(ssdt), b.result.layout.region
        )


def _run_one(v: Validator, todo: list[Built], ext: Externals, workdir: Path, memo: Memo) -> None:
    """Run validator ``v`` (not acpiexec) over ``todo``."""
    if v is Validator.DT_VALIDATE and ext.schema is not None:
        schema = Path(ext.schema)
        await_schema(schema)  # the main process compiles it as the workers start
        pairs = [
            (str(b.folder.relative_to(workdir) / f"{b.name}.dtb"), f"{b.name}.dtb") for b in todo
        ]
        found = validators.dt_validate_many(workdir, pairs, schema) if len(todo) > 1 else None
        for i, b in enumerate(todo):
            b.problems[v] = (
                found[i]
                if found is not None
                else validators.dt_validate(b.folder, f"{b.name}.dtb", schema)
            )
        return
    for b in todo:
        if v is Validator.DTC:
            b.problems[v] = _dtc(b)
        elif v is Validator.IASL:
            b.problems[v] = [
                validators.Problem(v, f"{fname}: {fault}")
                for fname, data in b.amls()
                for fault in memo.round_trip(data)
            ]


def _dtc(b: Built) -> list[validators.Problem]:
    """dtc on the DTB and, when there is one, on the DTS (written for it, beside the DTB)."""
    dtb, dts = f"{b.name}.dtb", f"{b.name}.dts"
    data = next((o.data for o in b.result.outputs if o.name == dts), None)
    if data is None:
        return validators.dtc(b.folder, dtb, None)
    try:
        (b.folder / dts).write_bytes(data)
    except OSError as exc:
        why = f"cannot write it to a temporary folder: {exc.strerror}"
        return [validators.Problem(Validator.DTC, f"{dts}: {why}")]
    return validators.dtc(b.folder, dtb, dts)


def validate_chunk(
    paths: Sequence[str], ext: Externals, memo: Memo | None = None
) -> list[FileReport]:
    """Build, check and externally validate some descriptions together (in one worker).

    Descriptions with equal VM names write their outputs into folders of their
    own, so they never clash (:func:`prepare`); the external validators then run
    over all of them in batches.  The reports are those :func:`validate_file`
    gives for each path alone.  ``memo`` carries ACPICA's answers (the build's
    compilations, the ACPI validators') between the chunks of one run (a new one
    for this chunk alone when not given).
    """
    with signals.scratch("pvdesc-validate-") as tmp:
        workdir = Path(tmp)
        kinds = frozenset().union(*(READS[v] for v in ext.enabled))
        memo = Memo() if memo is None else memo
        taken: set[str] = set()
        with compiled.remembering(memo.compiled):
            prepared = [prepare(p, workdir, i, kinds, taken) for i, p in enumerate(paths)]
        built = [p for p in prepared if isinstance(p, Built)]
        run_validators(built, ext, workdir, memo)
        return [p.report(ext) if isinstance(p, Built) else p for p in prepared]


def validate_file(path: str, ext: Externals) -> FileReport:
    """Build, check and externally validate one description on its own (a chunk of one)."""
    [report] = validate_chunk([path], ext)
    return report
