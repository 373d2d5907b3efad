"""What each ``pvdesc`` command does with its parsed arguments (``cmd_<command>``).

Each handler imports its pipeline lazily, so a command pays only for the modules it uses;
what it prints goes through :func:`write` / :func:`write_bytes`, every byte or an error.
"""

from __future__ import annotations

import contextlib
import os
import sys

from pvdesc.errors import OutputError, PvdescError

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from types import SimpleNamespace

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
#: 128 + SIGPIPE: the reader of stdout went away (``pvdesc map | head``), as a shell reports
#: a C tool that SIGPIPE ended.
EXIT_BROKEN_PIPE = 141
#: Stopped by a signal: 128 + its number, as a shell reports it (SIGINT 130, SIGTERM 143,
#: SIGHUP 129), after the tool's process group is killed and temporary files are removed.
EXIT_SIGNAL = 128


def write(text: str) -> None:
    """Write ``text`` to stdout, every byte of it, or raise (BrokenPipeError: exit 141).

    With ``PYTHONUNBUFFERED`` (``python -u``) ``sys.stdout`` writes straight to the
    raw file, and its TextIOWrapper drops whatever a short write leaves over: the
    output to a pipe that ``head`` closed was cut short without an error, and pvdesc
    exited 0.  The encoded bytes are written here until none are left.
    """
    stream = sys.stdout
    if getattr(stream, "buffer", None) is None:  # a plain text stream (io.StringIO in a harness)
        stream.write(text)
        return
    write_bytes(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))


