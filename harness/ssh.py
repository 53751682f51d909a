"""SSH targets: the same cases on an already-running machine (real hardware, a lab box, a VM
someone else booted), through paramiko.

An SshMachine plays the part a Guest plays for a QEMU guest: it connects, pushes the guest-side
files over SFTP into a private temporary directory, starts the agent over one exec channel and
exchanges the same JSON lines with it; the agent's stderr is its console. stop() removes the
directory. A lost connection ends the session like a dead guest: the running test fails, and the
pool opens a new connection for the tests after it.

Host keys are checked against ~/.ssh/known_hosts and --ssh-known-hosts; only
--ssh-accept-any-host-key (for throwaway VMs) skips the check.
"""
from __future__ import annotations

import re
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paramiko

from .channel import Console, GuestDied, LineChannel
from .errors import KconformError
from .kernels import KernelTree
from .paths import REPO_ROOT, agent_argv

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

# Remote directories of ended sessions that could not be removed yet, by target URL.
_LEFT_BEHIND: dict[str, set[str]] = {}


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
    def parse(cls, url: str, **options) -> "SshTarget":
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
            raise KconformError(f"--target {url!r}: expected ssh://user@host[:port]")
        try:
            port = parts.port or 22
        except ValueError:
            raise KconformError(f"--target {url!r}: the port is not a number") from None
        user = parts.username or "root"
        return cls(url=f"ssh://{user}@{parts.hostname}:{port}", user=user, host=parts.hostname,
                   port=port, **options)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ssh_command(self) -> str:
        """The OpenSSH line that logs in the same way, to look at the machine by hand."""
        cmd = ["ssh", "-p", str(self.port)]
        if self.key_file:
            cmd += ["-i", self.key_file]
        if self.known_hosts:
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return shlex.join([*cmd, f"{self.user}@{self.host}"])


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
        refused = isinstance(exc, (paramiko.BadHostKeyException, paramiko.AuthenticationException)) \
            or "not found in known_hosts" in str(exc)
        raise SshError(_connect_error(target, exc), transient=not refused) from None
    transport = client.get_transport()
    transport.set_keepalive(5)
    # Keepalives alone never notice a peer that vanished (a panicked lab box): with unacked data
    # older than 20 s the kernel drops the connection, and the running test fails at once.
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
_DEBIAN_VERSION = re.compile(r"#\d+ .*\bDebian (\d+\.\d+\.\d+\S*)")
DESCRIBE = ("uname -r; id -u; cat /proc/version; cat /proc/version_signature 2>/dev/null; "
            "echo; echo ---config---; cat /boot/config-$(uname -r) 2>/dev/null || "
            "zcat /proc/config.gz 2>/dev/null")


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
    lines = head.splitlines()
    if len(lines) < 3:
        raise SshError(f"{target.url}: could not read the kernel's release ({err.strip()})")
    release, uid, proc_version = lines[0].strip(), lines[1].strip(), lines[2]
    if uid != "0":
        raise SshError(f"{target.url}: the cases need root on the target (BPF maps, programs and "
                       f"/dev/kmsg): log in as root (ssh://root@{target.address})")
    version = None
    match = _DEBIAN_VERSION.search(proc_version)
    if match:
        version = match.group(1)
    elif len(lines) > 3 and lines[3].startswith("Ubuntu "):
        version = lines[3].split()[-1]
    config_path = None
    if config.strip():
        config_dir.mkdir(parents=True, exist_ok=True)
        config_path = config_dir / f"{target.host}_{target.port}-{release}.config"
        config_path.write_text(config)
    return KernelTree(name=release, vmlinuz=None, release=release, package_version=version,
                      config_path=config_path, target=target.url)


def description_to_dict(tree: KernelTree) -> dict:
    """A target's description as plain data, for xdist workers (they do not connect again)."""
    return {"name": tree.name, "release": tree.release, "package_version": tree.package_version,
            "config_path": str(tree.config_path) if tree.config_path else None,
            "target": tree.target}


