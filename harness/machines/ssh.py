"""SSH targets: the same cases on an already-running machine (real hardware, a lab box, a VM
someone else booted), through paramiko.

An SshMachine plays the part a QemuMachine plays for a QEMU guest: it connects, pushes the
guest-side files over SFTP into a private temporary directory, starts the agent over one exec
channel and exchanges the same JSON lines with it; the agent's stderr is its console. stop()
removes the directory. A lost connection ends the session like a dead guest: the running test
fails, and the pool opens a new connection for the tests after it.

Host keys are checked against ~/.ssh/known_hosts and --ssh-known-hosts; only
--ssh-accept-any-host-key (for throwaway VMs) skips the check.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import paramiko

from ..arches import ARCHITECTURES, MACHINES, of_machine
from ..errors import KconformError
from ..kernels import KernelTree
from ..paths import REPO_ROOT, agent_argv
from ..versions import upstream_version
from .channel import Console, GuestDied, LineChannel

# paramiko's transport thread logs a failed handshake with its traceback; with no handler of
# its own, Python's last-resort handler prints it to stderr before kconform's own error says
# what happened. The error kconform raises carries the reason.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# The repo's files the guest side imports: the agent and what the cases' guest functions use.
GUEST_SIDE = ("harness/__init__.py", "harness/agent", "cases/__init__.py", "cases/guest",
              "tests/__init__.py", "tests/guest")


class SshError(KconformError):
    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient  # the machine may answer later (down, rebooting, network)


# What paramiko and the socket under it raise when a connection fails or goes away
# (socket.timeout is an OSError).
SSH_ERRORS = (OSError, EOFError, paramiko.SSHException)

# What `mktemp -d` makes on the target (its output, later given to rm -rf and pkill: checked).
REMOTE_DIR_TEMPLATE = "/tmp/kconform.XXXXXXXX"
_REMOTE_DIR = re.compile(r"/tmp/kconform\.[A-Za-z0-9]{8}")
# How long one file push may take when no call's deadline bounds it.
TRANSFER_TIMEOUT = 60.0

# Remote directories of ended sessions that could not be removed yet, by target URL.
_LEFT_BEHIND: dict[str, set[str]] = {}


# A user name as useradd takes it (POSIX portable characters, no leading "-"); a host is a DNS
# name, an IPv4 address or a bracketed IPv6 address. Anything else in a URL is refused: these
# values reach an ssh command line printed for the user to paste, and `-oProxyCommand=...` as a
# user or host would run a command there.
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_URL_FORM = "ssh://user@host[:port] (host: a DNS name, an IPv4 address or [an IPv6 address])"


def _target_error(url: str, problem: str) -> KconformError:
    return KconformError(f"--target {url!r}: {problem}; expected {_URL_FORM}")


def _check_host(url: str, host: str) -> str:
    """The host as ssh and paramiko take it (an IPv6 address without its brackets)."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise _target_error(url, f"the IPv6 address {host!r} has no closing ']'")
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise _target_error(url, f"{host!r} is not an IPv6 address") from None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _target_error(url, f"{host!r} is not an IPv4 address") from None
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label)
                                              for label in name.split(".")):
        raise _target_error(url, f"the host {host!r} is not a DNS name (letters, digits and "
                                 "'-' in dot-separated labels, none starting or ending with '-')")
    return host.lower()


