"""GuestSession: the host side of the agent protocol over one machine (a QEMU Guest, or an
SshMachine on an SSH target).

Start once, wait for the agent's hello, then one request/response per guest-side call. A machine
that dies or stops answering raises with the console lines that show why; the session is then dead
and its owner (GuestPool) starts a replacement for the tests that follow.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field

from .channel import GuestDied, Machine

HOST_GRACE = 5.0  # the agent's own alarm fires first; past this the guest is hung


class GuestFailure(Exception):
    """The guest could not run the request; carries the console evidence."""

    def __init__(self, message: str, console: list[str] | None = None):
        super().__init__(message)
        self.console = console or []

    @property
    def fingerprint(self) -> str | None:
        return crash_fingerprint(self.console)


class BootFailure(GuestFailure):
    pass


class GuestCrash(GuestFailure):
    pass


class GuestHang(GuestFailure):
    pass


class GuestCallError(Exception):
    """The guest-side function raised; its traceback travels with it."""

    def __init__(self, error: dict, health: dict | None = None):
        self.error = error
        self.health = health or {}
        text = f"{error.get('type')}: {error.get('message')}"
        if error.get("verifier_log"):
            text += "\nverifier log:\n" + error["verifier_log"]
        if error.get("traceback"):
            text += "\nguest traceback:\n" + error["traceback"]
        super().__init__(text)


@dataclass
class CallResult:
    result: object
    elapsed: float
    health: dict = field(default_factory=dict)
    error: dict | None = None


_FRAME = re.compile(r"^\s*(?:\[[ \d.]+\]\s*)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
# Frames of the reporting machinery, not of the fault: a fingerprint starts after them.
_REPORTING = re.compile(r"^(dump_stack\w*|show_stack|panic|_printk|printk|vpanic|__warn\w*|"
                        r"warn_slowpath\w*|report_bug|handle_bug|exc_invalid_op|asm_exc_\w+|"
                        r"die\w*|oops_\w+|__die\w*)$")


def crash_fingerprint(lines: list[str], frames: int = 4) -> str | None:
    """The first reliable stack frames after 'Call Trace:', e.g. 'sock_map_update_common|...'.

    Frames marked '?' are guesses from the stack scan and change between runs; compiler suffixes
    (.cold, .isra.0) change between builds. Both are left out so one crash keeps one fingerprint.
    """
    for i, line in enumerate(lines):
        if "Call Trace:" not in line:
            continue
        found = []
        for follow in lines[i + 1:]:
            text = follow.split("] ", 1)[-1]
            if "RIP:" in text or "---[" in text or "</TASK>" in text:
                break
            m = _FRAME.match(text)
            if not m or text.lstrip().startswith("?"):
                continue
            name = m.group(1).split(".", 1)[0]
            if not found and _REPORTING.match(name):
                continue
            found.append(name)
            if len(found) == frames:
                break
        if found:
            return "|".join(found)
    return None


class GuestSession:
    def __init__(self, machine: Machine, name: str, *, boot_timeout: float):
        """machine: not started yet; name: the kernel's name."""
        self.machine = machine
        self.name = name
        self.boot_timeout = boot_timeout
        self.info: dict = {}
        self.boot_seconds: float | None = None
        self.dead: GuestFailure | None = None
        self._ids = itertools.count(1)

    @property
    def uname(self) -> str:
        return self.info.get("release", "")

    def start(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        try:
            self.machine.start()  # an SSH target may already fail here (GuestDied)
            while True:
                line = self.machine.receive(timeout=max(0.0, deadline - time.monotonic()))
                if line is None:
                    raise BootFailure(f"{self.name}: no agent within {self.boot_timeout:.0f}s of "
                                      f"starting {self.machine.noun} (boot hang?)"
                                      f"{self.machine.failure_hint()}", self.machine.console.tail())
                if line.startswith("{"):
                    msg = json.loads(line)
                    if msg.get("event") == "ready":
                        self.info = msg
                        break
        except GuestDied as exc:
            self.machine.kill()
            raise BootFailure(f"{self.name}: {self.machine.noun} died while starting ({exc})"
                              f"{self.machine.failure_hint()}", self.machine.console.tail()) from None
        except BootFailure:
            self.machine.kill()
            raise
        self.boot_seconds = time.monotonic() - self.machine.started_at

    @property
    def agent_start_seconds(self) -> float | None:
        """From virtme-ng-init starting our command to the agent's hello, by the guest's clock:
        the part of a boot that is Python starting and importing the agent."""
        for line in list(self.machine.console.lines):
            m = re.match(r"\[\s*([\d.]+)\] virtme-ng-init: starting script", line)
            if m and "uptime" in self.info:
                return self.info["uptime"] - float(m.group(1))
        return None

    def call(self, fn: str, *, timeout: float, **kwargs) -> CallResult:
        """Run guest-side function fn ("module:function") with kwargs; raise on guest failure.
        A host file given as a path object (a BPF object) reaches the function as the path the
        guest sees it at."""
        if self.dead:
            raise self.dead
        request_id = next(self._ids)
        mark = self.machine.console.count
        try:
            kwargs = {k: self.machine.guest_path(v) if isinstance(v, os.PathLike) else v
                      for k, v in kwargs.items()}
            self.machine.send(json.dumps({"id": request_id, "op": "call", "fn": fn,
                                          "kwargs": kwargs, "timeout": timeout}))
            while True:
                line = self.machine.receive(timeout=timeout + HOST_GRACE)
                if line is None:
                    self._die(GuestHang(
                        f"{fn} did not return within {timeout + HOST_GRACE:.0f}s; "
                        f"{self.machine.noun} is replaced",
                        self.machine.console.tail(60, since=mark) or self.machine.console.tail(20)))
                response = json.loads(line) if line.startswith("{") else {}
                if response.get("id") == request_id:
                    break
        except GuestDied as exc:
            died = exc
        else:
            died = None
        if died:
            time.sleep(0.2)  # the last console lines may still be in flight
            self._die(GuestCrash(f"{self.machine.noun} died during {fn} ({died})",
                                 self.machine.console.tail(200, since=mark)
                                 or self.machine.console.tail(60)))
        result = CallResult(result=response.get("result"), elapsed=response.get("elapsed", 0.0),
                            health=response.get("health", {}), error=response.get("error"))
        if not response.get("ok"):
            if (response.get("error") or {}).get("type") == "CallTimeout":
                raise GuestHang(f"{fn}: {response['error']['message']}",
                                self.machine.console.tail(20, since=mark))
            raise GuestCallError(response.get("error") or {}, result.health)
        return result

    def _die(self, failure: GuestFailure):
        self.dead = failure
        self.machine.kill()
        raise failure

    def close(self) -> None:
        self.machine.stop()
