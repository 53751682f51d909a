"""Where a guest call's time goes (harness/agent/timing.py), measured by the agent on the host's
own Python: real waits, real loopback sockets, and BpfObject's open and load on a stand-in
libbpf (a real load needs a guest). No VM."""
from __future__ import annotations

import ast
import select
import socket
import time
from pathlib import Path

import pytest

from harness.agent import agent, libbpf, sockets, timing
from harness.machines import session
from harness.paths import REPO_ROOT

SLEEP = 0.05
SPIN = 0.05


class QuietKernelLog(agent.KernelLog):
    def __init__(self) -> None:
        self.fd = None


def spin(seconds: float) -> None:
    """Busy on the CPU, not waiting: time that is the span's own."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def measured(function, *args, **kwargs):
    """(what function returned, its CallTiming, its elapsed seconds), measured as a call."""
    started = time.monotonic()
    call = timing.start()
    try:
        result = function(*args, **kwargs)
    finally:
        timing.stop()
    return result, call.seconds, time.monotonic() - started


def test_a_sleep_and_a_select_on_a_silent_socket_are_waiting():
    """The wait for bytes that never come (sockets.received's select)."""
    a, b = socket.socketpair()
    with a, b:
        def call():
            time.sleep(SLEEP)
            return sockets.received(a, wait=SLEEP)
        got, seconds, elapsed = measured(call)
    assert got == b""
    assert 2 * SLEEP <= seconds["waiting"] <= elapsed
    assert seconds["sockets"] == seconds["bpf_load"] == 0.0


def test_a_poll_objects_poll_is_waiting_and_the_rest_of_it_works():
    a, b = socket.socketpair()
    with a, b:
        def call():
            poller = select.poll()
            poller.register(a, select.POLLIN)
            return poller.poll(SLEEP * 1000)
        events, seconds, _ = measured(call)
    assert events == []
    assert seconds["waiting"] >= SLEEP


def test_an_accept_that_waits_off_the_cpu_is_waiting():
    """A handshake the caller sleeps through (vsock's runs in a work queue) is waiting: here an
    accept that times out, as redirect_matrix's _vsock_pair's would."""
    listener = sockets.tcp_listener()
    listener.settimeout(SLEEP)
    with listener:
        call = timing.start()
        try:
            with pytest.raises(TimeoutError):
                listener.accept()
        finally:
            timing.stop()
    assert call.seconds["waiting"] >= SLEEP * 0.9


def test_socket_set_up_is_sockets_and_no_second_is_counted_twice():
    """tcp_pair's handshake on loopback runs on the caller's CPU (sockets); a wait inside a
    sockets span is the wait's, not sockets' too."""
    def call():
        client, server = sockets.tcp_pair()
        client.close()
        server.close()
        a, b = sockets.udp_pair()
        a.close()
        b.close()
    _, seconds, elapsed = measured(call)
    assert seconds["sockets"] > 0 and seconds["waiting"] < seconds["sockets"]
    assert sum(seconds.values()) <= elapsed

    @timing.timed("sockets")
    def set_up_with_a_wait():
        spin(SPIN)
        time.sleep(SLEEP)
    _, seconds, elapsed = measured(set_up_with_a_wait)
    assert seconds["waiting"] >= SLEEP and SPIN <= seconds["sockets"] < SPIN + SLEEP / 2
    assert sum(seconds.values()) <= elapsed


class LoadingLibbpf:
    """A libbpf whose object has no programs and whose load is CPU work of SPIN seconds."""

    def bpf_object__open_file(self, path, opts):
        return 1

    def bpf_object__next_program(self, obj, prog):
        return None

    def bpf_object__load(self, obj):
        spin(SPIN)
        return 0

    def bpf_object__close(self, obj):
        pass


def test_a_bpf_objects_open_and_load_is_bpf_load(monkeypatch):
    monkeypatch.setattr(libbpf, "_lib", LoadingLibbpf())

    def call():
        with libbpf.BpfObject("/objects/prog.bpf.o"):
            spin(SPIN)  # what a case does with it: not the load's
    _, seconds, elapsed = measured(call)
    assert SPIN <= seconds["bpf_load"] < SPIN * 1.9
    assert sum(seconds.values()) <= elapsed


def test_nothing_stays_wrapped_after_a_call_and_stopping_twice_is_harmless():
    before = (select.select, select.poll, time.sleep, socket.socket.accept)
    timing.start()
    assert select.select is not before[0] and "connect" in vars(socket.socket)
    timing.start()  # a second start wraps the originals, not the wrappers
    timing.stop()
    timing.stop()
    assert (select.select, select.poll, time.sleep, socket.socket.accept) == before
    assert "connect" not in vars(socket.socket)  # _socket.socket's, inherited again
    assert timing._current is None


def waits(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def test_the_agent_measures_each_call_and_unwraps_after_it():
    request = {"op": "call", "id": 1, "fn": f"{__name__}:waits", "kwargs": {"seconds": SLEEP},
               "timeout": 5}
    response = agent.handle(request, QuietKernelLog())
    assert response["result"] == "done"
    assert SLEEP <= response["timing"]["waiting"] <= response["elapsed"]
    assert time.sleep is timing._WRAPPED[1][2]  # the original again


def test_a_call_that_runs_out_of_time_leaves_nothing_wrapped():
    request = {"op": "call", "id": 1, "fn": f"{__name__}:waits", "kwargs": {"seconds": 5},
               "timeout": 0.1}
    response = agent.handle(request, QuietKernelLog())
    assert response["error"]["type"] == "CallTimeout"
    assert response["timing"]["waiting"] <= response["elapsed"]
    assert select.select is timing._WRAPPED[0][2] and time.sleep is timing._WRAPPED[1][2]


def test_the_host_reads_the_kinds_the_agent_measures():
    """session.py may not import the agent's modules: its own copy of the kinds."""
    assert session.TIMING_KINDS == timing.KINDS


# The waits timing.py wraps, and the imports that would take them past it.
WAITS = {"select": {"select", "poll"}, "time": {"sleep"}}


def bypassing_imports(path: Path) -> list[str]:
    """`from select import select` and the like: a name bound at import, which no wrapper
    installed later reaches. selectors binds select.poll when it is imported."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in WAITS:
            found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                      if a.name in WAITS[node.module] or a.name == "*"]
        if isinstance(node, ast.Import):
            found += [f"{path.name}: import selectors" for a in node.names
                      if a.name == "selectors"]
    return found


def guest_side_files() -> list[Path]:
    return sorted([*(REPO_ROOT / "cases" / "guest").glob("*.py"),
                   *(REPO_ROOT / "harness" / "agent").glob("*.py")])


def test_every_wait_of_the_guest_side_goes_through_what_the_agent_wraps():
    assert [problem for path in guest_side_files() for problem in bypassing_imports(path)] == []


def test_the_check_sees_an_import_that_bypasses_the_wrappers(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from select import select\nfrom time import monotonic, sleep\n"
                     "import selectors\n")
    assert bypassing_imports(probe) == ["probe.py: from select import select",
                                        "probe.py: from time import sleep",
                                        "probe.py: import selectors"]
