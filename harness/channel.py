"""What a session reads from a machine, whatever carries it (a QEMU guest or an SSH target): the
agent's protocol lines, and a console kept whole in a log file (the kernel console of a guest; the
agent's stderr on an SSH target, whose kernel console kconform cannot see).
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

PANIC_MARKERS = ("Kernel panic - not syncing", "---[ end Kernel panic")


class GuestDied(Exception):
    """The machine (QEMU, the agent, or the SSH connection) is gone."""


class Console:
    """The console lines of one machine: every line in the log file, the last 4000 in memory."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.lines: collections.deque[str] = collections.deque(maxlen=4000)
        self.count = 0  # lines seen so far, so a caller can mark where a test's lines start
        self.panicked = threading.Event()
        log_path.parent.mkdir(parents=True, exist_ok=True)

    def pump(self, stream: Iterable[bytes]) -> None:
        """Copy a stream into the log until it ends (run in a thread)."""
        with open(self.log_path, "ab", buffering=0) as log:
            for raw in stream:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.lines.append(line)
                self.count += 1
                if any(m in line for m in PANIC_MARKERS):
                    self.panicked.set()

    def tail(self, n: int = 40, since: int | None = None) -> list[str]:
        """The last n lines, only from line number `since` on when it is given."""
        lines = list(self.lines)
        if since is not None:
            lines = lines[-(self.count - since):] if self.count > since else []
        return lines[-n:]


class LineChannel:
    """The agent's protocol lines, read by a thread into a queue; EOF is queued as None."""

    def __init__(self, console: Console):
        self.console = console
        self._lines: queue.Queue = queue.Queue()

    def pump(self, stream: Iterable[bytes]) -> None:
        for raw in stream:
            self._lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        self._lines.put(None)

    def receive(self, timeout: float, ended: Callable[[], str]) -> str | None:
        """The next line; None on timeout. GuestDied when the channel ended (`ended()` says why)
        or the console showed a panic."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.console.panicked.is_set():
                    time.sleep(0.5)  # let the rest of the panic reach the log
                    raise GuestDied("kernel panic")
                continue
            if line is None:
                self._lines.put(None)
                raise GuestDied("kernel panic" if self.console.panicked.is_set() else ended())
            return line


class Machine(Protocol):
    """What a GuestSession drives: a Guest (harness/vm.py) or an SshMachine (harness/ssh.py)."""
    noun: str                   # "the guest", "the SSH session": for failure messages
    console: Console
    started_at: float | None

    def start(self) -> None: ...
    def send(self, line: str) -> None: ...
    def receive(self, timeout: float) -> str | None: ...
    def guest_path(self, path: Path) -> str: ...      # where the machine sees a host file
    def command_line(self) -> str: ...                # to reach the same machine by hand
    def failure_hint(self) -> str: ...                # a fix worth naming when it failed to start
    def stop(self) -> None: ...
    def kill(self) -> None: ...
