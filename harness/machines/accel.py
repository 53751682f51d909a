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

from ..cache import read_regular_file, write_atomic
from ..errors import KconformError

QEMU = "qemu-system-x86_64"
# A kernel reaches its root-mount panic in 1-3 s under working KVM (6 s even under TCG).
PROBE_SECONDS = 20.0
REACHED_ROOT_MOUNT = ("VFS: Unable to mount root fs", "Kernel panic - not syncing")


@dataclass(frozen=True)
class Accel:
    name: str     # "kvm" or "tcg"
    cpu: str      # QEMU -cpu model
    reason: str   # why this one, for the log and the reports


def require_qemu() -> str:
    path = shutil.which(QEMU)
    if not path:
        raise KconformError(f"{QEMU} not found: install it (Debian/Ubuntu: apt-get install "
                            "qemu-system-x86), or run ./kconform, which installs it")
    return path


def choose_accel(kernel: Path, requested: str = "auto", cache: Path | None = None) -> Accel:
    """kernel: a bzImage to probe KVM with (the first kernel the run boots)."""
    require_qemu()
    # qemu64 because `-cpu max` makes TCG crawl; a guest needs nothing beyond the baseline.
    tcg = "tcg", "qemu64"
    if requested == "tcg":
        return Accel(*tcg, reason="--accel tcg")
    works, why = _kvm_works(kernel, cache)
    if works:
        return Accel("kvm", "host", reason=why)
    if requested == "kvm":
        raise KconformError(f"--accel kvm: KVM does not work here ({why}); use --accel auto or tcg")
    return Accel(*tcg, reason=f"KVM unusable: {why}")


def _kvm_works(kernel: Path, cache: Path | None) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    memo = memo_path(cache) if cache else None
    if memo:
        cached = read_memo(memo)
        if cached:
            return cached[0], cached[1] + " (cached probe)"
    works, why = probe_kvm(kernel)
    if memo:
        # One rename: a concurrent run reads the old memo or this one, never half of it; a
        # cache that cannot be written only costs the next run a probe.
        with contextlib.suppress(OSError):
            write_atomic(memo, json.dumps({"works": works, "why": why}))
    return works, why


def memo_path(cache: Path) -> Path | None:
    """The probe's answer for this host boot (None when the boot id cannot be read)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # "kernel-probe": answers of the older SeaBIOS probe, which said yes wrongly, are not reused
    return cache / f"kvm-kernel-probe-{boot_id}.json"


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


def probe_kvm(kernel: Path, timeout: float = PROBE_SECONDS) -> tuple[bool, str]:
    return probe_boot(kernel, "kvm", "host", timeout)


def probe_boot(kernel: Path, accel: str, cpu: str, timeout: float) -> tuple[bool, str]:
    """Boot `kernel` with no root device and wait for its root-mount panic."""
    with tempfile.TemporaryDirectory(prefix="kconform-probe-") as tmp:
        serial = Path(tmp) / "serial.txt"
        cmd = [QEMU, "-accel", accel, "-cpu", cpu, "-m", "256", "-nodefaults",
               "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-append", "console=ttyS0 panic=-1 root=/dev/kconform-no-root loglevel=3",
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
