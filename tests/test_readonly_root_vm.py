"""Part A of issue 16: a guest, root in it, cannot write the host's files through the root
virtme-ng shares with it, even after `mount -o remount,rw /` (debian-6.1, the host's root)."""
import pytest

from harness.kernels import KernelProvider
from harness.machines.accel import choose_accel
from harness.machines.qemu import QemuMachine
from harness.machines.session import GuestSession

pytestmark = pytest.mark.vm

ORIGINAL = "the host's own content\n"
REFUSED = ("EROFS", "EACCES", "EPERM")  # a write's errno, as the guest names it


def _host_file(tmp_path):
    """A file of the host's the guest will try to write, alone in its directory."""
    host_file = tmp_path / "host" / "precious.txt"
    host_file.parent.mkdir()
    host_file.write_text(ORIGINAL)
    return host_file


def _debian_6_1():
    provider = KernelProvider()
    tree = provider.get("debian-6.1")
    return tree, choose_accel(tree.vmlinuz, cache=provider.cache)


def test_a_root_guest_cannot_write_the_host_through_its_root(tmp_path):
    host_file = _host_file(tmp_path)
    # A control the guest is allowed to write (--rwdir): proves a guest write is seen here.
    control = tmp_path / "writable" / "control.txt"
    control.parent.mkdir()
    control.write_text(ORIGINAL)
    tree, accel = _debian_6_1()
    guest = QemuMachine(tree, accel, tmp_path / "console.log",
                  extra_vng=("--rwdir", f"/tmp/kconform-rw={control.parent}"))
    session = GuestSession(guest, "debian-6.1", boot_timeout=300)
    session.start()
    try:
        seen = session.call("tests.guest.host_root:write_through_root", timeout=60,
                            path=str(host_file), content="written by the guest\n",
                            control="/tmp/kconform-rw/control.txt").result
    finally:
        session.close()
    # the guest really tried: it was root, remounted, and wrote through the host's share itself
    assert {"remount", "bind", "share", "write", "create", "control"} <= set(seen), seen
    assert seen["bind"]["status"] == 0, seen
    assert seen["share"]["fstype"] in ("9p", "virtiofs"), seen
    assert seen["control"] == "written" and control.read_text() == "written by the guest\n", seen
    # and the host's file is as it was
    assert seen["write"] in REFUSED and seen["create"] in REFUSED, seen
    assert host_file.read_text() == ORIGINAL
    assert sorted(p.name for p in host_file.parent.iterdir()) == ["precious.txt"]


def test_a_root_guest_cannot_write_the_host_through_a_direct_boots_root(tmp_path):
    """The same for a direct boot (machines/direct.py), whose init mounts the host's root itself
    over 9p: QEMU's readonly=on holds whatever the guest remounts."""
    from harness.machines.direct import DirectMachine
    host_file = _host_file(tmp_path)
    tree, accel = _debian_6_1()
    session = GuestSession(DirectMachine(tree, accel, tmp_path / "console.log"), "debian-6.1",
                           boot_timeout=300)
    session.start()
    try:
        seen = session.call("tests.guest.host_root:write_through_root", timeout=60,
                            path=str(host_file), content="written by the guest\n").result
    finally:
        session.close()
    assert seen["bind"]["status"] == 0 and seen["share"]["fstype"] == "9p", seen
    assert seen["write"] in REFUSED and seen["create"] in REFUSED, seen
    assert host_file.read_text() == ORIGINAL
    assert sorted(p.name for p in host_file.parent.iterdir()) == ["precious.txt"]
