"""Part C of issue 16: the guest's words are untrusted input.

Sessions, channels, consoles and the guest pool driven by a FakeMachine replaying saved lines
(tests/fake_machine.py), so no QEMU is booted.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.errors import KernelUnavailable
from harness.judging.crashes import crash_fingerprint
from harness.judging.health import HealthRules
from harness.machines import channel
from harness.machines.channel import ChannelOverflow, Console, LineChannel
from harness.machines.session import (
    BootFailure,
    BootProtocolError,
    GuestCallError,
    GuestCrash,
    GuestFailure,
    GuestHang,
    GuestProtocolError,
    GuestSession,
)
from harness.plugin.run import MAX_REPLACEMENTS, GuestPool
from tests.fake_machine import (
    DIE,
    HANG,
    FakeMachine,
    LiveCount,
    Reply,
    hello_line,
    response_line,
    saved_console,
)

FN = "cases.guest.fake:observe"


def started(tmp_path: Path, replies=(), **options) -> tuple[GuestSession, FakeMachine]:
    machine = FakeMachine(tmp_path / "console.log", replies=replies, **options)
    session = GuestSession(machine, "fake-6.1", boot_timeout=5, host_grace=0.3)
    session.start()
    return session, machine


def good(request: dict, **fields) -> str:
    return response_line(request, {"update": "OK"}, **fields)


def with_field(**changes):
    """A reply to each request: a well-formed response with some fields changed."""
    def reply(request: dict) -> list[str]:
        response = json.loads(good(request))
        response.update(changes)
        return [json.dumps(response)]
    return reply


def test_a_well_formed_call_returns_its_observation_and_health(tmp_path):
    session, machine = started(tmp_path)
    result = session.call(FN, timeout=1, key=3)
    assert result.result is None and result.health["taint_after"] == 0
    assert machine.requests[-1]["kwargs"] == {"key": 3}
    session.close()
    assert not machine.alive


MALFORMED_RESPONSES = {
    "not JSON": lambda request: ['{"id": 1, "ok": tru'],
    "plain text": lambda request: ["Traceback (most recent call last):"],
    "a JSON list": lambda request: ["[1, 2, 3]"],
    "error is a string": with_field(ok=False, error="boom"),
    "error without a message": with_field(ok=False, error={"type": "OSError"}),
    "ok is a string": with_field(ok="yes"),
    "id is a string": with_field(id="1"),
    "elapsed is a string": with_field(elapsed="fast"),
    "elapsed is NaN": lambda request: [good(request).replace('"elapsed": 0.001',
                                                             '"elapsed": NaN')],
    "health is a list": with_field(health=[]),
    "taint is a string": with_field(health={"log_before": [], "log_during": [],
                                            "taint_before": 0, "taint_after": "512"}),
    "log lines are not a list": with_field(health={"log_before": [], "log_during": "WARNING",
                                                   "taint_before": 0, "taint_after": 0}),
    "a number in the log lines": with_field(health={"log_before": [], "log_during": [1],
                                                    "taint_before": 0, "taint_after": 0}),
    "a lone surrogate": lambda request: [good(request).replace('"OK"', '"\\ud800"')],
    "an Infinity in the result": lambda request: [good(request).replace('"OK"', 'Infinity')],
    "nested too deeply": lambda request: ["{" + '"a": [' * 100000],
    "another request's answer": lambda request: [good({"id": request["id"] + 7})],
    # the split of a call's time (harness/agent/timing.py): what ./kconform bench adds up
    "timing is a list": with_field(timing=[0.0]),
    "timing is null": with_field(timing=None),
    "timing names an unknown kind": with_field(timing={"bpf_load": 0.0, "python": 0.0}),
    "a timing that is a string": with_field(timing={"waiting": "0.5"}),
    "a timing that is true": with_field(timing={"sockets": True}),
    "a negative timing": with_field(timing={"waiting": -0.5}),
    "timing that adds up past elapsed": with_field(elapsed=0.5, timing={
        "bpf_load": 0.3, "waiting": 0.2, "sockets": 0.001}),
}


@pytest.mark.parametrize("reply", MALFORMED_RESPONSES.values(), ids=MALFORMED_RESPONSES.keys())
def test_a_malformed_response_fails_the_call_with_what_was_received(tmp_path, reply):
    session, machine = started(tmp_path, replies=reply)
    health = HealthRules()
    with pytest.raises(GuestProtocolError) as failure:
        result = session.call(FN, timeout=1)
        health.check(result.health)  # what the plugin does next with a result
    message = str(failure.value)
    assert f"the fake guest broke the agent protocol during {FN}" in message
    sent = reply(machine.requests[-1])[0]
    assert repr(sent[:60])[:-1] in message  # the bytes received, as received
    assert len(message) < 1000  # a huge line is shown shortened
    assert session.dead is failure.value and not machine.alive  # replaced, not reused
    with pytest.raises(GuestProtocolError):
        session.call(FN, timeout=1)


def test_a_calls_timing_is_kept_as_sent_and_none_is_an_empty_split(tmp_path):
    split = {"bpf_load": 0.25, "waiting": 0.5, "sockets": 0}
    session, _ = started(tmp_path, replies=[[with_field(elapsed=0.75, timing=split)(
        {"id": 1})[0]]])
    assert session.call(FN, timeout=1).timing == split  # adding up to elapsed exactly is fine
    assert session.call(FN, timeout=1).timing == {}  # the fake's own answer has no timing
    session.close()


def test_a_long_malformed_line_is_shown_shortened_with_its_size(tmp_path):
    junk = "x" * 5000 + "END"
    session, _ = started(tmp_path, replies=[[junk]])
    with pytest.raises(GuestProtocolError, match=r"'xxx+' \.\.\. 'x+END' \(5003 bytes\)"):
        session.call(FN, timeout=1)


def test_a_line_over_the_channel_limit_is_refused_by_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(channel, "MAX_CHANNEL_LINE", 4096)
    session, _ = started(tmp_path, replies=[["{" + " " * 10000 + "}"]])
    with pytest.raises(GuestProtocolError, match=r"a line of 10003 bytes, longer than"):
        session.call(FN, timeout=1)


def test_a_guest_side_error_is_the_guests_own_failure_with_its_traceback(tmp_path):
    error = {"type": "BpfError", "message": "load failed", "traceback": "File guest.py",
             "verifier_log": "invalid access to packet", "errno_name": "EACCES"}
    session, machine = started(tmp_path, replies=lambda r: [response_line(r, error=error)])
    with pytest.raises(GuestCallError, match="(?s)BpfError: load failed.*invalid access.*guest.py"):
        session.call(FN, timeout=1)
    assert session.dead is None and machine.alive  # the guest itself is fine


BAD_HELLOS = {
    "not JSON": "{event: ready}",
    "no ready event": json.dumps({"event": "booted", "release": "6.1"}),
    "release is a number": hello_line(release=6.1),
    "uptime is a string": hello_line(uptime="16.5"),
    "taint is a string": hello_line(taint="0"),
    "boot log is a string": hello_line(boot_log="[ 0.0] Linux"),
}


@pytest.mark.parametrize("hello", BAD_HELLOS.values(), ids=BAD_HELLOS.keys())
def test_a_malformed_hello_fails_the_boot_and_kills_the_machine(tmp_path, hello):
    machine = FakeMachine(tmp_path / "console.log",
                          boot=Reply(console=saved_console("boot-6.1-clean.log"), lines=[hello]))
    session = GuestSession(machine, "fake-6.1", boot_timeout=5)
    with pytest.raises(BootProtocolError) as failure:
        session.start()
    assert isinstance(failure.value, BootFailure)  # the pool's boot-failure path takes it
    assert f"did not start the agent: instead of its hello it sent {hello[:30]!r}"[:-1] \
        in str(failure.value)
    assert any("udev is done" in line for line in failure.value.console)  # the saved boot log
    assert not machine.alive and machine.live_count.live == 0


def test_a_login_greeting_before_the_hello_is_tolerated(tmp_path):
    machine = FakeMachine(tmp_path / "console.log",
                          boot=Reply(lines=["Welcome to lab1", "", hello_line("6.12.1")]))
    session = GuestSession(machine, "lab1", boot_timeout=5)
    session.start()
    assert session.uname == "6.12.1"


def test_a_flood_of_lines_instead_of_the_hello_fails_the_boot_at_once(tmp_path):
    machine = FakeMachine(tmp_path / "console.log", boot=Reply(lines=["ok"] * 1000))
    session = GuestSession(machine, "lab1", boot_timeout=30)
    began = time.monotonic()
    with pytest.raises(BootProtocolError, match="instead of its hello it sent 'ok': not JSON"):
        session.start()
    assert time.monotonic() - began < 5 and not machine.alive


def test_a_chatty_guest_cannot_hold_a_call_past_its_deadline(tmp_path):
    # Before: every line restarted the wait, so a guest talking every 0.2 s held a 0.5 s call
    # as long as it talked.
    session, machine = started(tmp_path, replies=[Reply(then=HANG)])
    for i in range(1, 40):  # lines the guest sends unasked while the call runs
        machine.say(Reply(lines=[f"noise {i}"], delay=0.2 * i))
    began = time.monotonic()
    with pytest.raises(GuestFailure):
        session.call(FN, timeout=0.5)
    assert time.monotonic() - began < 0.5 + 0.3 + 0.5


def test_stale_answers_cannot_hold_a_call_past_its_deadline(tmp_path):
    def stale(request):  # answers to some other request, one every 0.2 s
        return Reply(lines=[good({"id": 0})], delay=0.2)
    session, _ = started(tmp_path, replies=stale)
    began = time.monotonic()
    with pytest.raises(GuestProtocolError, match="answers request 0, not 1"):
        session.call(FN, timeout=0.5)
    assert time.monotonic() - began < 0.5 + 0.3 + 0.5


def test_a_silent_guest_is_a_hang_after_the_timeout_and_the_grace(tmp_path):
    session, machine = started(tmp_path, replies=[Reply(then=HANG)])
    began = time.monotonic()
    with pytest.raises(GuestHang, match="did not return within 1s"):
        session.call(FN, timeout=0.5)
    assert 0.75 < time.monotonic() - began < 2.0
    assert not machine.alive


def test_a_panic_during_a_call_is_a_crash_with_the_saved_panics_fingerprint(tmp_path):
    panic = saved_console("panic-6.1-sysrq.log")
    session, _ = started(tmp_path, replies=[Reply(console=panic, then=DIE)])
    with pytest.raises(GuestCrash, match="the fake guest died during .*kernel panic") as failure:
        session.call(FN, timeout=1)
    assert crash_fingerprint(failure.value.console) == \
        "sysrq_handle_crash|__handle_sysrq|write_sysrq_trigger|proc_reg_write"
    assert any("Kernel panic - not syncing: sysrq triggered crash" in line
               for line in failure.value.console)


def test_a_panic_that_leaves_the_machine_hanging_is_noticed_on_the_console(tmp_path):
    panic = saved_console("panic-6.1-sysrq.log")
    session, machine = started(tmp_path, replies=[Reply(console=panic, then=HANG)])
    with pytest.raises(GuestCrash, match="kernel panic"):
        session.call(FN, timeout=30)
    assert not machine.alive


# ----------------------------------------------------------------------------- the pool

TREE = SimpleNamespace(exact_version="6.1.176-1", target=None, suite="bookworm")


class FakePool(GuestPool):
    """The plugin's pool with fake machines in place of QEMU guests."""

    def __init__(self, tmp_path: Path, make_machine, boot_timeout: float = 5.0):
        run = SimpleNamespace(target_trees={}, pinned={},
                              provider=SimpleNamespace(get=lambda name: TREE),
                              results_dir=tmp_path, worker="main", kernels={})
        super().__init__(run)
        self.make_machine = make_machine
        self.boot_timeout = boot_timeout
        self.made: list[FakeMachine] = []

    def new_machine(self, name, tree, log):
        self.made.append(self.make_machine(log))
        return self.made[-1], self.boot_timeout


