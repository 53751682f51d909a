"""Choose KVM or TCG by trying KVM, not by trusting /dev/kvm.

On nested or paravirtualised hosts /dev/kvm can exist while QEMU with KVM aborts or hangs, and even
firmware may run while a kernel does not: on a PVM host SeaBIOS boots under KVM, then the kernel's
decompressor stops with "KVM internal error ... emulation failure". So the probe boots the kernel
under test itself, with no root to mount, and KVM works only if that kernel runs to its
"VFS: Unable to mount root fs" panic. The answer is cached per host boot, since it cannot change
before a reboot.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..arches import host_architecture
from ..cache import read_regular_file, write_atomic
from ..errors import KconformError

# Each guest architecture's QEMU, its Debian package, and the console its kernels print to.
QEMU_BY_ARCH = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
QEMU_PACKAGE = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}
PROBE_MACHINE = {"amd64": ("-M", "pc", "console=ttyS0"), "arm64": ("-M", "virt", "console=ttyAMA0")}
# The -cpu model TCG runs fastest with, per architecture, measured (./kconform bench, "cpu
# models"): qemu64 for amd64 (`-cpu max` is far slower); for arm64 the Cortex-A57 virtme-ng picks
# itself, level with the A53, A72 and Neoverse-N1 to the root-mount panic, while `max` (pointer
# authentication emulated in full) took about 3x as long.
TCG_CPU = {"amd64": "qemu64", "arm64": "cortex-a57"}
# A kernel reaches its root-mount panic in 1-3 s under working KVM (6 s even under TCG).
PROBE_SECONDS = 20.0
REACHED_ROOT_MOUNT = ("VFS: Unable to mount root fs", "Kernel panic - not syncing")


@dataclass(frozen=True)
class Accel:
    name: str     # "kvm" or "tcg"
    cpu: str      # QEMU -cpu model
    reason: str   # why this one, for the log and the reports
    arch: str = "amd64"  # the guests' architecture


def require_qemu(arch: str = "amd64") -> str:
    qemu = QEMU_BY_ARCH.get(arch)
    if qemu is None:
        raise KconformError(f"no QEMU known for {arch} guests; kconform boots "
                            f"{', '.join(QEMU_BY_ARCH)} kernels")
    path = shutil.which(qemu)
    if not path:
        raise KconformError(f"{qemu} not found: install it (Debian/Ubuntu: apt-get install "
                            f"{QEMU_PACKAGE[arch]}), or run ./kconform, which installs it")
    return path


def choose_accel(kernel: Path, requested: str = "auto", cache: Path | None = None,
                 arch: str = "amd64") -> Accel:
    """kernel: an image to probe KVM with (the first kernel of this architecture the run
    boots). KVM runs only the host's own architecture: another is emulated, unprobed."""
    require_qemu(arch)
    tcg = "tcg", TCG_CPU[arch]
    if requested == "tcg":
        return Accel(*tcg, reason="--accel tcg", arch=arch)
    host = host_architecture()
    if arch != host:
        why = f"an {arch} guest on an {host} host: KVM runs only the host's architecture"
        if requested == "kvm":
            raise KconformError(f"--accel kvm: {why}; use --accel auto or tcg for {arch} kernels")
        return Accel(*tcg, reason=f"emulated: {why}", arch=arch)
    works, why = _kvm_works(kernel, cache, arch)
    if works:
        return Accel("kvm", "host", reason=why, arch=arch)
    if requested == "kvm":
        raise KconformError(f"--accel kvm: KVM does not work here ({why}); use --accel auto or tcg")
    return Accel(*tcg, reason=f"KVM unusable: {why}", arch=arch)


def _kvm_works(kernel: Path, cache: Path | None, arch: str = "amd64") -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    memo = memo_path(cache, arch) if cache else None
    if memo:
        cached = read_memo(memo)
        if cached:
            return cached[0], cached[1] + " (cached probe)"
    works, why = probe_kvm(kernel, arch=arch)
    if memo:
        # One rename: a concurrent run reads the old memo or this one, never half of it; a
        # cache that cannot be written only costs the next run a probe.
        with contextlib.suppress(OSError):
            write_atomic(memo, json.dumps({"works": works, "why": why}))
    return works, why


def memo_path(cache: Path, arch: str = "amd64") -> Path | None:
    """The probe's answer for this host boot (None when the boot id cannot be read)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # "kernel-probe": answers of the older SeaBIOS probe, which said yes wrongly, are not reused
    suffix = "" if arch == "amd64" else f"-{arch}"  # amd64's memo keeps its name
    return cache / f"kvm-kernel-probe-{boot_id}{suffix}.json"


def read_memo(memo: Path) -> tuple[bool, str] | None:
    """(works, why) from a memo; None when there is none or it is not one kconform wrote
    (unreadable, a symlink, malformed JSON, wrong types): then the probe runs again."""
    try:
        data = json.loads(read_regular_file(memo))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("works"), bool)
            and isinstance(data.get("why"), str)):
        return None
    return data["works"], data["why"]


def probe_kvm(kernel: Path, timeout: float = PROBE_SECONDS,
              arch: str = "amd64") -> tuple[bool, str]:
    return probe_boot(kernel, "kvm", "host", timeout, arch)


def probe_boot(kernel: Path, accel: str, cpu: str, timeout: float,
               arch: str = "amd64") -> tuple[bool, str]:
    """Boot `kernel` with no root device and wait for its root-mount panic."""
    machine_option, machine, console = PROBE_MACHINE[arch]
    with tempfile.TemporaryDirectory(prefix="kconform-probe-") as tmp:
        serial = Path(tmp) / "serial.txt"
        cmd = [QEMU_BY_ARCH[arch], machine_option, machine, "-accel", accel, "-cpu", cpu,
               "-m", "256", "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-append", f"{console} panic=-1 root=/dev/kconform-no-root loglevel=3",
               "-chardev", f"file,id=serial,path={serial}", "-serial", "chardev:serial"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                text = serial.read_text(errors="replace") if serial.exists() else ""
                if any(marker in text for marker in REACHED_ROOT_MOUNT):
                    return True, f"probe: {kernel.name} booted to its root mount under {accel}"
                if proc.poll() is not None:
                    err = proc.stderr.read().strip().splitlines() if proc.stderr else []
                    return False, (f"QEMU with {accel} exited {proc.returncode}: "
                                   + " | ".join(err[-2:]))
                time.sleep(0.1)
            return False, (f"{kernel.name} did not reach its root mount under {accel} within "
                           f"{timeout:.0f}s (emulation failure or hang)")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
