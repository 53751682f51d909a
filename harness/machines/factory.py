"""Which machine boots a kernel: the one place that chooses (TuxRun's way, not string tests
spread around)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import KconformError
from ..kernels import KernelTree
from .accel import Accel
from .direct import DirectMachine, direct_boot_modules
from .qemu import QemuMachine
from .rootfs import Rootfs
from .snapshot import SnapshotMachine

# --guest-boot: snapshot boots directly on disk images (of the host's files or the pinned root),
# saves the booted guest and restores it after; direct boots on the host's root over 9p, every
# time; virtme-ng is the old path (kept to compare against, and for a kernel neither covers).
# auto takes the first of those that covers the kernel.
GUEST_BOOTS = ("auto", "snapshot", "direct", "virtme-ng")


def guest_machine(tree: KernelTree, accel: Accel, console_log: Path, *,
                  rootfs: Rootfs | None = None, memory: str = "1G", boot: str = "auto",
                  cache: Path | None = None, log: Callable[[str], None] = lambda msg: None,
                  boot_within: float = 600.0) -> QemuMachine:
    """A machine for this kernel, not started yet."""
    if boot not in GUEST_BOOTS:
        raise KconformError(f"--guest-boot {boot!r}: one of {', '.join(GUEST_BOOTS)}")
    if boot == "virtme-ng":
        return QemuMachine(tree, accel, console_log, rootfs=rootfs, memory=memory)
    if boot in ("snapshot", "auto"):
        on_disks = direct_boot_modules(tree, rootfs, disks=True)
        if isinstance(on_disks, str):
            if boot == "snapshot":
                raise KconformError(f"--guest-boot snapshot: {tree.name} cannot boot from a "
                                    f"snapshot ({on_disks}); use --guest-boot auto or virtme-ng")
        else:
            try:
                return SnapshotMachine(tree, accel, console_log, memory=memory, cache=cache,
                                       modules=on_disks, log=log, boot_within=boot_within,
                                       rootfs=rootfs)
            except KconformError as exc:
                if boot == "snapshot":
                    raise
                # e.g. a kernel of the user's own without ext4 for the images
                log(f"{tree.name} is not booted from a snapshot: {exc}")
    found = direct_boot_modules(tree, rootfs)
    if isinstance(found, str):
        if boot == "direct":
            raise KconformError(f"--guest-boot direct: {tree.name} cannot boot directly "
                                f"({found}); use --guest-boot auto or virtme-ng")
        return QemuMachine(tree, accel, console_log, rootfs=rootfs, memory=memory)
    return DirectMachine(tree, accel, console_log, memory=memory, cache=cache, modules=found)
