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

# --guest-boot: snapshot boots directly on disk images, saves the booted guest and restores it
# after; direct boots on the host's root over 9p, every time; virtme-ng is the old path (kept to
# compare against, and for what a direct boot does not cover: arm64, pinned roots). auto takes
# the first of those that covers the kernel.
GUEST_BOOTS = ("auto", "snapshot", "direct", "virtme-ng")


def guest_machine(tree: KernelTree, accel: Accel, console_log: Path, *,
                  rootfs: Rootfs | None = None, memory: str = "1G", boot: str = "auto",
                  cache: Path | None = None, log: Callable[[str], None] = lambda msg: None,
                  boot_within: float = 600.0) -> QemuMachine:
    """A machine for this kernel, not started yet."""
    if boot not in GUEST_BOOTS:
        raise KconformError(f"--guest-boot {boot!r}: one of {', '.join(GUEST_BOOTS)}")
    found = direct_boot_modules(tree, rootfs)
    if boot == "virtme-ng" or (boot == "auto" and isinstance(found, str)):
        return QemuMachine(tree, accel, console_log, rootfs=rootfs, memory=memory)
    if isinstance(found, str):
        raise KconformError(f"--guest-boot {boot}: {tree.name} cannot boot directly ({found});"
                            " use --guest-boot auto or virtme-ng")
    if boot in ("snapshot", "auto"):
        try:
            return SnapshotMachine(tree, accel, console_log, memory=memory, cache=cache,
                                   modules=found, log=log, boot_within=boot_within)
        except KconformError as exc:
            if boot == "snapshot":
                raise
            # e.g. a kernel of the user's own without ext4 for the images: 9p it is
            log(f"{tree.name} boots directly on the host's root, not from a snapshot: {exc}")
    return DirectMachine(tree, accel, console_log, memory=memory, cache=cache, modules=found)
