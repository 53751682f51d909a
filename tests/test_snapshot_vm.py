"""Issue #17 point 3 on a real guest (debian-6.12, TCG): a guest saved once its agent is up is
restored and answers as the booted one did, a stale snapshot and a broken one each boot cold and
say why, and (test_vm.py's injected faults, on the default boot) a guest that crashed or hung is
replaced by a restore."""
import json

import pytest

from harness import bpf
from harness.kernels import KernelProvider
from harness.machines.accel import choose_accel
from harness.machines.session import GuestSession
from harness.machines.snapshot import SnapshotMachine

pytestmark = pytest.mark.vm

KERNEL = "debian-6.12"


@pytest.fixture(scope="module")
def debian_6_12():
    provider = KernelProvider()
    tree = provider.get(KERNEL)
    return tree, choose_accel(tree.vmlinuz, cache=provider.cache)


def _start(debian_6_12, tmp_path, n: int, said: list[str]):
    """A started session on a SnapshotMachine of the test's own cache."""
    tree, accel = debian_6_12
    machine = SnapshotMachine(tree, accel, tmp_path / f"console-{n}.log",
                              cache=tmp_path / "cache", log=said.append)
    session = GuestSession(machine, KERNEL, boot_timeout=300)
    session.start()
    return machine, session


def _attach_each_type(session):
    """A case's guest function, given a BPF object built on the host (pushed into the guest)."""
    obj = bpf.build("sockmap_progs", arch="amd64")
    return session.call("cases.guest.attach:attach_each_type", timeout=60, obj=obj,
                        map_type="sockmap").result


def test_a_saved_guest_is_restored_and_answers_as_the_booted_one(debian_6_12, tmp_path):
    said: list[str] = []
    first, session = _start(debian_6_12, tmp_path, 1, said)
    try:
        assert first.boot_kind == "saved" and first.state.is_file() and first.record.is_file()
        booted = _attach_each_type(session)
        booted_uptime = session.info["uptime"]
    finally:
        session.close()
    second, session = _start(debian_6_12, tmp_path, 2, said)
    try:
        assert second.boot_kind == "restored"
        assert _attach_each_type(session) == booted
        # its hello carries the saved boot's log (the host checks a boot for splats) and the
        # kernel's clock goes on from where it was saved
        assert any("Linux version 6.12" in line for line in session.info["boot_log"])
        assert session.info["uptime"] >= booted_uptime - 1
        assert session.boot_seconds < 5, session.boot_seconds
    finally:
        session.close()
    console = (tmp_path / "console-2.log").read_text()
    assert "kconform: restoring the guest saved at" in console
    assert "Linux version" not in console  # nothing booted: the kernel's banner is not there
    assert said == []


def _boots_cold(debian_6_12, tmp_path, said: list[str]) -> SnapshotMachine:
    """The second guest: booted cold and saved (not restored), and it answers."""
    second, session = _start(debian_6_12, tmp_path, 2, said)
    try:
        assert second.boot_kind == "saved"
        assert session.call("tests.guest.faults:healthy", timeout=30).result["pid"] > 0
    finally:
        session.close()
    return second


def test_a_stale_snapshot_boots_cold_says_what_changed_and_is_saved_again(debian_6_12, tmp_path):
    said: list[str] = []
    first, session = _start(debian_6_12, tmp_path, 1, said)
    session.close()
    record = json.loads(first.record.read_text())
    record["inputs"]["qemu"] = "QEMU emulator version 6.0.0 (another build)"
    first.record.write_text(json.dumps(record))
    second = _boots_cold(debian_6_12, tmp_path, said)
    assert len(said) == 1 and "is stale (QEMU changed since it was saved)" in said[0], said
    assert "booting it cold and saving it again" in said[0]
    assert json.loads(second.record.read_text())["inputs"] == second.inputs  # saved anew
    assert said[0] in (tmp_path / "console-2.log").read_text()


def test_a_snapshot_that_fails_to_restore_boots_cold_and_says_so(debian_6_12, tmp_path):
    said: list[str] = []
    first, session = _start(debian_6_12, tmp_path, 1, said)
    session.close()
    with first.state.open("r+b") as state:  # same size, so its record still describes it
        state.write(b"\0" * 64)  # QEMU's header: the restore cannot even start
    _boots_cold(debian_6_12, tmp_path, said)
    assert len(said) == 1 and said[0].startswith(f"restoring {KERNEL} from ") and \
        "failed (" in said[0] and "booting it cold and saving it again" in said[0], said
    console = (tmp_path / "console-2.log").read_text()
    # one log: the failed restore's notes and QEMU's words, then the cold boot
    assert console.index("restoring the guest saved at") < console.index("Linux version")
