"""Part C of issue 16: fuzz the agent protocol. Whatever lines a machine sends (text, JSON of any
shape, the agent's own messages with fields changed) and whatever its console shows, a session
either gets a well-typed answer or raises one of kconform's own failures; the plugin's health
check and failure report then work on what it got.
"""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.judging.crashes import crash_fingerprint
from harness.judging.health import HealthRules
from harness.machines.session import (
    CallResult,
    GuestCallError,
    GuestFailure,
    GuestSession,
)
from harness.plugin.run import _failure_text
from tests.fake_machine import CLEAN_HEALTH, DIE, FakeMachine, Reply, hello_line, response_line

FUZZ = settings(max_examples=120, deadline=None)
RULES = HealthRules()
DELETE = object()  # an override that removes the field

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10)
overrides = st.dictionaries(st.sampled_from(["id", "ok", "result", "error", "elapsed", "health"]),
                            json_values | st.just(DELETE), max_size=3)
health_overrides = st.dictionaries(
    st.sampled_from(["log_before", "log_during", "taint_before", "taint_after"]),
    json_values | st.lists(st.text(max_size=30), max_size=3) | st.just(DELETE), max_size=2)
error_values = st.fixed_dictionaries(
    {}, optional={"type": st.text(max_size=10) | json_values, "message": json_values,
                  "traceback": json_values, "verifier_log": json_values})
raw_lines = st.text(max_size=60) | json_values.map(json.dumps)
console_lines = st.lists(st.text(max_size=60) | st.sampled_from(
    ["Call Trace:", " sock_map_update+0x1/0x2", "Kernel panic - not syncing: x",
     "[ 1.0] ? guess+0x1/0x2", "---[ end Kernel panic",
     # what the boot-time measure reads, as the guest may write it (review finding 6)
     "[    1.234567] virtme-ng-init: starting script", "[ 1.2.3] virtme-ng-init: starting script",
     "[ .] virtme-ng-init: starting script", "[ 1e400] virtme-ng-init: starting script"]),
    max_size=8)


def _apply(base: dict, changes: dict) -> dict:
    changed = dict(base)
    for key, value in changes.items():
        if value is DELETE:
            changed.pop(key, None)
        else:
            changed[key] = value
    return changed


@st.composite
def replies(draw) -> tuple[list, list[str]]:
    """What the machine sends in answer to a call: a few lines, each a response built for the
    request with fields changed, or any line at all; console lines before them."""
    plan = draw(st.lists(st.one_of(
        st.tuples(st.just("response"), overrides, health_overrides, error_values),
        st.tuples(st.just("raw"), raw_lines)), min_size=0, max_size=3))
    return plan, draw(console_lines)


def _render(plan: list, request: dict) -> list[str]:
    lines = []
    for step in plan:
        if step[0] == "raw":
            lines.append(step[1])
            continue
        _, changes, health_changes, error = step
        response = json.loads(response_line(request, {"lookup": "OK"}))
        response["health"] = _apply(CLEAN_HEALTH, health_changes)
        if error:
            response.update(ok=False, error=error)
            response.pop("result")
        lines.append(json.dumps(_apply(response, changes)))
    return lines


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _judge_failure(failure: GuestFailure) -> None:
    """What the plugin does with a lost guest: it must not fail on what the guest sent."""
    assert isinstance(str(failure), str)
    crash_fingerprint(failure.console)
    _failure_text(failure, None, RULES, None)


@FUZZ
@given(lines=st.lists(raw_lines | st.builds(
    lambda changes: json.dumps(_apply(json.loads(hello_line()), changes)),
    st.dictionaries(st.sampled_from(["event", "release", "uptime", "taint", "boot_log",
                                     "python", "proc_version"]),
                    json_values | st.just(DELETE), max_size=3)), max_size=4),
       console=console_lines)
def test_any_lines_at_boot_start_a_session_or_fail_its_boot(log_dir, lines, console):
    machine = FakeMachine(log_dir / "boot.log", boot=Reply(lines=lines, console=console, then=DIE))
    session = GuestSession(machine, "fuzz", boot_timeout=5)
    try:
        session.start()
    except GuestFailure as failure:
        _judge_failure(failure)
        assert not machine.alive
        return
    assert isinstance(session.uname, str)
    seconds = session.agent_start_seconds
    assert seconds is None or math.isfinite(seconds)
    session.close()


@FUZZ
@given(reply=replies())
def test_any_answer_to_a_call_is_a_result_or_one_of_kconforms_failures(log_dir, reply):
    plan, console = reply
    machine = FakeMachine(log_dir / "call.log",
                          replies=lambda request: Reply(lines=_render(plan, request),
                                                        console=console, then=DIE))
    session = GuestSession(machine, "fuzz", boot_timeout=5, host_grace=0.1)
    session.start()
    try:
        result = session.call("cases.guest.fuzz:observe", timeout=0.1)
    except GuestCallError as failure:
        assert isinstance(str(failure), str)
        RULES.check(failure.health)  # the plugin checks health after a guest-side error too
    except GuestFailure as failure:
        _judge_failure(failure)
        assert session.dead is failure and not machine.alive
    else:
        assert isinstance(result, CallResult) and math.isfinite(result.elapsed)
        RULES.check(result.health)
        json.dumps(result.result)  # reports can hold the observation
    finally:
        session.close()