def run_tests(pool: GuestPool, count: int) -> list[Exception]:
    """What the plugin does for `count` tests of one kernel: a session, then one call."""
    failures = []
    for _ in range(count):
        try:
            pool.session("fake-6.1").call(FN, timeout=1)
        except Exception as exc:
            failures.append(exc)
    pool.close()
    return failures


def test_a_guest_with_a_malformed_hello_is_booted_once_and_never_left_running(tmp_path):
    # Before: the hello's JSONDecodeError escaped the boot unkilled and uncounted as a failure,
    # so every following test booted another guest beside it (4 at once).
    live = LiveCount()
    pool = FakePool(tmp_path, lambda log: FakeMachine(log, live=live,
                                                      boot=Reply(lines=["{not json"])))
    failures = run_tests(pool, 6)
    assert live.most == 1 and live.started == 1 and live.live == 0
    assert all(isinstance(f, BootFailure) for f in failures) and len(failures) == 6


def test_guests_that_break_the_protocol_are_replaced_one_at_a_time(tmp_path):
    live = LiveCount()
    pool = FakePool(tmp_path, lambda log: FakeMachine(log, live=live,
                                                      replies=with_field(error="boom", ok=False)))
    failures = run_tests(pool, 8)
    assert live.most == 1 and live.live == 0
    assert live.started == MAX_REPLACEMENTS + 1  # then the kernel's tests fail fast
    assert all(isinstance(f, GuestFailure) for f in failures)


