"""The direct boot (issue #17): kconform's own QEMU command line and initramfs, and which machine
the factory picks. The boots themselves are every VM test's: --guest-boot auto boots directly."""
from __future__ import annotations

import gzip
import lzma
import shlex
import shutil
from pathlib import Path

import pytest

from harness.errors import KconformError
from harness.kernels import KernelTree
from harness.machines import initramfs
from harness.machines.accel import Accel
from harness.machines.direct import DirectMachine, build_direct_command, direct_boot_problem
from harness.machines.factory import guest_machine
from harness.machines.qemu import QemuMachine
from harness.machines.rootfs import Rootfs

TCG = Accel("tcg", "qemu64", "test")
RELEASE = "6.12.0-kconform-test"
ARGV = ["/usr/bin/python3", "-I", "-S", "/repo/harness/agent/agent.py", "/repo", "--boot-log"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_CACHE", str(tmp_path / "cache"))


def debian_tree(tmp_path: Path, arch: str = "amd64", modules: bool = True) -> KernelTree:
    """A Debian kernel's tree as kconform unpacks one: boot/vmlinuz and lib/modules beside it."""
    image = tmp_path / "tree" / "boot" / f"vmlinuz-{RELEASE}"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\0" * 64 + f"Linux version {RELEASE} (kconform@test) #1\0".encode())
    if modules:
        moddir = tmp_path / "tree" / "lib" / "modules" / RELEASE
        moddir.mkdir(parents=True)
        (moddir / "modules.dep").write_text("")
    return KernelTree(name="test", vmlinuz=image, release=RELEASE, arch=arch)


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """{name: (mode, content)} of a newc cpio archive, read as the kernel reads it."""
    entries, offset = {}, 0
    while True:
        assert data[offset:offset + 6] == b"070701", offset
        fields = [int(data[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        start = offset + 110
        name = data[start:start + name_size - 1].decode()
        body = start + name_size + (-(start + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[body:body + size])
        offset = body + size + (-(body + size) % 4)


def test_the_archive_holds_each_member_as_written():
    data = initramfs._newc([("bin", 0o40755, None), ("bin/busybox", 0o100755, b"\x7fELF" * 3),
                            ("bin/sh", 0o120777, b"busybox"), ("init", 0o100755, b"#!/bin/sh\n")])
    assert read_newc(data) == {"bin": (0o40755, b""), "bin/busybox": (0o100755, b"\x7fELF" * 3),
                               "bin/sh": (0o120777, b"busybox"),
                               "init": (0o100755, b"#!/bin/sh\n")}
    assert len(data) % 4 == 0


def test_modules_are_given_to_insmod_uncompressed(tmp_path):
    plain = b"\x7fELF module"
    for name, content in (("a.ko.xz", lzma.compress(plain)), ("b.ko.gz", gzip.compress(plain)),
                          ("c.ko", plain)):
        (tmp_path / name).write_bytes(content)
        assert initramfs._module_bytes(tmp_path / name) == (name.split(".")[0] + ".ko", plain)


def test_the_initramfs_has_busybox_the_modules_in_order_and_the_init(tmp_path, monkeypatch):
    tree = debian_tree(tmp_path)
    modules = tmp_path / "tree" / "lib" / "modules" / RELEASE
    files = []
    for name in ("netfs.ko.xz", "9pnet.ko.xz", "9p.ko.xz"):
        (modules / name).write_bytes(lzma.compress(name.encode()))
        files.append(modules / name)
    monkeypatch.setattr(initramfs, "root_module_files", lambda t, m, r="9p": files)
    entries = read_newc(initramfs.initramfs_content(tree, modules))
    assert entries["init"][0] == 0o100755
    assert entries["init"][1] == initramfs.INIT_SCRIPT.encode()
    assert entries["bin/busybox"][1] == Path(initramfs._busybox()).read_bytes()
    assert entries["bin/switch_root"] == (0o120777, b"busybox")
    assert entries["modules/order"][1] == b"netfs.ko\n9pnet.ko\n9p.ko\n"  # dependencies first
    assert entries["modules/9p.ko"][1] == b"9p.ko.xz"
    # the same content is the same cached file; other modules are another
    # the same inputs are the same cached file, found without building it again; new modules
    # (a new modules.dep), or a root of the other kind, are another
    first = initramfs.initramfs_for(tree, tmp_path / "cache", modules)
    monkeypatch.setattr(initramfs, "initramfs_content", lambda *a: pytest.fail("rebuilt"))
    assert initramfs.initramfs_for(tree, tmp_path / "cache", modules) == first
    monkeypatch.undo()
    monkeypatch.setattr(initramfs, "root_module_files", lambda t, m, r="9p": files)
    (modules / "modules.dep").write_text("9p.ko: 9pnet.ko netfs.ko\n")
    assert initramfs.initramfs_for(tree, tmp_path / "cache", modules) != first
    assert "-disk-" in initramfs.initramfs_for(tree, tmp_path / "cache", modules, "disk").name


def test_the_init_finds_the_agents_port_by_name_and_mounts_the_root_read_only():
    script = initramfs.INIT_SCRIPT
    assert f'= {initramfs.AGENT_PORT} ]' in script and "/sys/class/virtio-ports/" in script
    assert "-o ro,trans=virtio" in script and initramfs.ROOT_TAG in script
    assert "udev" not in script


def test_the_command_line_boots_the_agent_with_panic_ending_qemu(tmp_path):
    tree = debian_tree(tmp_path)
    cmd = build_direct_command(tree, TCG, ARGV, tmp_path / "initrd.cpio", tmp_path / "mods",
                               memory="2G", cpus=2, name="kconform-1")
    assert cmd[0].startswith("/") and cmd[0].endswith("/qemu-system-x86_64")  # ps names it
    for flag in ("-nodefaults", "-no-reboot"):
        assert flag in cmd
    assert cmd[cmd.index("-accel") + 1] == "tcg" and cmd[cmd.index("-cpu") + 1] == "qemu64"
    assert cmd[cmd.index("-m") + 1] == "2G" and cmd[cmd.index("-smp") + 1] == "2"
    assert "readonly=on" in cmd[cmd.index("-fsdev") + 1]
    words = cmd[cmd.index("-append") + 1].split(" ")
    assert "panic=-1" in words and "console=ttyS0" in words
    assert words[words.index("--") + 1:] == ARGV  # the init runs exactly the agent's argv
    assert f"kconform.release={RELEASE}" in words


@pytest.mark.parametrize("field, value", [("name", "a b"), ("name", "x;reboot"),
                                          ("memory", "1G; rm"), ("cpus", 0)])
def test_a_bad_value_is_refused_before_qemu(tmp_path, field, value):
    kwargs = {"name": "kconform-1", "memory": "1G", "cpus": 1, field: value}
    with pytest.raises(KconformError):
        build_direct_command(debian_tree(tmp_path), TCG, ARGV, tmp_path / "i", tmp_path / "m",
                             **kwargs)


def test_a_blank_in_the_agents_command_is_refused_the_kernel_would_split_it(tmp_path):
    with pytest.raises(KconformError, match="kernel command-line word"):
        build_direct_command(debian_tree(tmp_path), TCG, ["/usr/bin/python3", "/a repo"],
                             tmp_path / "i", tmp_path / "m")


def pinned_root(tmp_path: Path, arch: str = "amd64") -> Rootfs:
    """A built root as machines/rootfs.py leaves one: its manifest and its static busybox."""
    path = tmp_path / f"root-{arch}"
    (path / "usr" / "bin").mkdir(parents=True)
    shutil.copy(initramfs._busybox(), path / "usr" / "bin" / "busybox")  # any file will do
    (path / "kconform-tree.json").write_text("{}")
    return Rootfs(name="test", path=path, digest="0" * 12, packages={}, arch=arch)


def test_the_factory_picks_what_covers_the_kernel_in_order(tmp_path, monkeypatch):
    """auto: a snapshot's guest (on the host's files, or a pinned root of the kernel's
    architecture), then the host's root over 9p, then virtme-ng."""
    from harness.machines.snapshot import SnapshotMachine
    monkeypatch.setattr(initramfs, "root_module_files", lambda t, m, r="9p": [])
    log = tmp_path / "console.log"
    tree = debian_tree(tmp_path)
    cache = tmp_path / "cache"
    assert direct_boot_problem(tree, None) is None
    machine = guest_machine(tree, TCG, log, cache=cache)
    assert type(machine) is SnapshotMachine and machine.root_label == "image of host files"
    assert type(guest_machine(tree, TCG, log, boot="direct", cache=cache)) is DirectMachine
    assert type(guest_machine(tree, TCG, log, boot="virtme-ng")) is QemuMachine
    # a pinned root: its own image, under the run's label for that root
    root = pinned_root(tmp_path)
    machine = guest_machine(tree, TCG, log, rootfs=root, cache=cache)
    assert type(machine) is SnapshotMachine and machine.root_label == ""
    assert "root-test-amd64-" in " ".join(machine.cmd)
    with pytest.raises(KconformError, match="pinned root"):
        guest_machine(tree, TCG, log, rootfs=root, boot="direct")
    # arm64: on its arm64 root, -M virt; never over the host's 9p root
    foreign = debian_tree(tmp_path / "arm", arch="arm64")
    assert direct_boot_problem(foreign, None) is not None
    arm = guest_machine(foreign, Accel("tcg", "cortex-a57", "test"), log,
                        rootfs=pinned_root(tmp_path, "arm64"), cache=cache)
    assert type(arm) is SnapshotMachine
    assert arm.cmd[0].endswith("qemu-system-aarch64") and arm.cmd[arm.cmd.index("-machine") + 1] \
        == "virt" and "console=ttyAMA0" in arm.cmd[arm.cmd.index("-append") + 1].split(" ")
    assert "vmgenid,guid=auto" not in arm.cmd  # an ACPI device: the virt board boots by DT
    with pytest.raises(KconformError, match="needs an arm64 root"):
        guest_machine(foreign, TCG, log, rootfs=root, boot="snapshot", cache=cache)
    without_modules = debian_tree(tmp_path / "bare", modules=False)
    assert "lib/modules" in (direct_boot_problem(without_modules, None) or "")


def test_auto_boots_on_the_hosts_root_when_no_snapshot_can_be_made_and_says_why(tmp_path,
                                                                                   monkeypatch):
    from harness.machines import snapshot
    monkeypatch.setattr(initramfs, "root_module_files", lambda t, m, r="9p": [])

    def no_images(*args, **kwargs):
        raise KconformError("a saved guest's images need mkfs.ext4: apt-get install e2fsprogs")
    monkeypatch.setattr(snapshot, "root_image", no_images)
    said: list[str] = []
    tree = debian_tree(tmp_path)
    machine = guest_machine(tree, TCG, tmp_path / "console.log", cache=tmp_path / "cache",
                            log=said.append)
    assert type(machine) is DirectMachine
    assert said == [(f"{tree.name} is not booted from a snapshot: a saved guest's images need "
                     "mkfs.ext4: apt-get install e2fsprogs")]
    with pytest.raises(KconformError, match="mkfs.ext4"):  # asked for by name: no fallback
        guest_machine(tree, TCG, tmp_path / "console.log", cache=tmp_path / "cache",
                      boot="snapshot")


def test_a_direct_guest_offers_a_vng_shell_line_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(initramfs, "root_module_files", lambda t, m, r="9p": [])
    machine = guest_machine(debian_tree(tmp_path), TCG, tmp_path / "console.log", boot="direct",
                            cache=tmp_path / "cache")
    assert machine.boot_kind == "direct"
    assert shlex.split(machine.command_line())[0].endswith("/qemu-system-x86_64")
    assert shlex.split(machine.shell_command())[0] == "vng"
