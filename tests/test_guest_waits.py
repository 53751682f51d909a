"""The events that end the guest-side cases' waits for bytes (cases/guest/redirect.py and
doc_examples.py), on fake results and the host's own sockets: each ends early only on what
proves the outcome, and otherwise waits as long as it always did. No VM."""
from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest

from cases.guest import doc_examples, redirect
from harness.agent.sockets import closing_all, unix_pair

LONG = 5.0  # a bound no passing test comes near: reaching it is the failure


class FakeObject:
    """A BpfObject whose `results` map (sockmap_progs.bpf.c: [0] what the helper last
    returned, [1] the program's runs) holds what the test says."""

    def __init__(self, returned: int, runs: int) -> None:
        self.slots = {0: returned, 1: runs}

    def map_fd(self, name: str) -> int:
        assert name == "results"
        return 42


@pytest.fixture
def results(monkeypatch):
    def make(returned: int, runs: int) -> FakeObject:
        o = FakeObject(returned, runs)
        monkeypatch.setattr(redirect.bpf, "map_lookup", lambda fd, key, size: struct.pack(
            "<q", o.slots[struct.unpack("<I", key)[0]]))
        return o
    return make


@pytest.mark.parametrize("returned, runs, dropped", [
    (redirect.SK_DROP, 1, True),
    (redirect.NOT_YET, 0, False),  # the program has not run
    (redirect.SK_DROP, 0, False),  # what the slot held before the case marked it
    (redirect.NOT_YET, 1, False),  # the count is seen before the program's own write
    (redirect.SK_PASS, 1, False),  # a redirect: its bytes are on their way
    (redirect.SK_DROP, 2, False),  # not the one run a send makes here
])
def test_only_the_programs_own_sk_drop_ends_the_wait(results, returned, runs, dropped):
    assert redirect._dropped(results(returned, runs)) is dropped


@pytest.fixture
def client_and_server() -> Iterator[tuple[tuple, tuple]]:
    """(client, what the kernel would send it), (server, what would reach its application)."""
    client, to_client = unix_pair()
    server, to_server = unix_pair()
    with closing_all(client, to_client, server, to_server):
        yield (client, to_client), (server, to_server)


def exchange(client_and_server, settle, echo=b"", passed=b""):
    (client, to_client), (server, to_server) = client_and_server
    if echo:
        to_client.send(echo)
    if passed:
        to_server.send(passed)
    started = time.monotonic()
    return doc_examples._exchange(client, server, settle), time.monotonic() - started


def test_an_echo_ends_the_wait_and_the_server_is_looked_at_once(client_and_server):
    observed, took = exchange(client_and_server, LONG, echo=doc_examples.PAYLOAD)
    assert observed == {"client_got_its_bytes_back": True, "server_application_got_bytes": False}
    assert took < 1.0


def test_bytes_the_server_reads_end_the_wait_and_the_client_is_looked_at_once(client_and_server):
    observed, took = exchange(client_and_server, LONG, passed=doc_examples.PAYLOAD)
    assert observed == {"client_got_its_bytes_back": False, "server_application_got_bytes": True}
    assert took < 1.0


def test_both_at_once_are_both_seen(client_and_server):
    observed, _ = exchange(client_and_server, LONG, echo=doc_examples.PAYLOAD,
                           passed=doc_examples.PAYLOAD)
    assert observed == {"client_got_its_bytes_back": True, "server_application_got_bytes": True}


def test_a_drop_waits_out_the_bound(client_and_server):
    observed, took = exchange(client_and_server, 0.2)
    assert observed == {"client_got_its_bytes_back": False, "server_application_got_bytes": False}
    assert took >= 0.2


def test_part_of_the_bytes_gives_the_other_socket_the_whole_wait(client_and_server):
    """Not what any verdict here makes: the event proves nothing, so the old wait stands."""
    observed, took = exchange(client_and_server, 0.2, echo=doc_examples.PAYLOAD[:5])
    assert observed == {"client_got_its_bytes_back": False, "server_application_got_bytes": False}
    assert took >= 0.2


class FakeMatrixObject:
    """A redirect-matrix row's BpfObject: every map is one fd; `results` holds what the test
    says, and a slot the case writes keeps the value written."""

    def __init__(self, slot0: int, runs_after_send: int) -> None:
        self.slots = {0: slot0, 1: 0}
        self.runs_after_send = runs_after_send

    def map_fd(self, name: str) -> int:
        return {"sock_map": 1, "sock_hash": 1, "cfg": 2, "results": 3}[name]


def test_a_matrix_combination_does_not_stop_on_a_drop_left_in_the_slot(monkeypatch):
    """The slot still says SK_DROP (its initial 0, or the previous combination's drop) when the
    run count already shows this send's run (another CPU may see the two writes in that order):
    the combination must not end there, as if its bytes were dropped (#17, redirect_matrix.py).
    It writes NOT_YET before the send, so it waits out its bound instead."""
    from cases.guest import redirect_matrix as matrix
    o = FakeMatrixObject(slot0=0, runs_after_send=1)
    sends = []

    def update(fd, key, value, flags=0):
        if fd == 3:
            o.slots[struct.unpack("<I", key)[0]] = struct.unpack("<q", value)[0]

    def lookup(fd, key, size):
        slot = struct.unpack("<I", key)[0]
        value = o.runs_after_send if slot == 1 and sends else o.slots[slot]
        return struct.pack("<q", value)

    monkeypatch.setattr(matrix.bpf, "map_update", update)
    monkeypatch.setattr(matrix.bpf, "map_lookup", lookup)
    hidden = []  # the real peers: what is sent goes there, where the case does not look

    def unwatched_pair(wait):
        (a, a_peer), (b, b_peer) = unix_pair(), unix_pair()
        hidden.extend((a_peer, b_peer))
        return a, b

    monkeypatch.setitem(matrix.PAIRS, "unix_stream", unwatched_pair)
    real_outcome = matrix.outcome

    def recording_outcome(fn, *args):
        if getattr(fn, "__name__", "") == "send":
            sends.append(args)
        return real_outcome(fn, *args)

    monkeypatch.setattr(matrix, "outcome", recording_outcome)
    settle = 0.3
    started = time.monotonic()
    observed = matrix._one(o, "sockmap", "sk_msg", "egress", "unix_stream", "unix_stream",
                           False, settle)
    took = time.monotonic() - started
    for sock in hidden:
        sock.close()
    assert sends and observed["received_by"] == [] and observed["verdict_ran"] is True
    assert took >= settle, observed  # it waited for bytes that may still come
