"""VM runner: one QemuMachine object owns one virtme-ng guest's life (start, exchange lines,
stop, logs).

The agent channel is virtme-ng's own script I/O: the guest command's stdin/stdout travel over
virtio-serial ports, separate from the kernel console, which virtme-ng sends to stderr (--verbose).
So the console can be kept whole in a log while the channel carries only protocol lines.

The guest's root is the host's own (read-only, as virtme-ng does), or a pinned root filesystem
(machines/rootfs.py); then the repo and the BPF objects are mounted into it read-only, and
guest_path() says where a host file is seen inside.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from ..arches import host_architecture
from ..cache import bpf_cache_dir, cache_dir
from ..errors import KconformError
from ..kernels import KernelTree
from ..paths import REPO_ROOT, agent_argv
from .accel import Accel
from .channel import Console, GuestDied, LineChannel
from .rootfs import GUEST_BPF, GUEST_REPO, Rootfs

_LIVE: weakref.WeakSet[QemuMachine] = weakref.WeakSet()


def pinned_root_mounts() -> tuple[tuple[Path, str], ...]:
    """(host directory, where a guest on a pinned root sees it)."""
    return ((REPO_ROOT, GUEST_REPO), (bpf_cache_dir(), GUEST_BPF))


def seen_on_pinned_root(path: Path, root_name: str) -> str:
    """Where a guest on the pinned root `root_name` sees a host file of the repo or the BPF
    cache (mounted there by vng --rodir). KconformError for any other file."""
    mounts = pinned_root_mounts()
    for host, guest in mounts:
        if path == host or host in path.parents:
            return str(Path(guest) / path.relative_to(host))
    raise KconformError(f"{path} is not visible in a guest on {root_name}: only "
                        f"{', '.join(str(host) for host, _ in mounts)} are mounted there")


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


# -- values on vng's command line
#
# vng (virtme-ng 1.42) pastes its options unquoted into one string for `virtme-run` and runs it
# with shell=True, even under --dry-run: --name, --run (as --kimg), --root, --rodir, --cwd,
# --memory, --cpus, --ssh and --qemu-opts reach that shell as they are. virtme-run then pastes
# --root and the --rodir host paths into virtiofsd's command line, run by os.system, when it uses
# virtiofs. (--exec is shlex-quoted and --append re-quoted by vng; the kernel command line is
# split at spaces all the same.) So every value is held to a grammar no shell can read anything
# into, here, where the one command line is built.

_MEMORY = re.compile(r"[1-9][0-9]{0,8}[KMGT]?", re.IGNORECASE)  # QEMU -m: MiB, or suffixed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]*")  # e.g. qemu64, host,-pdpe1gb
_WORD = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")  # a kernel argument or an extra vng option
# What a path may hold to reach vng's shell as is: no blank, quote, $, `, ;, &, |, <, >, (, ),
# *, ?, [, ], {, }, ~, !, #, backslash; no = (--rodir's separator).
_PATH_CHARS = re.compile(r"[A-Za-z0-9_.,:/+@%-]")
PATH_CHARS_WORDS = "letters, digits and _ . , : / + @ % -"


def check_memory(value: str, option: str = "--guest-memory") -> str:
    """A guest memory size vng can take, e.g. 512M, 1G, 2048 (MiB)."""
    if not isinstance(value, str) or not _MEMORY.fullmatch(value):
        raise KconformError(f"{option} {value!r}: not a size; use a number with an optional "
                            "K/M/G suffix, e.g. 1G")
    return value


def _check_word(value: str, what: str, grammar: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not grammar.fullmatch(value):
        raise KconformError(f"{what} {value!r} would reach virtme-ng's shell unquoted; it may "
                            f"hold only {allowed}")
    return value


def _unsafe_char(path: str) -> str | None:
    for char in path:
        if not _PATH_CHARS.fullmatch(char):
            return char
    return None


def _require_plain_path(path: str, what: str, fix: str) -> str:
    char = _unsafe_char(path)
    if char is not None or not path.startswith("/"):
        raise KconformError(f"{what} {path!r} holds {char!r}, which virtme-ng would hand to a "
                            f"shell unquoted; {fix} (a path of {PATH_CHARS_WORDS} only)")
    return path


def _private_dir(name: str) -> Path:
    """<cache>/name, a directory only this user can write, with a plain path (QEMU and virtiofsd
    follow links kept there, and virtme-ng pastes paths made there into its shell lines)."""
    cache = cache_dir().absolute()
    _require_plain_path(str(cache), "kconform's cache",
                        "set KCONFORM_CACHE to a directory with a plain path")
    directory = cache / name
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.lstat()
    except OSError as exc:
        raise KconformError(f"cannot create {directory} ({exc.strerror}): make {cache} writable, "
                            "or set KCONFORM_CACHE to a directory you own") from None
    if (not directory.is_dir() or directory.is_symlink() or st.st_uid != os.getuid()
            or st.st_mode & 0o022):
        raise KconformError(f"{directory} is not a directory only you can write to: remove it "
                            "(kconform recreates it)")
    return directory


def _alias_dir() -> Path:
    """Where kconform keeps its plain-named links to paths vng cannot be given as they are."""
    return _private_dir("vng-paths")


def vng_tmpdir() -> str:
    """The TMPDIR vng runs with: virtme-run makes virtiofsd's socket with tempfile.mkstemp and
    pastes its path into the os.system line that starts virtiofsd, so the user's TMPDIR (which
    may hold anything) never reaches it."""
    return str(_private_dir("tmp"))


def _plain_alias(target: Path) -> Path:
    """A symlink with a plain name to target; the same one for the same target, so concurrent
    runs agree on it and a printed vng line keeps working."""
    links = _alias_dir()
    link = links / hashlib.sha256(os.fsencode(target)).hexdigest()[:24]
    with contextlib.suppress(OSError):
        if os.readlink(link) == str(target):
            return link
    scratch = links / f".new-{link.name}-{os.getpid()}-{threading.get_ident()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        os.symlink(target, scratch)
        os.replace(scratch, link)  # one rename: a reader sees the old link or the new one
    except OSError as exc:
        raise KconformError(f"cannot create a link to {target} in {links} "
                            f"({exc.strerror}): make it writable") from None
    return link


def vng_path(path: Path | str) -> str:
    """path as vng may be given it: itself when plain, else a plain-named link to it (virtme-ng
    reads through links; it resolves them only to read a file, never into its shell lines)."""
    path = Path(os.path.abspath(path))
    if _unsafe_char(str(path)) is None:
        return str(path)
    return str(_plain_alias(path))


_KDIR_IMAGE = Path("arch/x86/boot/bzImage")


def vng_kernel_path(path: Path | str) -> str:
    """The kernel (an image, or a built tree) as vng may be given it. virtme-ng finds a kernel's
    modules by what surrounds its path (a built tree around arch/x86/boot/bzImage, a lib/modules
    beside a Debian tree's boot/), so a link is made to that surrounding directory, not the
    file, when the path inside it is plain."""
    path = Path(os.path.abspath(path))
    if _unsafe_char(str(path)) is None or path.is_dir():
        return vng_path(path)
    anchor = None
    if path.parts[-len(_KDIR_IMAGE.parts):] == _KDIR_IMAGE.parts:
        anchor = path.parents[len(_KDIR_IMAGE.parts) - 1]
    else:
        for parent in path.parents:
            if parent == Path("/"):
                break
            if any((parent / modules).exists() for modules in ("lib/modules", "usr/lib/modules")):
                anchor = parent
                break
    if anchor is not None:
        inside = str(path.relative_to(anchor))
        if _unsafe_char(inside) is None:
            return f"{_plain_alias(anchor)}/{inside}"
    return str(_plain_alias(path))


# -- which file sharing keeps the host's root read-only

_VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/virtiofsd/virtiofsd", "/usr/lib/virtiofsd",
                    "/usr/lib/qemu/virtiofsd")


def vng_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vng runs in (and so where it looks for virtme-run and virtiofsd)."""
    env = dict(os.environ if base is None else base)
    # vng runs virtme-run from PATH: make it the one installed beside this Python.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin:/sbin"
    env["TMPDIR"] = vng_tmpdir()
    return env


def _guest_tools() -> str | None:
    """virtme-ng's guest tools directory (inside its installation, so inside a venv)."""
    try:
        from virtme import resources
        tools = resources.find_guest_tools()
    except Exception:  # virtme-ng missing or changed: then no guest tools of its own to find
        return None
    return tools if isinstance(tools, str) else None


def _virtiofsd_virtme_picks(search_path: str) -> str | None:
    """The virtiofsd virtme-run would start, found as it finds it (virtme/commands/run.py,
    VirtioFS._get_virtiofsd_path): the first of its guest tools' own, PATH's, then fixed paths,
    that exists, is executable and answers --version with status 0."""
    tools = _guest_tools()
    candidates = (f"{tools}/bin/virtiofsd" if tools else None,
                  shutil.which("virtiofsd", path=search_path), *_VIRTIOFSD_PATHS)
    for path in candidates:
        if path and os.path.exists(path) and os.access(path, os.X_OK):
            try:
                if subprocess.run([path, "--version"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
                    return path
            except (OSError, subprocess.TimeoutExpired):
                continue
    return None


@functools.cache
def virtiofs_keeps_root_readonly(search_path: str) -> bool:
    """Whether vng may use virtiofs: only when the virtiofsd it would start can both export a
    directory (--shared-dir; QEMU's old C virtiofsd on Debian 12 cannot, and virtme-ng waits
    3.1 s per exported directory before falling back to 9p) and export it read-only
    (--readonly, virtiofsd 1.13+; virtme-ng silently shares the host's root writable with one
    that lacks it, and the guest runs as root). Otherwise --force-9p: 9p passes readonly=on.
    virtme-ng starts virtiofsd with os.system, pasting in virtiofsd's own path and the guest
    tools directory it shares: virtiofs is used only when both are plain too (9p hands them to
    QEMU as arguments, no shell between)."""
    path = _virtiofsd_virtme_picks(search_path)
    if path is None or _unsafe_char(path) is not None:
        return False
    tools = _guest_tools()
    if tools is not None and _unsafe_char(tools) is not None:
        return False
    try:
        # virtme-ng reads --help with stderr folded in and requires status 0 for --readonly
        proc = subprocess.run([path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "--shared-dir" in proc.stdout and "--readonly" in proc.stdout


def virtiofs_usable() -> bool:
    return virtiofs_keeps_root_readonly(vng_environment()["PATH"])


def refuse_without_9p(tree: KernelTree) -> None:
    """A kernel built without 9p (Debian's cloud flavour) cannot mount a guest root over 9p, and
    virtiofs is not usable here: say so before QEMU starts, instead of a root-mount panic."""
    config = tree.config()
    missing = [opt for opt in ("CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO")
               if config and config.get(opt) not in ("y", "m")]
    if not missing:
        return
    virtiofs = config.get("CONFIG_VIRTIO_FS") in ("y", "m")
    fix = ("it has virtiofs, but this host's virtiofsd cannot share the root read-only (that "
           "needs virtiofsd 1.13 or newer, with --readonly, e.g. Debian 13's package virtiofsd)"
           if virtiofs else "nor virtiofs")
    raise KconformError(
        f"{tree.name} ({tree.release}) cannot boot under virtme-ng here: its guests mount their "
        f"root over 9p, and this kernel has none ({' and '.join(missing)} not set); {fix}. "
        "Refused before booting: run a flavour with 9p (the generic one) instead")


def check_machine_values(name: str | None, memory: str, cpus: int,
                         accel: Accel) -> tuple[str, str]:
    """(the guest's name, the CPU model), once every value that shapes any guest's command line
    is checked: the name (default: this process's), the memory size, the CPU count."""
    name = _check_word(name or guest_name(), "the guest name", _NAME,
                       "letters, digits and _ . - (up to 64)")
    check_memory(memory)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise KconformError(f"guest CPUs {cpus!r}: use a whole number of at least 1")
    cpu_model = _check_word(accel.cpu, "QEMU -cpu model", _CPU_MODEL,
                            "letters, digits and _ . , = + -")
    return name, cpu_model


def build_vng_command(tree: KernelTree, accel: Accel, guest_cmd: str, *, memory: str = "1G",
                      cpus: int = 1, kernel_args: tuple[str, ...] = (),
                      extra_vng: tuple[str, ...] = (), name: str | None = None,
                      rootfs: Rootfs | None = None,
                      rw_dirs: tuple[tuple[str, Path], ...] = (),
                      own_boot_args: bool = True) -> list[str]:
    """The whole virtme-ng command line for one guest; print it to reproduce a boot by hand.
    Every value is checked or made plain here (see above); guest_cmd is the one vng quotes.
    rw_dirs: (guest path, host directory) pairs the guest may write. own_boot_args=False leaves
    out kconform's BOOT_ARGS: virtme-ng's default kernel command line, the baseline that
    ./kconform bench measures kconform's boot against."""
    name, cpu_model = check_machine_values(name, memory, cpus, accel)
    boot_args = (*(BOOT_ARGS if own_boot_args else ()), *kernel_args)
    for arg in boot_args:
        _check_word(arg, "kernel argument", _WORD, "letters, digits and _ . , : = / + @ -")
    for arg in extra_vng:
        _check_word(arg, "vng option", _WORD, "letters, digits and _ . , : = / + @ -")
    image = tree.run_target or tree.vmlinuz
    if image is None:
        raise KconformError(f"{tree.name} has no kernel image to boot")
    foreign = tree.arch != host_architecture()
    if foreign and (rootfs is None or rootfs.arch != tree.arch):
        raise KconformError(f"{tree.name} is an {tree.arch} kernel: its guest needs an "
                            f"{tree.arch} root (this host's root is {host_architecture()}); run it "
                            "with --rootfs NAME, which builds one for each architecture")
    # --cwd is a host path inside the guest's root: "/" of the guest either way (vng takes its
    # path relative to --root, so both go through the same link)
    root = vng_path(rootfs.path) if rootfs is not None else None
    cmd = ["vng", "--run", vng_kernel_path(image), "--verbose", "--name", name,
           "--cpus", str(cpus), "--memory", memory, "--cwd", root or "/",
           f"--qemu-opts=-cpu {cpu_model}"]
    if foreign:  # vng then boots qemu-system-aarch64 -M virt, with its shell-script init
        cmd += ["--arch", tree.arch]
    if accel.name != "kvm":
        cmd.append("--disable-kvm")
    if not virtiofs_usable():
        refuse_without_9p(tree)
        cmd.append("--force-9p")
    if root is not None:
        cmd += ["--root", root]
        for host, guest in pinned_root_mounts():
            _require_plain_path(guest, "guest mount point", "name a plain guest path")
            cmd.append(f"--rodir={guest}={vng_path(host)}")
    for guest, host in rw_dirs:
        _require_plain_path(guest, "guest mount point", "name a plain guest path")
        cmd.append(f"--rwdir={guest}={vng_path(host)}")
    for arg in boot_args:
        cmd += ["--append", arg]
    cmd += list(extra_vng)
    cmd += ["--exec", guest_cmd]
    return cmd


class QemuMachine:
    """One booted kernel: a vng process, its console log, and a line channel to the agent."""

    noun = "the guest"  # in failure messages

    def __init__(self, tree: KernelTree, accel: Accel, console_log: Path, *,
                 rootfs: Rootfs | None = None, command: str | None = None, memory: str = "1G",
                 cpus: int = 1, kernel_args: tuple[str, ...] = (),
                 extra_vng: tuple[str, ...] = (), rw_dirs: tuple[tuple[str, Path], ...] = ()):
        """command: what the guest runs (default: kconform's agent)."""
        self.tree = tree
        self.accel = accel
        self.rootfs = rootfs
        if command is None:
            python = guest_python(rootfs)
            command = shlex.join(agent_argv(python, self.guest_path(REPO_ROOT), boot_log=True))
        self.cmd = build_vng_command(tree, accel, command, memory=memory, cpus=cpus,
                                     kernel_args=kernel_args, extra_vng=extra_vng, rootfs=rootfs,
                                     rw_dirs=rw_dirs)
        self._attach(console_log)

    def _attach(self, console_log: Path, fresh: bool = True) -> None:
        """The console log and the agent's channel, for a process not started yet."""
        self.console = Console(console_log, fresh=fresh)
        self.channel = LineChannel(self.console)
        self.proc: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None

    boot_kind = "virtme-ng"  # how it boots, as results record it
    pass_fds: tuple[int, ...] = ()  # what QEMU inherits besides stdio (a snapshot to restore)

    def command_line(self) -> str:
        return shlex.join(self.cmd)

    def shell_command(self) -> str:
        """A vng line that boots this kernel the same way, for a shell by hand."""
        return self.command_line()

    def guest_path(self, path: Path, within: float | None = None) -> str:
        """Where the guest sees a host file of the repo or the BPF cache (mounted: nothing is
        copied, so `within` bounds nothing)."""
        path = Path(path).resolve()
        if self.rootfs is None:
            return str(path)  # the host's root is the guest's
        return seen_on_pinned_root(path, self.rootfs.name)

    def failure_hint(self) -> str:
        """A fix worth naming when this guest failed to boot."""
        if self.accel.name == "kvm" and any("KVM internal error" in line
                                            for line in self.console.lines):
            return "; KVM failed to run this kernel: rerun with --accel tcg"
        return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = vng_environment()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True,  # own process group: stop() reaps QEMU too
            pass_fds=self.pass_fds)
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
        stdin = self.proc.stdin if self.proc is not None else None
        if not self.alive or stdin is None:
            raise GuestDied("the guest is not running")
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise GuestDied(f"the guest's channel is closed ({exc})") from exc

    def receive(self, timeout: float) -> str | None:
        """The next channel line; None on timeout. GuestDied when the channel ended."""
        return self.channel.receive(timeout, self._exit_status)

    def _exit_status(self) -> str:
        status = None
        if self.proc is not None:
            # the channel's end can come before the process is reaped: a moment for its status
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self.proc.wait(timeout=2)
        return f"the guest exited (status {status})"

    def stop(self, timeout: float = 10.0) -> None:
        """Close the channel (the agent exits, the guest powers off), then make sure."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    if self.proc.stdin is not None:
                        self.proc.stdin.close()
                except OSError:
                    pass
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=timeout)
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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=2)
        _LIVE.discard(self)


def kill_all_guests() -> None:
    """Last resort on interrupt or exit: no QEMU outlives the run that started it."""
    for guest in list(_LIVE):
        guest.kill()
