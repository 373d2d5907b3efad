"""The ``pvdesc`` argument parser: one ``_add_<command>`` per command, in the ``_COMMANDS`` table.

``make_parser(command)`` builds only the named command's parser (argparse's cost is mostly
one help formatter per ``add_argument``); the handlers live in :mod:`pvdesc.commands.handlers`.
"""

from __future__ import annotations

import argparse
import os
import sys

from pvdesc import __version__
from pvdesc.commands import handlers
from pvdesc.commands.handlers import EXIT_USAGE

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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

#: ``--boot``'s choices: the values of :class:`pvdesc.core.model.Boot` (not imported: the
#: parser is built before any command's modules).
BOOTS = ("linux-dt", "uefi-dt", "uefi-acpi")


def _add_boot(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boot", choices=list(BOOTS), default=BOOTS[0])


def _add_format(p: argparse.ArgumentParser, *more: str) -> None:
    p.add_argument("--format", choices=["text", "json", *more], default="text")


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
    p.set_defaults(func=handlers.cmd_build)


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
    _add_boot(c)
    c.add_argument("--acpi", nargs="+", default=[], metavar="FILE", help="SRAT/SSDT .aml files")
    _add_format(c)
    c.set_defaults(func=handlers.cmd_check)


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
    _add_boot(m)
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
    m.set_defaults(func=handlers.cmd_map)


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
    _add_format(v, "github")
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
    v.set_defaults(func=handlers.cmd_validate)


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
    _add_format(pr)
    pr.set_defaults(func=handlers.cmd_prove)


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
    _add_format(d)
    d.set_defaults(func=handlers.cmd_diff)


def _add_profiles(sub: _Subcommands[_Parser]) -> None:
    pf = sub.add_parser(
        "profiles",
        help="list every VMM profile: its memory map and the VMM version it was read from",
        description="List every VMM profile pvdesc knows: the version of the VMM's source its "
        "memory map was read from (a description picks an older one with vmm_version), the "
        "upstream file, and the map: stolen-time slot, RAM base and MMIO windows.",
    )
    _add_format(pf)
    pf.set_defaults(func=handlers.cmd_profiles)


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
