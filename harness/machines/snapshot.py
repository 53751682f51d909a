"""SnapshotMachine: a direct guest that is booted once, saved with its agent up, and restored for
every later guest of the same kernel, including the one that replaces a guest that crashed or
hung (issue #17: a TCG boot is seconds, a restore a fraction of one).

Its root is not the host's over 9p (QEMU will not save a guest with a 9p share mounted) but two
read-only ext4 images (machines/guest_image.py): what the agent runs, and the kernel's modules.
A BPF object, which is built on the host as cases ask for it, is pushed through the agent's
"put" op on first use in each guest, as the SSH path pushes it over SFTP.

A snapshot is two files under <cache>/snapshots: the state QEMU migrated out (RAM and devices),
and a JSON record of everything that shaped the saved guest (snapshot_inputs: the QEMU command
line with the kernel, initramfs and images it names, each named by its content; the kernel's
file; QEMU's version) with the agent's hello from that boot. A snapshot is used only when that
record matches this guest's; a stale one, or one whose restore fails, is replaced by a cold
boot, said so in the run's output and the console log.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..cache import cache_lock, file_stamp, hold_in_use, write_atomic
from ..errors import KconformError
from ..kernels import KernelTree
from ..paths import REPO_ROOT, agent_argv, safe_file_name
from .accel import Accel
from .channel import GuestDied
from .direct import (
    DirectMachine,
    RootDisks,
    build_direct_command,
    direct_kernel,
)
from .guest_image import GUEST_REPO, GUEST_SOURCES, modules_image, root_image, stat_words
from .initramfs import initramfs_for
from .qemu import _WORD, _check_word, _private_dir, guest_python
from .qmp import QmpClient, QmpError, save_state
from .rootfs import Rootfs

SNAPSHOT_FORMAT = "1"  # changes when what a snapshot records does
ROOT_LABEL = "image of host files"  # the results' rootfs for its guests
RESTORE_WITHIN = 15.0  # seconds for a restored agent to answer before the snapshot is distrusted
SAVE_WITHIN = 60.0


class RestoreFailed(Exception):
    pass


@functools.cache
def qemu_version(binary: str) -> str:
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True)
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    return f"{first} ({file_stamp(binary)})"


def host_cpu() -> str:
    """A digest of the host's CPU model and flags (/proc/cpuinfo's first CPU)."""
    with contextlib.suppress(OSError):
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        words = [line for line in first.splitlines()
                 if line.split(":")[0].strip() in ("vendor_id", "model name", "flags")]
        return hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]
    return "unknown"


def snapshot_inputs(cmd: list[str], files: list[Path]) -> dict[str, object]:
    """What shapes a saved guest. The command line names the kernel, the initramfs and the images,
    the memory, CPUs, CPU model and accelerator, and the agent's command; only -name, which each
    process sets to its own, is left out. `files` (those the command names) are recorded by size
    and mtime too: an image made again from the same inputs is not the same bytes (mkfs picks a
    new UUID and hash seed), and a restored kernel holds the old one's blocks in its caches."""
    words = list(cmd)
    if "-name" in words:
        at = words.index("-name")
        del words[at:at + 2]
    return {"format": SNAPSHOT_FORMAT, "command": words, "qemu": qemu_version(cmd[0]),
            "files": stat_words(files)}


def _changed(recorded: dict[str, object], current: dict[str, object]) -> str:
    names = {"command": "the QEMU command line (kernel, initramfs, root image, memory, CPU)",
             "qemu": "QEMU", "files": "the kernel, initramfs or image files",
             "host_cpu": "the host's CPU",
             "format": "kconform's snapshot format"}
    changed = [names.get(key, key) for key in current if recorded.get(key) != current[key]]
    return ", ".join(changed) or "nothing"


def usable_record(recorded: object, size: int, inputs: dict[str, object]) -> str:
    """Why a snapshot with this record and a state file of `size` bytes is not for a guest of
    these inputs; "" when it is."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("inputs"), dict):
        return "its record is not kconform's"
    if recorded["inputs"] != inputs:
        return f"{_changed(recorded['inputs'], inputs)} changed since it was saved"
    if recorded.get("size") != size or not isinstance(recorded.get("hello"), str):
        return "its state file is not the one its record describes"
    return ""


def _scratch_pid(path: Path) -> int | None:
    """The pid in a scratch state's name (.<state>.<pid>), or None."""
    tail = path.name.rpartition(".")[2]
    return int(tail) if tail.isdigit() else None


