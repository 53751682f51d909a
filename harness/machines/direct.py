"""DirectMachine: a kernel booted by kconform's own QEMU command line and initramfs, with no
virtme-ng in between (issue #17: virtme-ng's userspace was most of each boot under TCG).

The guest is what a virtme-ng guest is to the cases: the host's root over 9p, read-only, tmpfs
where programs write, the kernel's modules at /lib/modules/<release>, the agent's stdin and
stdout on a virtio-serial port, the kernel console on the serial port (so on QEMU's stderr, into
the console log), panic=-1 with -no-reboot so a panic ends QEMU. It does not run udev: no driver
is loaded for a device no case uses, and nothing waits for a coldplug.

No shell is between kconform and QEMU here: each value is one argv word. The kernel command line
is split at blanks, so what goes on it (the agent's command, the modules' path) is held to plain
words, a path made plain through the same links vng is given.
"""
from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..arches import host_architecture
from ..cache import cache_dir
from ..errors import KconformError
from ..kernels import KernelTree
from ..paths import REPO_ROOT, agent_argv
from .accel import Accel
from .initramfs import (
    AGENT_PORT,
    MODULES_PARAM,
    MODULES_SERIAL,
    RELEASE_PARAM,
    ROOT_PARAM,
    ROOT_SERIAL,
    ROOT_TAG,
    initramfs_for,
    modules_dir,
)
from .pvh import pvh_kernel
from .qemu import (
    _WORD,
    QemuMachine,
    _check_word,
    build_vng_command,
    check_machine_values,
    guest_python,
    refuse_without_9p,
    vng_path,
)
from .rootfs import Rootfs


@dataclass(frozen=True)
class QemuBoard:
    """How QEMU runs a kernel of one architecture directly."""
    binary: str
    package: str               # Debian's, which has the binary
    machine: str
    # The kernel's own console settings as virtme-ng sets them (its --verbose): every record on
    # the serial console, early ones too, so a kernel that dies before its console driver still
    # says why.
    console: tuple[str, ...]
    vmgenid: bool              # QEMU has the device there (an ACPI one: not on a DT-booted virt)
    pvh: bool                  # QEMU starts an ELF vmlinux at its PVH entry (machines/pvh.py)


BOARDS = {
    "amd64": QemuBoard("qemu-system-x86_64", "qemu-system-x86", "q35",
                       ("console=ttyS0", "earlyprintk=serial,ttyS0,115200", "loglevel=7"), True,
                       True),
    # -M virt's PL011 UART at 0x9000000 (QEMU's hw/arm/virt.c memory map), as virtme-ng's own
    "arm64": QemuBoard("qemu-system-aarch64", "qemu-system-arm", "virt",
                       ("console=ttyAMA0", "earlycon=pl011,0x9000000", "loglevel=7"), False,
                       False),
}
_DRIVE_PATH = re.compile(r"/[A-Za-z0-9_.:/+@-]+")


def direct_boot_modules(tree: KernelTree, rootfs: Rootfs | None, *,
                        disks: bool = False) -> Path | str:
    """The modules directory a direct boot of this guest loads its root's modules from, or why
    it cannot boot directly. Over 9p the root is the host's, so the kernel is of the host's
    architecture and no root is pinned; on disk images (disks, a snapshot's guest) the root is
    an image of the host's files or of the pinned root, which is of the kernel's architecture."""
    if tree.arch not in BOARDS:
        return f"QEMU boots no {tree.arch} kernel directly here"
    if not disks and tree.arch != host_architecture():
        return f"an {tree.arch} kernel needs a root of its own, not the host's over 9p"
    if not disks and rootfs is not None:
        return "a pinned root boots on the snapshot's disk images or through virtme-ng"
    if disks and tree.arch != host_architecture() and (rootfs is None or rootfs.arch != tree.arch):
        return f"an {tree.arch} kernel needs an {tree.arch} root (--rootfs)"
    if tree.vmlinuz is None and tree.run_target is None:
        return "it has no kernel image"
    modules = modules_dir(tree)
    if modules is None:
        return f"no lib/modules/{tree.release} beside its kernel image to load its root's from"
    return modules


def direct_boot_problem(tree: KernelTree, rootfs: Rootfs | None) -> str | None:
    """Why this guest cannot boot directly, or None."""
    found = direct_boot_modules(tree, rootfs)
    return found if isinstance(found, str) else None


@dataclass(frozen=True)
class RootDisks:
    """A root on disk images instead of the host's over 9p (machines/guest_image.py)."""
    root: Path
    modules: Path


def direct_kernel(tree: KernelTree, cache: Path) -> Path:
    """The file QEMU boots: the tree's image, or its vmlinux where QEMU can start it directly."""
    image = tree.run_target or tree.vmlinuz
    if image is None:
        raise KconformError(f"{tree.name} has no kernel image to boot")
    if BOARDS[tree.arch].pvh:
        return pvh_kernel(image, cache) or image
    return image


