"""The sk_msg helpers: bpf_msg_apply_bytes(), bpf_msg_cork_bytes(), bpf_msg_pull_data(),
bpf_msg_push_data(), bpf_msg_pop_data(), and what an SK_MSG program sees of sendfile() data.

map_sockmap.rst, "bpf_msg_apply_bytes()" ... "bpf_msg_pull_data()"; behaviours.md M1-M5. Each
check sends real data from a socket in a sockmap and reads it on the peer.
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER", "CONFIG_NET_SOCK_MSG")

# How long the guest waits, on hardware, for the sender's bytes to be acknowledged after a send
# (cases/guest/msg_helpers.py reads what arrived then; an ACK over loopback takes milliseconds),
# and, should that not happen, for the receiver to be quiet: as long as the longest quiet wait
# the cases had (cork's), now scaled for emulation.
ACK_SECONDS = 0.5


@pytest.fixture
def send_through(guest, bpf_object):
    def run(op, **kwargs):
        return guest.call("run_helper", obj=bpf_object("msg_helpers"), op=op,
                          wait=guest.bounded_wait(ACK_SECONDS), **kwargs)
    return run


def _summary(obs, *keys):
    first = obs["runs"][0] if obs["runs"] else {}
    out = {k: obs[k] for k in keys if k in obs}
    out.update({f"first_run_{k}": v for k, v in first.items()})
    return out


def test_apply_bytes_verdict_covers_the_next_bytes_without_rerunning(send_through, expect):
    # 4 sends of 5 bytes; the verdict applies to 10 bytes, so the program runs on sends 1 and 3.
    obs = send_through("apply", a=10, first_run_only=False, sends=(5, 5, 5, 5))
    expect("M1", _summary(obs, "program_runs", "received", "received_is_sent"), "apply_bytes")


def test_cork_bytes_holds_data_until_enough_bytes_are_queued(send_through, expect):
    # Cork 12 bytes: nothing reaches the peer after 5 or 10 bytes; all 15 arrive after the third.
    obs = send_through("cork", a=12, first_run_only=False, sends=(5, 5, 5))
    expect("M1", _summary(obs, "program_runs", "received_after_each_send", "received_is_sent"),
           "cork_bytes")


@pytest.mark.parametrize("case, start, end, flags", [
    ("valid", 0, 10, 0), ("flags_set", 0, 10, 1), ("empty_range", 10, 10, 0),
    ("end_past_message", 0, 200, 0)])
def test_pull_data_sets_data_pointers_or_rejects_bad_ranges(send_through, expect, case, start, end,
                                                            flags):
    obs = send_through("pull", a=start, b=end, flags=flags, sends=(100,))
    expect("M2", _summary(obs, "received_is_sent"), case)


@pytest.mark.parametrize("case, start, length, flags", [
    ("at_start", 0, 4, 0), ("flags_set", 0, 4, 1), ("zero_length", 0, 0, 0),
    ("start_at_message_end", 100, 4, 0), ("start_past_message_end", 101, 4, 0)])
def test_push_data_inserts_bytes_or_rejects(send_through, expect, case, start, length, flags):
    obs = send_through("push", a=start, b=length, flags=flags, sends=(100,))
    expect("M3", _summary(obs, "received"), case)


@pytest.mark.parametrize("case, start, length", [("at_start", 0, 4), ("tail", 96, 4)])
def test_pop_data_removes_bytes(send_through, expect, case, start, length):
    obs = send_through("pop", a=start, b=length, sends=(100,))
    expect("M4", _summary(obs, "received", "received_is_sent_without_popped"), case)


def test_sendfile_data_is_not_visible_until_pulled(send_through, expect):
    obs = send_through("pull", a=0, b=10, sends=(100,), sendfile=True)
    expect("M5", _summary(obs, "received_is_sent"))

