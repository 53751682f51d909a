"""VM runner: one Guest object owns one virtme-ng guest's life (start, exchange lines, stop, logs).

The agent channel is virtme-ng's own script I/O: the guest command's stdin/stdout travel over
virtio-serial ports, separate from the kernel console, which virtme-ng sends to stderr (--verbose).
So the console can be kept whole in a log while the channel carries only protocol lines.

The guest's root is the host's own (read-only, as virtme-ng does), or a pinned root filesystem
(harness/rootfs.py); then the repo and the BPF objects are mounted into it read-only, and
guest_path() says where a host file is seen inside.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from .accel import Accel
from .channel import Console, GuestDied, LineChannel
from .errors import KconformError
from .kernels import KernelTree
from .paths import REPO_ROOT, agent_argv, bpf_cache_dir
from .rootfs import GUEST_BPF, GUEST_REPO, Rootfs

_LIVE: "weakref.WeakSet[Guest]" = weakref.WeakSet()


def pinned_root_mounts() -> tuple[tuple[Path, str], ...]:
    """(host directory, where a guest on a pinned root sees it)."""
    return ((REPO_ROOT, GUEST_REPO), (bpf_cache_dir(), GUEST_BPF))


# Kills a guest's process group once the process that started the guest is gone, however it went
# (an xdist worker killed with SIGKILL runs no cleanup): it waits for EOF on a pipe whose other
# end only that process holds.
_REAPER = ("import os, signal, sys\n"
           "sys.stdin.buffer.read()\n"
           "try:\n    os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
           "except ProcessLookupError:\n    pass\n")


def guest_python(rootfs: Rootfs | None = None) -> str:
    # Debian's python3 is in every guest that shares the host's root; a venv python may not be.
    if rootfs is not None:
        return "/usr/bin/python3"
    return os.environ.get("KCONFORM_GUEST_PYTHON") or (
        "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)


def guest_name() -> str:
    """QEMU's -name for this process's guests: pgrep -f finds what a process left behind."""
    return f"kconform-{os.getpid()}"


# Drivers udev would load for QEMU's emulated PC (AHCI/CD-ROM, watchdogs, SMBus, PS/2, KVM, ...).
# No case needs them, and loading them under TCG costs 3-4 s of every boot (./kconform bench).
UNNEEDED_MODULES = ("ahci,libahci,libata,sr_mod,cdrom,sg,scsi_mod,kvm,kvm_amd,kvm_intel,ccp,"
                    "iTCO_wdt,iTCO_vendor_support,intel_pmc_bxt,watchdog,i6300esb,i2c_i801,"
                    "i2c_smbus,lpc_ich,psmouse,serio_raw,evdev,pcspkr,button")
BOOT_ARGS = (f"modprobe.blacklist={UNNEEDED_MODULES}",)


_VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/virtiofsd/virtiofsd", "/usr/lib/virtiofsd",
                    "/usr/lib/qemu/virtiofsd")


@functools.lru_cache(maxsize=None)
def virtiofs_usable() -> bool:
    """Whether virtme-ng will find the Rust virtiofsd it needs. Otherwise it tries QEMU's old C
    virtiofsd (Debian 12's qemu-system-common), which rejects its options, and waits 3.1 s per
    exported directory before falling back to 9p: a cost on every boot that --force-9p saves."""
    for path in (shutil.which("virtiofsd"), *_VIRTIOFSD_PATHS):
        if path and os.access(path, os.X_OK):
            try:
                out = subprocess.run([path, "--help"], capture_output=True, text=True,
                                     timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "--shared-dir" in out:
                return True
    return False


def build_vng_command(tree: KernelTree, accel: Accel, guest_cmd: str, *, memory: str = "1G",
                      cpus: int = 1, kernel_args: tuple[str, ...] = (),
                      extra_vng: tuple[str, ...] = (), name: str | None = None,
                      rootfs: Rootfs | None = None) -> list[str]:
    """The whole virtme-ng command line for one guest; print it to reproduce a boot by hand."""
    name = name or guest_name()
    # --cwd is a host path inside the guest's root: "/" of the guest either way
    cwd = str(rootfs.path) if rootfs is not None else "/"
    cmd = ["vng", "--run", str(tree.run_target or tree.vmlinuz), "--verbose", "--name", name,
           "--cpus", str(cpus), "--memory", memory, "--cwd", cwd,
           f"--qemu-opts=-cpu {accel.cpu}"]
    if accel.name != "kvm":
        cmd.append("--disable-kvm")
    if not virtiofs_usable():
        cmd.append("--force-9p")
    if rootfs is not None:
        cmd += ["--root", str(rootfs.path)]
        cmd += [f"--rodir={guest}={host}" for host, guest in pinned_root_mounts()]
    for arg in (*BOOT_ARGS, *kernel_args):
        cmd += ["--append", arg]
    cmd += list(extra_vng)
    cmd += ["--exec", guest_cmd]
    return cmd


class Guest:
    """One booted kernel: a vng process, its console log, and a line channel to the agent."""

    noun = "the guest"  # in failure messages

    def __init__(self, tree: KernelTree, accel: Accel, console_log: Path, *,
                 rootfs: Rootfs | None = None, command: str | None = None, memory: str = "1G",
                 cpus: int = 1, kernel_args: tuple[str, ...] = (),
                 extra_vng: tuple[str, ...] = ()):
        """command: what the guest runs (default: kconform's agent)."""
        self.tree = tree
        self.accel = accel
        self.rootfs = rootfs
        if command is None:
            python = guest_python(rootfs)
            command = shlex.join(agent_argv(python, self.guest_path(REPO_ROOT)))
        self.cmd = build_vng_command(tree, accel, command, memory=memory, cpus=cpus,
                                     kernel_args=kernel_args, extra_vng=extra_vng, rootfs=rootfs)
        self.console = Console(console_log)
        self.channel = LineChannel(self.console)
        self.proc: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None

    def command_line(self) -> str:
        return shlex.join(self.cmd)

    def guest_path(self, path: Path) -> str:
        """Where the guest sees a host file of the repo or the BPF cache."""
        path = Path(path).resolve()
        if self.rootfs is None:
            return str(path)  # the host's root is the guest's
        mounts = pinned_root_mounts()
        for host, guest in mounts:
            if path == host or host in path.parents:
                return str(Path(guest) / path.relative_to(host))
        raise KconformError(f"{path} is not visible in a guest on {self.rootfs.name}: only "
                            f"{', '.join(str(host) for host, _ in mounts)} are mounted there")

    def failure_hint(self) -> str:
        """A fix worth naming when this guest failed to boot."""
        if self.accel.name == "kvm" and any("KVM internal error" in l for l in self.console.lines):
            return "; KVM failed to run this kernel: rerun with --accel tcg"
        return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = dict(os.environ)
        # vng runs virtme-run from PATH: make it the one installed beside this Python.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin:/sbin"
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True)  # own process group: stop() reaps QEMU too
        self._reaper = subprocess.Popen([sys.executable, "-c", _REAPER, str(self.proc.pid)],
                                        stdin=subprocess.PIPE, start_new_session=True)
        _LIVE.add(self)
        self._threads = [
            threading.Thread(target=self.console.pump, args=(self.proc.stderr,), daemon=True,
                             name="console"),
            threading.Thread(target=self.channel.pump, args=(self.proc.stdout,), daemon=True,
                             name="channel"),
        ]
        for t in self._threads:
            t.start()

    def send(self, line: str) -> None:
        if not self.alive:
            raise GuestDied("the guest is not running")
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise GuestDied(f"the guest's channel is closed ({exc})") from exc

    def receive(self, timeout: float) -> str | None:
        """The next channel line; None on timeout. GuestDied when the channel ended."""
        return self.channel.receive(timeout, lambda: f"the guest exited (status {self.proc.poll()})")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the channel (the agent exits, the guest powers off), then make sure."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self._reaper is not None:
            # Stopped first, so it can never signal the group's id once the id is free for reuse.
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for t in self._threads:
            t.join(timeout=2)
        _LIVE.discard(self)


def kill_all_guests() -> None:
    """Last resort on interrupt or exit: no QEMU outlives the run that started it."""
    for guest in list(_LIVE):
        guest.kill()
