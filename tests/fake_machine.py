"""A stand-in for a booted kernel: a Machine (harness/machines/channel.py) that replays saved lines.

It gives the session, channel and crash paths fast tests on real saved console logs, without QEMU.
A FakeMachine is told what to do when it starts (console lines such as
tests/data/boot-6.1-clean.log, then the agent's hello) and in answer to each request: a list of
Replies, one per request, or a function from the request to its Reply. A Reply sends console
lines, then channel lines, and may end with the machine dying (both streams end, as when QEMU
exits) or hanging (it stays up and says nothing more). Past the last scripted Reply it answers
like a healthy agent.

The console and channel go through harness.machines.channel's own Console and LineChannel, so
what a test sees is what a session on a real guest would see. A LiveCount shared by several
machines counts how many run at once.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.machines.channel import Console, GuestDied, LineChannel

DATA = Path(__file__).parent / "data"

SERVE, HANG, DIE = "serve", "hang", "die"  # what a machine does after a Reply

CLEAN_HEALTH = {"log_during": [], "taint_before": 0, "taint_after": 0}


def saved_console(name: str) -> list[str]:
    """The lines of a saved console log in tests/data, e.g. "panic-6.1-sysrq.log"."""
    return (DATA / name).read_text(errors="replace").splitlines()


def hello_line(release: str = "6.1.0-50-amd64", **fields) -> str:
    """The agent's ready event, as harness/agent/agent.py sends it."""
    hello = {"event": "ready", "release": release, "uptime": 16.5, "taint": 0, "boot_log": []}
    return json.dumps({**hello, **fields})


def response_line(request: dict, result: object = None, *, error: dict | None = None,
                  health: dict | None = None, elapsed: float = 0.001) -> str:
    """The agent's answer to a call request: ok with result, or failed with error."""
    response = {"id": request.get("id"), "ok": error is None, "elapsed": elapsed,
                "health": CLEAN_HEALTH if health is None else health}
    if error is None:
        response["result"] = result
    else:
        response["error"] = error
    return json.dumps(response)


@dataclass
class Reply:
    """What the machine does at one point: console lines, then channel lines, then `then`."""
    lines: Sequence[str] = ()
    console: Sequence[str] = ()
    then: str = SERVE        # SERVE: go on answering; HANG: say nothing more; DIE: both streams end
    delay: float = 0.0       # seconds before anything is sent


Script = Sequence["Reply | Sequence[str]"] | Callable[[dict], "Reply | Sequence[str]"]


class LiveCount:
    """How many machines sharing it have started and are not yet killed (or exited), and the
    most that ever were at once."""

    def __init__(self) -> None:
        self.started = self.live = self.most = 0
        self._lock = threading.Lock()

    def up(self) -> None:
        with self._lock:
            self.started += 1
            self.live += 1
            self.most = max(self.most, self.live)

    def down(self) -> None:
        with self._lock:
            self.live -= 1


class _Stream:
    """Bytes lines handed from the machine to a pump thread; None ends the stream."""

    def __init__(self) -> None:
        self._items: list[bytes | None] = []
        self._ready = threading.Condition()

    def put(self, item: bytes | None) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._ready:
                while not self._items:
                    self._ready.wait()
                item = self._items.pop(0)
            if item is None:
                return
            yield item


class FakeMachine:
    noun = "the fake guest"
    boot_kind = "fake"

    def __init__(self, console_log: Path, *, boot: Reply | None = None,
                 replies: Script = (), live: LiveCount | None = None,
                 start_fails: str | None = None, kill_leaves_it_running: bool = False,
                 max_log_bytes: int | None = None):
        """boot: what it does when started (default: the agent's hello); replies: per request,
        in order, or a function of the request; start_fails: start() raises GuestDied with this
        (an SSH target that does not answer); kill_leaves_it_running: kill() returns with the
        machine still up (a QEMU that cannot be reaped)."""
        self.boot = boot if boot is not None else Reply(lines=[hello_line()])
        self.replies = replies
        self.live_count = live or LiveCount()
        self.start_fails = start_fails
        self.kill_leaves_it_running = kill_leaves_it_running
        self.console = (Console(console_log) if max_log_bytes is None
                        else Console(console_log, max_bytes=max_log_bytes))
        self.channel = LineChannel(self.console)
        self.requests: list[dict] = []
        self.started_at: float | None = None
        self.kills = 0
        self._state = "new"  # new, running, stuck (hung), exited, killed
        self._console_stream = _Stream()
        self._channel_stream = _Stream()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Machine

    @property
    def alive(self) -> bool:
        return self._state in ("running", "stuck")

    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.start_fails:
            raise GuestDied(self.start_fails)
        self._state = "running"
        self.live_count.up()
        self._threads = [
            threading.Thread(target=self.console.pump, args=(self._console_stream,), daemon=True),
            threading.Thread(target=self.channel.pump, args=(self._channel_stream,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.say(self.boot)

    def send(self, line: str) -> None:
        if not self.alive:
            raise GuestDied("the fake guest is not running")
        request = json.loads(line)  # the host's own line: trusted
        self.requests.append(request)
        if self._state == "stuck":
            return
        self.say(self._reply_to(request))

    def receive(self, timeout: float) -> str | None:
        return self.channel.receive(timeout, lambda: "the fake guest exited")

    def guest_path(self, path: Path, within: float | None = None) -> str:
        return str(path)

    def command_line(self) -> str:
        return "fake-machine"


    def shell_command(self) -> str:
        return self.command_line()
    def failure_hint(self) -> str:
        return ""

    def stop(self) -> None:
        self.kill()

    def kill(self) -> None:
        with self._lock:
            self.kills += 1
            if self.kill_leaves_it_running or not self.alive:
                return
            self._end("killed")

    # ------------------------------------------------------------------ replaying

    def _reply_to(self, request: dict) -> Reply:
        if callable(self.replies):
            reply = self.replies(request)
        elif len(self.requests) <= len(self.replies):
            reply = self.replies[len(self.requests) - 1]
        else:
            reply = Reply(lines=[response_line(request)])
        return reply if isinstance(reply, Reply) else Reply(lines=list(reply))

    def say(self, reply: Reply) -> None:
        """Do what a Reply says now (or after its delay): also lines nobody asked for."""
        if reply.delay:
            timer = threading.Timer(reply.delay, self._send_reply, args=(reply,))
            timer.daemon = True
            timer.start()
        else:
            self._send_reply(reply)

    def _send_reply(self, reply: Reply) -> None:
        with self._lock:
            if not self.alive:
                return
            wanted = self.console.count + len(reply.console)
            for line in reply.console:
                self._console_stream.put(line.encode(errors="surrogatepass") + b"\n")
            # a real guest's console text is out before the agent answers
            deadline = time.monotonic() + 2.0
            while self.console.count < wanted and time.monotonic() < deadline:
                time.sleep(0.001)
            for line in reply.lines:
                self._channel_stream.put(line.encode(errors="surrogatepass") + b"\n")
            if reply.then == HANG:
                self._state = "stuck"
            elif reply.then == DIE:
                self._end("exited")

    def _end(self, state: str) -> None:
        self._state = state
        self.live_count.down()
        self._console_stream.put(None)
        self._channel_stream.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)
