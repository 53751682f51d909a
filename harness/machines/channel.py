"""What a session reads from a machine, whatever carries it (a QEMU guest or an SSH target): the
agent's protocol lines, and a console kept in a log file (the kernel console of a guest; the
agent's stderr on an SSH target, whose kernel console kconform cannot see).

Both streams come from a machine kconform does not trust: a line is read with a length limit, the
log file stops growing at a cap, and protocol lines nobody asked for are not hoarded.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

PANIC_MARKERS = ("Kernel panic - not syncing", "---[ end Kernel panic")

MAX_LOG_BYTES = 32 * 1024 * 1024  # per console log file; later lines stay in memory only
MAX_CONSOLE_LINE = 64 * 1024      # a longer console "line" is kept as several
# A response carries the kernel log of its call: a call that floods the log can make a long line.
MAX_CHANNEL_LINE = 16 * 1024 * 1024
# The agent sends one line per request; more waiting than this were never asked for.
MAX_PENDING_LINES = 256
# Nor may the lines waiting hold more than this: room for one response of the longest kind.
MAX_PENDING_BYTES = MAX_CHANNEL_LINE + 1024 * 1024


class GuestDied(Exception):
    """The machine (QEMU, the agent, or the SSH connection) is gone."""


def read_lines(stream: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The stream's lines, none longer than limit bytes (a longer one comes in pieces)."""
    readline = getattr(stream, "readline", None)
    if readline is None:  # a plain iterable of lines (tests)
        for raw in stream:
            for start in range(0, len(raw), limit):
                yield raw[start:start + limit]
        return
    while True:
        raw = readline(limit)
        if not raw:
            return
        yield raw


class Console:
    """The console lines of one machine: the log file holds them up to a cap, memory the last
    4000. The file is started afresh, so a log never mixes two runs."""

    def __init__(self, log_path: Path, max_bytes: int = MAX_LOG_BYTES, fresh: bool = True):
        """fresh: start the file afresh (not when a second QEMU of the same machine goes on in
        it: a restore that failed, then the cold boot)."""
        self.log_path = log_path
        self.max_bytes = max_bytes
        self.lines: collections.deque[str] = collections.deque(maxlen=4000)
        self.count = 0  # lines seen so far, so a caller can mark where a test's lines start
        self.panicked = threading.Event()
        self.ended = threading.Event()  # the stream is over: no more lines will come
        self._lock = threading.Lock()  # count and lines change together
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            log_path.write_bytes(b"")  # a previous run's file of the same name is not appended to

    def pump(self, stream: Iterable[bytes]) -> None:
        """Copy a stream into the log until it ends (run in a thread)."""
        try:
            self._copy(stream)
        finally:
            self.ended.set()

    def _copy(self, stream: Iterable[bytes]) -> None:
        written = 0
        dropped_lines = dropped_bytes = 0
        mid_line = False  # the file does not end with a newline
        with open(self.log_path, "ab", buffering=0) as log:
            for raw in read_lines(stream, MAX_CONSOLE_LINE):
                if not dropped_lines and written + len(raw) <= self.max_bytes:
                    log.write(raw)
                    written += len(raw)
                    mid_line = not raw.endswith(b"\n")
                else:
                    if not dropped_lines:
                        notice = (f"kconform: console log capped at {self.max_bytes} bytes; "
                                  f"later lines are not written here (the last "
                                  f"{self.lines.maxlen} stay in memory for failure reports)\n")
                        log.write((("\n" if mid_line else "") + notice).encode())
                    dropped_lines += 1
                    dropped_bytes += len(raw)
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._lock:
                    self.lines.append(line)
                    self.count += 1
                if any(m in line for m in PANIC_MARKERS):
                    self.panicked.set()
            if dropped_lines:
                log.write(f"kconform: {dropped_lines} lines ({dropped_bytes} bytes) after the "
                          f"cap were not written\n".encode())

    def note(self, text: str) -> None:
        """A line of kconform's own in the log and the lines (what a restore did), written in
        one append, so a pump writing beside it never splits it."""
        line = f"kconform: {text}"
        with open(self.log_path, "ab", buffering=0) as log:
            log.write(line.encode() + b"\n")
        with self._lock:
            self.lines.append(line)
            self.count += 1

    def tail(self, n: int = 40, since: int | None = None) -> list[str]:
        """The last n lines, only from line number `since` on when it is given."""
        with self._lock:
            lines, count = list(self.lines), self.count
        if since is not None:
            lines = lines[-(count - since):] if count > since else []
        return lines[-n:]


