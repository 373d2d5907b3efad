"""pvdesc.tools.signals: SIGTERM/SIGHUP unwind like SIGINT in the main thread, nowhere else."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import sigterm_after_mkdtemp

from pvdesc.tools import signals


@pytest.fixture
def sigterm_default() -> Iterator[None]:
    """SIGTERM at its default action for the test, whatever the runner set."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.usefixtures("sigterm_default")
def test_sigterm_in_the_block_unwinds_and_the_handler_is_restored() -> None:
    with pytest.raises(signals.Stopped) as info, signals.stopping():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)
    assert (info.value.signum, info.value.name, str(info.value)) == (15, "SIGTERM", "SIGTERM")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_ignored_signal_stays_ignored() -> None:
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals.stopping():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.usefixtures("sigterm_default")
def test_outside_the_main_thread_the_block_runs_with_the_handlers_as_they_are() -> None:
    seen: list[object] = []

    def worker() -> None:
        try:
            with signals.stopping():
                seen.append(signal.getsignal(signal.SIGTERM))
        except BaseException as exc:  # what the thread would have died of
            seen.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]
    # The main thread's next block still installs them.
    with signals.stopping():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)


def test_scratch_folder_is_removed_after_the_block_and_when_it_raises(
    tmp_path: Path,
) -> None:
    with signals.scratch("pvdesc-t-", str(tmp_path)) as made:
        assert os.path.isdir(made) and os.path.dirname(made) == str(tmp_path)
    assert not os.path.exists(made)
    with pytest.raises(ValueError), signals.scratch("pvdesc-t-", str(tmp_path)) as made:
        raise ValueError
    assert os.listdir(str(tmp_path)) == []


def test_a_stop_while_the_scratch_folder_is_made_waits_until_it_can_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sigterm_after_mkdtemp(monkeypatch)
    with (
        pytest.raises(signals.Stopped),
        signals.stopping(),
        signals.scratch("pvdesc-t-", str(tmp_path)),
    ):
        pytest.fail("the stop is raised as the block starts")
    assert os.listdir(str(tmp_path)) == []
