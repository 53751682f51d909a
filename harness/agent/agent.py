"""The guest agent: started once per boot, runs each test's guest-side function on request.

Guest side only, standard library only (it also runs on SSH targets). One JSON object per line on
stdin (requests) and on the saved stdout (responses). fd 1 is pointed at stderr once the channel is
saved, so anything a case prints lands in the console log, never in the protocol.

Every call reports the kernel log records and taint seen before and after it, so the host can
blame a splat on the test that caused it without an extra round trip, and where its time went
(timing.py: BPF loads, waits, socket set-up), so ./kconform bench can say what a case costs.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypedDict

if TYPE_CHECKING:
    from types import FrameType

KMSG_RECORD_MAX = 8192


class CallTimeout(Exception):
    pass


class Request(TypedDict, total=False):
    """One line from the host (harness/machines/session.py writes them): op is "ping", "call",
    "hello", "put" or "exit"; a call names its function ("module:function"), its keyword
    arguments and its time; a put names a file and carries its content (base64)."""
    id: int
    op: str
    fn: str
    kwargs: dict[str, object]
    timeout: float
    name: str
    data: str


class KernelLog:
    """Reads /dev/kmsg records past a position: the kernel log without dmesg's buffer limits."""

    def __init__(self, since_boot: bool = False) -> None:
        """since_boot: the first drain() returns every record still in the ring buffer (the
        boot); otherwise only what happens from now on."""
        self.fd: int | None
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            if not since_boot:
                os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None

    def drain(self) -> list[str]:
        lines = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, KMSG_RECORD_MAX)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records were overwritten before we read them
                lines.append("kconform: kernel log records were lost (ring buffer overrun)")
                continue
            if not record:
                break
            head, _, text = record.decode(errors="replace").partition(";")
            fields = head.split(",")
            stamp = int(fields[2]) / 1e6 if len(fields) > 2 and fields[2].isdigit() else 0.0
            for i, part in enumerate(text.rstrip("\n").split("\n")):
                if i == 0:
                    lines.append(f"[{stamp:12.6f}] {part}")
                elif not part.startswith(" "):
                    continue  # dictionary lines (SUBSYSTEM=...) are metadata
                else:
                    lines.append(f"[{stamp:12.6f}] {part.strip()}")
        return lines


def tainted() -> int:
    try:
        with open("/proc/sys/kernel/tainted") as f:
            return int(f.read().strip() or 0)
    except OSError:
        return -1


# net.core.bpf_jit_enable (Documentation/admin-guide/sysctl/net.rst): 0 runs BPF programs in the
# interpreter, 1 compiles them, 2 compiles them and logs the images. The file is absent when the
# kernel has no JIT (no CONFIG_BPF_JIT); CONFIG_BPF_JIT_ALWAYS_ON fixes it at 1.
BPF_JIT_ENABLE = "/proc/sys/net/core/bpf_jit_enable"


