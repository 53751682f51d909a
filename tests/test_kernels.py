"""Kernel names, version bounds and cached trees, without booting anything."""
import dataclasses
import json
import os
import struct
import subprocess

import pytest

from harness.cache import check_manifest, release_in_use, write_manifest
from harness.errors import KconformError
from harness.kernels import (
    AptArchive,
    KernelProvider,
    bzimage_release,
    default_kernel_names,
    expand_kernel_args,
    load_specs,
)
from harness.kernels.apt import ArchiveVersion, system_debian_mirror
from harness.kernels.specs import parse_arches
from harness.kernels.trees import parse_kconfig
from harness.versions import RELEASE
from harness.versions import upstream_version as parse_upstream_version

BUILD = ArchiveVersion("1.0-1", "1.0", "bookworm")  # what a fake archive lists


def test_every_named_kernel_is_defined_and_ordered_by_series():
    specs = load_specs()
    assert list(specs) == ["debian-5.10", "debian-5.10-arm64", "debian-6.1", "debian-6.1-arm64",
                           "debian-6.12", "debian-6.12-arm64", "debian-6.12-cloud",
                           "debian-6.12-rt", "debian-7.2", "debian-7.2-arm64", "debian-7.3",
                           "debian-7.3-arm64", "debian-rc"]
    for name in default_kernel_names():
        assert name in specs


def test_kernel_args_accept_comma_lists_repeats_and_all():
    specs = load_specs()
    assert expand_kernel_args(["debian-6.1,debian-5.10", "debian-6.1"], specs) == \
        ["debian-6.1", "debian-5.10"]
    # 'all' is every amd64 kernel: arm64 ones run emulated on a root of their own, so a run
    # asks for them (--arch) rather than getting them by default
    assert expand_kernel_args(["all"], specs) == [n for n in specs if not n.endswith("-arm64")]


def test_arch_runs_each_named_kernel_once_per_architecture():
    specs = load_specs()
    both = ("amd64", "arm64")
    assert expand_kernel_args(["debian-6.12"], specs, arches=both) == \
        ["debian-6.12", "debian-6.12-arm64"]
    assert expand_kernel_args(["default"], specs, arches=("arm64",)) == \
        ["debian-5.10-arm64", "debian-6.1-arm64"]
    # a pinned version keeps its version: Debian builds every architecture from one source
    assert expand_kernel_args(["debian-6.1@6.1.190-1"], specs, arches=both) == \
        ["debian-6.1@6.1.190-1", "debian-6.1-arm64@6.1.190-1"]
    # an arm64 name asked for amd64 is its amd64 sibling
    assert expand_kernel_args(["debian-7.3-arm64"], specs, arches=("amd64",)) == ["debian-7.3"]
    assert [specs[n].arch for n in expand_kernel_args(["all"], specs, arches=("arm64",))] == \
        ["arm64"] * 5
    # 'all' of both is every definition, the flavours with no arm64 build among them
    assert expand_kernel_args(["all"], specs, arches=both) == list(specs)


def test_a_kernel_with_no_definition_for_an_architecture_is_a_usage_error():
    with pytest.raises(KconformError, match=r"--arch arm64: debian-6.12-rt has no arm64 "
                                            r"definition .* flavour 'rt-arm64'"):
        expand_kernel_args(["debian-6.12-rt"], load_specs(), arches=("arm64",))


@pytest.mark.parametrize("value", ["x86_64", "amd64,", "arm"])
def test_an_unknown_architecture_is_refused_with_the_known_ones(value):
    with pytest.raises(KconformError, match="give amd64 or arm64, or both"):
        parse_arches(value)


def test_an_arm64_definition_fetches_arm64_packages(tmp_path):
    specs = load_specs()
    arm64 = specs["debian-6.12-arm64"]
    assert (arm64.arch, arm64.flavour, arm64.series) == ("arm64", "arm64", "6.12")
    apt = AptArchive(tmp_path / "apt", "http://deb.debian.org/debian")
    assert "APT::Architecture=arm64" in apt.options(arm64)
    assert "APT::Architecture=amd64" in apt.options(specs["debian-6.12"])


def test_unknown_kernel_name_lists_the_known_ones():
    with pytest.raises(KconformError) as info:
        expand_kernel_args(["debian-9.9"], load_specs())
    assert "debian-9.9" in str(info.value) and "debian-6.12" in str(info.value)


def test_upstream_version_comes_from_the_package_version():
    assert parse_upstream_version("6.1.176-1") == (6, 1, 176, RELEASE)
    assert parse_upstream_version("7.3.4-1~bpo13+1") == (7, 3, 4, RELEASE)
    assert parse_upstream_version("6.7") == (6, 7, 0, RELEASE)


def test_kconfig_parsing_keeps_set_options_only():
    config = parse_kconfig("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n")
    assert config == {"CONFIG_A": "y", "CONFIG_C": "m"}


def _fake_bzimage(path, release):
    image = bytearray(0x600)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = struct.pack("<H", 0x300 - 0x200)
    text = f"{release} (builder@host) #1 SMP".encode()
    image[0x300:0x300 + len(text)] = text
    path.write_bytes(bytes(image))


def test_bzimage_release_is_read_from_the_boot_header(tmp_path):
    _fake_bzimage(tmp_path / "bzImage", "6.13.0-rc1+")
    assert bzimage_release(tmp_path / "bzImage") == "6.13.0-rc1+"
    (tmp_path / "notakernel").write_bytes(b"\0" * 2048)
    with pytest.raises(KconformError, match="not a bzImage"):
        bzimage_release(tmp_path / "notakernel")


