"""The fallback of issue #13 point 2, for hosts where binfmt_misc cannot run arm64 programs: the
arm64 pinned root built with debootstrap --foreign, its second stage run inside a real arm64
guest (Debian's 6.12 arm64 kernel under TCG). The root it makes must be the root: every package
installed, the same packages as the host-built one, and a guest on it runs the agent and a
case's guest function."""
import os
import subprocess

import pytest

from harness.cache import check_manifest
from harness.kernels import KernelProvider
from harness.machines.accel import choose_accel
from harness.machines.guest_job import run_guest_job
from harness.machines.qemu import QemuMachine
from harness.machines.rootfs import FOREIGN_ROOT, RootfsProvider, load_recipe
from harness.machines.session import GuestSession

# Under TCG the whole test takes about 14 minutes (the second stage 10), more than the arm64
# path's part of a cold CI run has left (README, Costs): scheduled.yml runs it every week, and
# anyone can.
pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    os.environ.get("KCONFORM_TEST_GUEST_STAGE") != "1",
    reason="builds an arm64 root in an arm64 guest (~14 min under TCG): set "
           "KCONFORM_TEST_GUEST_STAGE=1 to run it")]

ARM64 = "debian-6.12-arm64"


def _package_states(root) -> dict[str, str]:
    proc = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                           "-f=${Package} ${db:Status-Abbrev}\n"],
                          capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


def test_an_arm64_root_finished_in_an_arm64_guest_is_the_pinned_root(tmp_path):
    kernels = KernelProvider()
    tree = kernels.get(ARM64)
    said: list[str] = []
    # A cache of its own: the root is built here, whatever the shared cache holds.
    built = RootfsProvider(tmp_path / "cache", log=said.append, guest_job=run_guest_job,
                           second_stage_in_guest=True).get(FOREIGN_ROOT, "arm64", kernel=tree)
    assert built is not None and built.arch == "arm64"
    assert any("second stage in an arm64 guest on" in line for line in said), said
    meta, problem = check_manifest(built.path)
    assert meta is not None, problem
    assert str(meta["second_stage"]).startswith(f"in an arm64 guest on {ARM64} ("), meta
    # Every package configured ("ii ": installed, no error flag; dpkg-query(1)) ...
    states = _package_states(built.path)
    assert {p: s for p, s in states.items() if s.strip() != "ii"} == {}
    assert set(load_recipe(FOREIGN_ROOT).packages) <= set(states)
    assert not (built.path / "debootstrap").exists()
    assert not list((built.path / "usr/lib/modules").glob("*"))  # the guest's kernel's: gone
    # ... the same packages, at the same versions, as the root the host builds through
    # binfmt_misc from the same recipe (the shared cache's, built there if it is not yet).
    host_built = RootfsProvider(kernels.cache).get(FOREIGN_ROOT, "arm64")
    assert host_built is not None and built.packages == host_built.packages
    # ... and a guest booted on it runs the agent and a case's guest function through libbpf.
    RootfsProvider(tmp_path / "cache").add_modules(built, tree)
    guest = QemuMachine(tree, choose_accel(tree.vmlinuz, arch="arm64"), tmp_path / "console.log",
                        rootfs=built)
    session = GuestSession(guest, ARM64, boot_timeout=300)
    session.start()
    try:
        assert session.uname == tree.release
        created = session.call("cases.guest.create:create_with_value_sizes", timeout=120,
                               map_type="sockmap").result
    finally:
        session.close()
    assert created == {"value_4": "OK", "value_8": "OK"}  # the doc's C1, as on the host's root