def write_bytes(data: bytes) -> None:
    """Write ``data`` to stdout unchanged (``-o -``, ``--svg -``), every byte of it, or raise."""
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a plain text stream (io.StringIO in a caller's harness)
        stream.write(data.decode("utf-8", "surrogateescape"))
        return
    with _stdout_errors():
        stream.flush()
        view = memoryview(data)
        while view:
            written = buffer.write(view)
            view = view[written or 0 :]
        buffer.flush()


def flush_stdout() -> None:
    """Flush stdout: a closed pipe raises BrokenPipeError, another failure :func:`stdout_error`."""
    with _stdout_errors():
        sys.stdout.flush()


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    """A closed pipe stays BrokenPipeError (exit 141); other failures :func:`stdout_error`."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_error(exc) from None


def stdout_error(exc: OSError) -> OutputError:
    """A write to stdout that failed (a full disk, a quota): one line and exit 2, not a traceback.

    Stdout is pointed at /dev/null first, so what it still buffers cannot fail again at exit.
    """
    drop_stdout()
    return OutputError(f"cannot write: {exc.strerror or exc}", "standard output")


def drop_stdout() -> None:
    """Point stdout at /dev/null: what it still buffers cannot fail again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def note(text: str) -> None:
    """Write ``text`` to stderr: what would go to stdout when stdout carries a document."""
    sys.stderr.write(text)
    sys.stderr.flush()


def one_stdio(direction: str, *options: tuple[str, str | None]) -> None:
    """Refuse ``-`` (standard input or output) for more than one of ``options``."""
    from pvdesc.tools.inputs import is_stdio

    named = [name for name, value in options if is_stdio(value)]
    if len(named) > 1:
        raise PvdescError(
            f"only one of {' and '.join(named)} can be - (standard {direction}); "
            "name a file for the others",
            named[1],
        )


def cmd_build(args: argparse.Namespace) -> int:
    from pvdesc.emit import build
    from pvdesc.tools.inputs import is_stdio

    one_stdio("input", ("DESCRIPTION", args.description), ("--into", args.into))
    if is_stdio(args.output):
        if args.only is None:
            raise PvdescError(
                "-o - writes one output to standard output: name it with --only "
                "(e.g. --only dtb), or give a folder",
                "-o",
            )
        result = build.plan(args.description, args.into, ".")
        write_bytes(build.only(result, args.only).data)
        return EXIT_OK
    if args.only is not None:
        raise PvdescError(
            "--only goes with -o - (standard output); a build into a folder writes every output",
            "--only",
        )
    result = build.build(args.description, args.output, args.into, force=args.force)
    if not args.quiet:
        write(build.summary(result, args.output))
    return EXIT_OK


def cmd_check(args: argparse.Namespace | SimpleNamespace) -> int:
    """``pvdesc check``: from argparse, or from :mod:`pvdesc.commands.plain` (the same names)."""
    from pvdesc import kvm
    from pvdesc.audit import check
    from pvdesc.core.model import Boot
    from pvdesc.read import dtb

    one_stdio(
        "input",
        ("--dtb", args.dtb),
        ("--hypervisor-config", args.hypervisor_config),
        *(("--acpi", path) for path in args.acpi),
    )
    tree = dtb.load(args.dtb)
    if args.hypervisor_config is not None:
        if args.vcpus is not None or args.ipa_bits is not None:
            raise check.CheckInputError(
                "--vcpus/--ipa-bits go with --region; the hypervisor config has its own",
                "--hypervisor-config",
            )
        from pvdesc.emit import hypervisor  # only with a config: --region reads no JSON

        target = hypervisor.read_target(args.hypervisor_config)
    else:
        if args.vcpus is None:
            raise check.CheckInputError("--region needs --vcpus N", "--region")
        ipa_bits = kvm.IPA_BITS_DEFAULT if args.ipa_bits is None else args.ipa_bits
        target = check.target_from_region(args.region, args.vcpus, ipa_bits)
    tables = []
    if args.acpi:
        from pvdesc.read import acpitables  # only with --acpi: a DTB-only check starts faster

        tables = [acpitables.load(path) for path in args.acpi]
    findings = check.check(tree, target, Boot(args.boot), tables)
    render = check.to_json if args.format == "json" else check.to_text
    write(render(findings))
    return EXIT_FINDINGS if check.unsafe(findings) else EXIT_OK


def cmd_map(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pvdesc.commands.map import command as mapview
    from pvdesc.commands.map import draw
    from pvdesc.tools.inputs import is_stdio

    one_stdio("input", ("DESCRIPTION", args.description), ("--dtb", args.dtb))
    one_stdio("output", ("--svg", args.svg), ("--html", args.html))
    if args.description is not None and args.dtb is not None:
        raise PvdescError("map takes a VM description or --dtb, not both")
    if args.dtb is not None:
        if args.region is None:
            raise PvdescError("--dtb needs --region BASE:SIZE", "--dtb")
        amap = mapview.from_dtb(args.dtb, args.region, args.vcpus, args.ipa_bits, args.boot)
    elif args.description is None:
        raise PvdescError("map needs a VM description (YAML) or --dtb FILE --region BASE:SIZE")
    else:
        amap = mapview.from_description(args.description)
    # ``--svg -``/``--html -``: standard output carries that document; the map goes to stderr.
    document = next((kind for kind in ("svg", "html") if is_stdio(getattr(args, kind))), None)
    terminal = sys.stderr if document is not None else sys.stdout
    color = mapview.use_color(mapview.ColorMode(args.color), terminal.isatty(), os.environ)
    text = mapview.run(
        amap,
        svg=Path(args.svg) if args.svg and document != "svg" else None,
        html=Path(args.html) if args.html and document != "html" else None,
        color=color,
    )
    if document is None:
        write(text)
    else:
        render = draw.render_svg if document == "svg" else draw.render_html
        write_bytes(render(amap).encode())
        note(text)
    return EXIT_FINDINGS if amap.findings else EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from pvdesc.commands.validate import fleet as validate
    from pvdesc.commands.validate import reports
    from pvdesc.tools.inputs import is_stdio

    junit_stdout = is_stdio(args.junit)
    if args.junit is not None and not junit_stdout:
        validate.check_report_path(args.junit, "--junit")
    shard = validate.Shard.parse(args.shard) if args.shard is not None else None
    report = validate.run(args.paths, jobs=args.jobs, external=args.external, shard=shard)
    if junit_stdout:  # standard output carries the XML; the report goes to stderr
        write_bytes(reports.to_junit(report))
        note(reports.render(report, args.format))
        return EXIT_OK if report.ok else EXIT_FINDINGS
    write(reports.render(report, args.format))
    sys.stdout.flush()
    if args.junit is not None:
        validate.write_report(args.junit, reports.to_junit(report))
    return EXIT_OK if report.ok else EXIT_FINDINGS


def cmd_prove(args: argparse.Namespace) -> int:
    if args.kvm:
        from pvdesc.commands.prove import kvm as kvmprove

        timeout = kvmprove.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        kreport = kvmprove.prove_file(args.description, args.kernel, timeout)
        write(kvmprove.to_json(kreport) if args.format == "json" else kvmprove.to_text(kreport))
        return EXIT_OK if kreport.passed else EXIT_FINDINGS
    from pvdesc.commands.prove import report as prove_report
    from pvdesc.commands.prove import tcg as prove

    timeout = prove.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    report = prove.prove_file(args.description, args.kernel, timeout)
    write(prove_report.to_json(report) if args.format == "json" else prove_report.to_text(report))
    return EXIT_OK if report.passed else EXIT_FINDINGS


def cmd_diff(args: argparse.Namespace) -> int:
    from pvdesc.audit import diff, sides
    from pvdesc.emit import hypervisor
    from pvdesc.tools.inputs import display_name, read_bounded

    one_stdio("input", ("OLD", args.old), ("NEW", args.new))
    ends = []
    for path in (args.old, args.new):
        data = read_bounded(path, hypervisor.MAX_CONFIG_BYTES, sides.DiffInputError, "inputs")
        ends.append(sides.side_from_bytes(data, display_name(path)))
    old, new = ends
    findings = diff.compare(old, new)
    text = diff.to_json(findings) if args.format == "json" else diff.to_text(findings, old, new)
    write(text)
    return EXIT_OK if diff.compatible(findings) else EXIT_FINDINGS


def cmd_profiles(args: argparse.Namespace) -> int:
    from pvdesc.description import profiles_list

    write(profiles_list.to_json() if args.format == "json" else profiles_list.to_text())
    return EXIT_OK
