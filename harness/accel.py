"""Choose KVM or TCG by trying KVM, not by trusting /dev/kvm.

On nested or paravirtualised hosts /dev/kvm can exist while QEMU with KVM aborts or hangs. So the
probe boots SeaBIOS under KVM and waits for its banner on the debug port; anything else is a no.
The answer is cached per host boot, since it cannot change before a reboot.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import KconformError

QEMU = "qemu-system-x86_64"
PROBE_SECONDS = 8.0


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


def choose_accel(requested: str = "auto", cache: Path | None = None) -> Accel:
    require_qemu()
    # qemu64 because `-cpu max` makes TCG crawl; a guest needs nothing beyond the baseline.
    tcg = "tcg", "qemu64"
    if requested == "tcg":
        return Accel(*tcg, reason="--accel tcg")
    works, why = _kvm_works(cache)
    if works:
        return Accel("kvm", "host", reason=why)
    if requested == "kvm":
        raise KconformError(f"--accel kvm: KVM does not work here ({why}); use --accel auto or tcg")
    return Accel(*tcg, reason=f"KVM unusable: {why}")


def _kvm_works(cache: Path | None) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    memo = None
    if cache:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        memo = cache / f"kvm-probe-{boot_id}.json"
        if memo.exists():
            data = json.loads(memo.read_text())
            return data["works"], data["why"] + " (cached probe)"
    works, why = probe_kvm()
    if memo:
        memo.write_text(json.dumps({"works": works, "why": why}))
    return works, why


def probe_kvm(timeout: float = PROBE_SECONDS) -> tuple[bool, str]:
    """Boot SeaBIOS with KVM and wait for its banner on the debug console."""
    with tempfile.TemporaryDirectory(prefix="kconform-kvm-") as tmp:
        banner = Path(tmp) / "debugcon.txt"
        cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "64",
               "-nodefaults", "-display", "none", "-no-reboot",
               "-chardev", f"file,id=dbg,path={banner}",
               "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if banner.exists() and b"SeaBIOS" in banner.read_bytes():
                    return True, "KVM probe booted SeaBIOS"
                if proc.poll() is not None:
                    err = proc.stderr.read().strip().splitlines()
                    return False, f"QEMU with KVM exited {proc.returncode}: " + " | ".join(err[-2:])
                time.sleep(0.05)
            return False, f"QEMU with KVM showed no firmware output within {timeout:.0f}s (hang)"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def describe(accel: Accel) -> dict:
    return asdict(accel)
