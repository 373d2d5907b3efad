"""The ``pvdesc`` command.

Exit status: 0 success, 1 findings (for commands that judge), 2 unusable input,
141 (128 + SIGPIPE) when the reader of stdout went away, without a word on stderr;
128 + the signal after SIGINT, SIGTERM or SIGHUP (:mod:`pvdesc.tools.signals`), with one line.
Every :class:`~pvdesc.errors.PvdescError` becomes one line on stderr,
``pvdesc: error: <where>: <message>``, and exit status 2: never a traceback.
Subcommand modules are imported lazily so ``pvdesc --version`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from pvdesc import __version__
from pvdesc.errors import PvdescError, one_line
from pvdesc.tools import signals

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
#: 128 + SIGPIPE: the reader of stdout went away (``pvdesc map | head``), as a shell reports
#: a C tool that SIGPIPE ended.
EXIT_BROKEN_PIPE = 141
#: Stopped by a signal: 128 + its number, as a shell reports it (SIGINT 130, SIGTERM 143,
#: SIGHUP 129), after the tool's process group is killed and temporary files are removed.
EXIT_SIGNAL = 128


def _write(text: str) -> None:
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
    _write_bytes(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))


def _write_bytes(data: bytes) -> None:
    """Write ``data`` to stdout unchanged (``-o -``, ``--svg -``), every byte of it, or raise."""
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a plain text stream (io.StringIO in a caller's harness)
        stream.write(data.decode("utf-8", "surrogateescape"))
        return
    stream.flush()
    view = memoryview(data)
    while view:
        written = buffer.write(view)
        view = view[written or 0 :]
    buffer.flush()


def _note(text: str) -> None:
    """Write ``text`` to stderr: what would go to stdout when stdout carries a document."""
    sys.stderr.write(text)
    sys.stderr.flush()


def _one_stdio(direction: str, *options: tuple[str, str | None]) -> None:
    """Refuse ``-`` (standard input or output) for more than one of ``options``."""
    from pvdesc.tools.inputs import is_stdio

    named = [name for name, value in options if is_stdio(value)]
    if len(named) > 1:
        raise PvdescError(
            f"only one of {' and '.join(named)} can be - (standard {direction}); "
            "name a file for the others",
            named[1],
        )


def _columns() -> int:
    """What ``shutil.get_terminal_size().columns`` reads ($COLUMNS, the terminal, 80)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        size = os.get_terminal_size(stdout.fileno()) if stdout is not None else None
    except (AttributeError, ValueError, OSError):
        size = None
    return (size.columns if size is not None else 0) or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, its width found as argparse finds it but without importing shutil.

    argparse makes a formatter for every ``add_argument``; its own imports shutil (and with
    it bz2, lzma, fnmatch) to ask the terminal's width: 2 ms of every command's start.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit 2 (its convention and ours).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def cmd_build(args: argparse.Namespace) -> int:
    from pvdesc.emit import build
    from pvdesc.tools.inputs import is_stdio

    _one_stdio("input", ("DESCRIPTION", args.description), ("--into", args.into))
    if is_stdio(args.output):
        if args.only is None:
            raise PvdescError(
                "-o - writes one output to standard output: name it with --only "
                "(e.g. --only dtb), or give a folder",
                "-o",
            )
        result = build.plan(args.description, args.into, ".")
        _write_bytes(build.only(result, args.only).data)
        return EXIT_OK
    if args.only is not None:
        raise PvdescError(
            "--only goes with -o - (standard output); a build into a folder writes every output",
            "--only",
        )
    result = build.build(args.description, args.output, args.into, force=args.force)
    if not args.quiet:
        _write(build.summary(result, args.output))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from pvdesc import kvm
    from pvdesc.audit import check
    from pvdesc.core.model import Boot
    from pvdesc.emit import hypervisor
    from pvdesc.read import dtb
    from pvdesc.tools.inputs import display_name, read_bounded

    _one_stdio(
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
        text = read_bounded(
            args.hypervisor_config,
            hypervisor.MAX_CONFIG_BYTES,
            hypervisor.ConfigError,
            "hypervisor configs",
        )
        target = hypervisor.target_from_config(text, display_name(args.hypervisor_config))
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
    _write(render(findings))
    return EXIT_FINDINGS if check.unsafe(findings) else EXIT_OK


def cmd_map(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pvdesc.commands.map import command as mapview
    from pvdesc.commands.map import draw
    from pvdesc.tools.inputs import is_stdio

    _one_stdio("input", ("DESCRIPTION", args.description), ("--dtb", args.dtb))
    _one_stdio("output", ("--svg", args.svg), ("--html", args.html))
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
        _write(text)
    else:
        render = draw.render_svg if document == "svg" else draw.render_html
        _write_bytes(render(amap).encode())
        _note(text)
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
        _write_bytes(reports.to_junit(report))
        _note(reports.render(report, args.format))
        return EXIT_OK if report.ok else EXIT_FINDINGS
    _write(reports.render(report, args.format))
    sys.stdout.flush()
    if args.junit is not None:
        validate.write_report(args.junit, reports.to_junit(report))
    return EXIT_OK if report.ok else EXIT_FINDINGS


def cmd_prove(args: argparse.Namespace) -> int:
    if args.kvm:
        from pvdesc.commands.prove import kvm as kvmprove

        timeout = kvmprove.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        kreport = kvmprove.prove_file(args.description, args.kernel, timeout)
        _write(kvmprove.to_json(kreport) if args.format == "json" else kvmprove.to_text(kreport))
        return EXIT_OK if kreport.passed else EXIT_FINDINGS
    from pvdesc.commands.prove import report as prove_report
    from pvdesc.commands.prove import tcg as prove

    timeout = prove.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    report = prove.prove_file(args.description, args.kernel, timeout)
    _write(prove_report.to_json(report) if args.format == "json" else prove_report.to_text(report))
    return EXIT_OK if report.passed else EXIT_FINDINGS


def cmd_diff(args: argparse.Namespace) -> int:
    from pvdesc.audit import diff, sides
    from pvdesc.emit import hypervisor
    from pvdesc.tools.inputs import display_name, read_bounded

    _one_stdio("input", ("OLD", args.old), ("NEW", args.new))
    ends = []
    for path in (args.old, args.new):
        data = read_bounded(path, hypervisor.MAX_CONFIG_BYTES, sides.DiffInputError, "inputs")
        ends.append(sides.side_from_bytes(data, display_name(path)))
    old, new = ends
    findings = diff.compare(old, new)
    text = diff.to_json(findings) if args.format == "json" else diff.to_text(findings, old, new)
    _write(text)
    return EXIT_OK if diff.compatible(findings) else EXIT_FINDINGS


def cmd_profiles(args: argparse.Namespace) -> int:
    from pvdesc.layout import profiles_list

    _write(profiles_list.to_json() if args.format == "json" else profiles_list.to_text())
    return EXIT_OK


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pvdesc`` parser; with ``command``, only that command's (``main`` builds no more).

    Building every command's parser is most of argparse's cost (each ``add_argument``
    makes a help formatter): a command line that names its command pays for that one.
    """
    parser = _Parser(
        prog="pvdesc",
        description="Place the arm64 KVM stolen-time region and describe it safely to the guest.",
    )
    parser.add_argument("--version", action="version", version=f"pvdesc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, add in _COMMANDS.items():
        if command is None or command == name:
            add(sub)
    return parser


_Subcommands = argparse._SubParsersAction  # what add_subparsers returns


def _add_build(sub: _Subcommands[_Parser]) -> None:
    p = sub.add_parser(
        "build",
        help="allocate the region and write the DT, hypervisor config and manifest",
        description="Allocate the stolen-time region for a VM description and write the "
        "firmware description and the hypervisor config as a matched pair.",
    )
    p.add_argument("description", help="the VM description (YAML; - for standard input)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output directory (created if needed); - writes the one output --only names "
        "to standard output",
    )
    p.add_argument(
        "--only",
        metavar="SUFFIX",
        help="with -o -: the output to write, by its name after NAME. "
        "(dtb, dts, dtso, dtbo, hypervisor.json, h, rs, ssdt.aml, qemu.args, manifest.json, ...)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument(
        "--into",
        metavar="BASE_DTB",
        help="patch this VMM DTB (e.g. from qemu -machine virt,dumpdtb=FILE; - for standard "
        "input) instead of writing pvdesc's own tree: replace /memory, add /reserved-memory, "
        "refuse collisions",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files in the way that pvdesc did not write (its own are always replaced)",
    )
    p.set_defaults(func=cmd_build)


def _add_check(sub: _Subcommands[_Parser]) -> None:
    c = sub.add_parser(
        "check",
        help="audit an existing DTB (and ACPI tables) against a stolen-time region",
        description="Check whether any vCPU's PV_TIME_ST structure can collide with what the "
        "guest believes.  Exit 0 safe, 1 error findings, 2 unusable input.",
    )
    c.add_argument(
        "--dtb", required=True, help="the guest's devicetree blob (- for standard input)"
    )
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--hypervisor-config", help="a pvdesc.hypervisor/1 JSON file (- for standard input)"
    )
    target.add_argument("--region", help="BASE:SIZE of the region, e.g. 0x090a0000:64K")
    c.add_argument("--vcpus", type=int, help="possible vCPUs (with --region)")
    c.add_argument("--ipa-bits", type=int, help="guest IPA size (with --region; default 40)")
    c.add_argument("--boot", choices=["linux-dt", "uefi-dt", "uefi-acpi"], default="linux-dt")
    c.add_argument("--acpi", nargs="+", default=[], metavar="FILE", help="SRAT/SSDT .aml files")
    c.add_argument("--format", choices=["text", "json"], default="text")
    c.set_defaults(func=cmd_check)


def _add_map(sub: _Subcommands[_Parser]) -> None:
    m = sub.add_parser(
        "map",
        help="draw the guest physical address map (terminal, SVG, HTML)",
        description="Draw the guest physical address map: RAM, devices, gaps, the stolen-time "
        "region and what describes each range, with any findings. Exit 1 on findings.",
    )
    m.add_argument("description", nargs="?", help="the VM description (YAML; - for standard input)")
    m.add_argument("--dtb", help="map a guest DTB instead of a description (with --region)")
    m.add_argument("--region", help="BASE:SIZE of the region in the DTB, e.g. 0x090a0000:64K")
    m.add_argument(
        "--vcpus", type=int, help="possible vCPUs (with --dtb; default: fill the region)"
    )
    m.add_argument("--ipa-bits", type=int, help="guest IPA size (with --dtb; default 40)")
    m.add_argument("--boot", choices=["linux-dt", "uefi-dt", "uefi-acpi"], default="linux-dt")
    m.add_argument(
        "--svg", metavar="FILE", help="also write the map as SVG (-: to stdout, the map to stderr)"
    )
    m.add_argument(
        "--html",
        metavar="FILE",
        help="also write an HTML page: SVG, legend, tables (-: to stdout, the map to stderr)",
    )
    m.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour the terminal map (auto: on a terminal, unless NO_COLOR is set)",
    )
    m.set_defaults(func=cmd_map)


def _add_validate(sub: _Subcommands[_Parser]) -> None:
    v = sub.add_parser(
        "validate",
        help="build, check and externally validate every description under some paths (CI)",
        description="For every *.yaml/*.yml description under the paths: build it into a "
        "temporary directory, run the check rules on its outputs and the external validators "
        "(dtc, dt-validate, iasl round trip, acpiexec).  One line per description and a "
        "summary; exit 0 all ok, 1 any failed, 2 unusable arguments.",
    )
    v.add_argument("paths", nargs="+", metavar="PATH", help="description files or folders")
    v.add_argument("-j", "--jobs", type=int, help="worker processes (default: one per CPU)")
    v.add_argument("--format", choices=["text", "json", "github"], default="text")
    v.add_argument(
        "--junit",
        metavar="FILE",
        help="also write a JUnit XML report to FILE (-: to stdout, the report to stderr)",
    )
    v.add_argument(
        "--shard",
        metavar="K/N",
        help="validate only every N-th description of the sorted list, from the K-th "
        "(a CI matrix of N machines; their JUnit reports merge into one)",
    )
    v.add_argument(
        "--external",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the external validators; --external fails when a tool is missing, "
        "--no-external runs none (default: those whose tools exist, named in the summary)",
    )
    v.set_defaults(func=cmd_validate)


def _add_prove(sub: _Subcommands[_Parser]) -> None:
    pr = sub.add_parser(
        "prove",
        help="boot a real arm64 guest (QEMU TCG) with the outputs and read what it believes",
        description="Build the outputs in a temporary directory, boot Debian's arm64 kernel "
        "under qemu-system-aarch64 (TCG) with them the way the description boots, and report "
        "what the guest made of each 64 KiB granule of the region (/proc/iomem, kernel log). "
        "With --kvm, instead give the build's hypervisor config to real KVM: boot an emulated "
        "arm64 KVM host (QEMU TCG with EL2) and run pvdesc's own VMM in it, which asks KVM "
        "PV_TIME_ST on every possible vCPU (the verdict checks the addresses KVM reported), "
        "then boots Linux under that KVM with the outputs. "
        "Exit 0 pass, 1 fail, 2 unusable input or no result (missing QEMU, kernel or "
        "cross-compiler, timeout, a host without KVM). "
        "The guest parts come from scripts/fetch-guest.",
    )
    pr.add_argument("description", help="the VM description (YAML)")
    pr.add_argument(
        "--kernel",
        metavar="VMLINUZ",
        help="arm64 kernel image to boot (default: the one scripts/fetch-guest caches)",
    )
    pr.add_argument(
        "--kvm",
        action="store_true",
        help="ask real KVM: run pvdesc's VMM (vmm/pvdesc-vmm.c, cross-compiled with "
        "aarch64-linux-gnu-gcc) in an emulated arm64 KVM host, configured from the build's "
        "hypervisor config (and C header), and judge the PV_TIME_ST answers; then, for "
        "linux-dt layouts up to 4 GiB, boot Linux as a KVM guest with the outputs and judge "
        "its stolen time, /proc/iomem and RAM",
    )
    pr.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill QEMU's process group after this long (default 120; with --kvm 300)",
    )
    pr.add_argument("--format", choices=["text", "json"], default="text")
    pr.set_defaults(func=cmd_prove)


def _add_diff(sub: _Subcommands[_Parser]) -> None:
    d = sub.add_parser(
        "diff",
        help="can a running guest migrate between two stolen-time layouts?",
        description="Compare two VM descriptions or hypervisor configs (or one of each) for "
        "migration and save/restore: same PVTIME_IPA for every vCPU on both sides, same region "
        "and memslot, revision 0, no RAM newly over the region.  Each input is told apart by "
        'its content, not its name: a config is a JSON object whose "format" is '
        '"pvdesc.hypervisor/1"; a description is a YAML (or JSON) mapping.  Exit 0 compatible, '
        "1 not, 2 unusable input.",
    )
    d.add_argument(
        "old", help="the source: a description (YAML) or NAME.hypervisor.json (- for stdin)"
    )
    d.add_argument(
        "new", help="the destination: a description (YAML) or NAME.hypervisor.json (- for stdin)"
    )
    d.add_argument("--format", choices=["text", "json"], default="text")
    d.set_defaults(func=cmd_diff)


def _add_profiles(sub: _Subcommands[_Parser]) -> None:
    pf = sub.add_parser(
        "profiles",
        help="list every VMM profile: its memory map and the VMM version it was read from",
        description="List every VMM profile pvdesc knows: the version of the VMM's source its "
        "memory map was read from (a description picks an older one with vmm_version), the "
        "upstream file, and the map: stolen-time slot, RAM base and MMIO windows.",
    )
    pf.add_argument("--format", choices=["text", "json"], default="text")
    pf.set_defaults(func=cmd_profiles)


#: Every command and what adds its parser, in ``pvdesc --help``'s order.
_COMMANDS = {
    "build": _add_build,
    "check": _add_check,
    "map": _add_map,
    "validate": _add_validate,
    "prove": _add_prove,
    "diff": _add_diff,
    "profiles": _add_profiles,
}


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    # The first word names the command (pvdesc has no global option that takes a value);
    # anything else (--help, --version, a typo) gets every command's parser.
    parser = make_parser(words[0] if words and words[0] in _COMMANDS else None)
    args = parser.parse_args(words)
    try:
        with signals.stopping():
            code: int = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the flush at exit
    except BrokenPipeError:
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe: point stdout at
        # /dev/null so the interpreter's final flush cannot fail again ("Exception ignored").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except PvdescError as err:
        sys.stderr.write(one_line(f"pvdesc: error: {err}") + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("pvdesc: interrupted\n")
        return EXIT_SIGNAL + signal.SIGINT
    except signals.Stopped as stop:
        sys.stderr.write(f"pvdesc: stopped by {stop.name}\n")
        return EXIT_SIGNAL + stop.signum
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