def test_no_replacement_starts_while_the_last_machine_still_runs(tmp_path):
    live = LiveCount()
    pool = FakePool(tmp_path, lambda log: FakeMachine(log, live=live, replies=[["garbage"]],
                                                      kill_leaves_it_running=True))
    failures = run_tests(pool, 3)
    assert live.started == 1 and live.most == 1
    assert isinstance(failures[1], BootFailure)
    assert "still running after being killed; not starting another" in str(failures[1])
    assert pool.made[0].kills >= 2  # the pool tried to kill it again before giving up


def test_a_start_that_fails_leaves_nothing_running(tmp_path):
    live = LiveCount()
    pool = FakePool(tmp_path, lambda log: FakeMachine(log, live=live, boot=Reply(then=HANG)),
                    boot_timeout=0.3)
    failures = run_tests(pool, 2)
    assert isinstance(failures[0], BootFailure) and "no agent within" in str(failures[0])
    assert live.live == 0 and live.started == 1


# ----------------------------------------------------------------------------- consoles

def test_a_console_log_never_holds_a_previous_runs_lines(tmp_path):
    log = tmp_path / "debian-6.1-main-0.log"
    log.write_text("a line from yesterday's run\n")
    console = Console(log)
    console.pump([b"today 1\n", b"today 2\n"])
    assert log.read_text() == "today 1\ntoday 2\n"


