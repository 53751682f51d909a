"""Ctrl-C and SIGTERM on the process that runs pytest: both end the run as an interrupt, which
pytest turns into its normal end (every report written, the guests shut down), except inside a
report's rewrite, where they wait until it is over."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# What deferred() holds back. SIGTERM's handler is terminate() (install() sets it).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


def terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an interrupt so pytest finishes its reports and the pool shuts down.
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block with Ctrl-C and SIGTERM held back, then act on one that came meanwhile, as
    its handler would have. Why: an interrupt raised inside the standard library's XML writer
    (the JUnit rewrite) can stop at a frame with no line number yet, and pytest's report of the
    interrupt then fails on it (Python 3.11: tb_lineno is None) with a traceback of its own and
    exit status 1 instead of 2. Only the main thread may set handlers: elsewhere the block just
    runs (Python runs a handler on the main thread only, so no other thread is interrupted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: came.append(signum))
                for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in came[:1]:
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)
