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
the process can be killed; one that arrives while a temporary folder is being made
is held back until the folder can be removed (:func:`scratch`).  ``pvdesc
validate``'s worker processes pass a stop on the same way (:func:`worker_between_jobs`).
"""

from __future__ import annotations

# The signal module's own core: the same signal(), getsignal() and numbers, without the
# enums (Signals, Handlers, Sigmasks) the signal module builds when imported, which cost
# every command's start half a millisecond; :class:`Stopped` names a signal with them.
import _signal
import contextlib
from collections.abc import Iterator

#: typing.TYPE_CHECKING without importing typing (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

SIGINT: int = _signal.SIGINT
#: Signals that stop pvdesc like SIGINT (which Python already turns into KeyboardInterrupt).
STOP_SIGNALS: tuple[int, int] = (_signal.SIGTERM, _signal.SIGHUP)


class Stopped(BaseException):
    """pvdesc received SIGTERM or SIGHUP; unwinds like :class:`KeyboardInterrupt`.

    A ``BaseException``, so no ``except Exception`` on the way swallows it.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(_name(signum))
        self.signum = signum

    @property
    def name(self) -> str:
        """``SIGTERM``, ``SIGHUP``."""
        return _name(self.signum)


def _name(signum: int) -> str:
    import signal  # only once stopped: its enums name the signal

    return signal.Signals(signum).name


class _State:
    """What the handler knows: installed, already unwinding, held back, a held signal."""

    active = False
    stopping = False
    holding = 0
    pending: int | None = None


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == SIGINT else Stopped(signum)


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
    _signal.signal(SIGINT, _signal.SIG_IGN)
    for signum in STOP_SIGNALS:
        _signal.signal(signum, _record)


@contextlib.contextmanager
def stopping() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise :class:`Stopped` and SIGINT KeyboardInterrupt.

    Only the main thread can install handlers; elsewhere (or when a caller already
    holds them) the block runs with the handlers as they are.  The previous
    handlers are restored on exit.  A signal the parent ignores (``nohup``, a
    background job of a non-interactive shell) stays ignored.  A signal
    :func:`worker_between_jobs` remembered is raised on entry.
    """
    signums = (SIGINT, *STOP_SIGNALS)
    old = {s: _signal.getsignal(s) for s in signums}
    ours = [s for s in signums if old[s] != _signal.SIG_IGN]
    if _State.active or not _install(ours):
        yield
        return
    _State.active, _State.stopping, _State.holding = True, False, 0
    try:
        raise_pending()
        yield
    finally:
        for s in ours:
            _signal.signal(s, old[s])
        _State.active, _State.stopping, _State.holding, _State.pending = False, False, 0, None


def _install(signums: list[int]) -> bool:
    """Point ``signums`` at the handler; ``False`` (nothing changed) outside the main thread.

    Python lets only the main thread of the main interpreter set a handler: elsewhere
    ``signal()`` raises ValueError, on the first signal, before anything is changed.
    """
    try:
        for s in signums:
            _signal.signal(s, _handler)
    except ValueError:
        return False
    return True


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


@contextlib.contextmanager
def scratch(prefix: str, parent: str | None = None) -> Iterator[str]:
    """A new temporary folder (in ``parent``, else ``TMPDIR``) for the block, removed after it.

    A stop that came between ``mkdtemp`` making the folder and
    :class:`tempfile.TemporaryDirectory` setting up its removal would leave the folder
    behind, so it is held back (:func:`deferred`) until the folder is ours to remove.
    """
    import tempfile  # not on check's path

    with deferred():
        folder = tempfile.TemporaryDirectory(prefix=prefix, dir=parent)
    with folder as path:
        raise_pending()
        yield path
