"""Ctrl-C and SIGTERM on the process that runs pytest: both end the run as an interrupt, which
pytest turns into its normal end (every report written, the guests shut down), except inside a
report's rewrite, where they wait until it is over."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

# What deferred() holds back. SIGTERM's handler is terminate() (install() sets it).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


def terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an interrupt so pytest finishes its reports and the pool shuts down.
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, terminate)


def _set_all(handlers: dict[int, Any]) -> None:
    """Set each handler, all of them even if one raises: setting one runs the Python handlers of
    signals already come, and a restored handler may raise there (the first error is raised once
    every handler is set)."""
    error: BaseException | None = None
    for signum, handler in handlers.items():
        try:
            signal.signal(signum, handler)
        except BaseException as exc:  # kept, raised once the rest are set
            error = error or exc
    if error is not None:
        raise error


@contextlib.contextmanager
def deferred(ending: bool = False) -> Iterator[None]:
    """Run the block with Ctrl-C and SIGTERM held back, then act on one that came meanwhile as
    its handler would have (ending: the run is ending anyway, and one that came is dropped
    rather than raised into pytest's own end, where it would be a traceback).

    Why: an interrupt raised inside the standard library's XML writer (the JUnit rewrite) can
    stop at a frame with no line number yet, and pytest's report of the interrupt then fails on
    it (Python 3.11: tb_lineno is None) with a traceback of its own and exit status 1 instead of
    2. Only the main thread may set handlers: elsewhere the block just runs (Python runs a
    handler on the main thread only, so no other thread is interrupted). A signal whose handler
    was not set from Python (getsignal is None) is left alone: Python could not restore it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        came.append(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not None:
                previous[signum] = handler
                signal.signal(signum, hold)
        yield
    finally:
        _set_all(previous)
        if came and not ending:
            _act(came[0], previous[came[0]])


def _act(signum: int, handler: Callable[[int, FrameType | None], Any] | int) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
