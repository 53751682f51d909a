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

import shlex
import shutil
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
    RELEASE_PARAM,
    ROOT_TAG,
    initramfs_for,
    modules_dir,
)
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

QEMU_BINARY = {"amd64": "qemu-system-x86_64"}
# The kernel's own console settings as virtme-ng sets them (its --verbose): every record on the
# serial console, early ones too, so a kernel that dies before its console driver still says why.
CONSOLE_ARGS = ("console=ttyS0", "earlyprintk=serial,ttyS0,115200", "loglevel=7")


def direct_boot_problem(tree: KernelTree, rootfs: Rootfs | None) -> str | None:
    """Why this guest cannot boot directly (then it boots through virtme-ng), or None."""
    if tree.arch != host_architecture() or tree.arch not in QEMU_BINARY:
        return f"an {tree.arch} kernel boots through virtme-ng (its -M virt machine and init)"
    if rootfs is not None:
        return "a pinned root boots through virtme-ng"
    if tree.vmlinuz is None and tree.run_target is None:
        return "it has no kernel image"
    if modules_dir(tree) is None:
        return f"no lib/modules/{tree.release} beside its kernel image to load 9p from"
    return None


def build_direct_command(tree: KernelTree, accel: Accel, argv: list[str], initramfs: Path,
                         modules: Path, *, memory: str = "1G", cpus: int = 1,
                         name: str | None = None) -> list[str]:
    """QEMU's whole command line for one direct guest running `argv` (the agent)."""
    name, cpu_model = check_machine_values(name, memory, cpus, accel)
    image = tree.run_target or tree.vmlinuz
    if image is None:
        raise KconformError(f"{tree.name} has no kernel image to boot")
    refuse_without_9p(tree)
    kernel_args = [*CONSOLE_ARGS, "panic=-1", "rdinit=/init",
                   f"{MODULES_PARAM}={vng_path(modules)}", f"{RELEASE_PARAM}={tree.release}",
                   "--", *argv]
    for arg in kernel_args:
        _check_word(arg, "kernel command-line word", _WORD,
                    "letters, digits and _ . , : = / + @ -")
    # By its full path, as vng runs it: what `ps` shows names the binary that ran
    qemu = shutil.which(QEMU_BINARY[tree.arch])
    if qemu is None:
        raise KconformError(f"{QEMU_BINARY[tree.arch]} not found: apt-get install "
                            "qemu-system-x86 (./kconform installs it)")
    return [qemu, "-name", name, "-machine", "q35",
            "-accel", "kvm" if accel.name == "kvm" else "tcg", "-cpu", cpu_model,
            "-m", memory, "-smp", str(cpus), "-nodefaults", "-no-reboot", "-display", "none",
            "-chardev", "file,id=console,path=/proc/self/fd/2", "-serial", "chardev:console",
            "-chardev", "stdio,id=agent,signal=off", "-device", "virtio-serial-pci",
            "-device", f"virtserialport,name={AGENT_PORT},chardev=agent",
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}",
            "-kernel", str(image), "-initrd", str(initramfs), "-append", " ".join(kernel_args)]


class DirectMachine(QemuMachine):
    """One kernel booted straight into kconform's agent (see the module's docstring)."""

    boot_kind = "direct"

    def __init__(self, tree: KernelTree, accel: Accel, console_log: Path, *,
                 memory: str = "1G", cpus: int = 1, cache: Path | None = None):
        self.tree = tree
        self.accel = accel
        self.rootfs = None
        problem = direct_boot_problem(tree, None)
        if problem is not None:
            raise KconformError(f"{tree.name} cannot boot directly: {problem}; boot it with "
                                "--guest-boot virtme-ng")
        modules = modules_dir(tree)
        assert modules is not None  # direct_boot_problem said so
        argv = agent_argv(guest_python(), vng_path(REPO_ROOT), boot_log=True)
        self.cmd = build_direct_command(tree, accel, argv,
                                        initramfs_for(tree, cache or cache_dir()), modules,
                                        memory=memory, cpus=cpus)
        self._memory, self._cpus = memory, cpus
        self._attach(console_log)

    def shell_command(self) -> str:
        """Its initramfs runs only the agent: a shell by hand is virtme-ng's, same kernel, memory,
        CPUs and CPU model."""
        return shlex.join(build_vng_command(self.tree, self.accel, "true", memory=self._memory,
                                            cpus=self._cpus))
