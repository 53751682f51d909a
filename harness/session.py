"""GuestSession: the host side of the agent protocol over one booted Guest.

Boot once, wait for the agent's hello, then one request/response per guest-side call. A guest that
dies or stops answering raises with the console lines that show why; the session is then dead and
its owner (GuestPool) boots a replacement for the tests that follow.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from .accel import Accel
from .kernels import KernelTree
from .paths import REPO_ROOT
from .vm import Guest, GuestDied, guest_python

AGENT = REPO_ROOT / "harness" / "agent" / "agent.py"
HOST_GRACE = 10.0  # the agent's own alarm fires first; past this the guest is hung


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
    def __init__(self, tree: KernelTree, accel: Accel, console_log: Path, *,
                 boot_timeout: float, memory: str = "1G", cpus: int = 1,
                 kernel_args: tuple[str, ...] = ()):
        self.tree = tree
        guest_cmd = shlex.join([guest_python(), "-I", "-S", str(AGENT), str(REPO_ROOT)])
        self.guest = Guest(tree, accel, guest_cmd, console_log, memory=memory, cpus=cpus,
                           kernel_args=kernel_args)
        self.boot_timeout = boot_timeout
        self.info: dict = {}
        self.boot_seconds: float | None = None
        self.dead: GuestFailure | None = None
        self._ids = itertools.count(1)

    @property
    def uname(self) -> str:
        return self.info.get("release", "")

    def start(self) -> None:
        self.guest.start()
        deadline = time.monotonic() + self.boot_timeout
        try:
            while True:
                line = self.guest.receive(timeout=max(0.0, deadline - time.monotonic()))
                if line is None:
                    raise BootFailure(f"{self.tree.name}: no agent within {self.boot_timeout:.0f}s "
                                      f"of starting the guest (boot hang?){self._kvm_hint()}",
                                      self.guest.console_tail())
                if line.startswith("{"):
                    msg = json.loads(line)
                    if msg.get("event") == "ready":
                        self.info = msg
                        break
        except GuestDied as exc:
            self.guest.kill()
            raise BootFailure(f"{self.tree.name}: the guest died while booting ({exc})"
                              f"{self._kvm_hint()}", self.guest.console_tail()) from None
        except BootFailure:
            self.guest.kill()
            raise
        self.boot_seconds = time.monotonic() - self.guest.started_at

    def _kvm_hint(self) -> str:
        if self.guest.accel.name == "kvm" and any("KVM internal error" in line
                                                  for line in self.guest.console):
            return "; KVM failed to run this kernel: rerun with --accel tcg"
        return ""

    @property
    def agent_start_seconds(self) -> float | None:
        """From virtme-ng-init starting our command to the agent's hello, by the guest's clock:
        the part of a boot that is Python starting and importing the agent."""
        for line in list(self.guest.console):
            m = re.match(r"\[\s*([\d.]+)\] virtme-ng-init: starting script", line)
            if m and "uptime" in self.info:
                return self.info["uptime"] - float(m.group(1))
        return None

    def call(self, fn: str, *, timeout: float, **kwargs) -> CallResult:
        """Run guest-side function fn ("module:function") with kwargs; raise on guest failure."""
        if self.dead:
            raise self.dead
        request_id = next(self._ids)
        mark = self.guest.console_lines
        try:
            self.guest.send(json.dumps({"id": request_id, "op": "call", "fn": fn,
                                        "kwargs": kwargs, "timeout": timeout}))
            while True:
                line = self.guest.receive(timeout=timeout + HOST_GRACE)
                if line is None:
                    self._die(GuestHang(
                        f"{fn} did not return within {timeout + HOST_GRACE:.0f}s; guest replaced",
                        self.guest.console_tail(60, since=mark) or self.guest.console_tail(20)))
                response = json.loads(line) if line.startswith("{") else {}
                if response.get("id") == request_id:
                    break
        except GuestDied as exc:
            died = exc
        else:
            died = None
        if died:
            time.sleep(0.2)  # the last console lines may still be in flight
            self._die(GuestCrash(f"the guest died during {fn} ({died})",
                                 self.guest.console_tail(200, since=mark)
                                 or self.guest.console_tail(60)))
        result = CallResult(result=response.get("result"), elapsed=response.get("elapsed", 0.0),
                            health=response.get("health", {}), error=response.get("error"))
        if not response.get("ok"):
            if (response.get("error") or {}).get("type") == "CallTimeout":
                raise GuestHang(f"{fn}: {response['error']['message']}",
                                self.guest.console_tail(20, since=mark))
            raise GuestCallError(response.get("error") or {}, result.health)
        return result

    def _die(self, failure: GuestFailure):
        self.dead = failure
        self.guest.kill()
        raise failure

    def close(self) -> None:
        self.guest.stop()
