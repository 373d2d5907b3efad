"""The ``pvdesc`` command.

Exit status: 0 success, 1 findings (for commands that judge), 2 unusable input,
141 (128 + SIGPIPE) when the reader of stdout went away, without a word on stderr.
Every :class:`~pvdesc.errors.PvdescError` becomes one line on stderr,
``pvdesc: error: <where>: <message>``, and exit status 2: never a traceback.
Subcommand modules are imported lazily so ``pvdesc --version`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pvdesc import __version__
from pvdesc.errors import PvdescError, one_line

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
#: 128 + SIGPIPE: the reader of stdout went away (``pvdesc map | head``), as a shell reports
#: a C tool that SIGPIPE ended.
EXIT_BROKEN_PIPE = 141


def _write(text: str) -> None:
    """Write ``text`` to stdout, every byte of it, or raise (BrokenPipeError: exit 141).

    With ``PYTHONUNBUFFERED`` (``python -u``) ``sys.stdout`` writes straight to the
    raw file, and its TextIOWrapper drops whatever a short write leaves over: the
    output to a pipe that ``head`` closed was cut short without an error, and pvdesc
    exited 0.  The encoded bytes are written here until none are left.
    """
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a plain text stream (io.StringIO in a caller's harness)
        stream.write(text)
        return
    stream.flush()
    view = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while view:
        written = buffer.write(view)
        view = view[written or 0 :]
    buffer.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit 2 (its convention and ours).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def cmd_build(args: argparse.Namespace) -> int:
    from pvdesc import build

    result = build.build(args.description, args.output, args.into, force=args.force)
    if not args.quiet:
        _write(build.summary(result, args.output))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from pvdesc import acpitables, check, dtb, kvm
    from pvdesc.inputs import read_bounded
    from pvdesc.model import Boot

    tree = dtb.load(args.dtb)
    if args.hypervisor_config is not None:
        if args.vcpus is not None or args.ipa_bits is not None:
            raise check.CheckInputError(
                "--vcpus/--ipa-bits go with --region; the hypervisor config has its own",
                "--hypervisor-config",
            )
        text = read_bounded(
            args.hypervisor_config,
            check.MAX_CONFIG_BYTES,
            check.CheckInputError,
            "hypervisor configs",
        )
        target = check.target_from_config(text, args.hypervisor_config)
    else:
        if args.vcpus is None:
            raise check.CheckInputError("--region needs --vcpus N", "--region")
        ipa_bits = kvm.IPA_BITS_DEFAULT if args.ipa_bits is None else args.ipa_bits
        target = check.target_from_region(args.region, args.vcpus, ipa_bits)
    tables = [acpitables.load(path) for path in args.acpi]
    findings = check.check(tree, target, Boot(args.boot), tables)
    render = check.to_json if args.format == "json" else check.to_text
    _write(render(findings))
    return EXIT_FINDINGS if check.unsafe(findings) else EXIT_OK


def cmd_map(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pvdesc import mapview

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
    color = mapview.use_color(mapview.ColorMode(args.color), sys.stdout.isatty(), os.environ)
    _write(
        mapview.run(
            amap,
            svg=Path(args.svg) if args.svg else None,
            html=Path(args.html) if args.html else None,
            color=color,
        )
    )
    return EXIT_FINDINGS if amap.findings else EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from pvdesc import reports, validate

    if args.junit is not None:
        validate.check_report_path(args.junit, "--junit")
    report = validate.run(args.paths, jobs=args.jobs, external=args.external)
    _write(reports.render(report, args.format))
    sys.stdout.flush()
    if args.junit is not None:
        validate.write_report(args.junit, reports.to_junit(report))
    return EXIT_OK if report.ok else EXIT_FINDINGS


def cmd_prove(args: argparse.Namespace) -> int:
    if args.kvm:
        from pvdesc import kvmprove

        timeout = kvmprove.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        kreport = kvmprove.prove_file(args.description, args.kernel, timeout)
        _write(kvmprove.to_json(kreport) if args.format == "json" else kvmprove.to_text(kreport))
        return EXIT_OK if kreport.passed else EXIT_FINDINGS
    from pvdesc import prove

    timeout = prove.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    report = prove.prove_file(args.description, args.kernel, timeout)
    _write(prove.to_json(report) if args.format == "json" else prove.to_text(report))
    return EXIT_OK if report.passed else EXIT_FINDINGS


def cmd_diff(args: argparse.Namespace) -> int:
    from pvdesc import check, diff
    from pvdesc.inputs import read_bounded

    sides = []
    for path in (args.old, args.new):
        data = read_bounded(path, check.MAX_CONFIG_BYTES, diff.DiffInputError, "inputs")
        sides.append(diff.side_from_bytes(data, path))
    old, new = sides
    findings = diff.compare(old, new)
    text = diff.to_json(findings) if args.format == "json" else diff.to_text(findings, old, new)
    _write(text)
    return EXIT_OK if diff.compatible(findings) else EXIT_FINDINGS


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pvdesc",
        description="Place the arm64 KVM stolen-time region and describe it safely to the guest.",
    )
    parser.add_argument("--version", action="version", version=f"pvdesc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "build",
        help="allocate the region and write the DT, hypervisor config and manifest",
        description="Allocate the stolen-time region for a VM description and write the "
        "firmware description and the hypervisor config as a matched pair.",
    )
    p.add_argument("description", help="the VM description (YAML)")
    p.add_argument("-o", "--output", required=True, help="output directory (created if needed)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument(
        "--into",
        metavar="BASE_DTB",
        help="patch this VMM DTB (e.g. from qemu -machine virt,dumpdtb=FILE) instead of "
        "writing pvdesc's own tree: replace /memory, add /reserved-memory, refuse collisions",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files in the way that pvdesc did not write (its own are always replaced)",
    )
    p.set_defaults(func=cmd_build)

    c = sub.add_parser(
        "check",
        help="audit an existing DTB (and ACPI tables) against a stolen-time region",
        description="Check whether any vCPU's PV_TIME_ST structure can collide with what the "
        "guest believes.  Exit 0 safe, 1 error findings, 2 unusable input.",
    )
    c.add_argument("--dtb", required=True, help="the guest's devicetree blob")
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--hypervisor-config", help="a pvdesc.hypervisor/1 JSON file")
    target.add_argument("--region", help="BASE:SIZE of the region, e.g. 0x090a0000:64K")
    c.add_argument("--vcpus", type=int, help="possible vCPUs (with --region)")
    c.add_argument("--ipa-bits", type=int, help="guest IPA size (with --region; default 40)")
    c.add_argument("--boot", choices=["linux-dt", "uefi-dt", "uefi-acpi"], default="linux-dt")
    c.add_argument("--acpi", nargs="+", default=[], metavar="FILE", help="SRAT/SSDT .aml files")
    c.add_argument("--format", choices=["text", "json"], default="text")
    c.set_defaults(func=cmd_check)

    m = sub.add_parser(
        "map",
        help="draw the guest physical address map (terminal, SVG, HTML)",
        description="Draw the guest physical address map: RAM, devices, gaps, the stolen-time "
        "region and what describes each range, with any findings. Exit 1 on findings.",
    )
    m.add_argument("description", nargs="?", help="the VM description (YAML)")
    m.add_argument("--dtb", help="map a guest DTB instead of a description (with --region)")
    m.add_argument("--region", help="BASE:SIZE of the region in the DTB, e.g. 0x090a0000:64K")
    m.add_argument(
        "--vcpus", type=int, help="possible vCPUs (with --dtb; default: fill the region)"
    )
    m.add_argument("--ipa-bits", type=int, help="guest IPA size (with --dtb; default 40)")
    m.add_argument("--boot", choices=["linux-dt", "uefi-dt", "uefi-acpi"], default="linux-dt")
    m.add_argument("--svg", metavar="FILE", help="also write the map as SVG")
    m.add_argument("--html", metavar="FILE", help="also write an HTML page (SVG, legend, tables)")
    m.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour the terminal map (auto: on a terminal, unless NO_COLOR is set)",
    )
    m.set_defaults(func=cmd_map)

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
    v.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    v.add_argument(
        "--external",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the external validators; --external fails when a tool is missing, "
        "--no-external runs none (default: those whose tools exist, named in the summary)",
    )
    v.set_defaults(func=cmd_validate)

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
    d.add_argument("old", help="the source: a description (YAML) or NAME.hypervisor.json")
    d.add_argument("new", help="the destination: a description (YAML) or NAME.hypervisor.json")
    d.add_argument("--format", choices=["text", "json"], default="text")
    d.set_defaults(func=cmd_diff)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
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
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