@dataclass(frozen=True)
class SshTarget:
    """ssh://user@host[:port] and how to authenticate to it."""
    url: str
    user: str
    host: str
    port: int
    key_file: str | None = None
    known_hosts: str | None = None
    accept_any_host_key: bool = False

    @classmethod
    def parse(cls, url: str, *, key_file: str | None = None, known_hosts: str | None = None,
              accept_any_host_key: bool = False) -> SshTarget:
        scheme, sep, rest = url.partition("://")
        if scheme != "ssh" or not sep:
            raise _target_error(url, "not an ssh:// URL")
        netloc, _, path = rest.partition("/")
        if path or any(c in netloc for c in "?#"):
            raise _target_error(url, "a target URL names a machine only (no path, query or "
                                     "fragment)")
        user, at, hostport = netloc.rpartition("@")
        if not at:
            user = "root"
        elif ":" in user:
            raise _target_error(url, "a password in the URL is not supported: log in with a key "
                                     "(--ssh-key FILE or ssh-agent)")
        elif not _USER.fullmatch(user):
            raise _target_error(url, f"the user {user!r} is not a user name (letters, digits, "
                                     "'.', '_' and '-', not starting with '-' or '.')")
        if hostport.startswith("["):
            host, bracket, after = hostport.partition("]")
            host += bracket
            if after and not after.startswith(":"):
                raise _target_error(url, f"unexpected {after!r} after the IPv6 address")
            port_text = after[1:] if after else None
        else:
            host, colon, port_text = hostport.partition(":")
            port_text = port_text if colon else None
        if not host:
            raise _target_error(url, "no host")
        host = _check_host(url, host)
        port = 22
        if port_text is not None:
            if not port_text.isascii() or not port_text.isdigit():
                raise _target_error(url, f"the port {port_text!r} is not a number")
            port = int(port_text)
            if not 1 <= port <= 65535:
                raise _target_error(url, f"the port {port} is out of range: give one from 1 to "
                                         "65535 (sshd listens on 22 unless told otherwise)")
        shown = f"[{host}]" if ":" in host else host
        return cls(url=f"ssh://{user}@{shown}:{port}", user=user, host=host, port=port,
                   key_file=key_file, known_hosts=known_hosts,
                   accept_any_host_key=accept_any_host_key)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def ssh_command(self) -> str:
        """The OpenSSH line that logs in the same way, to look at the machine by hand. Every
        value is quoted for the shell, and `--` ends ssh's options before the destination."""
        cmd = ["ssh", "-p", str(self.port)]
        if self.key_file:
            cmd += ["-i", self.key_file]
        if self.known_hosts:
            cmd += ["-o", f"UserKnownHostsFile={_ssh_config_value(self.known_hosts)}"]
        return shlex.join([*cmd, "--", f"{self.user}@{self.host}"])


def _ssh_config_value(value: str) -> str:
    """A value as ssh's -o parser reads it: one word, double-quoted when it holds a space."""
    if not any(c.isspace() or c in '"\\' for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def connect(target: SshTarget, timeout: float = 20.0) -> paramiko.SSHClient:
    if target.key_file and not Path(target.key_file).is_file():
        raise SshError(f"--ssh-key {target.key_file}: no such file")
    client = paramiko.SSHClient()
    if target.accept_any_host_key:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # kept in memory only
    else:
        client.load_system_host_keys()
        if target.known_hosts:
            try:
                client.load_host_keys(target.known_hosts)
            except OSError as exc:
                raise SshError(f"--ssh-known-hosts {target.known_hosts}: {exc.strerror}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(target.host, target.port, username=target.user,
                       key_filename=target.key_file, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, look_for_keys=target.key_file is None)
    except Exception as exc:  # paramiko also raises EOFError and others of its own
        client.close()
        refused = (isinstance(exc, (paramiko.BadHostKeyException,
                                    paramiko.AuthenticationException))
                   or "not found in known_hosts" in str(exc))
        raise SshError(_connect_error(target, exc), transient=not refused) from None
    transport = client.get_transport()
    if transport is None:  # connect() returned, so paramiko made one; refused like a reset
        client.close()
        raise SshError(f"{target.url}: the connection closed as it was made", transient=True)
    transport.set_keepalive(5)
    # Keepalives alone never notice a peer that vanished (a panicked lab box): with unacked data
    # older than 20 s the kernel drops the connection, and the running test fails at once.
    if isinstance(transport.sock, socket.socket):  # a proxy command's channel has no TCP options
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 20_000)
    return client


