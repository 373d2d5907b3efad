"""The ``pvdesc`` command's entry point: parse, run the handler, map failures to exit codes.

Exit status: 0 success, 1 findings (for commands that judge), 2 unusable input,
141 (128 + SIGPIPE) when the reader of stdout went away, without a word on stderr;
128 + the signal after SIGINT, SIGTERM or SIGHUP (:mod:`pvdesc.tools.signals`), with one line.
Every :class:`~pvdesc.errors.PvdescError` becomes one line on stderr,
``pvdesc: error: <where>: <message>``, and exit status 2: never a traceback.
The parser is in :mod:`pvdesc.commands.parser` (``check``'s and ``build``'s plain
command lines are read without it, :mod:`pvdesc.commands.plain`), the handlers in
:mod:`pvdesc.commands.handlers`; subcommand modules are imported lazily so
``pvdesc --version`` starts fast.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from collections.abc import Sequence

from pvdesc.commands.handlers import (
    EXIT_BROKEN_PIPE,
    EXIT_SIGNAL,
    EXIT_USAGE,
    drop_stdout,
    flush_stdout,
)
from pvdesc.commands.plain import plain_args
from pvdesc.errors import PvdescError, one_line
from pvdesc.tools import signals

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace

#: Commands that run for milliseconds and allocate little, without Python's cyclic garbage
#: collector: it walked every object their imports had made, again and again, for about 4%
#: of a build's time, and finds nothing worth freeing before the process exits.  The
#: long-running commands (validate, prove, map) keep it.
BRIEF_COMMANDS = frozenset({"build", "check"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pvdesc`` with ``argv`` (default ``sys.argv[1:]``); return its exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    args: argparse.Namespace | SimpleNamespace | None = plain_args(words)
    if args is None:
        from pvdesc.commands.parser import _COMMANDS, make_parser

        # The first word names the command (pvdesc has no global option that takes a value);
        # anything else (--help, --version, a typo) gets every command's parser.
        parser = make_parser(words[0] if words and words[0] in _COMMANDS else None)
        args = parser.parse_args(words)
    pause = args.command in BRIEF_COMMANDS and gc.isenabled()
    if pause:
        gc.disable()
    try:
        return _run(args)
    finally:
        if pause:
            gc.enable()


def _run(args: argparse.Namespace | SimpleNamespace) -> int:
    """Run the parsed command; failures become exit statuses (module docstring)."""
    try:
        with signals.stopping():
            code: int = args.func(args)
            flush_stdout()  # a closed pipe or a full disk shows here, not in the flush at exit
    except BrokenPipeError:
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe: point stdout at
        # /dev/null so the interpreter's final flush cannot fail again ("Exception ignored").
        drop_stdout()
        return EXIT_BROKEN_PIPE
    except PvdescError as err:
        sys.stderr.write(one_line(f"pvdesc: error: {err}") + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("pvdesc: interrupted\n")
        return EXIT_SIGNAL + signals.SIGINT
    except signals.Stopped as stop:
        sys.stderr.write(f"pvdesc: stopped by {stop.name}\n")
        return EXIT_SIGNAL + stop.signum
    return code


def entry() -> None:
    """The ``pvdesc`` program (and ``python -m pvdesc``): :func:`main`, then the process exits.

    A brief command (:data:`BRIEF_COMMANDS`) then exits without the interpreter's teardown:
    clearing some 250 modules and a last garbage collection cost about 5% of a build, and
    free nothing that outlives the process.  What can be seen from outside still happens
    first: the exit handlers run (:mod:`atexit`) and both output streams are flushed.
    These commands start no thread, so there is none to wait for.
    """
    code = main()
    if sys.argv[1:2] and sys.argv[1] in BRIEF_COMMANDS:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that went away: as at a normal exit
                code = code or 120
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
