"""A saved and restored guest (machines/snapshot.py, guest_image.py, qmp.py) without booting:
what a snapshot is keyed by, when one is refused, the root image's content, the agent's hello
and put ops, and the QMP exchange that saves a guest."""
import base64
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.agent import agent
from harness.errors import KconformError
from harness.machines import guest_image, qmp, snapshot
from harness.machines.direct import RootDisks, build_direct_command
from harness.machines.initramfs import INIT_SCRIPT, MODULES_SERIAL, ROOT_SERIAL

from .test_direct_boot import ARGV, TCG, debian_tree

INPUTS = {"format": "1", "command": ["/usr/bin/qemu-system-x86_64", "-m", "1G"],
          "qemu": "QEMU emulator version 7.2.22", "files": ["/k/vmlinuz:1:2"]}


RECORD = {"inputs": INPUTS, "hello": '{"event": "ready"}', "size": 64}


def test_a_snapshot_of_the_same_inputs_and_size_is_restored():
    assert snapshot.usable_record(RECORD, 64, dict(INPUTS)) == ""


@pytest.mark.parametrize("key, said", [("qemu", "QEMU"), ("files", "the kernel, initramfs"),
                                       ("command", "the QEMU command line")])
def test_a_stale_snapshot_names_what_changed(key, said):
    problem = snapshot.usable_record(RECORD, 64, {**INPUTS, key: "something else"})
    assert problem.startswith(said) and problem.endswith("changed since it was saved")


def test_a_kvm_snapshot_is_stale_on_another_hosts_cpu():
    problem = snapshot.usable_record({**RECORD, "inputs": {**INPUTS, "host_cpu": "a"}}, 64,
                                     {**INPUTS, "host_cpu": "b"})
    assert problem.startswith("the host's CPU")


def test_a_state_file_its_record_does_not_describe_is_refused():
    assert snapshot.usable_record(RECORD, 12345, INPUTS) == \
        "its state file is not the one its record describes"
    assert snapshot.usable_record(["not", "a", "record"], 64, INPUTS) == \
        "its record is not kconform's"


def test_only_a_dead_saves_scratch_state_is_abandoned():
    assert snapshot._scratch_pid(Path(".6.1.0-57-amd64-abc.state.4242")) == 4242
    assert snapshot._scratch_pid(Path(".6.1.0-57-amd64-abc.state.json")) is None


def test_the_inputs_hold_the_command_line_but_not_the_processes_guest_name(tmp_path):
    kernel, image = tmp_path / "vmlinuz", tmp_path / "root.ext4"
    kernel.write_bytes(b"k")
    image.write_bytes(b"image")
    qemu = "/usr/bin/true"  # answers --version; only its first line and stat are recorded

    def inputs(name="kconform-1", memory="1G"):
        return snapshot.snapshot_inputs([qemu, "-name", name, "-m", memory], [kernel, image])
    one = inputs()
    assert inputs(name="kconform-2") == one and "kconform-1" not in json.dumps(one)
    assert inputs(memory="2G") != one
    kernel.write_bytes(b"another kernel")
    assert inputs() != one
    two = inputs()
    # an image made again is other bytes, even at the same path and size
    os.utime(image, ns=(1, 1))
    assert inputs() != two


def test_a_disk_root_command_line_has_read_only_images_by_serial_and_no_9p(tmp_path):
    disks = RootDisks(tmp_path / "root.ext4", tmp_path / "mods.ext4")
    cmd = build_direct_command(debian_tree(tmp_path), TCG, ARGV, tmp_path / "i.cpio",
                               tmp_path / "m", disks=disks)
    drives = [cmd[i + 1] for i, word in enumerate(cmd) if word == "-drive"]
    assert drives == [f"file={disks.root},format=raw,if=none,id=root,readonly=on",
                      f"file={disks.modules},format=raw,if=none,id=mods,readonly=on"]
    devices = " ".join(cmd[i + 1] for i, word in enumerate(cmd) if word == "-device")
    assert f"serial={ROOT_SERIAL}" in devices and f"serial={MODULES_SERIAL}" in devices
    assert "-fsdev" not in cmd and "9p" not in devices
    assert "kconform.root=disk" in cmd[cmd.index("-append") + 1].split(" ")
    # the init finds each image by that serial
    assert "disk kconform-root" in INIT_SCRIPT and "disk kconform-mods" in INIT_SCRIPT


