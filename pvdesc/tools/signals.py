"""SIGTERM and SIGHUP stop pvdesc the way SIGINT does: by unwinding, so cleanup runs.

Python turns SIGINT into :class:`KeyboardInterrupt`, and every ``with`` block and
``finally`` on the way out runs: :mod:`pvdesc.tools.proc` kills the running tool's
process group, temporary folders are removed, an unpublished generation is
deleted.  SIGTERM (``kill PID``, a CI runner cancelling a job, systemd) and SIGHUP
(the terminal went away) would by default end the interpreter on the spot,
leaving the tool running under PID 1 and its temporary folder behind.
:func:`stopping` makes them raise :class:`Stopped` instead; ``pvdesc``'s ``main``
turns it into one line and exit status 128 + the signal, as a shell reports it.

Once one of these signals (or SIGINT) has started the unwinding, further ones are
ignored, so a second ``kill`` cannot cut the cleanup short.  A signal that
arrives while a tool is being started (between ``fork`` and the moment the
caller holds the process) is held back by :func:`deferred` and raised as soon as
the process can be killed.  ``pvdesc validate``'s worker processes pass a stop on
the same way (:func:`worker_between_jobs`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: Signals that stop pvdesc like SIGINT (which Python already turns into KeyboardInterrupt).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """pvdesc received SIGTERM or SIGHUP; unwinds like :class:`KeyboardInterrupt`.

    A ``BaseException``, so no ``except Exception`` on the way swallows it.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """``SIGTERM``, ``SIGHUP``."""
        return signal.Signals(self.signum).name


class _State:
    """What the handler knows: installed, already unwinding, held back, a held signal."""

    active = False
    stopping = False
    holding = 0
    pending: int | None = None


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _State.stopping:  # already unwinding: let the cleanup finish
        return
    if _State.holding:
        _State.pending = _State.pending or signum
        return
    _State.stopping = True
    raise _interruption(signum)


def _record(signum: int, _frame: FrameType | None) -> None:
    _State.pending = _State.pending or signum


def worker_between_jobs() -> None:
    """For a worker process: SIGINT ignored; SIGTERM/SIGHUP remembered, not acted on.

    Only the main process decides to stop (a terminal's SIGINT reaches every worker
    too), and passes it on as SIGTERM.  A worker killed between jobs could hold its
    pool's result-queue lock as it died, and its siblings then waited for it
    forever; so the signal is only remembered here, and the worker's next
    :func:`stopping` block raises it at once.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _record)


@contextlib.contextmanager
def stopping() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise :class:`Stopped` and SIGINT KeyboardInterrupt.

    Only the main thread can install handlers; elsewhere (or when a caller already
    holds them) the block runs with the handlers as they are.  The previous
    handlers are restored on exit.  A signal the parent ignores (``nohup``, a
    background job of a non-interactive shell) stays ignored.  A signal
    :func:`worker_between_jobs` remembered is raised on entry.
    """
    if _State.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGINT, *STOP_SIGNALS)
    old = {s: signal.getsignal(s) for s in signums}
    ours = [s for s in signums if old[s] != signal.SIG_IGN]
    _State.active, _State.stopping, _State.holding = True, False, 0
    try:
        for s in ours:
            signal.signal(s, _handler)
        raise_pending()
        yield
    finally:
        for s in ours:
            signal.signal(s, old[s])
        _State.active, _State.stopping, _State.holding, _State.pending = False, False, 0, None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stopping signal back during the block (while a tool is being started)."""
    _State.holding += 1
    try:
        yield
    finally:
        _State.holding -= 1


def raise_pending() -> None:
    """Raise the signal :func:`deferred` held back, if any (call it once cleanup is possible)."""
    signum = _State.pending
    if signum is not None and not _State.holding and not _State.stopping:
        _State.pending = None
        _State.stopping = True
        raise _interruption(signum)