def test_a_console_log_stops_at_its_cap_and_says_so(tmp_path):
    log = tmp_path / "console.log"
    console = Console(log, max_bytes=1000)
    lines = [f"[ {i:6}] line {i}\n".encode() for i in range(500)]
    lines.insert(400, b"Kernel panic - not syncing: after the cap\n")
    console.pump(lines)
    text = log.read_text()
    kept = text.split("kconform: console log capped at 1000 bytes")[0]
    fits = max(n for n in range(len(lines)) if sum(map(len, lines[:n])) <= 1000)
    assert kept == b"".join(lines[:fits]).decode()
    assert f"kconform: {len(lines) - fits} lines" in text and "after the cap were not" in text
    assert log.stat().st_size < 1400
    assert console.count == 501 and console.tail(1) == ["[    499] line 499"]
    assert console.panicked.is_set()  # lines past the cap are still read for crash reports


def test_a_console_line_without_an_end_is_kept_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(channel, "MAX_CONSOLE_LINE", 100)
    console = Console(tmp_path / "console.log")
    console.pump([b"y" * 250])
    assert [len(line) for line in console.tail()] == [100, 100, 50]


def test_lines_nobody_asked_for_are_not_hoarded(tmp_path):
    line_channel = LineChannel(Console(tmp_path / "console.log"))
    line_channel.pump(f"{i}\n".encode() for i in range(channel.MAX_PENDING_LINES + 1000))
    assert line_channel.dropped == 1000
    queued = list(line_channel._lines.queue)
    assert len(queued) == channel.MAX_PENDING_LINES + 1 + 1  # the overflow, and the EOF
    assert isinstance(queued[-2], ChannelOverflow) and queued[-1] is None