def test_an_image_path_with_a_comma_is_refused_qemu_would_split_it(tmp_path):
    from harness.errors import KconformError
    disks = RootDisks(Path("/a,b/root.ext4"), tmp_path / "mods.ext4")
    with pytest.raises(KconformError, match="disk image's path"):
        build_direct_command(debian_tree(tmp_path), TCG, ARGV, tmp_path / "i", tmp_path / "m",
                             disks=disks)


def test_the_root_image_key_follows_the_guest_side_of_the_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for rel in guest_image.GUEST_SOURCES:
        path = repo / rel
        if rel.endswith(".py"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "mod.py").write_text("X = 1\n")
    monkeypatch.setattr(guest_image, "REPO_ROOT", repo)
    before = guest_image.root_inputs("/usr/bin/python3")
    assert guest_image.root_inputs("/usr/bin/python3") == before
    (repo / "cases/guest/mod.py").write_text("X = 2\n")  # same size, same second
    assert guest_image.root_inputs("/usr/bin/python3") != before


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_root_runs_the_agents_imports_and_modprobe_in_a_chroot(tmp_path):
    """What the guest runs, run on the host in the root as the image is made of it: the agent and
    every guest module import (the standard library and libraries they load are in it), libbpf
    opens by its soname, and modprobe runs."""
    root = tmp_path / "root"
    guest_image._make_root(root, "/usr/bin/python3")
    script = ("import sys, ctypes, importlib, pkgutil; sys.path.insert(0, '/opt/kconform');"
              "import harness.agent.agent, cases.guest, tests.guest;"
              "[importlib.import_module(f'{p.__name__}.{m.name}') for p in (cases.guest, "
              "tests.guest) for m in pkgutil.iter_modules(p.__path__)];"
              "ctypes.CDLL('libbpf.so.1'); print('imported')")
    proc = subprocess.run(["chroot", str(root), "/usr/bin/python3", "-I", "-S", "-c", script],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "imported", proc.stderr
    assert subprocess.run(["chroot", str(root), "/usr/sbin/modprobe", "--version"],
                          capture_output=True).returncode == 0
    # compiled ahead: a read-only root could not cache the bytecode
    assert list((root / "opt/kconform/harness/agent/__pycache__").glob("agent.*.pyc"))


def test_the_agent_says_hello_again_when_asked(monkeypatch):
    monkeypatch.setattr(agent, "tainted", lambda: 0)
    hello = agent.handle({"id": 0, "op": "hello"}, agent.KernelLog())
    assert hello["event"] == "ready" and hello["release"] == os.uname().release


def test_the_agent_writes_a_pushed_file_and_refuses_a_path(tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "PUT_DIR", str(tmp_path / "files"))
    data = base64.b64encode(b"\x7fELF object").decode()
    reply = agent.handle({"id": -1, "op": "put", "name": "prog-abc.o", "data": data},
                         agent.KernelLog())
    assert reply == {"ok": True, "result": str(tmp_path / "files" / "prog-abc.o")}
    assert (tmp_path / "files" / "prog-abc.o").read_bytes() == b"\x7fELF object"
    for name in ("../escape.o", ".hidden", ""):
        reply = agent.handle({"id": -1, "op": "put", "name": name, "data": data},
                             agent.KernelLog())
        assert reply["ok"] is False and reply["error"]["type"] == "BadRequest"
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["prog-abc.o"]


class FakeQemu:
    """A QMP server on a unix socket that answers as QEMU 7.2 does, recording the commands."""

    def __init__(self, path: Path, final: str = "completed"):
        self.commands: list[dict] = []
        self.final = final
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        polls = 0
        self.fds = 0
        while True:
            data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
            if not data:
                return
            for fd in fds:
                os.close(fd)
                self.fds += 1
            request = json.loads(data)
            self.commands.append(request)
            answer: object = {}
            if request["execute"] == "query-migrate":
                polls += 1
                answer = {"status": "active" if polls < 2 else self.final}
                if self.final == "failed" and polls >= 2:
                    answer["error-desc"] = "disk full"
            conn.sendall(b'{"event": "STOP"}\n' + json.dumps({"return": answer}).encode() + b"\n")


def test_saving_migrates_the_running_guest_at_full_speed_into_the_file_given(tmp_path):
    fake = FakeQemu(tmp_path / "qmp.sock")
    client = qmp.QmpClient(tmp_path / "qmp.sock", deadline=time.monotonic() + 10)
    with open(tmp_path / "state", "wb") as state:
        qmp.save_state(client, state.fileno())
    names = [c["execute"] for c in fake.commands]
    # not stopped first: a restored guest runs only if the saved one was running
    assert names[:4] == ["qmp_capabilities", "migrate-set-parameters", "getfd", "migrate"]
    assert "stop" not in names and names.count("query-migrate") == 2
    assert fake.commands[1]["arguments"]["max-bandwidth"] >= 1 << 30
    # the file goes as a descriptor (no exec: shell line), and the migration into it by name
    assert fake.fds == 1 and fake.commands[2]["arguments"] == {"fdname": qmp.SNAPSHOT_FD}
    assert fake.commands[3]["arguments"] == {"uri": f"fd:{qmp.SNAPSHOT_FD}"}


def test_a_failed_save_says_why(tmp_path):
    FakeQemu(tmp_path / "qmp.sock", final="failed")
    client = qmp.QmpClient(tmp_path / "qmp.sock", deadline=time.monotonic() + 10)
    with pytest.raises(qmp.QmpError, match="disk full"):
        qmp.save_state(client, 0)


def test_a_qmp_socket_that_sends_no_json_is_a_qmp_error(tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "qmp.sock"))
    server.listen(1)

    def greet_badly():
        conn, _ = server.accept()
        conn.sendall(b"not json at all\n")
    threading.Thread(target=greet_badly, daemon=True).start()
    with pytest.raises(qmp.QmpError, match="not JSON"):
        qmp.QmpClient(tmp_path / "qmp.sock", deadline=time.monotonic() + 10)


