"""Pinned roots per architecture (issue #13 point 2): where an arm64 root is cached, how results
name it, and the binfmt_misc checks that come before a foreign-architecture debootstrap. No VM,
no debootstrap: the binfmt_misc directory and the binfmt.d directories are temporary ones."""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.arches import ARCHITECTURES, host_architecture
from harness.cache import publish, staging_dir
from harness.errors import KconformError
from harness.machines import rootfs
from harness.machines.rootfs import (
    BinfmtStep,
    Rootfs,
    RootfsProvider,
    RootfsSpec,
    next_binfmt_step,
    prepare_binfmt,
    root_directory_name,
)

# /usr/lib/binfmt.d/qemu-aarch64.conf as Debian 12's qemu-user-static (1:7.2+dfsg-7+deb12u18)
# ships it.
QEMU_AARCH64_LINE = (
    r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
    r"\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff"
    r"\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF")
# /proc/sys/fs/binfmt_misc/qemu-aarch64 as Linux showed it once that line was registered on
# this host (format: Documentation/admin-guide/binfmt-misc.rst).
REGISTERED_ENTRY = """\
enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
RECIPE = 'suite = "bookworm"\npackages = ["python3", "libbpf1"]\n'
PACKAGES = {"python3": "3.11.2-1+b1", "libbpf1": "1:1.1.2-0+deb12u1"}


pytestmark = pytest.mark.usefixtures("release_held_entries")


# -- where a root lives, and how results name it

def test_an_arm64_root_has_its_own_directory_and_amd64_keeps_the_old_one():
    """The brief: <cache>/rootfs/<name>-arm64-<digest>, the amd64 path unchanged
    (<name>-<digest>, images/README.md), so an amd64 cache stays valid."""
    assert root_directory_name("debian-bookworm", "amd64", "0a3f6ccd0fb2") == \
        "debian-bookworm-0a3f6ccd0fb2"
    assert root_directory_name("debian-bookworm", "arm64", "0a3f6ccd0fb2") == \
        "debian-bookworm-arm64-0a3f6ccd0fb2"


def test_describe_names_the_architecture_of_an_arm64_root_only():
    """Results record the root as 'debian-bookworm@<digest> (python3 ..., libbpf1 ...)'
    (images/README.md); an arm64 root says so after the digest (the brief's format)."""
    amd64 = Rootfs("debian-bookworm", Path("/r"), "0a3f6ccd0fb2", PACKAGES)
    arm64 = Rootfs("debian-bookworm", Path("/r"), "0a3f6ccd0fb2", PACKAGES, arch="arm64")
    assert amd64.describe() == \
        "debian-bookworm@0a3f6ccd0fb2 (python3 3.11.2-1+b1, libbpf1 1:1.1.2-0+deb12u1)"
    assert arm64.describe() == \
        "debian-bookworm@0a3f6ccd0fb2 arm64 (python3 3.11.2-1+b1, libbpf1 1:1.1.2-0+deb12u1)"
    assert Rootfs("r", Path("/r"), "d" * 12, {}, arch="arm64").describe() == f"r@{'d' * 12} arm64"


def _cached_root(store: Path, name: str, directory: str, arch: str | None) -> Path:
    """A published root as RootfsProvider leaves it (its manifest recording `arch`, or nothing
    about it, as roots built before arm64 ones)."""
    roots = store / "rootfs"
    roots.mkdir(parents=True, exist_ok=True)
    with staging_dir(roots, name) as staging:
        target = staging / "root"
        (target / "usr/bin").mkdir(parents=True)
        (target / "usr/bin/python3").write_bytes(b"p" * 100)
        meta: dict[str, object] = {"name": name, "suite": "bookworm", "packages": PACKAGES}
        if arch:
            meta["arch"] = arch
        publish(target, roots / directory, meta)
    return roots / directory


def test_get_finds_each_architecture_s_root_in_its_own_directory(tmp_path):
    store = tmp_path / "cache"
    spec = rootfs.load_recipe("debian-bookworm")
    amd64 = _cached_root(store, "debian-bookworm", f"debian-bookworm-{spec.digest}", None)
    arm64 = _cached_root(store, "debian-bookworm", f"debian-bookworm-arm64-{spec.digest}",
                         "arm64")
    provider = RootfsProvider(cache=store)
    got = provider.get("debian-bookworm", "arm64")
    assert got is not None and (got.path, got.arch) == (arm64, "arm64")
    assert got.describe().startswith(f"debian-bookworm@{spec.digest} arm64 (python3 ")
    got = provider.get("debian-bookworm")  # amd64 by default: every caller before arm64 roots
    assert got is not None and (got.path, got.arch) == (amd64, "amd64")


def test_a_cached_root_built_for_another_architecture_is_built_again(tmp_path, monkeypatch):
    """The manifest records the arch: a root whose manifest says amd64 is not handed out as
    arm64's, whatever its directory is called."""
    store = tmp_path / "cache"
    spec = rootfs.load_recipe("debian-bookworm")
    _cached_root(store, "debian-bookworm", f"debian-bookworm-arm64-{spec.digest}", "amd64")
    said: list[str] = []
    provider = RootfsProvider(cache=store, log=said.append)
    builds = []

    def build(spec: RootfsSpec, arch: str, root: Path, kernel: object = None) -> None:
        builds.append((spec.name, arch, root.name))
        raise KconformError("not building in a unit test")
    monkeypatch.setattr(provider, "_build", build)
    with pytest.raises(KconformError, match="not building"):
        provider.get("debian-bookworm", "arm64")
    assert builds == [("debian-bookworm", "arm64", f"debian-bookworm-arm64-{spec.digest}")]
    assert any("built for amd64" in line for line in said), said


@pytest.mark.parametrize("arch", ["riscv64", "x86_64", "aarch64", "", "arm64 "])
def test_an_unknown_architecture_is_refused_with_the_known_ones(tmp_path, arch):
    """Debian's architecture names (kernels/specs.py ARCHITECTURES), not the kernel's."""
    with pytest.raises(KconformError) as raised:
        RootfsProvider(cache=tmp_path / "cache").get("debian-bookworm", arch)
    assert f"unknown architecture {arch!r}" in str(raised.value)
    assert "amd64, arm64" in str(raised.value)
    assert not list((tmp_path / "cache" / "rootfs").iterdir()), "nothing built or held"


def test_the_host_root_has_no_architecture_to_check(tmp_path):
    assert RootfsProvider(cache=tmp_path / "cache").get("host", "arm64") is None


def test_a_recipe_named_like_another_recipe_s_arm64_root_is_refused(tmp_path):
    """images/debian-bookworm-arm64.toml with debian-bookworm.toml's text would be cached at
    debian-bookworm-arm64-<same digest>: the arm64 root of debian-bookworm."""
    path = tmp_path / "debian-bookworm-arm64.toml"
    with pytest.raises(KconformError, match=r"debian-bookworm-arm64\.toml: .*ending in an arch"):
        RootfsSpec.parse(path, RECIPE)
    RootfsSpec.parse(tmp_path / "debian-bookworm.toml", RECIPE)
    RootfsSpec.parse(tmp_path / "arm64-tools.toml", RECIPE)  # only the end names an arch


# -- debootstrap for an architecture

def _failing_debootstrap(monkeypatch, output: str) -> list[list[str]]:
    commands: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", output)
    monkeypatch.setattr(rootfs.subprocess, "run", fake_run)
    return commands


def test_debootstrap_is_asked_for_the_root_s_architecture(tmp_path, monkeypatch):
    (tmp_path / "good.toml").write_text(RECIPE)
    spec = RootfsSpec.load(tmp_path / "good.toml")
    commands = _failing_debootstrap(monkeypatch, "failed")
    with pytest.raises(KconformError, match=r"rootfs good \(bookworm, arm64\)"):
        RootfsProvider(cache=tmp_path / "cache")._debootstrap(
            spec, "http://deb.debian.org/debian", tmp_path, tmp_path / "root", "arm64")
    [cmd] = commands
    options = cmd[:cmd.index("--force-check-gpg") + 1]
    assert "--arch=arm64" in options  # debootstrap(8): --arch=ARCH
    assert cmd[len(options):] == ["bookworm", str(tmp_path / "root"),
                                  "http://deb.debian.org/debian"]


def test_a_target_that_cannot_run_names_qemu_user_static(tmp_path, monkeypatch):
    """debootstrap's own check (with arch-test installed) fails with 'Unable to execute target
    architecture' (/usr/sbin/debootstrap, 1.0.128): the fix is the emulation, not the mirror."""
    (tmp_path / "good.toml").write_text(RECIPE)
    spec = RootfsSpec.load(tmp_path / "good.toml")
    _failing_debootstrap(monkeypatch, "E: Unable to execute target architecture")
    with pytest.raises(KconformError) as raised:
        RootfsProvider(cache=tmp_path / "cache")._debootstrap(
            spec, "http://deb.debian.org/debian", tmp_path, tmp_path / "root", "arm64")
    message = str(raised.value)
    assert "cannot run arm64 programs" in message and "qemu-user-static" in message


@pytest.mark.parametrize("foreign", [False, True])
def test_binfmt_misc_is_prepared_for_a_foreign_root_only(tmp_path, monkeypatch, foreign):
    """A native root needs no emulation: an amd64 build never touches binfmt_misc."""
    host = host_architecture()
    arch = next(a for a in ARCHITECTURES if (a != host) == foreign)
    prepared: list[str] = []
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rootfs, "prepare_binfmt", lambda a, log: prepared.append(a))

    def no_mirror(what: str) -> str:
        raise KconformError("stop before debootstrap")
    monkeypatch.setattr(rootfs, "require_debian_mirror", no_mirror)
    spec = rootfs.load_recipe("debian-bookworm")
    with pytest.raises(KconformError, match="stop before debootstrap"):
        RootfsProvider(cache=tmp_path / "cache")._build(spec, arch, tmp_path / "root")
    assert prepared == ([arch] if foreign else [])


