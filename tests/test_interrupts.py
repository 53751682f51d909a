"""Ctrl-C or SIGTERM during a report's rewrite waits for the rewrite, then interrupts the run as
it would have (harness/plugin/interrupts.py); CI once saw one land inside the JUnit writer, and
pytest's report of it failed with a traceback of its own."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from harness.plugin import interrupts


def test_a_ctrl_c_inside_the_block_interrupts_after_it():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("rewrite")  # the handler would have raised before this line
    assert finished == ["rewrite"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_inside_the_block_is_the_run_s_own_interrupt_after_it():
    before = signal.getsignal(signal.SIGTERM)
    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is interrupts.terminate
    finally:
        signal.signal(signal.SIGTERM, before)


def test_nothing_is_raised_when_no_signal_came_and_handlers_are_restored():
    before = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    with interrupts.deferred():
        pass
    assert {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS} == before


def test_off_the_main_thread_the_block_just_runs():
    ran = []

    def rewrite():
        with interrupts.deferred():
            ran.append(True)
    thread = threading.Thread(target=rewrite)
    thread.start()
    thread.join()
    assert ran == [True]