def test_a_pinned_roots_image_is_that_root_with_the_guest_side_and_no_modules(tmp_path):
    """The image of a pinned root (every arm64 guest's): its own files, linked not copied, its
    lib/modules left empty for the modules image, and the repo's guest side at GUEST_REPO."""
    from harness.machines.rootfs import Rootfs
    built = tmp_path / "built"
    (built / "usr/bin").mkdir(parents=True)
    (built / "usr/bin/python3").write_text("#!the root's own python\n")
    (built / "usr/lib/modules/6.12.0-test/kernel").mkdir(parents=True)
    (built / "usr/lib/modules/6.12.0-test/modules.dep").write_text("")
    root = tmp_path / "image-tree"
    guest_image._make_pinned_root(root, Rootfs(name="debian-bookworm", path=built,
                                               digest="0" * 12, packages={}, arch="arm64"))
    assert (root / "usr/bin/python3").read_text() == "#!the root's own python\n"
    assert (root / "usr/bin/python3").stat().st_ino == (built / "usr/bin/python3").stat().st_ino
    assert list((root / "usr/lib/modules").iterdir()) == []
    assert (built / "usr/lib/modules/6.12.0-test/modules.dep").exists()  # the root is untouched
    assert (root / "opt/kconform/harness/agent/agent.py").is_file()
    assert (root / "opt/kconform/cases/guest/redirect.py").is_file()


def test_an_image_that_cannot_be_made_is_a_kconform_error_naming_the_fix(tmp_path, monkeypatch):
    """cp, mkfs or compileall failing (a full disk, a root the user cannot link) is the
    factory's to fall back from, not a traceback."""
    def fails(*args, **kwargs):
        raise subprocess.CalledProcessError(1, ["cp", "-al"], stderr=b"No space left on device")
    monkeypatch.setattr(guest_image, "_make_root", fails)
    with pytest.raises(KconformError, match=r"cannot make the guest image root-.*No space left"
                                            r".*--guest-boot direct"):
        guest_image.root_image(tmp_path / "cache", "/usr/bin/python3")
