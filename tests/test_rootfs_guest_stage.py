"""A foreign root whose second stage runs in a guest (issue #13 point 2, the fallback where the host
cannot run the root's programs): when that way is taken, what the half-built root is given to
boot, and how the guest's result is read. No VM, no debootstrap: small .debs made here with
dpkg-deb stand for the archive's (tests/test_rootfs_guest_stage_vm.py builds a real one)."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from harness.arches import host_architecture
from harness.errors import KconformError
from harness.kernels import KernelTree
from harness.machines import rootfs
from harness.machines.rootfs import (
    GUEST_BOOT_PACKAGES,
    GUEST_STAGE_OUT,
    SECOND_STAGE_DIR,
    RootfsProvider,
    guest_boot_debs,
    prepare_guest_stage,
    second_stage_problem,
    unpack_finished_root,
)

FOREIGN = "arm64" if host_architecture() != "arm64" else "amd64"


def _kernel(arch: str = FOREIGN, image: bool = True) -> KernelTree:
    return KernelTree(name=f"debian-6.12-{arch}", vmlinuz=Path("/boot/vmlinuz") if image else None,
                      release=f"6.12.118+deb13-{arch}", arch=arch)


def _no_job(*args: object) -> str | None:
    raise AssertionError("no guest in a unit test")


def _binfmt_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(arch: str, log: object) -> None:
        raise rootfs.emulation_error(arch, "binfmt_misc is not mounted")
    monkeypatch.setattr(rootfs, "prepare_binfmt", refuse)


# -- when the guest's way is taken

def test_without_binfmt_misc_the_second_stage_goes_to_a_guest_of_the_kernel_given(monkeypatch):
    _binfmt_refuses(monkeypatch)
    said: list[str] = []
    provider = RootfsProvider(log=said.append, guest_job=_no_job)
    spec = rootfs.load_recipe("debian-bookworm")
    kernel = _kernel()
    assert provider._second_stage_kernel(spec, FOREIGN, kernel) is kernel
    assert "binfmt_misc is not mounted" in said[0]
    assert "debootstrap --foreign" in said[0] and f"{FOREIGN} guest on {kernel.name}" in said[0]


def test_with_binfmt_misc_the_host_runs_the_second_stage(monkeypatch):
    monkeypatch.setattr(rootfs, "prepare_binfmt", lambda arch, log: None)
    provider = RootfsProvider(guest_job=_no_job)
    assert provider._second_stage_kernel(rootfs.load_recipe("debian-bookworm"), FOREIGN,
                                         _kernel()) is None


def test_asked_for_the_guest_s_way_it_is_taken_without_touching_binfmt_misc(monkeypatch):
    monkeypatch.setattr(rootfs, "prepare_binfmt", _no_job)
    provider = RootfsProvider(guest_job=_no_job, second_stage_in_guest=True)
    kernel = _kernel()
    assert provider._second_stage_kernel(rootfs.load_recipe("debian-bookworm"), FOREIGN,
                                         kernel) is kernel


@pytest.mark.parametrize("job, given, words", [
    (None, _kernel(), "boots no guest"),
    (_no_job, None, f"needs an {FOREIGN} kernel"),
    (_no_job, _kernel(host_architecture()), f"needs an {FOREIGN} kernel"),
    (_no_job, _kernel(image=False), f"needs an {FOREIGN} kernel"),  # an SSH target's
])
def test_without_a_guest_to_run_it_the_binfmt_fix_is_named_and_why_not(monkeypatch, job, given,
                                                                       words):
    _binfmt_refuses(monkeypatch)
    provider = RootfsProvider(guest_job=job)
    with pytest.raises(KconformError) as raised:
        provider._second_stage_kernel(rootfs.load_recipe("debian-bookworm"), FOREIGN, given)
    message = str(raised.value)
    assert "apt-get install qemu-user-static" in message  # the fix for the host's own way
    assert "cannot be taken" in message and words in message


def test_a_recipe_without_what_the_guest_boots_with_names_the_packages(monkeypatch, tmp_path):
    _binfmt_refuses(monkeypatch)
    (tmp_path / "small.toml").write_text('suite = "bookworm"\npackages = ["python3"]\n')
    spec = rootfs.RootfsSpec.load(tmp_path / "small.toml")
    with pytest.raises(KconformError) as raised:
        RootfsProvider(guest_job=_no_job)._second_stage_kernel(spec, FOREIGN, _kernel())
    assert all(f"'{p}'" in str(raised.value) for p in GUEST_BOOT_PACKAGES)


def test_the_guest_s_way_runs_debootstrap_s_first_stage_only(tmp_path, monkeypatch):
    commands: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "stop here")
    monkeypatch.setattr(rootfs.subprocess, "run", fake_run)
    spec = rootfs.load_recipe("debian-bookworm")
    provider = RootfsProvider(cache=tmp_path / "cache", guest_job=_no_job)
    for kernel in (None, _kernel()):
        with pytest.raises(KconformError):
            provider._debootstrap(spec, "http://deb.debian.org/debian", tmp_path,
                                  tmp_path / "root", FOREIGN, kernel)
    host_way, guest_way = commands
    options = guest_way[:guest_way.index("--force-check-gpg") + 1]
    assert "--foreign" in options and "--foreign" not in host_way  # debootstrap(8)
    assert [c for c in guest_way if c != "--foreign"] == host_way


# -- what the half-built root is given before it boots

def _deb(directory: Path, package: str, depends: str = "", files: tuple[str, ...] = ()) -> Path:
    """A .deb with one control file (deb-control(5)) and the files named, via dpkg-deb --build."""
    tree = directory / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    control = f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
    control += f"Depends: {depends}\n" if depends else ""
    (tree / "DEBIAN" / "control").write_text(control + "Description: test\n")
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(package)
    deb = directory / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


@pytest.fixture
def first_stage(tmp_path) -> Path:
    """A first-stage root as debootstrap --foreign leaves it: merged /usr, /proc a link (as on
    a host debootstrap takes for a docker container), its .debs in var/cache/apt/archives, and
    its lists: debootstrap/debpaths (package, .deb) and debootstrap/required (what it
    unpacked)."""
    target = tmp_path / "root"
    archives = target / "var/cache/apt/archives"
    archives.mkdir(parents=True)
    (target / "usr/bin").mkdir(parents=True)
    (target / "bin").symlink_to("usr/bin")
    (target / "proc").symlink_to("/proc")
    debs = [
        _deb(archives, "udev", "libc6 (>= 2.34), libkmod2 (>= 15), adduser",
             ("usr/bin/udevadm",)),
        _deb(archives, "libkmod2", "libssl3 | libssl-alt, liblzma5"),
        _deb(archives, "libssl3", "libc6"),
        _deb(archives, "libssl-alt"),
        _deb(archives, "busybox-static", files=("bin/busybox",)),  # through the /bin link
        _deb(archives, "libc6"), _deb(archives, "liblzma5"), _deb(archives, "adduser"),
        _deb(archives, "python3", "libc6"),
    ]
    (target / "debootstrap").mkdir()
    (target / "debootstrap/debpaths").write_text("".join(
        f"{deb.name.split('_')[0]} /var/cache/apt/archives/{deb.name}\n" for deb in debs))
    (target / "debootstrap/required").write_text("libc6 liblzma5 adduser\n")
    return target


def test_the_boot_packages_come_with_what_they_need_that_the_first_stage_left_packed(
        first_stage):
    debs = guest_boot_debs(first_stage)
    assert sorted(d.name.split("_")[0] for d in debs) == [
        "busybox-static", "libkmod2", "libssl3", "udev"]  # an alternative: its first, once


def test_a_boot_package_the_first_stage_did_not_download_is_named(first_stage):
    lists = first_stage / "debootstrap/debpaths"
    lists.write_text("".join(line + "\n" for line in lists.read_text().splitlines()
                             if not line.startswith("udev ")))
    with pytest.raises(KconformError, match="downloaded no udev"):
        guest_boot_debs(first_stage)


def test_a_first_stage_without_its_lists_says_to_build_again(first_stage):
    (first_stage / "debootstrap/debpaths").unlink()
    with pytest.raises(KconformError, match="left no package lists"):
        guest_boot_debs(first_stage)


def test_the_half_built_root_gets_what_the_guest_boots_with(first_stage):
    prepare_guest_stage(first_stage)
    assert (first_stage / "usr/bin/busybox").read_text() == "busybox-static"
    assert (first_stage / "bin").is_symlink()  # unpacked through the merged-/usr link
    assert (first_stage / "usr/bin/udevadm").exists()
    assert not (first_stage / "usr/bin/python3").exists()  # the second stage's to install
    assert (first_stage / "proc").is_dir() and not (first_stage / "proc").is_symlink()
    assert (first_stage / GUEST_STAGE_OUT.lstrip("/")).is_dir()
    assert (first_stage / rootfs.POWEROFF_LINK).is_symlink()
    script = (first_stage / SECOND_STAGE_DIR / "run").read_text()
    assert "debootstrap --second-stage" in script and GUEST_STAGE_OUT in script
    assert rootfs.STAGE_IN_TAR in script and rootfs.STAGE_OUT_TAR in script


def test_the_second_stage_script_is_valid_shell():
    subprocess.run(["sh", "-n", "-c", rootfs.SECOND_STAGE_SCRIPT], check=True)


# -- reading what the guest left

def _out(tmp_path: Path, rc: str | None, log: str = "I: Base system installed successfully.\n",
         tar: bool = True) -> Path:
    out = tmp_path / "stage-out"
    out.mkdir()
    if rc is not None:
        (out / "rc").write_text(rc + "\n")
    (out / "log").write_text(log)
    if tar:
        (out / "root.tar").write_bytes(b"")
    return out


def test_a_completed_second_stage_has_no_problem(tmp_path):
    assert second_stage_problem(_out(tmp_path, "0"), None) is None


@pytest.mark.parametrize("rc, boot_failure, tar, words", [
    (None, "the guest was still running after 3600 s and was stopped", False,
     ["still running after 3600 s", "before the script wrote its status"]),
    (None, None, False, ["the guest ended before"]),
    ("1", None, False, ["failed (status 1)", "W: Failure trying to run"]),
    ("0", None, False, ["wrote no root.tar"]),
])
def test_an_unfinished_second_stage_says_what_it_left(tmp_path, rc, boot_failure, tar, words):
    out = _out(tmp_path, rc, "W: Failure trying to run: dpkg --configure\n", tar)
    problem = second_stage_problem(out, boot_failure)
    assert problem is not None and all(w in problem for w in words), problem


def _root_tar(tmp_path: Path, *names: str) -> Path:
    src = tmp_path / "built"
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    tar = tmp_path / "root.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(src, arcname=".")
    return tar


def test_the_finished_root_replaces_the_half_built_one(tmp_path, first_stage):
    tar = _root_tar(tmp_path, "etc/debian_version", "usr/bin/python3")
    unpack_finished_root(tar, first_stage)
    assert (first_stage / "usr/bin/python3").read_text() == "usr/bin/python3"
    assert not (first_stage / "debootstrap").exists()  # nothing of the half-built one is left


def test_a_finished_root_still_holding_debootstrap_is_refused(tmp_path, first_stage):
    tar = _root_tar(tmp_path, "debootstrap/debpaths")
    with pytest.raises(KconformError, match="did not finish"):
        unpack_finished_root(tar, first_stage)


def test_a_root_packed_for_the_guest_unpacks_with_its_links_and_modes(tmp_path, first_stage):
    (first_stage / "usr/bin/tool").write_text("#!/bin/sh\n")
    (first_stage / "usr/bin/tool").chmod(0o4755)
    (first_stage / "debootstrap").rename(tmp_path / "lists")  # as a finished second stage's
    tar = tmp_path / rootfs.STAGE_IN_TAR
    rootfs.pack_root(first_stage, tar)
    copy = tmp_path / "copy"
    copy.mkdir()
    unpack_finished_root(tar, copy)
    assert (copy / "bin").is_symlink() and str((copy / "bin").readlink()) == "usr/bin"
    assert (copy / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755