# -- binfmt_misc: what prepare_binfmt decides

@pytest.fixture
def binfmt(tmp_path) -> Path:
    """A mounted binfmt_misc with no entry: its register and status files (binfmt-misc.rst)."""
    path = tmp_path / "binfmt_misc"
    path.mkdir()
    (path / "register").write_text("")
    (path / "status").write_text("enabled\n")
    return path


@pytest.fixture
def conf_dirs(tmp_path) -> tuple[Path, ...]:
    """binfmt.d's directories in systemd's order (binfmt.d(5)), qemu-user-static's file in the
    last, as the package installs it."""
    dirs = tuple(tmp_path / d for d in ("etc", "run", "usr-lib"))
    for d in dirs:
        d.mkdir()
    (dirs[2] / "qemu-aarch64.conf").write_text(QEMU_AARCH64_LINE + "\n")
    return dirs


def test_a_registered_fix_binary_entry_is_ready(binfmt, conf_dirs):
    (binfmt / "qemu-aarch64").write_text(REGISTERED_ENTRY)
    assert next_binfmt_step("arm64", binfmt, conf_dirs) == BinfmtStep("ready")


def test_binfmt_misc_not_mounted_is_mounted(tmp_path, conf_dirs):
    """Not mounted, /proc/sys/fs/binfmt_misc is an empty directory: no register file."""
    (tmp_path / "empty").mkdir()
    assert next_binfmt_step("arm64", tmp_path / "empty", conf_dirs) == BinfmtStep("mount")


