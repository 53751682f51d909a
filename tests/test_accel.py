"""The accelerator probe: a kernel must boot, not just firmware (PVM hosts run SeaBIOS under KVM
and then stop a kernel's decompressor with an emulation failure)."""
import stat
from pathlib import Path

import pytest

from harness.kernels import KernelProvider
from harness.machines import accel
from harness.machines.accel import probe_boot


@pytest.mark.vm
def test_probe_sees_a_kernel_reach_its_root_mount():
    kernel = KernelProvider().get("debian-6.1").vmlinuz
    works, why = probe_boot(kernel, "tcg", "qemu64", timeout=60)
    assert works, why
    assert "booted to its root mount under tcg" in why


def _stand_in_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """A QEMU that does what `script` says with the serial file QEMU was told to write."""
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n"
                    'for a in "$@"; do case "$a" in file,id=serial,path=*) '
                    'serial="${a#file,id=serial,path=}";; esac; done\n' + script)
    qemu.chmod(qemu.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setitem(accel.QEMU_BY_ARCH, "amd64", str(qemu))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 4096)
    return kernel


def test_a_kernel_that_reaches_its_root_mount_works(tmp_path, monkeypatch):
    kernel = _stand_in_qemu(tmp_path, monkeypatch, 'echo "VFS: Unable to mount root fs on '
                            'unknown-block(0,0)" > "$serial"; sleep 30\n')
    assert probe_boot(kernel, "kvm", "host", timeout=10) == (
        True, "probe: vmlinuz booted to its root mount under kvm")


def test_firmware_output_alone_is_a_hang(tmp_path, monkeypatch):
    # SeaBIOS prints and the decompressor stops: QEMU runs on and never says the root is missing.
    kernel = _stand_in_qemu(tmp_path, monkeypatch, 'echo "SeaBIOS (version 1.16)" > "$serial"; '
                            "exec sleep 30\n")
    works, why = probe_boot(kernel, "kvm", "host", timeout=1)
    assert not works
    assert why == ("vmlinuz did not reach its root mount under kvm within 1s "
                   "(emulation failure or hang)")


def test_probe_says_no_when_qemu_cannot_start_the_kernel(tmp_path):
    # Shorter than a boot sector: QEMU refuses it at once (4 KiB of zeros it would run, and hang).
    not_a_kernel = tmp_path / "vmlinuz"
    not_a_kernel.write_bytes(b"\0" * 600)
    works, why = probe_boot(not_a_kernel, "tcg", "qemu64", timeout=30)
    assert (works, why) == (False, "QEMU with tcg exited 1: qemu: invalid kernel header")



def test_a_guest_of_another_architecture_is_emulated_without_a_probe(tmp_path, monkeypatch):
    # KVM runs only the host's own architecture; a probe of it would only cost a boot.
    monkeypatch.setattr(accel, "host_architecture", lambda: "amd64")
    monkeypatch.setattr(accel, "require_qemu", lambda arch="amd64": "qemu")
    monkeypatch.setattr(accel, "_kvm_works", lambda *a: pytest.fail("probed KVM"))
    chosen = accel.choose_accel(tmp_path / "vmlinuz", "auto", arch="arm64")
    assert (chosen.name, chosen.cpu, chosen.arch) == ("tcg", "cortex-a57", "arm64")
    assert "KVM runs only the host's architecture" in chosen.reason
    with pytest.raises(accel.KconformError, match="--accel kvm: an arm64 guest on an amd64 host"):
        accel.choose_accel(tmp_path / "vmlinuz", "kvm", arch="arm64")


def test_the_probe_memo_is_per_architecture(tmp_path):
    amd64, arm64 = accel.memo_path(tmp_path), accel.memo_path(tmp_path, "arm64")
    assert amd64 is not None and arm64 is not None and amd64 != arm64
    assert arm64.name.endswith("-arm64.json")


def test_an_unknown_guest_architecture_is_refused():
    with pytest.raises(accel.KconformError, match="no QEMU known for riscv64 guests"):
        accel.require_qemu("riscv64")
