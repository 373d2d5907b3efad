"""One description in ``pvdesc validate``: built, checked, the outputs tools read written.

A description that cannot be built fails with exactly the line ``pvdesc build``
prints (``file:line:col: key.path: message``; :func:`build_failure`).  A failure
found in the outputs points at the description's ``stolen_time`` entry (its
first line when there is none), the part of the description the outputs pair with.
"""

from __future__ import annotations

import re
from pathlib import Path

from pvdesc.audit import check
from pvdesc.commands.validate.results import Externals, Failure, FileReport
from pvdesc.core.findings import Severity
from pvdesc.emit import build, hypervisor
from pvdesc.errors import (
    AcpiError,
    DescriptionError,
    DTError,
    LayoutError,
    OutputError,
    PvdescError,
    ToolError,
)
from pvdesc.read import acpitables, dtb
from pvdesc.tools import validators
from pvdesc.tools.validators import Validator

_RULES: tuple[tuple[type[PvdescError], str], ...] = (
    (DescriptionError, "description"),
    (LayoutError, "layout"),
    (AcpiError, "acpi"),
    (DTError, "devicetree"),
    (ToolError, "tool"),
    (OutputError, "output"),
)
_LOCATION_RE = re.compile(r"^(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$", re.DOTALL)


def _split(path: str, text: str, rule: str) -> Failure:
    """A failure from ``where: message`` text, keeping ``path:line:col`` when it leads."""
    if text.startswith(f"{path}:"):
        rest = text[len(path) + 1 :]
        m = _LOCATION_RE.match(rest)
        if m:
            return Failure(rule, path, int(m["line"]), int(m["col"]), m["rest"])
        if rest.startswith(" "):
            return Failure(rule, path, None, None, rest[1:])
    return Failure(rule, path, None, None, text)


def build_failure(path: str, err: PvdescError) -> Failure:
    """The failure for a description ``pvdesc build`` refuses: the same text it prints."""
    rule = next((name for cls, name in _RULES if isinstance(err, cls)), "build")
    return _split(path, str(err), rule)


def _anchor(result: build.BuildResult) -> tuple[int | None, int | None]:
    where = result.loaded.source.locate(("stolen_time",), key=True)
    _, line, col = where.rsplit(":", 2)
    return int(line), int(col)


def _check_findings(result: build.BuildResult) -> list[tuple[str, str]]:
    """``(rule, message)`` for every error or warning ``pvdesc check`` finds in the outputs."""
    files = {o.name: o.data for o in result.outputs}
    name = result.layout.description.name
    try:
        tree = dtb.parse(files[f"{name}.dtb"], f"{name}.dtb")
        target = hypervisor.target_from_config(
            files[f"{name}.hypervisor.json"], f"{name}.hypervisor.json"
        )
        tables = [
            acpitables.parse(data, fname) for fname, data in files.items() if fname.endswith(".aml")
        ]
    except PvdescError as err:
        return [("check", f"check cannot read the outputs: {err}")]
    findings = check.check(tree, target, result.layout.description.boot, tables)
    return [
        (
            f"check:{f.code}",
            f"check {f.code} ({f.severity}) at {f.source} [{f.range}]: {f.message}",
        )
        for f in findings
        if f.severity is not Severity.INFO
    ]


class Built:
    """A description built and checked, its outputs written into its own folder.

    Its failures and problems are filled in as the validators run (so a plain class).

    Attributes:
        path: the description's path as found.
        result: the build.
        folder: the folder under the chunk's work directory holding its outputs.
        anchor: ``(line, column)`` every output failure points at.
        failures: the check findings so far.
        problems: each enabled validator's problems, filled in validator by validator.
    """

    __slots__ = ("anchor", "failures", "folder", "path", "problems", "result")

    def __init__(
        self,
        path: str,
        result: build.BuildResult,
        folder: Path,
        anchor: tuple[int | None, int | None],
        failures: list[Failure],
        problems: dict[Validator, list[validators.Problem]],
    ) -> None:
        self.path = path
        self.result = result
        self.folder = folder
        self.anchor = anchor
        self.failures = failures
        self.problems = problems

    @property
    def name(self) -> str:
        return self.result.layout.description.name

    def amls(self) -> list[tuple[str, bytes]]:
        return [(o.name, o.data) for o in self.result.outputs if o.name.endswith(".aml")]

    def ssdt(self) -> bytes | None:
        return next((data for fname, data in self.amls() if fname.endswith(".ssdt.aml")), None)

    def applies(self, v: Validator, ext: Externals) -> bool:
        """Whether validator ``v`` has anything to check in these outputs."""
        if v is Validator.DT_VALIDATE:
            return ext.schema is not None
        if v is Validator.IASL:
            return bool(self.amls())
        if v is Validator.ACPIEXEC:
            return self.ssdt() is not None
        return True

    def report(self, ext: Externals) -> FileReport:
        line, col = self.anchor
        stages = ["build", "check"]
        failures = list(self.failures)
        for v in ext.enabled:
            if v not in self.problems:
                continue
            stages.append(str(v))
            failures += [
                Failure(str(p.validator), self.path, line, col, f"{p.validator}: {p.message}")
                for p in self.problems[v]
            ]
        return FileReport(self.path, self.name, tuple(stages), tuple(failures))


def prepare(
    path: str, workdir: Path, index: int, kinds: frozenset[str], taken: set[str]
) -> Built | FileReport:
    """Build and check one description and write its outputs of ``kinds`` under ``workdir``.

    Only the outputs of ``kinds`` are written (the DTB, which dtc and dt-validate
    read from a file; the DTS is written as dtc runs, the ACPI validators take
    their tables' bytes), straight into ``workdir`` when no description before it
    there had the same VM name (the names in ``taken``, which this adds to), else
    into a folder ``NNNNN`` (the ``index``) of their own, so equal names never
    clash and the tools see the same file names.  Writing the outputs no tool
    reads, each into a folder of its own, cost a fleet of 1,000 about 3 s
    (4 s of system CPU) on the build machine.  A
    :class:`FileReport` when it is finished already (the build refused it, or its
    outputs could not be written).
    """
    try:
        result = build.plan(path)
    except PvdescError as err:
        return FileReport(path, None, ("build",), (build_failure(path, err),))
    line, col = _anchor(result)
    failures = [Failure(rule, path, line, col, msg) for rule, msg in _check_findings(result)]
    name = result.layout.description.name
    folder = workdir / f"{index:05d}" if name in taken else workdir
    # A scratch folder deleted with the chunk: plain writes, no fsync (build.write_outputs is
    # for the user's folder).
    try:
        written = [out for out in result.outputs if out.kind in kinds]
        if written and folder != workdir:
            folder.mkdir()
        for out in written:
            (folder / out.name).write_bytes(out.data)
    except OSError as exc:
        message = f"cannot write outputs to a temporary folder: {exc.strerror}"
        failures.append(Failure("output", path, None, None, message))
        return FileReport(path, name, ("build", "check"), tuple(failures))
    if folder == workdir:
        taken.add(name)
    return Built(path, result, folder, (line, col), failures, {})
