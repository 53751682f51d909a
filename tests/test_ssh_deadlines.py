"""Review finding 4 (issue 16): what an SSH target does with the files kconform pushes, and what
it says its temporary directory is, cannot hold a worker past its deadline or steer rm -rf.

The SFTP side is a stand-in that behaves as paramiko's does for a target whose writes block:
a channel read waits for the channel's timeout (forever when none is set), then raises
socket.timeout.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.machines import ssh
from harness.machines.channel import GuestDied
from harness.machines.ssh import SshMachine, SshTarget, check_remote_dir
from harness.paths import REPO_ROOT

TARGET = SshTarget.parse("ssh://root@lab1")
REMOTE = "/tmp/kconform.AbCd1234"


class BlockedChannel:
    """An SFTP channel whose peer never acknowledges a write."""

    def __init__(self) -> None:
        self.timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def wait_for_ack(self) -> None:
        threading.Event().wait(self.timeout)  # None: for ever, as a blocking socket would
        raise TimeoutError("timed out")  # socket.timeout is TimeoutError


class BlockedSftp:
    def __init__(self) -> None:
        self.channel = BlockedChannel()

    def get_channel(self) -> BlockedChannel:
        return self.channel

    def mkdir(self, path: str, mode: int) -> None:
        pass

    def put(self, local: str, remote: str) -> None:
        self.channel.wait_for_ack()

    def close(self) -> None:
        pass


class BlockedClient:
    def open_sftp(self) -> BlockedSftp:
        return BlockedSftp()

    def close(self) -> None:
        pass


def finishes_within(seconds: float, action) -> BaseException | None:
    """What action raised, run in a thread; fails the test if it still runs after `seconds`."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds}s: no deadline bounds the transfer"
    return outcome[0]


def machine_on_blocked_target(tmp_path: Path) -> SshMachine:
    machine = SshMachine(TARGET, tmp_path / "console.log")
    machine.client = BlockedClient()  # type: ignore[assignment]
    machine.remote_dir = REMOTE
    machine._uploaded[REPO_ROOT] = f"{REMOTE}/repo"
    return machine


def test_pushing_the_guest_side_to_a_blocked_target_ends_at_the_deadline(tmp_path):
    machine = machine_on_blocked_target(tmp_path)
    began = time.monotonic()
    raised = finishes_within(3, lambda: machine._push_guest_side(time.monotonic() + 0.5))
    assert isinstance(raised, TimeoutError)  # start() turns it into GuestDied
    assert time.monotonic() - began < 2


def test_pushing_a_bpf_object_to_a_blocked_target_is_a_dead_machine_at_the_calls_deadline(
        tmp_path):
    machine = machine_on_blocked_target(tmp_path)
    bpf_object = tmp_path / "prog.bpf.o"
    bpf_object.write_bytes(b"\x7fELF")
    raised = finishes_within(3, lambda: machine.guest_path(bpf_object, within=0.5))
    assert isinstance(raised, GuestDied) and "pushing prog.bpf.o" in str(raised)


def test_a_call_out_of_time_pushes_nothing(tmp_path):
    machine = machine_on_blocked_target(tmp_path)
    bpf_object = tmp_path / "prog.bpf.o"
    bpf_object.write_bytes(b"\x7fELF")
    with pytest.raises(GuestDied, match="out of time pushing prog.bpf.o"):
        machine.guest_path(bpf_object, within=0.0)


@pytest.mark.parametrize("out", ["/tmp/kconform.AbCd1234\n", "/tmp/kconform.00000000"])
def test_what_mktemp_makes_is_the_remote_directory(out):
    assert check_remote_dir(TARGET, out) == out.strip()


@pytest.mark.parametrize("out", [
    "/", "", "/tmp", "/home/root", "/tmp/kconform.AbCd1234/../..", "/tmp/kconform.AbCd123",
    "/tmp/kconform.AbCd1234 /", "/tmp/kconform.AbCd1234\n/etc", "-rf /tmp/kconform.AbCd1234",
    "motd\n/tmp/kconform.AbCd1234"])
def test_a_remote_directory_not_of_mktemps_form_is_refused(out):
    with pytest.raises(ssh.SshError, match="not a directory of that form"):
        check_remote_dir(TARGET, out)


def test_a_target_naming_another_directory_is_never_removed(tmp_path, monkeypatch):
    """Before: `mktemp`'s output, whatever it was, became the directory rm -rf removes."""
    machine = SshMachine(TARGET, tmp_path / "console.log")
    monkeypatch.setattr(machine, "_connect", BlockedClient)
    monkeypatch.setattr(ssh, "run", lambda client, command, timeout=30.0: (0, "/home\n", ""))
    monkeypatch.setitem(ssh._LEFT_BEHIND, TARGET.url, set())
    raised = finishes_within(3, machine.start)
    assert isinstance(raised, GuestDied)
    assert "printed '/home', not a directory of that form" in str(raised)
    assert ssh._LEFT_BEHIND[TARGET.url] == set() and machine.remote_dir is None