def test_a_chatty_guest_cannot_make_the_host_hold_its_lines(tmp_path):
    """Review finding 3. Before: only the number of waiting lines was capped (256, of up to
    16 MiB each, ~4 GiB), and the response after them was dropped without a trace."""
    line_channel = LineChannel(Console(tmp_path / "console.log"))
    chatter = (b"x" * 100_000 + b"\n" for _ in range(300))
    line_channel.pump(itertools.chain(chatter, [good({"id": 1}).encode() + b"\n"]))
    queued = list(line_channel._lines.queue)
    held = sum(len(line) for line in queued if line is not None)
    assert held <= channel.MAX_PENDING_BYTES + 1000, f"{held} bytes of lines held unread"
    assert isinstance(queued[-2], ChannelOverflow), "the lines past the cap vanished unnoticed"
    assert queued[-2].size >= 100_000 and queued[-1] is None


def test_the_bytes_read_are_counted_off_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(channel, "MAX_PENDING_BYTES", 250)
    line_channel = LineChannel(Console(tmp_path / "console.log"))
    for line in ("a" * 100, "b" * 100):  # as pump() queues them, without its EOF
        line_channel._queue(line)
    assert line_channel.receive(1, lambda: "ended") == "a" * 100
    line_channel._queue("c" * 100)  # 200 bytes unread again, not 300
    assert line_channel.receive(1, lambda: "ended") == "b" * 100
    assert line_channel.receive(1, lambda: "ended") == "c" * 100


def test_lines_past_the_cap_are_a_protocol_error_never_a_lost_response(tmp_path, monkeypatch):
    monkeypatch.setattr(channel, "MAX_PENDING_BYTES", 100_000)
    session, machine = started(tmp_path, replies=lambda request: ["y" * 120_000, good(request)])
    with pytest.raises(GuestProtocolError, match="nobody asked for") as broke:
        session.call(FN, timeout=1)
    assert "bytes dropped" in str(broke.value)
    assert not machine.alive


@pytest.mark.parametrize("stamp", ["1.2.3", ".", "..", "1.", "9" * 400 + ".0"])
def test_a_console_stamp_that_is_no_time_gives_no_agent_start_time(tmp_path, stamp):
    """Review finding 6. Before: float("1.2.3") raised ValueError in the guest fixture."""
    session, machine = started(tmp_path)
    machine.console.pump([f"[ {stamp}] virtme-ng-init: starting script\n".encode()])
    assert session.agent_start_seconds is None


@pytest.mark.parametrize("start", ["virtme-ng-init: starting script",
                                   "virtme-init: starting script",  # arm64 guests
                                   # a direct boot's initramfs (machines/initramfs.py)
                                   "kconform-init: starting the agent on /dev/vport0p1"])
def test_the_agent_start_time_is_the_hello_uptime_less_the_scripts_start(tmp_path, start):
    session, machine = started(tmp_path)  # the hello says uptime 16.5
    machine.console.pump([f"[    4.250000] {start}\n".encode()])
    assert session.agent_start_seconds == pytest.approx(12.25)


def test_a_kernel_that_cannot_be_fetched_is_asked_for_once_per_run(tmp_path):
    """Every case of a kernel whose fetch failed fetched it again (a minute of apt per case)."""
    asked = []

    def unavailable(name):
        asked.append(name)
        raise KernelUnavailable(f"{name}: apt-get download failed")
    pool = FakePool(tmp_path, lambda log: pytest.fail("no machine without a tree"))
    pool.run.provider = SimpleNamespace(get=unavailable)
    for _ in range(3):
        with pytest.raises(KernelUnavailable, match="download failed"):
            pool.tree("fake-6.1")
    assert asked == ["fake-6.1"]


def test_a_worker_boots_the_build_the_controller_resolved_under_the_plain_name(tmp_path):
    """Under xdist each worker resolved a plain name itself: two could boot different builds
    under one name (a listing expiring mid-run, --refresh-kernels)."""
    asked = []

    def get(name):
        asked.append(name)
        return SimpleNamespace(exact_version="1.0-2", target=None, suite="s", name=name)
    pool = FakePool(tmp_path, lambda log: pytest.fail("not booted here"))
    pool.run.provider = SimpleNamespace(get=get)
    pool.run.pinned = {"fake-6.1": "fake-6.1@1.0-2"}
    assert pool.tree("fake-6.1").name == "fake-6.1" and asked == ["fake-6.1@1.0-2"]