def _connect_error(target: SshTarget, exc: Exception) -> str:
    where = target.url
    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"{where}: the host key does not match the known one ({exc}); if the machine "
                "was reinstalled, update known_hosts")
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: authentication failed ({exc}): give the key with --ssh-key FILE"
    if "not found in known_hosts" in str(exc):
        return (f"{where}: its host key is not known. Add it (ssh-keyscan -p {target.port} "
                f"{target.host} >> ~/.ssh/known_hosts, after checking it), pass "
                "--ssh-known-hosts FILE, or, for a throwaway VM only, --ssh-accept-any-host-key")
    if isinstance(exc, OSError):
        return (f"cannot connect to {where}: {exc}; check that the machine is up and sshd "
                "listens on that port")
    return f"{where}: the SSH handshake failed ({type(exc).__name__}: {exc or 'connection closed'})"


def run(client: paramiko.SSHClient, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a short command; socket.timeout (an OSError) past `timeout`."""
    _, out, err = client.exec_command(command, timeout=timeout)
    text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return out.channel.recv_exit_status(), text, errors


# A Debian kernel says its package version in /proc/version ("... Debian 6.1.176-1 (2025-...)"),
# Ubuntu in /proc/version_signature ("Ubuntu 6.8.0-45.45-generic 6.8.12"); `uname -r` of a
# distribution kernel ("6.1.0-40-amd64") is not its upstream version.
# The compiler's "(Debian 12.2.0-14)" comes first; the kernel's own version follows "#1 SMP ...".
_DEBIAN_VERSION = re.compile(r"#\d+ .*\bDebian (\d+\.\d+\.\d+[\w.+~:-]*)", re.ASCII)
_UBUNTU_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?[\w.+~-]*", re.ASCII)
DESCRIBE = ("uname -r; id -u; cat /proc/version; cat /proc/version_signature 2>/dev/null; "
            "echo; echo ---machine---; uname -m; "
            "echo ---config---; cat \"/boot/config-$(uname -r)\" 2>/dev/null || "
            "zcat /proc/config.gz 2>/dev/null")

# What a target says about itself is its own word: its `uname -r` becomes the kernel's name, and
# so a file name, a test id and a report cell. A real release uses only these characters.
_RELEASE_CHARS = re.compile(r"[^A-Za-z0-9._+~-]+")
MAX_RELEASE = 64


def target_kernel_name(release: str) -> str:
    """A target's `uname -r` as a kernel name that is safe as one path component and readable in
    test ids: other characters become '_', no leading '.' or '-' ('..', an option), bounded."""
    name = _RELEASE_CHARS.sub("_", release)[:MAX_RELEASE].lstrip(".-_")
    return name or "unnamed-release"


def _printable(text: str, limit: int = 200) -> str:
    """A target's words as one bounded line of text, for reports."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def describe_target(target: SshTarget, config_dir: Path) -> KernelTree:
    """Connect once and describe the running kernel: release, version, config."""
    client = connect(target)
    try:
        _, out, err = run(client, DESCRIBE)
    except SSH_ERRORS as exc:
        raise SshError(f"{target.url}: describing its kernel failed ({exc})") from None
    finally:
        client.close()
    return parse_description(target, out, err, config_dir)


def parse_description(target: SshTarget, out: str, err: str, config_dir: Path) -> KernelTree:
    head, _, config = out.partition("---config---\n")
    head, _, machine = head.partition("---machine---\n")
    machine = _printable(machine.strip(), 32)
    # what the BPF objects are built for and results record; an older DESCRIBE said none
    arch = of_machine(machine) if machine else "amd64"
    if arch not in ARCHITECTURES:  # its BPF objects could not be built: every case would fail
        raise SshError(f"{target.url}: its machine is {machine!r} (uname -m); kconform runs its "
                       f"cases on {' and '.join(ARCHITECTURES)} ({', '.join(MACHINES)}) only")
    lines = head.splitlines()
    if len(lines) < 3:
        raise SshError(f"{target.url}: could not read the kernel's release ({err.strip()})")
    release, uid, proc_version = _printable(lines[0].strip()), lines[1].strip(), lines[2]
    name = target_kernel_name(release)
    if uid != "0":
        raise SshError(f"{target.url}: the cases need root on the target (BPF maps, programs and "
                       f"/dev/kmsg): log in as root (ssh://root@{target.address})")
    version = None
    match = _DEBIAN_VERSION.search(proc_version)
    if match:
        version = match.group(1)
    elif len(lines) > 3 and lines[3].startswith("Ubuntu ") and lines[3].split():
        match = _UBUNTU_VERSION.fullmatch(lines[3].split()[-1])
        version = match.group() if match else None
    try:  # the expectations are chosen by this version: a kernel without one cannot be judged
        upstream_version(version or release)
    except ValueError:
        raise SshError(f"{target.url}: its kernel release {release!r} names no version (like "
                       "6.1.0-50-amd64), so no expectations apply to it; run a kernel whose "
                       "`uname -r` starts with its version") from None
    config_path = None
    if config.strip():
        config_dir.mkdir(parents=True, exist_ok=True)
        config_path = config_dir / f"{target_kernel_name(target.host)}_{target.port}-{name}.config"
        config_path.write_text(config)
    return KernelTree(name=name, vmlinuz=None, release=release, package_version=version,
                      config_path=config_path, target=target.url, arch=arch)


class TargetDescription(TypedDict):
    """What a target's KernelTree holds, as plain data."""
    name: str
    release: str
    package_version: str | None
    config_path: str | None
    target: str | None
    arch: str


def description_to_dict(tree: KernelTree) -> TargetDescription:
    """A target's description as plain data, for xdist workers (they do not connect again)."""
    return {"name": tree.name, "release": tree.release, "package_version": tree.package_version,
            "config_path": str(tree.config_path) if tree.config_path else None,
            "target": tree.target, "arch": tree.arch}


def description_from_dict(data: TargetDescription) -> KernelTree:
    return KernelTree(name=data["name"], vmlinuz=None, release=data["release"],
                      package_version=data["package_version"],
                      config_path=Path(data["config_path"]) if data["config_path"] else None,
                      target=data["target"], arch=data["arch"])


def check_remote_dir(target: SshTarget, out: str) -> str:
    """The directory `mktemp -d` made, as the target said it: it is later removed with rm -rf
    and its agents matched with pkill, so it must be what the template makes."""
    remote_dir = out.strip()
    if not _REMOTE_DIR.fullmatch(remote_dir):
        raise SshError(f"{target.url}: `mktemp -d {REMOTE_DIR_TEMPLATE}` printed "
                       f"{_printable(remote_dir, 80)!r}, not a directory of that form")
    return remote_dir


def _remaining(deadline: float, target: SshTarget, doing: str) -> float:
    remaining = deadline - time.monotonic()
    if not remaining > 0:
        raise SshError(f"{target.url}: out of time {doing} (the start may take "
                       "--boot-timeout seconds)")
    return remaining


def _bound(channel: paramiko.Channel | None, deadline: float, target: SshTarget,
           doing: str) -> None:
    """The SFTP channel's reads time out at the deadline (socket.timeout, an OSError)."""
    remaining = _remaining(deadline, target, doing)
    if channel is not None:
        channel.settimeout(remaining)


class SshMachine:
    """The agent on an SSH target, over one connection."""

    noun = "the SSH session"  # in failure messages
    boot_kind = "ssh"          # nothing booted: a machine that was already running

    def __init__(self, target: SshTarget, console_log: Path, connect_within: float = 30.0,
                 start_within: float = 60.0):
        """connect_within: how long to keep trying a machine that does not answer (a lab box
        rebooting after a crash) before its session fails; start_within: how long the whole
        start (connect, push the files, start the agent) may take."""
        self.target = target
        self.connect_within = connect_within
        self.start_within = start_within
        self.console = Console(console_log)
        self.channel = LineChannel(self.console)
        self.client: paramiko.SSHClient | None = None
        self.remote_dir: str | None = None
        self._session: paramiko.Channel | None = None
        self._uploaded: dict[Path, str] = {}
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None

    @property
    def alive(self) -> bool:
        """Connected: kill() closes the connection (the target's agent ends with it)."""
        return self.client is not None

    def command_line(self) -> str:
        return self.target.ssh_command()

    def shell_command(self) -> str:
        return self.command_line()

    def failure_hint(self) -> str:
        return ""

    def start(self) -> None:
        self.started_at = time.monotonic()
        try:
            deadline = self.started_at + self.start_within
            self.client = self._connect()
            status, out, err = run(self.client, f"mktemp -d {REMOTE_DIR_TEMPLATE}",
                                   timeout=_remaining(deadline, self.target, "mktemp"))
            if status != 0:
                raise SshError(f"{self.target.url}: mktemp failed: {err.strip()}")
            self.remote_dir = check_remote_dir(self.target, out)
            self._remove_left_behind()
            self._push_guest_side(deadline)
            transport = self.client.get_transport()
            if transport is None:
                raise SshError(f"{self.target.url}: the connection closed before the agent "
                               "started")
            session = transport.open_session()
            session.exec_command(shlex.join(agent_argv("python3", self.guest_path(REPO_ROOT),
                                                       boot_log=False)))
        except SSH_ERRORS as exc:
            self.kill()
            raise GuestDied(f"{self.target.url}: {exc}") from None
        except SshError as exc:
            self.kill()
            raise GuestDied(str(exc)) from None
        self._session = session
        self._threads = [
            threading.Thread(target=self.console.pump, args=(session.makefile_stderr("rb"),),
                             daemon=True, name="ssh-stderr"),
            threading.Thread(target=self.channel.pump, args=(session.makefile("rb"),),
                             daemon=True, name="ssh-channel"),
        ]
        for t in self._threads:
            t.start()

    def _connect(self) -> paramiko.SSHClient:
        deadline = time.monotonic() + self.connect_within  # start() just set started_at
        while True:
            try:
                return connect(self.target)
            except SshError as exc:
                if not exc.transient or time.monotonic() + 3 > deadline:
                    raise
            time.sleep(3)

    def _push_guest_side(self, deadline: float) -> None:
        """Push the repo's guest side, all of it by the deadline (socket.timeout past it: a
        target whose writes block must not hold the run past --boot-timeout)."""
        if self.client is None or self.remote_dir is None:
            raise SshError(f"{self.target.url}: not connected")
        remote_dir = self.remote_dir
        sftp = self.client.open_sftp()
        channel = sftp.get_channel()
        try:
            base = f"{remote_dir}/repo"
            made: set[Path] = set()
            for entry in GUEST_SIDE:
                path = REPO_ROOT / entry
                files = sorted(path.glob("*.py")) if path.is_dir() else [path]
                for f in files:
                    remote = f"{base}/{f.relative_to(REPO_ROOT)}"
                    for parent in reversed(Path(remote).parents):
                        if str(parent).startswith(remote_dir) and parent not in made:
                            _bound(channel, deadline, self.target, "pushing the guest side")
                            with contextlib.suppress(OSError):  # it exists
                                sftp.mkdir(str(parent), 0o700)
                            made.add(parent)
                    _bound(channel, deadline, self.target, "pushing the guest side")
                    sftp.put(str(f), remote)
            self._uploaded[REPO_ROOT] = base
        finally:
            sftp.close()

    def guest_path(self, path: Path, within: float | None = None) -> str:
        """The target's copy of a host file: the repo's guest side was pushed at start; another
        file (a BPF object) is pushed on first use, within `within` seconds (GuestDied past
        them)."""
        path = Path(path).resolve()
        if path == REPO_ROOT:
            return self._uploaded[REPO_ROOT]
        if any(path == REPO_ROOT / entry or REPO_ROOT / entry in path.parents
               for entry in GUEST_SIDE):
            return f"{self._uploaded[REPO_ROOT]}/{path.relative_to(REPO_ROOT)}"
        if path not in self._uploaded:  # not pushed at start (a BPF object, wherever it is built)
            if self.client is None:
                raise GuestDied(f"pushing {path.name}: the connection to {self.target.url} is "
                                "closed")
            remote = f"{self.remote_dir}/{len(self._uploaded)}-{path.name}"
            deadline = time.monotonic() + (TRANSFER_TIMEOUT if within is None else within)
            try:
                sftp = self.client.open_sftp()
                try:
                    _bound(sftp.get_channel(), deadline, self.target, f"pushing {path.name}")
                    sftp.put(str(path), remote)
                finally:
                    sftp.close()
            except SSH_ERRORS as exc:
                raise GuestDied(f"pushing {path.name} to {self.target.url} failed "
                                f"({exc or type(exc).__name__})") from None
            except SshError as exc:
                raise GuestDied(str(exc)) from None
            self._uploaded[path] = remote
        return self._uploaded[path]

    def _remove_left_behind(self) -> None:
        """Stop the agents of this target's ended sessions and remove their directories, as far
        as the connection allows (the next connection to the target tries again)."""
        left = _LEFT_BEHIND.get(self.target.url, set())
        if self.client is None:
            return
        for directory in sorted(left):
            # "[/]": the pattern must not match the shell that runs pkill
            script = (f"pkill -KILL -f {shlex.quote('[/]' + directory.lstrip('/') + '/')}; "
                      f"rm -rf {shlex.quote(directory)}")
            try:
                status, _, _ = run(self.client, script, timeout=10)
            except SSH_ERRORS:
                return
            if status == 0:
                left.discard(directory)

    def send(self, line: str) -> None:
        if self._session is None or self._session.closed:
            raise GuestDied(f"the connection to {self.target.url} is closed")
        try:
            self._session.sendall(line.encode() + b"\n")
        except SSH_ERRORS as exc:
            raise GuestDied(f"the connection to {self.target.url} was lost ({exc})") from exc

    def receive(self, timeout: float) -> str | None:
        return self.channel.receive(timeout, self._why_ended)

    def _why_ended(self) -> str:
        # The channel's EOF can arrive just before the exit status, or before the transport
        # notices that the connection is gone: give either a moment.
        transport = self.client.get_transport() if self.client else None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if transport is None or not transport.is_active():
                return f"the connection to {self.target.url} was lost"
            if self._session is not None and self._session.exit_status_ready():
                return (f"the agent on {self.target.url} exited "
                        f"(status {self._session.recv_exit_status()})")
            time.sleep(0.05)
        return f"the agent's channel on {self.target.url} closed"

    def stop(self, timeout: float = 10.0) -> None:
        """End the agent (EOF on its stdin), then remove what was pushed."""
        if self._session is not None and not self._session.closed:
            try:
                self._session.shutdown_write()
                deadline = time.monotonic() + timeout
                while not self._session.exit_status_ready() and time.monotonic() < deadline:
                    time.sleep(0.05)
            except SSH_ERRORS:
                pass
        self.kill()

    def kill(self) -> None:
        """Close the connection, removing the pushed files if the machine still answers (else
        the next connection to it removes them)."""
        if self.client is None:
            return
        if self.remote_dir:
            _LEFT_BEHIND.setdefault(self.target.url, set()).add(self.remote_dir)
        self._remove_left_behind()
        self.client.close()
        self.client = None
        for t in self._threads:
            t.join(timeout=2)
