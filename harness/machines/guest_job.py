"""One guest that runs one command to its end and leaves its result in a host directory: how a
foreign root is finished where the host cannot run its programs (machines/rootfs.py,
debootstrap's second stage). The guest's root stays read-only, as every guest's does; only the
output directory is writable (vng --rwdir).
"""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from ..kernels import KernelTree
from .accel import choose_accel
from .qemu import QemuMachine
from .rootfs import Rootfs


def run_guest_job(root: Rootfs, tree: KernelTree, command: str, out_dir: Path,
                  guest_out: str, memory: str, console_log: Path, timeout: float) -> str | None:
    """Boot `tree` on `root` with the host's `out_dir` writable at `guest_out`, run `command` (a
    shell line), and wait for the guest to power off. None when it did within `timeout`
    seconds; otherwise what happened, for the caller's error (the console is in
    `console_log`)."""
    if tree.vmlinuz is None:
        return f"{tree.name} has no kernel image to boot"
    # A foreign architecture is emulated without a KVM probe (accel.choose_accel): this boots
    # nothing but the guest itself.
    accel = choose_accel(tree.vmlinuz, "auto", arch=tree.arch)
    guest = QemuMachine(tree, accel, console_log, rootfs=root, command=command, memory=memory,
                        rw_dirs=((guest_out, out_dir),))
    guest.start()
    try:
        assert guest.proc is not None  # started above
        try:
            status = guest.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"the guest was still running after {timeout:.0f} s and was stopped"
        return None if status == 0 else f"the guest exited with status {status}"
    finally:
        with contextlib.suppress(OSError):
            guest.kill()