def test_a_missing_entry_is_registered_from_qemu_user_static_s_file(binfmt, conf_dirs):
    step = next_binfmt_step("arm64", binfmt, conf_dirs)
    assert step == BinfmtStep("register", QEMU_AARCH64_LINE, conf_dirs[2] / "qemu-aarch64.conf")


def test_comments_are_skipped_and_an_etc_file_overrides_the_package_s(binfmt, conf_dirs):
    """binfmt.d(5): lines starting with # or ; are comments; a file in /etc replaces the file
    of the same name in /usr/lib."""
    mine = QEMU_AARCH64_LINE.replace(":OPF", ":POCF")
    # '#qemu-aarch64#...' would register qemu-aarch64 with '#' as the separator, were it not
    # a comment
    (conf_dirs[0] / "qemu-aarch64.conf").write_text(
        f"#qemu-aarch64#M##x#\n;qemu-aarch64;M;;x;\n\n{mine}\n")
    assert next_binfmt_step("arm64", binfmt, conf_dirs) == \
        BinfmtStep("register", mine, conf_dirs[0] / "qemu-aarch64.conf")


def test_an_etc_file_masking_the_package_s_is_named(binfmt, conf_dirs):
    (conf_dirs[0] / "qemu-aarch64.conf").write_text("")  # as a link to /dev/null reads
    with pytest.raises(KconformError) as raised:
        next_binfmt_step("arm64", binfmt, conf_dirs)
    assert f"{conf_dirs[0] / 'qemu-aarch64.conf'} holds no line" in str(raised.value)


