"""GuestSession: the host side of the agent protocol over one machine (a QEMU Guest, or an
SshMachine on an SSH target).

Start once, wait for the agent's hello, then one request/response per guest-side call. A machine
that dies or stops answering raises with the console lines that show why; the session is then dead
and its owner (GuestPool) starts a replacement for the tests that follow.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, NotRequired, TypedDict

from ..boot_phases import SCRIPT_STARTED
from .channel import ChannelOverflow, GuestDied, Machine, OversizedLine

HOST_GRACE = 5.0  # the agent's own alarm fires first; past this the guest is hung
# Lines that are not JSON before the agent's hello: what a target's login shell may print.
MAX_PREAMBLE_LINES = 50


class Hello(TypedDict):
    """The agent's ready event, its types checked."""
    event: str                    # "ready"
    release: str                  # `uname -r` in the guest
    uptime: NotRequired[float]    # seconds since the guest booted, by its clock
    taint: NotRequired[int]       # /proc/sys/kernel/tainted once booted
    bpf_jit_enable: NotRequired[int | None]  # net.core.bpf_jit_enable; None: no such file
    boot_log: NotRequired[list[str]]  # the kernel log of the boot, up to the agent


class Health(TypedDict):
    """What the agent saw during one call: kernel log records and taint around it."""
    log_during: list[str]
    taint_before: int
    taint_after: int


class GuestError(TypedDict):
    """A guest-side failure: its type and message, and what the agent adds when it has it."""
    type: str
    message: str
    traceback: NotRequired[str | None]
    verifier_log: NotRequired[str | None]


def no_health() -> Health:
    """The health of a call the guest sent none for: no lines, no taint."""
    return {"log_during": [], "taint_before": 0, "taint_after": 0}


class GuestFailure(Exception):
    """The guest could not run the request; carries the console evidence."""

    def __init__(self, message: str, console: list[str] | None = None):
        super().__init__(message)
        self.console = console or []


class BootFailure(GuestFailure):
    pass


class GuestCrash(GuestFailure):
    pass


class GuestHang(GuestFailure):
    pass


class GuestProtocolError(GuestFailure):
    """The machine sent a line that is not the agent protocol: it is treated as broken."""


class BootProtocolError(BootFailure, GuestProtocolError):
    """The agent's hello (or what came instead of it) was not the protocol."""


class GuestCallError(Exception):
    """The guest-side function raised; its traceback travels with it."""

    def __init__(self, error: GuestError, health: Health | None = None):
        self.error = error
        self.health = health or no_health()
        text = f"{error.get('type')}: {error.get('message')}"
        verifier_log, guest_traceback = error.get("verifier_log"), error.get("traceback")
        if verifier_log:
            text += "\nverifier log:\n" + verifier_log
        if guest_traceback:
            text += "\nguest traceback:\n" + guest_traceback
        super().__init__(text)


# Where a call's guest seconds went, as the agent measures them (harness/agent/timing.py KINDS;
# this side may not import the agent's modules): kind -> seconds, the rest of elapsed "other".
TIMING_KINDS = ("bpf_load", "waiting", "sockets")
# How far the kinds may add up past elapsed: the agent measures both on one clock, the kinds
# inside elapsed, so only float rounding may tip them over.
TIMING_SLACK = 1e-6


@dataclass
class CallResult:
    result: object
    elapsed: float
    health: Health = field(default_factory=no_health)
    error: GuestError | None = None
    timing: dict[str, float] = field(default_factory=dict)  # TIMING_KINDS; empty: not sent


# ----------------------------------------------------------------------------- the protocol
# Every line from a machine is untrusted input: it becomes a typed value here or is refused, and
# nothing past this point checks types again.

class Malformed(Exception):
    """What is wrong with a protocol line (the caller adds whose line it was)."""


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    result: object
    error: GuestError | None   # when not ok
    elapsed: float
    health: Health
    timing: dict[str, float]  # empty when the response had none


def excerpt(line: str, head: int = 200, tail: int = 80) -> str:
    """The line as it came, control characters shown, shortened in the middle when long."""
    if isinstance(line, ChannelOverflow):
        return f"{line} ({line.size} bytes dropped)"
    size = line.size if isinstance(line, OversizedLine) else len(line.encode(errors="replace"))
    if isinstance(line, OversizedLine) or len(line) > head + tail + 20:
        shown = repr(line[:head]) + " ... " + ("" if isinstance(line, OversizedLine)
                                               else repr(line[-tail:]))
        return f"{shown.rstrip()} ({size} bytes)"
    return repr(line)


def _decode_object(line: str) -> dict[str, object]:
    if isinstance(line, ChannelOverflow):
        raise Malformed("it sent lines nobody asked for until kconform stopped keeping them")
    if isinstance(line, OversizedLine):
        raise Malformed(f"a line of {line.size} bytes, longer than any response may be")
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise Malformed("JSON nested too deeply") from None
    except ValueError as exc:  # also an int of 5000 digits, or NaN
        raise Malformed(f"not JSON ({exc})") from None
    try:
        # A lone surrogate ("\ud800") decodes, but no report file could be written with it.
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeError:
        raise Malformed("a string in it is not valid Unicode (a lone surrogate)") from None
    if not isinstance(value, dict):
        raise Malformed(f"JSON {type(value).__name__}, not an object")
    return value  # JSON objects have string keys


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _int(value: object, what: str) -> int:
    if type(value) is not int:  # bool is an int to isinstance
        raise Malformed(f"{what} is {_shape(value)}, not an integer")
    return value


