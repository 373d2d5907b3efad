"""``pvdesc validate`` reports: text, GitHub workflow commands, JSON and JUnit XML.

Pure functions from a :class:`~pvdesc.commands.validate.results.FleetReport` to text.  Nothing here
depends on timing or on how many processes ran, so a serial and a parallel run
of the same descriptions give byte-identical reports.

**text**: one line per description, then a summary::

    ok   examples/generic-hole.yaml
    FAIL tests/data/bad/carve-none.yaml:7:13: stolen_time.describe: describe none with ...
    validate: 2 descriptions, 1 ok, 1 failed; external validators: dtc, dt-validate, ...

A description with several failures shows the first and ``(+N more: rules)``;
the JSON and JUnit reports carry them all.

**github**: ``ok`` lines as in text; each failure as a workflow command
``::error file=F,line=L,col=C,title=pvdesc validate (RULE)::MESSAGE``, escaped
as GitHub's workflow-command rules require (``%``, CR and LF in the message;
also ``:`` and ``,`` in property values); then the summary line.

**json** (``pvdesc.validate/1``)::

    {"format": "pvdesc.validate/1",
     "external": {"mode": "auto"|"on"|"off", "ran": ["dtc", ...],
                  "missing": [{"validator": "dt-validate", "programs": ["dt-validate"]}]},
     "summary": {"descriptions": N, "ok": N, "failed": N},
     "files": [{"path": P, "vm": NAME|null, "status": "ok"|"failed",
                "stages": ["build", "check", "dtc", ...],
                "failures": [{"rule": R, "file": P, "line": L|null, "column": C|null,
                              "message": M, "text": "P:L:C: M"}]}]}

**--shard K/N** adds ``(shard K/N of M)`` to the summary's counts, ``"shard":
"K/N", "of": M`` to the JSON summary and a ``shard`` property to the JUnit
suite; the testcases of the N shards together are those of one whole run, so
their JUnit files merge into one (each shard's ``<testsuite>`` side by side).

**junit**: one ``<testsuite>`` in ``<testsuites>``, one ``<testcase>`` per
description (``name`` its path, ``classname`` ``pvdesc.commands.validate.fleet``); a failed
one holds one ``<failure>`` whose ``message`` is the first failure's text,
``type`` its rule, and whose body lists every failure, one per line.  No
``time`` attributes: they would make reports differ between runs.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from pvdesc.commands.validate.results import FileReport, FleetReport
from pvdesc.tools.validators import INSTALL

FORMAT = "pvdesc.validate/1"
JUNIT_CLASSNAME = "pvdesc.validate"
SUITE_NAME = "pvdesc validate"

#: Characters XML 1.0 cannot carry at all (C0 controls but tab, LF and CR; FFFE/FFFF).
_XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(report: FleetReport) -> str:
    """The closing line: counts, and which external validators ran or could not."""
    n = len(report.files)
    counts = f"{_plural(n, 'description')}, {n - report.failed} ok, {report.failed} failed"
    if report.shard is not None:
        counts += f" (shard {report.shard} of {report.found})"
    ext = report.externals
    if ext.mode == "off":
        tools = "external validators: none (--no-external)"
    else:
        ran = ", ".join(str(v) for v in ext.enabled) or "none"
        tools = f"external validators: {ran}"
        if ext.missing:
            gone = ", ".join(f"{v} (needs {' and '.join(p)}: {INSTALL[v]})" for v, p in ext.missing)
            tools += f"; not run, tools missing: {gone}"
    return f"validate: {counts}; {tools}"


def _flat(text: str) -> str:
    """``text`` on one line: CR and LF become spaces (messages should never hold them)."""
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def file_line(f: FileReport) -> str:
    """``ok   PATH`` or ``FAIL FILE:LINE:COL: MESSAGE`` (the first failure)."""
    if f.ok:
        return f"ok   {f.path}"
    first = f.failures[0]
    more = ""
    if len(f.failures) > 1:
        rules = sorted({x.rule for x in f.failures[1:]})
        more = f" (+{len(f.failures) - 1} more: {', '.join(rules)})"
    return f"FAIL {_flat(first.text)}{more}"


def to_text(report: FleetReport) -> str:
    """One line per description, then the summary."""
    return "".join(f"{file_line(f)}\n" for f in report.files) + summary(report) + "\n"


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF percent-encoded."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as data, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(report: FleetReport) -> str:
    """``ok`` lines and ``::error`` annotations (one per failure), then the summary."""
    out = []
    for f in report.files:
        if f.ok:
            out.append(file_line(f))
            continue
        for x in f.failures:
            props = [f"file={escape_property(x.file)}"]
            if x.line is not None:
                props.append(f"line={x.line}")
                if x.column is not None:
                    props.append(f"col={x.column}")
            props.append(f"title={escape_property(f'{SUITE_NAME} ({x.rule})')}")
            out.append(f"::error {','.join(props)}::{escape_data(x.message)}")
    out.append(summary(report))
    return "\n".join(out) + "\n"


def to_data(report: FleetReport) -> dict[str, Any]:
    """The ``pvdesc.validate/1`` document as plain data."""
    ext = report.externals
    return {
        "format": FORMAT,
        "external": {
            "mode": ext.mode,
            "ran": [str(v) for v in ext.enabled],
            "missing": [{"validator": str(v), "programs": list(p)} for v, p in ext.missing],
        },
        "summary": {
            "descriptions": len(report.files),
            "ok": len(report.files) - report.failed,
            "failed": report.failed,
            **(
                {"shard": str(report.shard), "of": report.found} if report.shard is not None else {}
            ),
        },
        "files": [
            {
                "path": f.path,
                "vm": f.vm,
                "status": "ok" if f.ok else "failed",
                "stages": list(f.stages),
                "failures": [
                    {
                        "rule": x.rule,
                        "file": x.file,
                        "line": x.line,
                        "column": x.column,
                        "message": x.message,
                        "text": x.text,
                    }
                    for x in f.failures
                ],
            }
            for f in report.files
        ],
    }


def to_json(report: FleetReport) -> str:
    """The JSON report, indented, with a final newline."""
    return json.dumps(to_data(report), indent=2) + "\n"


def _xml_text(text: str) -> str:
    return _XML_INVALID_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def to_junit(report: FleetReport) -> bytes:
    """JUnit XML (UTF-8, with declaration): one testcase per description."""
    n, failed = str(len(report.files)), str(report.failed)
    suites = ET.Element(
        "testsuites", {"name": SUITE_NAME, "tests": n, "failures": failed, "errors": "0"}
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        {"name": SUITE_NAME, "tests": n, "failures": failed, "errors": "0", "skipped": "0"},
    )
    props = ET.SubElement(suite, "properties")
    ext = report.externals
    ET.SubElement(props, "property", {"name": "external.mode", "value": ext.mode})
    ran = " ".join(str(v) for v in ext.enabled)
    ET.SubElement(props, "property", {"name": "external.ran", "value": ran})
    gone = " ".join(str(v) for v, _ in ext.missing)
    ET.SubElement(props, "property", {"name": "external.missing", "value": gone})
    if report.shard is not None:
        ET.SubElement(props, "property", {"name": "shard", "value": str(report.shard)})
    for f in report.files:
        case = ET.SubElement(
            suite, "testcase", {"name": _xml_text(f.path), "classname": JUNIT_CLASSNAME}
        )
        if not f.ok:
            first = f.failures[0]
            failure = ET.SubElement(
                case, "failure", {"message": _xml_text(first.text), "type": first.rule}
            )
            failure.text = _xml_text("".join(f"{x.rule}: {x.text}\n" for x in f.failures))
    ET.indent(suites)
    body: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def render(report: FleetReport, fmt: str) -> str:
    """The report in ``fmt`` (text, json or github)."""
    if fmt == "json":
        return to_json(report)
    if fmt == "github":
        return to_github(report)
    return to_text(report)
