"""The ``pvdesc`` command.

Exit status: 0 success, 1 findings (for commands that judge), 2 unusable input.
Every :class:`~pvdesc.errors.PvdescError` becomes one line on stderr,
``pvdesc: error: <where>: <message>``, and exit status 2: never a traceback.
Subcommand modules are imported lazily so ``pvdesc --version`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pvdesc import __version__
from pvdesc.errors import PvdescError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit 2 (its convention and ours).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def cmd_build(args: argparse.Namespace) -> int:
    from pvdesc import build

    result = build.build(args.description, args.output, args.into)
    if not args.quiet:
        sys.stdout.write(build.summary(result, args.output))
    return EXIT_OK


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
    p.set_defaults(func=cmd_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except PvdescError as err:
        sys.stderr.write(f"pvdesc: error: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("pvdesc: interrupted\n")
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