def _tree(root):
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-1.0").write_bytes(b"kernel" * 100)
    (root / "lib/modules/1.0").mkdir(parents=True)
    (root / "lib/modules/1.0/a.ko").write_bytes(b"module" * 50)
    write_manifest(root, {"release": "1.0", "package_version": "1.0-1"})


def test_manifest_catches_truncated_and_changed_files(tmp_path):
    _tree(tmp_path)
    assert check_manifest(tmp_path)[0]["release"] == "1.0"
    os.truncate(tmp_path / "lib/modules/1.0/a.ko", 10)
    assert "a.ko" in check_manifest(tmp_path)[1]
    _tree(tmp_path / "again")
    image = tmp_path / "again/boot/vmlinuz-1.0"
    published = image.stat()
    image.write_bytes(b"KERNEL" * 100)  # same size, other bytes
    assert "modified after the tree was published" in check_manifest(tmp_path / "again")[1]
    os.utime(image, ns=(published.st_atime_ns, published.st_mtime_ns))  # even with its old mtime,
    assert "sha256" in check_manifest(tmp_path / "again")[1]           # the image is hashed


def test_a_damaged_cached_kernel_is_fetched_again(tmp_path, monkeypatch):
    """The provider drops a damaged tree and rebuilds it, instead of booting it."""
    provider = KernelProvider(cache=tmp_path)
    spec = provider.specs["debian-6.1"]
    root = tmp_path / "trees" / "1.0_1.0-1"
    _tree(root)
    os.truncate(root / "boot/vmlinuz-1.0", 3)
    fetched = []
    monkeypatch.setattr(provider, "_resolve", lambda s: BUILD)
    monkeypatch.setattr(provider, "_fetch", lambda s, build, dest: (fetched.append(build.version),
                                                                           _tree(dest)))
    tree = provider.get("debian-6.1")
    assert fetched == ["1.0-1"] and tree.package_version == "1.0-1" and spec.name == tree.name


def test_two_names_for_one_kernel_fetch_it_once_not_at_the_same_time(tmp_path, monkeypatch):
    """Two specs resolving to one tree locked on their own names: both found the tree missing
    and both fetched it into one place (the second publish failed, or removed the first's)."""
    import threading
    import time

    specs = load_specs()
    specs["same-6.1"] = dataclasses.replace(specs["debian-6.1"], name="same-6.1")
    fetching, overlapped, fetched = [], [], []

    def slow_fetch(spec, build, dest):
        fetching.append(spec)
        overlapped.append(len(fetching) > 1)
        time.sleep(0.3)  # a download: long enough for the other name to arrive meanwhile
        _tree(dest)
        fetched.append(spec)
        fetching.remove(spec)

    trees, errors = {}, []

    def get(name):
        provider = KernelProvider(cache=tmp_path, specs=specs)
        monkeypatch.setattr(provider, "_resolve", lambda s: BUILD)
        monkeypatch.setattr(provider, "_fetch", slow_fetch)
        try:
            trees[name] = provider.get(name)
        except Exception as exc:  # the thread's failure is the test's
            errors.append(exc)

    threads = [threading.Thread(target=get, args=(n,)) for n in ("debian-6.1", "same-6.1")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not any(overlapped) and len(fetched) == 1, (errors, overlapped)
    assert trees["debian-6.1"].root == trees["same-6.1"].root == tmp_path / "trees/1.0_1.0-1"


def test_offline_resolution_falls_back_to_the_cached_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    provider = KernelProvider(cache=tmp_path, refresh=True)
    _tree(tmp_path / "trees" / "1.0_1.0-1")
    (tmp_path / "resolved").mkdir()
    (tmp_path / "resolved" / "debian-6.1.json").write_text(
        json.dumps({"abi": "1.0", "version": "1.0-1", "at": 0}))
    messages = []
    provider.log = messages.append
    assert provider.get("debian-6.1").package_version == "1.0-1"
    assert any("cannot reach the Debian archive" in m for m in messages)


def test_offline_without_a_cached_kernel_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    provider = KernelProvider(cache=tmp_path)
    with pytest.raises(KconformError,
                       match="cannot reach the Debian archive.*KCONFORM_DEBIAN_MIRROR"):
        provider.get("debian-6.1")


def test_mirror_override_wins(monkeypatch):
    monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", "http://mirror.example/debian/")
    assert system_debian_mirror() == "http://mirror.example/debian"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_while_unpacking_names_the_problem_and_the_fix(tmp_path, monkeypatch):
    """A real ENOSPC: the cache is a 4 MiB tmpfs and the package holds 8 MiB."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "boot").mkdir()
    (pkg / "DEBIAN" / "control").write_text(
        "Package: kconform-fake-kernel\nVersion: 1.0-1\nArchitecture: amd64\n"
        "Maintainer: kconform <kconform@example.org>\nDescription: fills the disk\n")
    (pkg / "boot" / "vmlinuz-1.0").write_bytes(os.urandom(8 << 20))  # random: stays 8 MiB
    deb = tmp_path / "fake.deb"
    subprocess.run(["dpkg-deb", "-Znone", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", "http://mirror.example/debian")
        provider = KernelProvider(cache=small)
        monkeypatch.setattr(provider, "_resolve", lambda spec: BUILD)
        monkeypatch.setattr(AptArchive, "download", lambda *args, **kwargs: [deb])
        monkeypatch.setattr(AptArchive, "update", lambda *args: None)
        with pytest.raises(KconformError, match=r"no space left on the device while unpacking "
                                                r".*: free some space, or point KCONFORM_CACHE"):
            provider.get("debian-6.1")
        # nothing half-unpacked is left, and nothing was published
        assert [p.name for p in (small / "trees").iterdir() if not p.name.startswith(".lock")] == []
    finally:
        release_in_use(small)  # the provider holds the tree it asked for until it exits
        subprocess.run(["umount", str(small)], check=True)