class SnapshotMachine(DirectMachine):
    """A direct guest on disk images, restored from its kernel's snapshot when there is a usable
    one, else booted cold and saved (see the module's docstring)."""

    boot_kind = "saved"  # until start(): "restored" when it came from a snapshot

    def __init__(self, tree: KernelTree, accel: Accel, console_log: Path, *,
                 memory: str = "1G", cpus: int = 1, cache: Path | None = None,
                 modules: Path | None = None, log: Callable[[str], None] = lambda msg: None,
                 boot_within: float = 600.0, rootfs: Rootfs | None = None):
        """log: where to say that a snapshot was stale or failed (the run's output); boot_within:
        how long a cold boot may take to its hello, which is awaited here to save it; rootfs: a
        pinned root to make the root image of, instead of the host's files."""
        modules = self._take(tree, accel, rootfs, modules, cache, disks=True)
        self._log = log
        self._boot_within = boot_within
        python = guest_python(rootfs)
        disks = RootDisks(root_image(self.cache, python, rootfs),
                          modules_image(tree.release, modules, self.cache))
        argv = agent_argv(python, GUEST_REPO, boot_log=True)
        initramfs = initramfs_for(tree, self.cache, modules, root="disk",
                                  busybox_root=rootfs.path if rootfs else None)
        kernel = direct_kernel(tree, self.cache)
        self.base_cmd = build_direct_command(tree, accel, argv, initramfs, modules,
                                             memory=memory, cpus=cpus, disks=disks,
                                             kernel=kernel)
        self.cmd = self.base_cmd
        # images are held as they are found
        self.inputs = snapshot_inputs(self.base_cmd, [kernel, initramfs, disks.root,
                                                      disks.modules])
        if accel.name == "kvm":  # a saved KVM guest runs on the CPU it was saved on
            self.inputs["host_cpu"] = host_cpu()
        # one snapshot per kernel file and machine shape: a stale one is replaced in place
        root = f"{rootfs.name}-{rootfs.arch}" if rootfs else "host"
        shape = hashlib.sha256(f"{kernel}\0{root}\0{memory}\0{cpus}\0{accel.name}".encode())\
            .hexdigest()
        directory = self.cache / "snapshots"
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{safe_file_name(tree.release)}-{shape[:12]}"
        self.state = directory / f"{stem}.state"
        self.record = directory / f"{stem}.json"
        hold_in_use(self.state)
        self._memory, self._cpus = memory, cpus
        self._pending: list[str] = []  # the hello, read by start(), for the session
        # a cold boot's: from QEMU's start to the agent's hello, and the save after it
        self.hello_seconds: float | None = None
        self.save_seconds: float | None = None
        self._pushed: dict[Path, str] = {}
        self._put_ids = 0
        self._console_log = console_log
        # checked here, not at start(): a path QEMU would split is the factory's to refuse
        self._qmp_path = _private_dir("qmp") / f"{os.getpid()}-{id(self):x}.sock"
        self._qmp_arg = _check_word(f"unix:{self._qmp_path},server=on,wait=off",
                                    "the QMP socket", _WORD,
                                    "letters, digits and _ . , : = / + @ -")
        self._attach(console_log)

    # -- start: restore, or boot cold and save

    def start(self) -> None:
        fd, recorded, problem = self._open_snapshot()
        if fd is not None:
            try:
                self._restore(recorded, fd)
                return
            except RestoreFailed as exc:
                self._say(f"restoring {self.tree.name} from {self.state} failed ({exc}); "
                          "booting it cold and saving it again")
                self.kill()
                self._attach(self._console_log, fresh=False)
        elif problem:
            self._say(f"{self.tree.name}'s snapshot {self.state.name} is stale ({problem}); "
                      "booting it cold and saving it again")
        self._boot_and_save()

    def _open_snapshot(self) -> tuple[int | None, dict[str, object], str]:
        """(the state file, open, and its record) when this guest may restore them, else (None,
        {}, why not: "" when there is no snapshot). The file is opened and the record read under
        the lock a save replaces both under, so the two are one save's; QEMU then reads the open
        file, whatever is renamed over its path meanwhile."""
        with cache_lock(self.state.parent, self.state.name):
            try:
                fd = os.open(self.state, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None, {}, ""
            except OSError as exc:
                return None, {}, f"its state file cannot be read ({exc.strerror})"
            try:
                text = self.record.read_text()
            except OSError as exc:
                os.close(fd)
                return None, {}, f"its record cannot be read ({exc.strerror})"
        try:
            recorded = json.loads(text)
        except ValueError as exc:
            recorded = None
            problem = f"its record cannot be read ({exc})"
        else:
            problem = usable_record(recorded, os.fstat(fd).st_size, self.inputs)
        if problem or not isinstance(recorded, dict):
            os.close(fd)
            return None, {}, problem
        return fd, recorded, ""

    def _remove_abandoned_saves(self) -> None:
        """Scratch states of saves whose process is gone (killed mid-save): 100 MB each."""
        for scratch in self.state.parent.glob(f".{self.state.name}.*"):
            pid = _scratch_pid(scratch)
            if pid is not None and not os.path.exists(f"/proc/{pid}"):
                scratch.unlink(missing_ok=True)

    def _say(self, message: str) -> None:
        self.console.note(message)
        self._log(message)

    def _restore(self, recorded: dict[str, object], fd: int) -> None:
        self.console.note(f"restoring the guest saved at {recorded.get('saved_at')} from "
                          f"{self.state} (its boot's console: {recorded.get('console_log')})")
        # QEMU reads the state from the descriptor it inherits: no path, no shell
        self.cmd = [*self.base_cmd, "-incoming", f"fd:{fd}"]
        self.pass_fds = (fd,)
        try:
            super().start()
        finally:
            os.close(fd)  # QEMU has its own copy
            self.pass_fds = ()
        deadline = time.monotonic() + RESTORE_WITHIN
        try:
            self.send(json.dumps({"id": 0, "op": "hello"}))
            line = self.receive(max(0.0, deadline - time.monotonic()))
        except GuestDied as exc:
            raise RestoreFailed(str(exc)) from None
        if line is None:
            raise RestoreFailed(f"its agent did not answer within {RESTORE_WITHIN:.0f}s")
        try:
            hello = json.loads(line)
            saved = json.loads(str(recorded["hello"]))
        except ValueError:
            raise RestoreFailed(f"its agent answered {line[:200]!r}, not a hello") from None
        if not isinstance(hello, dict) or hello.get("event") != "ready":
            raise RestoreFailed(f"its agent answered {line[:200]!r}, not a hello")
        # The boot was checked for splats by the run that saved it, and is checked again by each
        # run that restores it: its log since boot is the saved boot's and what came after.
        hello["boot_log"] = [*saved.get("boot_log", []), *hello.get("boot_log", [])]
        hello.pop("id", None)
        self._pending.append(json.dumps(hello))
        self.boot_kind = "restored"

    def _boot_and_save(self) -> None:
        self.boot_kind = "saved"
        qmp_path = self._qmp_path
        qmp_path.unlink(missing_ok=True)
        self.cmd = [*self.base_cmd, "-qmp", self._qmp_arg]
        try:
            self._boot_then_save(qmp_path)
        finally:
            qmp_path.unlink(missing_ok=True)

    def _boot_then_save(self, qmp_path: Path) -> None:
        super().start()
        # The hello is awaited here, to save the guest before the session's first call
        line = self.receive(self._boot_within)
        if line is None:
            return  # the session waits again and reports the hang
        self._pending.append(line)
        if self.started_at is not None:
            self.hello_seconds = time.monotonic() - self.started_at
        try:
            hello = json.loads(line)
        except ValueError:
            return  # not the agent: the session says what it sent
        if not isinstance(hello, dict) or hello.get("event") != "ready":
            return
        saving = time.monotonic()
        try:
            self._save(line, qmp_path)
            self.save_seconds = time.monotonic() - saving
        except (QmpError, OSError) as exc:
            self._say(f"could not save {self.tree.name}'s booted guest ({exc}); its next guest "
                      "boots cold again")

    def _save(self, hello_line: str, qmp_path: Path) -> None:
        self._remove_abandoned_saves()
        scratch = self.state.with_name(f".{self.state.name}.{os.getpid()}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            qmp = QmpClient(qmp_path, time.monotonic() + SAVE_WITHIN)
            try:
                try:
                    save_state(qmp, fd)
                finally:
                    qmp.execute("cont")  # the guest runs on, as if it had never been saved
            finally:
                qmp.close()
            size = os.fstat(fd).st_size
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        record = {"inputs": self.inputs, "hello": hello_line, "size": size,
                  "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "console_log": str(self.console.log_path)}
        with cache_lock(self.state.parent, self.state.name):
            os.replace(scratch, self.state)
            write_atomic(self.record, json.dumps(record, indent=1))
        self.console.note(f"saved this guest to {self.state} ({record['size']} bytes)")

    @property
    def root_label(self) -> str:
        """The results' rootfs: an image of host files, or (a pinned root) the run's own label."""
        return ROOT_LABEL if self.rootfs is None else ""

    def receive(self, timeout: float) -> str | None:
        if self._pending:
            return self._pending.pop(0)
        return super().receive(timeout)

    # -- files: the repo's guest side is in the root image; anything else is pushed

    def guest_path(self, path: Path, within: float | None = None) -> str:
        path = Path(path).resolve()
        for rel in GUEST_SOURCES:
            source = REPO_ROOT / rel
            if path == source or source in path.parents:
                return f"{GUEST_REPO}/{path.relative_to(REPO_ROOT)}"
        if path in self._pushed:
            return self._pushed[path]
        deadline = time.monotonic() + (within if within is not None else 30.0)
        self._put_ids -= 1  # below the session's ids, which count up from 1
        self.send(json.dumps({"id": self._put_ids, "op": "put", "name": path.name,
                              "data": base64.b64encode(path.read_bytes()).decode()}))
        line = super().receive(max(0.0, deadline - time.monotonic()))
        if line is None:
            raise GuestDied(f"pushing {path.name} into the guest did not finish in time")
        with contextlib.suppress(ValueError):
            reply = json.loads(line)
            if isinstance(reply, dict) and reply.get("id") == self._put_ids:
                if reply.get("ok") and isinstance(reply.get("result"), str):
                    pushed: str = reply["result"]
                    self._pushed[path] = pushed
                    return pushed
                if reply.get("ok") is False:  # the guest is fine; the file did not go in
                    raise KconformError(f"pushing {path.name} into the guest failed: "
                                        f"{str(reply.get('error'))[:300]}")
        raise GuestDied(f"pushing {path.name} into the guest failed: it answered {line[:200]!r}")

    def kill(self) -> None:
        super().kill()
        self._pending.clear()
        self._pushed.clear()