def description_from_dict(data: dict) -> KernelTree:
    return KernelTree(name=data["name"], vmlinuz=None, release=data["release"],
                      package_version=data["package_version"],
                      config_path=Path(data["config_path"]) if data["config_path"] else None,
                      target=data["target"])


class SshMachine:
    """The agent on an SSH target, over one connection."""

    noun = "the SSH session"  # in failure messages

    def __init__(self, target: SshTarget, console_log: Path, connect_within: float = 30.0):
        """connect_within: how long to keep trying a machine that does not answer (a lab box
        rebooting after a crash) before its session fails."""
        self.target = target
        self.connect_within = connect_within
        self.console = Console(console_log)
        self.channel = LineChannel(self.console)
        self.client: paramiko.SSHClient | None = None
        self.remote_dir: str | None = None
        self._session = None
        self._uploaded: dict[Path, str] = {}
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None

    def command_line(self) -> str:
        return self.target.ssh_command()

    def failure_hint(self) -> str:
        return ""

    def start(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.client = self._connect()
            status, out, err = run(self.client, "mktemp -d /tmp/kconform.XXXXXXXX")
            if status != 0:
                raise SshError(f"{self.target.url}: mktemp failed: {err.strip()}")
            self.remote_dir = out.strip()
            self._remove_left_behind()
            self._push_guest_side()
            session = self.client.get_transport().open_session()
            session.exec_command(shlex.join(agent_argv("python3", self.guest_path(REPO_ROOT))))
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
        deadline = self.started_at + self.connect_within
        while True:
            try:
                return connect(self.target)
            except SshError as exc:
                if not exc.transient or time.monotonic() + 3 > deadline:
                    raise
            time.sleep(3)

    def _push_guest_side(self) -> None:
        sftp = self.client.open_sftp()
        try:
            base = f"{self.remote_dir}/repo"
            made = set()
            for entry in GUEST_SIDE:
                path = REPO_ROOT / entry
                files = sorted(path.glob("*.py")) if path.is_dir() else [path]
                for f in files:
                    remote = f"{base}/{f.relative_to(REPO_ROOT)}"
                    for parent in reversed(Path(remote).parents):
                        if str(parent).startswith(self.remote_dir) and parent not in made:
                            try:
                                sftp.mkdir(str(parent), 0o700)
                            except OSError:
                                pass  # it exists
                            made.add(parent)
                    sftp.put(str(f), remote)
            self._uploaded[REPO_ROOT] = base
        finally:
            sftp.close()

    def guest_path(self, path: Path) -> str:
        """The target's copy of a host file: the repo's guest side was pushed at start; another
        file (a BPF object) is pushed on first use."""
        path = Path(path).resolve()
        if path == REPO_ROOT:
            return self._uploaded[REPO_ROOT]
        if any(path == REPO_ROOT / entry or REPO_ROOT / entry in path.parents
               for entry in GUEST_SIDE):
            return f"{self._uploaded[REPO_ROOT]}/{path.relative_to(REPO_ROOT)}"
        if path not in self._uploaded:  # not pushed at start (a BPF object, wherever it is built)
            remote = f"{self.remote_dir}/{len(self._uploaded)}-{path.name}"
            try:
                sftp = self.client.open_sftp()
                try:
                    sftp.put(str(path), remote)
                finally:
                    sftp.close()
            except SSH_ERRORS as exc:
                raise GuestDied(f"pushing {path.name} to {self.target.url} failed ({exc})") from None
            self._uploaded[path] = remote
        return self._uploaded[path]

    def _remove_left_behind(self) -> None:
        """Stop the agents of this target's ended sessions and remove their directories, as far
        as the connection allows (the next connection to the target tries again)."""
        left = _LEFT_BEHIND.get(self.target.url, set())
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
            if self._session.exit_status_ready():
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
