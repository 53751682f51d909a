"""VM runner: one Guest object owns one virtme-ng guest's life (start, exchange lines, stop, logs).

The agent channel is virtme-ng's own script I/O: the guest command's stdin/stdout travel over
virtio-serial ports, separate from the kernel console, which virtme-ng sends to stderr (--verbose).
So the console can be kept whole in a log while the channel carries only protocol lines.
"""
from __future__ import annotations

import collections
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from .accel import Accel
from .kernels import KernelTree

PANIC_MARKERS = ("Kernel panic - not syncing", "---[ end Kernel panic")
_LIVE: "weakref.WeakSet[Guest]" = weakref.WeakSet()


class GuestDied(Exception):
    """The guest (QEMU or the agent) is gone."""


def guest_python() -> str:
    # Debian's python3 is in every guest that shares the host's root; a venv python may not be.
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


def build_vng_command(tree: KernelTree, accel: Accel, guest_cmd: str, *, memory: str = "1G",
                      cpus: int = 1, kernel_args: tuple[str, ...] = (),
                      extra_vng: tuple[str, ...] = (), name: str | None = None) -> list[str]:
    """The whole virtme-ng command line for one guest; print it to reproduce a boot by hand."""
    name = name or guest_name()
    cmd = ["vng", "--run", str(tree.run_target or tree.vmlinuz), "--verbose", "--name", name,
           "--cpus", str(cpus), "--memory", memory, "--cwd", "/",
           f"--qemu-opts=-cpu {accel.cpu}"]
    if accel.name != "kvm":
        cmd.append("--disable-kvm")
    for arg in (*BOOT_ARGS, *kernel_args):
        cmd += ["--append", arg]
    cmd += list(extra_vng)
    cmd += ["--exec", guest_cmd]
    return cmd


class Guest:
    """One booted kernel: a vng process, its console log, and a line channel to the agent."""

    def __init__(self, tree: KernelTree, accel: Accel, guest_cmd: str, console_log: Path, *,
                 memory: str = "1G", cpus: int = 1, kernel_args: tuple[str, ...] = (),
                 extra_vng: tuple[str, ...] = ()):
        self.tree = tree
        self.accel = accel
        self.console_log = console_log
        self.cmd = build_vng_command(tree, accel, guest_cmd, memory=memory, cpus=cpus,
                                     kernel_args=kernel_args, extra_vng=extra_vng)
        self.proc: subprocess.Popen | None = None
        self.console: collections.deque[str] = collections.deque(maxlen=4000)
        self.console_lines = 0          # total lines seen, so callers can mark positions
        self.panicked = threading.Event()
        self._lines: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None

    def command_line(self) -> str:
        return shlex.join(self.cmd)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # vng runs virtme-run from PATH: make it the one installed beside this Python.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin:/sbin"
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True)  # own process group: stop() reaps QEMU too
        _LIVE.add(self)
        self._threads = [
            threading.Thread(target=self._pump_console, daemon=True, name="console"),
            threading.Thread(target=self._pump_channel, daemon=True, name="channel"),
        ]
        for t in self._threads:
            t.start()

    def _pump_console(self) -> None:
        with open(self.console_log, "ab", buffering=0) as log:
            for raw in self.proc.stderr:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.console.append(line)
                self.console_lines += 1
                if any(m in line for m in PANIC_MARKERS):
                    self.panicked.set()

    def _pump_channel(self) -> None:
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        self._lines.put(None)  # EOF: the guest side closed the channel

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
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.panicked.is_set():
                    time.sleep(0.5)  # let the rest of the panic reach the log
                    raise GuestDied("kernel panic")
                continue
            if line is None:
                self._lines.put(None)
                raise GuestDied("kernel panic" if self.panicked.is_set() else
                                f"the guest exited (status {self.proc.poll()})")
            return line

    def console_tail(self, n: int = 40, since: int | None = None) -> list[str]:
        lines = list(self.console)
        if since is not None:
            lines = lines[-max(0, self.console_lines - since):] if self.console_lines > since else []
        return lines[-n:]

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