def test_a_line_for_another_entry_is_not_taken(binfmt, conf_dirs):
    (conf_dirs[2] / "qemu-aarch64.conf").write_text(
        QEMU_AARCH64_LINE.replace(":qemu-aarch64:", ":qemu-aarch64_be:") + "\n")
    with pytest.raises(KconformError, match="holds no line registering one"):
        next_binfmt_step("arm64", binfmt, conf_dirs)


def test_no_entry_and_no_file_names_qemu_user_static(binfmt, conf_dirs):
    (conf_dirs[2] / "qemu-aarch64.conf").unlink()
    with pytest.raises(KconformError) as raised:
        next_binfmt_step("arm64", binfmt, conf_dirs)
    message = str(raised.value)
    assert message.startswith("an arm64 root cannot be built on this")
    assert "no qemu-aarch64.conf" in message
    assert "apt-get install qemu-user-static" in message
    assert "mount -t binfmt_misc binfmt_misc" in message


@pytest.mark.parametrize("entry, words", [
    (REGISTERED_ENTRY.replace("enabled", "disabled"), ["is disabled", "echo 1 >"]),
    (REGISTERED_ENTRY.replace("flags: POF", "flags: P"),
     ["without the F flag", "aarch64-binfmt-P", "echo -1 >"]),
    ("", ["is disabled"]),
])
def test_a_registered_entry_that_cannot_serve_a_chroot_is_refused(binfmt, conf_dirs, entry,
                                                                   words):
    """binfmt-misc.rst: without F the interpreter is looked up when a program starts, which in
    debootstrap's chroot is inside the new root, where there is no qemu."""
    (binfmt / "qemu-aarch64").write_text(entry)
    with pytest.raises(KconformError) as raised:
        next_binfmt_step("arm64", binfmt, conf_dirs)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def test_binfmt_misc_disabled_as_a_whole_is_refused(binfmt, conf_dirs):
    (binfmt / "status").write_text("disabled\n")
    (binfmt / "qemu-aarch64").write_text(REGISTERED_ENTRY)
    with pytest.raises(KconformError, match=r"binfmt_misc is disabled .*echo 1 > .*status"):
        next_binfmt_step("arm64", binfmt, conf_dirs)


def test_amd64_on_an_arm64_host_looks_for_qemu_x86_64(binfmt, conf_dirs):
    with pytest.raises(KconformError, match="no qemu-x86_64 entry"):
        next_binfmt_step("amd64", binfmt, conf_dirs)


# -- binfmt_misc: what prepare_binfmt does

def kernel_register(written: list[str]) -> Callable[[Path, str], None]:
    """A register file as Linux's: the line written becomes the entry before write(2) returns
    (binfmt-misc.rst)."""
    def register(path: Path, line: str) -> None:
        written.append(line)
        assert line == QEMU_AARCH64_LINE, line
        (path.parent / "qemu-aarch64").write_text(REGISTERED_ENTRY)
    return register


def test_a_ready_entry_is_left_alone(binfmt, conf_dirs):
    (binfmt / "qemu-aarch64").write_text(REGISTERED_ENTRY)
    said: list[str] = []
    prepare_binfmt("arm64", said.append, binfmt, conf_dirs, mount=pytest.fail)
    assert said == [] and (binfmt / "register").read_text() == ""


def test_a_missing_entry_is_registered_and_said(binfmt, conf_dirs):
    written: list[str] = []
    said: list[str] = []
    prepare_binfmt("arm64", said.append, binfmt, conf_dirs, mount=pytest.fail,
                   register=kernel_register(written))
    assert written == [QEMU_AARCH64_LINE]
    source = conf_dirs[2] / "qemu-aarch64.conf"
    expected = (f"rootfs: registering binfmt_misc entry qemu-aarch64 from {source}, as "
                "systemd-binfmt does at boot (it was not registered)")
    assert said == [expected]


def test_an_unmounted_binfmt_misc_is_mounted_then_the_entry_registered(tmp_path, conf_dirs):
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    mounted: list[Path] = []

    def mount(directory: Path) -> None:
        mounted.append(directory)
        (directory / "register").write_text("")
        (directory / "status").write_text("enabled\n")
    said: list[str] = []
    written: list[str] = []
    prepare_binfmt("arm64", said.append, binfmt, conf_dirs, mount=mount,
                   register=kernel_register(written))
    assert written == [QEMU_AARCH64_LINE]
    assert mounted == [binfmt]
    assert said[0].startswith(f"rootfs: binfmt_misc is not mounted; mounting it at {binfmt}")
    assert said[1].startswith("rootfs: registering binfmt_misc entry qemu-aarch64")
    assert (binfmt / "qemu-aarch64").read_text() == REGISTERED_ENTRY


