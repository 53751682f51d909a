"""The accelerator probe: a kernel must boot, not just firmware (PVM hosts run SeaBIOS under KVM
and then stop a kernel's decompressor with an emulation failure)."""
import pytest

from harness.machines.accel import probe_boot
from harness.kernels import KernelProvider


@pytest.mark.vm
def test_probe_sees_a_kernel_reach_its_root_mount():
    kernel = KernelProvider().get("debian-6.1").vmlinuz
    works, why = probe_boot(kernel, "tcg", "qemu64", timeout=60)
    assert works, why
    assert "booted to its root mount under tcg" in why


def test_probe_says_no_when_qemu_cannot_start_the_kernel(tmp_path):
    not_a_kernel = tmp_path / "vmlinuz"
    not_a_kernel.write_bytes(b"\0" * 4096)
    works, why = probe_boot(not_a_kernel, "tcg", "qemu64", timeout=5)
    assert not works
    assert "exited" in why or "did not reach its root mount" in why