def build_direct_command(tree: KernelTree, accel: Accel, argv: list[str], initramfs: Path,
                         modules: Path, *, memory: str = "1G", cpus: int = 1,
                         name: str | None = None, disks: RootDisks | None = None,
                         kernel: Path | None = None) -> list[str]:
    """QEMU's whole command line for one direct guest running `argv` (the agent), its root the
    host's over 9p, or `disks`; kernel: what direct_kernel chose (default: the tree's image)."""
    name, cpu_model = check_machine_values(name, memory, cpus, accel)
    board = BOARDS[tree.arch]
    image = kernel or tree.run_target or tree.vmlinuz
    if image is None:
        raise KconformError(f"{tree.name} has no kernel image to boot")
    if disks is None:
        refuse_without_9p(tree)
        root_args = [f"{MODULES_PARAM}={vng_path(modules)}"]
        root_devices = [
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}"]
    else:
        root_args = [f"{ROOT_PARAM}=disk"]
        # A guest on disks is one that is saved and restored: a generation id that QEMU makes
        # anew at each start tells a restored kernel (CONFIG_VMGENID, 5.18 on) to reseed its
        # random number generator, so restored guests do not all draw the same numbers.
        root_devices = ["-device", "vmgenid,guid=auto"] if board.vmgenid else []
        for drive, path, serial in (("root", disks.root, ROOT_SERIAL),
                                    ("mods", disks.modules, MODULES_SERIAL)):
            # QEMU splits -drive at commas: the path is held to plain characters without one
            plain = _check_word(vng_path(path), "a disk image's path", _DRIVE_PATH,
                                "letters, digits and _ . : / + @ -")
            root_devices += ["-drive", f"file={plain},format=raw,if=none,id={drive},readonly=on",
                             "-device", f"virtio-blk-pci,drive={drive},serial={serial}"]
    kernel_args = [*board.console, "panic=-1", "rdinit=/init", *root_args,
                   f"{RELEASE_PARAM}={tree.release}", "--", *argv]
    for arg in kernel_args:
        _check_word(arg, "kernel command-line word", _WORD,
                    "letters, digits and _ . , : = / + @ -")
    # By its full path, as vng runs it: what `ps` shows names the binary that ran
    qemu = shutil.which(board.binary)
    if qemu is None:
        raise KconformError(f"{board.binary} not found: apt-get install {board.package} "
                            "(./kconform installs it)")
    return [qemu, "-name", name, "-machine", board.machine,
            "-accel", "kvm" if accel.name == "kvm" else "tcg", "-cpu", cpu_model,
            "-m", memory, "-smp", str(cpus), "-nodefaults", "-no-reboot", "-display", "none",
            "-chardev", "file,id=console,path=/proc/self/fd/2", "-serial", "chardev:console",
            "-chardev", "stdio,id=agent,signal=off", "-device", "virtio-serial-pci",
            "-device", f"virtserialport,name={AGENT_PORT},chardev=agent", *root_devices,
            "-kernel", str(image), "-initrd", str(initramfs), "-append", " ".join(kernel_args)]


class DirectMachine(QemuMachine):
    """One kernel booted straight into kconform's agent (see the module's docstring)."""

    boot_kind = "direct"

    def __init__(self, tree: KernelTree, accel: Accel, console_log: Path, *,
                 memory: str = "1G", cpus: int = 1, cache: Path | None = None,
                 modules: Path | None = None):
        """modules: the tree's modules directory, as direct_boot_modules found it (looked up
        here when not given)."""
        modules = self._take(tree, accel, None, modules, cache, disks=False)
        argv = agent_argv(guest_python(), vng_path(REPO_ROOT), boot_log=True)
        self.cmd = build_direct_command(tree, accel, argv,
                                        initramfs_for(tree, self.cache, modules), modules,
                                        memory=memory, cpus=cpus,
                                        kernel=direct_kernel(tree, self.cache))
        self._memory, self._cpus = memory, cpus
        self._attach(console_log)

    def _take(self, tree: KernelTree, accel: Accel, rootfs: Rootfs | None,
              modules: Path | None, cache: Path | None, *, disks: bool) -> Path:
        """Keep what every direct guest is made of; its modules directory (looked up when not
        given: KconformError when this guest cannot boot directly this way)."""
        self.tree, self.accel, self.rootfs = tree, accel, rootfs
        self.cache = cache or cache_dir()
        if modules is None:
            found = direct_boot_modules(tree, rootfs, disks=disks)
            if isinstance(found, str):
                how = "from a snapshot" if disks else "directly"
                raise KconformError(f"{tree.name} cannot boot {how}: {found}; boot it with "
                                    "--guest-boot virtme-ng")
            modules = found
        self.modules = modules
        return modules

    def shell_command(self) -> str:
        """Its initramfs runs only the agent: a shell by hand is virtme-ng's, same kernel, root,
        memory, CPUs and CPU model."""
        return shlex.join(build_vng_command(self.tree, self.accel, "true", memory=self._memory,
                                            cpus=self._cpus, rootfs=self.rootfs))