def test_a_failed_mount_names_the_fix(tmp_path, conf_dirs):
    (tmp_path / "binfmt_misc").mkdir()
    with pytest.raises(KconformError) as raised:
        prepare_binfmt("arm64", lambda msg: None, tmp_path / "binfmt_misc", conf_dirs,
                       mount=lambda d: "mount: permission denied")
    message = str(raised.value)
    assert "mounting it failed: mount: permission denied" in message
    assert f"mount -t binfmt_misc binfmt_misc {tmp_path / 'binfmt_misc'}" in message


def test_a_mount_that_gives_no_register_file_is_refused(tmp_path, conf_dirs):
    (tmp_path / "binfmt_misc").mkdir()
    with pytest.raises(KconformError, match="was mounted at .* but has no register file"):
        prepare_binfmt("arm64", lambda msg: None, tmp_path / "binfmt_misc", conf_dirs,
                       mount=lambda d: None)


def test_a_registration_that_makes_no_entry_is_refused(binfmt, conf_dirs):
    """register is a plain file here: the line is written, and no entry appears."""
    with pytest.raises(KconformError, match=r"did not create .*qemu-aarch64"):
        prepare_binfmt("arm64", lambda msg: None, binfmt, conf_dirs, mount=pytest.fail)
    assert (binfmt / "register").read_text() == QEMU_AARCH64_LINE


def test_a_refused_registration_names_the_fix(binfmt, conf_dirs):
    (binfmt / "register").unlink()
    (binfmt / "register").mkdir()  # writing it fails with an OSError, as EPERM would
    with pytest.raises(KconformError) as raised:
        prepare_binfmt("arm64", lambda msg: None, binfmt, conf_dirs, mount=pytest.fail)
    assert "registering qemu-aarch64 from" in str(raised.value)
    assert "systemctl restart systemd-binfmt" in str(raised.value)


def test_a_root_without_poweroff_gets_busyboxs_so_a_foreign_guest_powers_off(tmp_path):
    # virtme-ng's shell-script init ends with `poweroff -f`; without one, init exits and the
    # kernel panics at every guest's end (seen on the first arm64 boot of debian-bookworm).
    bare = tmp_path / "bare"
    (bare / "usr/bin").mkdir(parents=True)
    (bare / "usr/bin/busybox").write_bytes(b"\x7fELF")
    rootfs._link_poweroff(bare)
    assert os.readlink(bare / "usr/local/bin/poweroff") == "/usr/bin/busybox"
    with_systemd = tmp_path / "systemd"
    (with_systemd / "usr/sbin").mkdir(parents=True)
    (with_systemd / "usr/bin").mkdir(parents=True)
    (with_systemd / "usr/sbin/poweroff").write_text("")
    (with_systemd / "usr/bin/busybox").write_bytes(b"\x7fELF")
    rootfs._link_poweroff(with_systemd)
    assert not (with_systemd / "usr/local/bin/poweroff").exists()  # its own is kept


@pytest.mark.parametrize("rootfs_name, arches, arch, chosen", [
    ("host", {"amd64"}, "amd64", "host"),                    # the default: the host's own root
    ("host", {"arm64"}, "arm64", "debian-bookworm"),         # it cannot run the host's root
    ("host", {"amd64", "arm64"}, "amd64", "debian-bookworm"),  # a compare: one release's root
    ("debian-bookworm", {"amd64", "arm64"}, "arm64", "debian-bookworm"),
])
def test_each_architecture_boots_the_root_the_run_chooses_for_it(monkeypatch, rootfs_name,
                                                                 arches, arch, chosen):
    monkeypatch.setattr(rootfs, "host_architecture", lambda: "amd64")
    assert rootfs.root_recipe(rootfs_name, arch, arches) == chosen


def test_the_poweroff_link_is_on_the_path_virtme_init_ends_a_guest_with():
    # virtme-ng's shell-script init (run for a foreign architecture) calls `poweroff -f` with
    # the PATH it sets itself: read it from the installed script, not from our own constant.
    from virtme import resources
    init = Path(resources.find_guest_tools()) / "virtme-init"
    defaults = re.search(r"local defaults=(\S+)", init.read_text())
    assert defaults, "virtme-init no longer sets its PATH as it did"
    assert f"/{Path(rootfs.POWEROFF_LINK).parent}" in defaults[1].split(":")
