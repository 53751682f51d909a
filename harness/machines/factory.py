"""Which machine boots a kernel: the one place that chooses (TuxRun's way, not string tests
spread around)."""
from __future__ import annotations

from pathlib import Path

from ..errors import KconformError
from ..kernels import KernelTree
from .accel import Accel
from .direct import DirectMachine, direct_boot_problem
from .qemu import QemuMachine
from .rootfs import Rootfs

# --guest-boot: auto boots directly where it can, else through virtme-ng; virtme-ng is the old
# path (kept to compare against, and for what a direct boot does not cover).
GUEST_BOOTS = ("auto", "direct", "virtme-ng")


def guest_machine(tree: KernelTree, accel: Accel, console_log: Path, *,
                  rootfs: Rootfs | None = None, memory: str = "1G", boot: str = "auto",
                  cache: Path | None = None) -> QemuMachine:
    """A machine for this kernel, not started yet."""
    if boot not in GUEST_BOOTS:
        raise KconformError(f"--guest-boot {boot!r}: one of {', '.join(GUEST_BOOTS)}")
    problem = direct_boot_problem(tree, rootfs)
    if boot == "virtme-ng" or (boot == "auto" and problem is not None):
        return QemuMachine(tree, accel, console_log, rootfs=rootfs, memory=memory)
    if problem is not None:
        raise KconformError(f"--guest-boot direct: {tree.name} cannot boot directly ({problem});"
                            " use --guest-boot auto or virtme-ng")
    return DirectMachine(tree, accel, console_log, memory=memory, cache=cache)