def bpf_jit_enable(path: str = BPF_JIT_ENABLE) -> int | None:
    """Whether the guest runs BPF programs JIT-compiled (see BPF_JIT_ENABLE); None when it cannot
    say. Read once per agent: the cases never change it, and the results record it per kernel,
    since an interpreter and each architecture's JIT are different code under the same case."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _alarm(signum: int, frame: FrameType | None) -> NoReturn:
    raise CallTimeout()


# "module:function" -> the function: each looked up once per agent
_FUNCTIONS: dict[str, Callable[..., object]] = {}


def resolve(name: str) -> Callable[..., object]:
    if name not in _FUNCTIONS:
        module, _, func = name.partition(":")
        _FUNCTIONS[name] = getattr(importlib.import_module(module), func)
    return _FUNCTIONS[name]


def describe_error(exc: BaseException) -> dict[str, object]:
    import traceback  # only when a call failed: it costs 0.15 s of the agent's start under TCG
    info: dict[str, object] = {"type": type(exc).__name__, "message": str(exc),
            "traceback": traceback.format_exc(limit=12)}
    # A BpfError's errno name is in its message already; its verifier log is not.
    verifier_log = getattr(exc, "verifier_log", None)
    if verifier_log:
        info["verifier_log"] = verifier_log
    return info


def handle(request: Request, kmsg: KernelLog) -> dict[str, object]:
    op = request.get("op")
    if op == "ping":
        return {"ok": True, "result": "pong"}
    if op == "call":
        # harness.agent.timing, the module the cases' imports measure with (this file runs as
        # __main__, and the repo is on sys.path once main() put it there)
        from harness.agent import timing
        kmsg.drain()  # what the kernel logged since the last call is not this call's
        before_taint = tainted()
        started = time.monotonic()
        call_timing = timing.start()
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, float(request.get("timeout") or 0))
        try:
            result = resolve(request["fn"])(**request.get("kwargs", {}))
            response: dict[str, object] = {"ok": True, "result": result}
        except CallTimeout:
            response = {"ok": False, "error": {"type": "CallTimeout", "message":
                        "the guest-side function ran past {}s".format(request.get("timeout"))}}
        except BaseException as exc:  # the guest side's failure is the test's evidence
            response = {"ok": False, "error": describe_error(exc)}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            timing.stop()  # once the alarm is off, so nothing interrupts the unwrapping
        response["elapsed"] = time.monotonic() - started
        response["timing"] = call_timing.seconds
        response["health"] = {"log_during": kmsg.drain(),
                              "taint_before": before_taint, "taint_after": tainted()}
        return response
    if op == "hello":
        # A guest restored from a saved one (machines/snapshot.py) is past its first hello: the
        # host asks again, and learns its uptime and anything logged since it was saved.
        return ready_event(kmsg)
    if op == "put":
        return put_file(request.get("name", ""), request.get("data", ""))
    return {"ok": False, "error": {"type": "BadRequest", "message": f"unknown op {op!r}"}}


PUT_DIR = "/run/kconform/files"


def put_file(name: object, data: object) -> dict[str, object]:
    """Write a file the host sent (a BPF object, for a guest that does not share its files) to
    PUT_DIR/name; its path is the result."""
    import base64
    if (not isinstance(name, str) or not name or "/" in name or name.startswith(".")
            or not isinstance(data, str)):
        return {"ok": False, "error": {"type": "BadRequest",
                                       "message": f"put needs a plain file name, not {name!r}"}}
    path = os.path.join(PUT_DIR, name)
    try:
        content = base64.b64decode(data, validate=True)
        os.makedirs(PUT_DIR, exist_ok=True)
        with open(path + ".new", "wb") as f:
            f.write(content)
        os.replace(path + ".new", path)
    except (ValueError, OSError) as exc:  # the host's to report; the agent goes on
        return {"ok": False, "error": {"type": "PutFailed", "message": f"{name}: {exc}"}}
    return {"ok": True, "result": path}


def ready_event(kmsg: KernelLog) -> dict[str, object]:
    """The hello (session.parse_hello reads it): what the host records about this guest before
    its first call."""
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return {"event": "ready", "release": os.uname().release, "uptime": uptime,
            "taint": tainted(), "bpf_jit_enable": bpf_jit_enable(), "boot_log": kmsg.drain()}


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
    sys.path.insert(0, root)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    kmsg = KernelLog(since_boot="--boot-log" in sys.argv[2:])
    # An agent killed in a case may have left a cgroup with a program attached (an SSH target
    # lives on between connections): removed before anything else runs.
    from harness.agent.cgroups import clean_at_start
    clean_at_start()
    channel.write(json.dumps(ready_event(kmsg)) + "\n")
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break  # the host closed the channel: power off
        try:
            request: Request = json.loads(line)
        except ValueError:
            continue
        if request.get("op") == "exit":
            break
        response = handle(request, kmsg)
        response["id"] = request.get("id")
        try:
            text = json.dumps(response)
        except (TypeError, ValueError) as exc:
            text = json.dumps({"id": request.get("id"), "ok": False, "error": {
                "type": "BadResult", "message": f"result is not JSON: {exc}"}})
        channel.write(text + "\n")


if __name__ == "__main__":
    main()
