"""What the agent sends about a call is what the host reads: no field is written for nobody (the
agent sent an error's op, which the session dropped, and the log before each call, which nothing
read)."""
import errno
import json

from harness.agent import agent
from harness.agent.libbpf import BpfError
from harness.machines.session import parse_response

# The fields HealthRules.check judges a call by.
HEALTH_READ = {"log_during", "taint_before", "taint_after"}


class QuietKernelLog(agent.KernelLog):
    def __init__(self) -> None:
        self.fd = None  # drain() finds nothing


def refused_load() -> None:
    raise BpfError(errno.EACCES, "load prog.bpf.o", verifier_log="invalid access to packet")


def test_a_failed_call_sends_only_what_the_session_keeps():
    request = {"op": "call", "id": 1, "fn": f"{__name__}:refused_load", "kwargs": {},
               "timeout": 5}
    response = {"id": 1, **agent.handle(request, QuietKernelLog())}
    parsed = parse_response(json.dumps(response))
    assert not parsed.ok
    assert parsed.error is not None and set(response["error"]) == set(parsed.error)
    assert parsed.error["verifier_log"] == "invalid access to packet"
    assert "EACCES" in parsed.error["message"]
    assert set(response["health"]) == HEALTH_READ
    assert parsed.timing == response["timing"]  # a failed call's time is split too


def test_a_call_that_works_sends_its_result_time_and_health():
    request = {"op": "call", "id": 2, "fn": "harness.agent.sockets:loopback",
               "kwargs": {"family": 2}, "timeout": 5}
    response = agent.handle(request, QuietKernelLog())
    assert set(response) == {"ok", "result", "elapsed", "health", "timing"}
    parsed = parse_response(json.dumps({"id": 2, **response}))
    assert parsed.result == "127.0.0.1"
    assert set(response["health"]) == HEALTH_READ
    # every kind the agent measures (harness/agent/timing.py KINDS), kept as sent
    assert set(response["timing"]) == {"bpf_load", "waiting", "sockets"}
    assert parsed.timing == response["timing"]