class OversizedLine(str):
    """The start of a channel line longer than the limit; `size` is its whole length in bytes."""
    size: int


class ChannelOverflow(str):
    """Queued in place of the lines that came past the pending caps: the machine sent more than
    it was asked for, which is a protocol error (its response may be among them)."""
    size: int  # bytes dropped so far


class LineChannel:
    """The agent's protocol lines, read by a thread into a queue; EOF is queued as None.

    Lines nobody has read yet are bounded in number and in bytes: past either cap, later lines
    are dropped and a ChannelOverflow takes their place, so the reader sees a protocol error,
    never a response that silently went missing."""

    def __init__(self, console: Console):
        self.console = console
        self.dropped = 0  # lines past the caps, never read
        self.queued_bytes = 0  # of the lines in the queue
        self._overflow: ChannelOverflow | None = None
        self._lock = threading.Lock()  # queued_bytes and the overflow change with the queue
        self._lines: queue.Queue[str | None] = queue.Queue()

    def pump(self, stream: Iterable[bytes]) -> None:
        oversized: OversizedLine | None = None
        for raw in read_lines(stream, MAX_CHANNEL_LINE):
            ended = raw.endswith(b"\n")
            if oversized is not None:  # the rest of a line that was too long
                oversized.size += len(raw)
                if ended:
                    self._queue(oversized)
                    oversized = None
                continue
            if not ended and len(raw) >= MAX_CHANNEL_LINE:
                oversized = OversizedLine(raw[:300].decode(errors="replace"))
                oversized.size = len(raw)
                continue
            self._queue(raw.decode(errors="replace").rstrip("\r\n"))
        if oversized is not None:
            self._queue(oversized)
        self._lines.put(None)

    def _queue(self, line: str) -> None:
        size = line.size if isinstance(line, OversizedLine) else len(line)
        with self._lock:
            if self._overflow is not None:
                self.dropped += 1
                self._overflow.size += size
                return
            if (self._lines.qsize() >= MAX_PENDING_LINES
                    or self.queued_bytes + len(line) > MAX_PENDING_BYTES):
                self.dropped += 1
                self._overflow = ChannelOverflow(
                    f"more lines than were asked for (over {MAX_PENDING_LINES} lines or "
                    f"{MAX_PENDING_BYTES} bytes waiting unread)")
                self._overflow.size = size
                self._lines.put(self._overflow)
                return
            self.queued_bytes += len(line)
            self._lines.put(line)

    def receive(self, timeout: float, ended: Callable[[], str]) -> str | None:
        """The next line; None on timeout. GuestDied when the channel ended (`ended()` says why)
        or the console showed a panic."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if not remaining > 0:  # also a NaN timeout
                return None
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.console.panicked.is_set():
                    self.console.ended.wait(0.5)  # let the rest of the panic reach the log
                    raise GuestDied("kernel panic") from None
                continue
            if line is None:
                self._lines.put(None)
                raise GuestDied("kernel panic" if self.console.panicked.is_set() else ended())
            if not isinstance(line, ChannelOverflow):
                with self._lock:
                    self.queued_bytes -= len(line)
            return line


class Machine(Protocol):
    """What a GuestSession drives: a QemuMachine (machines/qemu.py) or an SshMachine
    (machines/ssh.py)."""
    noun: str                   # "the guest", "the SSH session": for failure messages
    console: Console
    started_at: float | None

    @property
    def alive(self) -> bool: ...                      # started and not yet killed and reaped
    def start(self) -> None: ...
    def send(self, line: str) -> None: ...
    def receive(self, timeout: float) -> str | None: ...
    # where the machine sees a host file (pushed within `within` seconds, if it must be)
    def guest_path(self, path: Path, within: float | None = None) -> str: ...
    boot_kind: str              # "direct", "virtme-ng", "ssh": how it came to run
    def command_line(self) -> str: ...                # the command that started it
    def shell_command(self) -> str: ...               # a shell on the same kernel, by hand
    def failure_hint(self) -> str: ...                # a fix worth naming when it failed to start
    def stop(self) -> None: ...
    def kill(self) -> None: ...