def _number(value: object, what: str) -> float:
    # type(), not isinstance: a bool is an int to isinstance
    if not (type(value) in (int, float) and isinstance(value, (int, float))
            and math.isfinite(value)):
        raise Malformed(f"{what} is {_shape(value)}, not a finite number")
    return float(value)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{what} is {_shape(value)}, not a string")
    return value


def _lines(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Malformed(f"{what} is {_shape(value)}, not a list of strings")
    return value  # every item checked to be a str


def _shape(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def parse_hello(line: str) -> Hello:
    """The agent's ready event: {"event": "ready", "release": ..., "uptime": ..., ...}."""
    value = _decode_object(line)
    if value.get("event") != "ready":
        raise Malformed(f"expected the agent's ready event, got event {value.get('event')!r}")
    hello: Hello = {"event": "ready", "release": _text(value.get("release"), "release")}
    if "uptime" in value:
        hello["uptime"] = _number(value["uptime"], "uptime")
    if "taint" in value:
        hello["taint"] = _int(value["taint"], "taint")
    if "boot_log" in value:
        hello["boot_log"] = _lines(value["boot_log"], "boot_log")
    if "bpf_jit_enable" in value:
        jit = value["bpf_jit_enable"]
        hello["bpf_jit_enable"] = None if jit is None else _int(jit, "bpf_jit_enable")
    return hello


def parse_health(value: object) -> Health:
    """A call's health report, every field present (0 taint and no lines when not sent)."""
    if not isinstance(value, dict):
        raise Malformed(f"health is {_shape(value)}, not an object")
    return {"log_during": _lines(value.get("log_during", []), "health.log_during"),
            "taint_before": _int(value.get("taint_before", 0), "health.taint_before"),
            "taint_after": _int(value.get("taint_after", 0), "health.taint_after")}


def parse_timing(value: object, elapsed: float) -> dict[str, float]:
    """A call's seconds by kind: known kinds only, each a finite number >= 0, together no more
    than the call's elapsed time (each second is one kind's at most)."""
    if not isinstance(value, dict):
        raise Malformed(f"timing is {_shape(value)}, not an object")
    timing: dict[str, float] = {}
    for kind, seconds in value.items():
        if kind not in TIMING_KINDS:
            raise Malformed(f"timing names {_shape(kind)}, not one of {', '.join(TIMING_KINDS)}")
        timing[kind] = _number(seconds, f"timing.{kind}")
        if timing[kind] < 0:
            raise Malformed(f"timing.{kind} is negative ({timing[kind]})")
    total = sum(timing.values())
    if total > elapsed + TIMING_SLACK:
        raise Malformed(f"timing adds up to {total}s, more than the call's elapsed {elapsed}s")
    return timing


def _optional_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def parse_error(value: object) -> GuestError:
    """A guest-side failure: type and message, optionally its traceback and verifier log."""
    if not isinstance(value, dict):
        raise Malformed(f"error is {_shape(value)}, not an object")
    error: GuestError = {"type": _text(value.get("type"), "error.type"),
                         "message": _text(value.get("message"), "error.message")}
    if "traceback" in value:
        error["traceback"] = _optional_text(value["traceback"], "error.traceback")
    if "verifier_log" in value:
        error["verifier_log"] = _optional_text(value["verifier_log"], "error.verifier_log")
    return error


def parse_response(line: str) -> Response:
    """One response line: {"id", "ok", "result" | "error", "elapsed", "health", "timing"}."""
    response = _decode_object(line)
    request_id = _int(response.get("id"), "id")
    ok = response.get("ok")
    if type(ok) is not bool:
        raise Malformed(f"ok is {_shape(ok)}, not true or false")
    error = None
    if ok:
        if response.get("error") is not None:
            raise Malformed("ok is true, yet an error is given")
    else:
        error = parse_error(response.get("error"))
    elapsed = _number(response.get("elapsed", 0.0), "elapsed")
    if elapsed < 0:
        raise Malformed(f"elapsed is negative ({elapsed})")
    timing = parse_timing(response["timing"], elapsed) if "timing" in response else {}
    return Response(id=request_id, ok=ok, result=response.get("result"), error=error,
                    elapsed=elapsed, health=parse_health(response.get("health", {})),
                    timing=timing)


class GuestSession:
    def __init__(self, machine: Machine, name: str, *, boot_timeout: float,
                 host_grace: float = HOST_GRACE):
        """machine: not started yet; name: the kernel's name; host_grace: how long past a call's
        own timeout the host waits for its answer."""
        self.machine = machine
        self.name = name
        self.boot_timeout = boot_timeout
        self.host_grace = host_grace
        self.info: Hello | None = None
        self.boot_seconds: float | None = None
        self.dead: GuestFailure | None = None
        self._ids = itertools.count(1)

    @property
    def uname(self) -> str:
        return self.info["release"] if self.info else ""

    @property
    def bpf_jit_enable(self) -> int | None:
        """The guest's net.core.bpf_jit_enable as its agent read it at start; None: unknown."""
        return self.info.get("bpf_jit_enable") if self.info else None

    def start(self) -> None:
        """Start the machine and wait for the agent's hello. Whatever goes wrong, the machine is
        killed before this returns: a failed start never leaves a machine running."""
        deadline = time.monotonic() + self.boot_timeout
        try:
            self.machine.start()  # an SSH target may already fail here (GuestDied)
            self.info = self._await_hello(deadline)
        except GuestDied as exc:
            self.machine.kill()
            raise BootFailure(f"{self.name}: {self.machine.noun} died while starting ({exc})"
                              f"{self.machine.failure_hint()}",
                              self.machine.console.tail()) from None
        except BaseException:
            self.machine.kill()
            raise
        started = self.machine.started_at  # set by a machine's start()
        self.boot_seconds = time.monotonic() - started if started is not None else None

    def _await_hello(self, deadline: float) -> Hello:
        preamble: list[str] = []
        while True:
            line = self.machine.receive(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise BootFailure(f"{self.name}: no agent within {self.boot_timeout:.0f}s of "
                                  f"starting {self.machine.noun} (boot hang?)"
                                  f"{self.machine.failure_hint()}", self.machine.console.tail())
            if (not line.startswith("{") and len(preamble) < MAX_PREAMBLE_LINES
                    and not isinstance(line, ChannelOverflow)):
                preamble.append(line)  # not the agent yet (a login shell's greeting)
                continue
            try:
                return parse_hello(line)
            except Malformed as exc:
                raise BootProtocolError(
                    f"{self.name}: {self.machine.noun} did not start the agent: instead of its "
                    f"hello it sent {excerpt(line)}: {exc}", self.machine.console.tail()) from None

    @property
    def agent_start_seconds(self) -> float | None:
        """From the guest's init starting our command (virtme-ng's init, or a direct boot's
        initramfs) to the agent's hello, by the guest's clock: the part of a boot that is Python
        starting and importing the agent."""
        for line in list(self.machine.console.lines):
            # The console is the guest's to write: "[ 1.2.3]" is no time, 400 digits no finite one.
            m = SCRIPT_STARTED.match(line)
            if m and self.info and "uptime" in self.info:
                seconds = self.info["uptime"] - float(m.group(1))
                return seconds if math.isfinite(seconds) else None
        return None

    def call(self, fn: str, *, timeout: float, **kwargs: object) -> CallResult:
        """Run guest-side function fn ("module:function") with kwargs; raise on guest failure.
        A host file given as a path object (a BPF object) reaches the function as the path the
        guest sees it at. The answer is due within timeout plus the host's grace, whatever the
        machine sends meanwhile."""
        if self.dead:
            raise self.dead
        request_id = next(self._ids)
        mark = self.machine.console.count
        deadline = time.monotonic() + timeout + self.host_grace
        try:
            kwargs = {k: self.machine.guest_path(Path(v), within=deadline - time.monotonic())
                      if isinstance(v, os.PathLike) else v for k, v in kwargs.items()}
            self.machine.send(json.dumps({"id": request_id, "op": "call", "fn": fn,
                                          "kwargs": kwargs, "timeout": timeout}))
            line = self.machine.receive(timeout=max(0.0, deadline - time.monotonic()))
        except GuestDied as exc:
            self.machine.console.ended.wait(0.2)  # its last console lines may be in flight
            self._die(GuestCrash(f"{self.machine.noun} died during {fn} ({exc})",
                                 self.machine.console.tail(200, since=mark)
                                 or self.machine.console.tail(60)))
        if line is None:
            self._die(GuestHang(
                f"{fn} did not return within {timeout + self.host_grace:.0f}s; "
                f"{self.machine.noun} is replaced",
                self.machine.console.tail(60, since=mark) or self.machine.console.tail(20)))
        try:
            response = parse_response(line)
            if response.id != request_id:  # one request at a time: nothing else may answer
                raise Malformed(f"it answers request {response.id}, not {request_id}")
        except Malformed as exc:
            self._die(GuestProtocolError(
                f"{self.machine.noun} broke the agent protocol during {fn}; it is replaced. "
                f"Received {excerpt(line)}: {exc}",
                self.machine.console.tail(60, since=mark) or self.machine.console.tail(20)))
        result = CallResult(result=response.result, elapsed=response.elapsed,
                            health=response.health, error=response.error, timing=response.timing)
        if response.error is not None:  # parse_response gives one exactly when not ok
            if response.error["type"] == "CallTimeout":
                raise GuestHang(f"{fn}: {response.error['message']}",
                                self.machine.console.tail(20, since=mark))
            raise GuestCallError(response.error, result.health)
        return result

    def _die(self, failure: GuestFailure) -> NoReturn:
        self.dead = failure
        self.machine.kill()
        raise failure

    def close(self) -> None:
        self.machine.stop()
