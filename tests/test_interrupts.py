"""Ctrl-C or SIGTERM during a report's rewrite waits for the rewrite, then interrupts the run as
it would have (harness/plugin/interrupts.py); CI once saw one land inside the JUnit writer, and
pytest's report of it failed with a traceback of its own."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from harness.plugin import interrupts


@pytest.fixture
def handlers():
    """The handlers as they were, put back after the test whatever it set."""
    before = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    yield before
    for signum, handler in before.items():
        signal.signal(signum, handler)


def current() -> dict:
    return {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}


@pytest.mark.parametrize("signum", interrupts.SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_inside_the_block_interrupts_after_it(handlers, signum):
    interrupts.install()
    installed = current()
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signum)
            finished.append("rewrite")  # the handler would have raised before this line
    assert finished == ["rewrite"]
    assert current() == installed


def test_at_the_end_a_signal_inside_the_block_is_dropped(handlers):
    interrupts.install()
    try:
        with interrupts.deferred(ending=True):
            os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt:
        pytest.fail("the run's end was interrupted by a signal it was already ending for")
    assert signal.getsignal(signal.SIGTERM) is interrupts.terminate


def test_an_ignored_signal_stays_ignored(handlers):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_an_error_in_the_block_restores_the_handlers_and_the_interrupt_still_comes(handlers):
    interrupts.install()
    installed = current()
    with pytest.raises(KeyboardInterrupt) as raised:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("a writer's own error")
    assert isinstance(raised.value.__context__, ValueError)
    assert current() == installed


def test_a_signal_while_restoring_does_not_leave_a_handler_holding_signals(handlers, monkeypatch):
    """Restoring SIGINT's handler runs it on a Ctrl-C that came just then: SIGTERM's must still
    be restored, or every later SIGTERM would be held for good."""
    interrupts.install()
    installed = current()
    real = signal.signal

    def restoring(signum, handler):
        old = real(signum, handler)
        if signum == signal.SIGINT and handler is signal.default_int_handler:
            os.kill(os.getpid(), signal.SIGINT)  # handled as this function returns
        return old
    monkeypatch.setattr(signal, "signal", restoring)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            pass
    monkeypatch.undo()
    assert current() == installed


def test_nothing_is_raised_when_no_signal_came_and_handlers_are_restored(handlers):
    with interrupts.deferred():
        pass
    assert current() == handlers


def test_off_the_main_thread_the_block_just_runs():
    ran = []

    def rewrite():
        with interrupts.deferred():
            ran.append(True)
    thread = threading.Thread(target=rewrite)
    thread.start()
    thread.join()
    assert ran == [True]
