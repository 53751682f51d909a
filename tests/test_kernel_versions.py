"""Versions of a named kernel: what NAME@... selects, where the security suites are, how old a
Release file may be, and the provider booting a pinned version (no archive: a fake listing)."""
import json

import pytest

from harness.errors import KconformError, KernelUnavailable
from harness.kernels import KernelProvider, expand_kernel_args, load_specs
from harness.kernels.apt import (
    AptArchive,
    ArchiveVersion,
    archive_max_age,
    image_package_pattern,
    security_mirror_for,
)
from harness.kernels.provider import _read_listing
from harness.kernels.selectors import split_pinned
from harness.kernels.trees import KernelTree
from harness.machines.qemu import refuse_without_9p

# What bookworm and bookworm-security held on 2026-12-01 (`./kconform kernels --versions`).
BOOKWORM = [ArchiveVersion(v, f"6.1.0-{abi}-amd64", suite) for v, abi, suite in [
    ("6.1.170-3", 47, "bookworm"), ("6.1.176-1", 50, "bookworm"),
    ("6.1.187-1", 53, "bookworm-security"), ("6.1.190-1", 54, "bookworm-security"),
    ("6.1.192-1", 55, "bookworm-security"), ("6.1.192-2", 56, "bookworm-security"),
    ("6.1.192-3", 57, "bookworm-security")]]


def lister(spec):
    assert spec.name in ("debian-6.1", "debian-6.1-twin"), spec.name
    return BOOKWORM


def expand(value, specs=None):
    return expand_kernel_args([value], specs or load_specs(), versions=lister)


def test_a_package_version_an_abi_all_and_a_range_name_pinned_versions():
    assert expand("debian-6.1@6.1.190-1") == ["debian-6.1@6.1.190-1"]
    assert expand("debian-6.1@6.1.0-54") == ["debian-6.1@6.1.190-1"]
    assert expand("debian-6.1@6.1.0-57-amd64") == ["debian-6.1@6.1.192-3"]
    assert expand("debian-6.1@all") == [f"debian-6.1@{b.version}" for b in BOOKWORM]
    assert expand("debian-6.1@6.1.176-1..6.1.192-2") == [
        "debian-6.1@6.1.176-1", "debian-6.1@6.1.187-1", "debian-6.1@6.1.190-1",
        "debian-6.1@6.1.192-1", "debian-6.1@6.1.192-2"]


def test_an_abi_built_more_than_once_names_its_newest_build_or_as_a_range_start_all():
    twice = [*BOOKWORM[:2], ArchiveVersion("6.1.176-2", "6.1.0-50-amd64", "bookworm"),
             *BOOKWORM[2:]]
    names = expand_kernel_args(["debian-6.1@6.1.0-50"], load_specs(), versions=lambda s: twice)
    assert names == ["debian-6.1@6.1.176-2"]
    names = expand_kernel_args(["debian-6.1@6.1.0-50..6.1.0-53"], load_specs(),
                               versions=lambda s: twice)
    assert names == ["debian-6.1@6.1.176-1", "debian-6.1@6.1.176-2", "debian-6.1@6.1.187-1"]


def test_a_spec_without_security_suites_needs_no_security_mirror(monkeypatch, tmp_path):
    """A snapshot or file:// mirror of sid names no debian-security sibling: only a spec that
    takes -security suites may ask for one."""
    monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", "https://snapshot.debian.org/archive/debian/20261101T000000Z")
    monkeypatch.delenv("KCONFORM_DEBIAN_SECURITY_MIRROR", raising=False)
    provider = KernelProvider(cache=tmp_path)
    assert provider._archive(provider.specs["debian-rc"]).security_mirror is None
    with pytest.raises(KernelUnavailable, match="KCONFORM_DEBIAN_SECURITY_MIRROR"):
        provider._archive(provider.specs["debian-6.1"])


@pytest.mark.parametrize("value, words", [
    ("debian-6.1@6.1.999-1", ["no debian-6.1 build", "6.1.170-3 (ABI 6.1.0-47, bookworm)",
                              "6.1.192-3 (ABI 6.1.0-57, bookworm-security)",
                              "kernels --versions debian-6.1"]),
    ("debian-6.1@6.1.192-3..6.1.176-1", ["newer than", "debian-6.1@6.1.176-1..6.1.192-3"]),
    ("debian-6.1@6.1.176-1..", ["names both ends"]),
    ("debian-6.1@", ["is not a version"]),
    ("debian-6.1@6.1;reboot", ["is not a version"]),
    ("debian-6.12..debian-5.10", ["comes after", "debian-5.10..debian-6.12"]),
    ("debian-6.1..debian-6.12-rt", ["flavour"]),
])
def test_a_bad_version_is_a_usage_error_that_says_what_to_write(value, words):
    with pytest.raises(KconformError) as err:
        expand(value)
    for word in words:
        assert word in str(err.value)


def test_a_range_across_series_is_the_named_kernels_of_one_flavour_in_series_order():
    assert expand("debian-5.10..debian-7.3") == [
        "debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3"]
    assert expand("debian-6.1..debian-6.12") == ["debian-6.1", "debian-6.12"]


def test_a_path_with_dots_or_an_at_sign_is_still_a_path(tmp_path):
    with pytest.raises(KconformError, match="does not exist"):
        expand_kernel_args(["../linux"], load_specs(), cwd=tmp_path, versions=lister)
    with pytest.raises(KconformError, match="does not exist"):
        expand_kernel_args(["./me@host"], load_specs(), cwd=tmp_path, versions=lister)


def test_the_archive_is_asked_only_for_a_value_that_names_versions():
    def never(spec):
        raise AssertionError("the archive was asked")
    assert expand_kernel_args(["debian-6.1,default"], load_specs(), versions=never) == [
        "debian-6.1", "debian-5.10"]


def test_image_packages_of_one_flavour_and_series_only():
    specs = load_specs()
    generic = image_package_pattern(specs["debian-6.1"])
    rt = image_package_pattern(specs["debian-6.12-rt"])
    assert generic.fullmatch("linux-image-6.1.0-54-amd64-unsigned")["abi"] == "6.1.0-54-amd64"
    assert not generic.fullmatch("linux-image-6.1.0-54-rt-amd64-unsigned")
    assert not generic.fullmatch("linux-image-6.1.0-54-cloud-amd64-unsigned")
    assert rt.fullmatch("linux-image-6.12.118+deb13-rt-amd64-unsigned")["abi"] == \
        "6.12.118+deb13-rt-amd64"
    rc = image_package_pattern(specs["debian-rc"])
    assert rc.fullmatch("linux-binary-unsigned-7.3-amd64")["abi"] == "7.3-amd64"
    assert ArchiveVersion("6.12.118-1", "6.12.118+deb13-rt-amd64", "trixie").abi_number == \
        "6.12.118+deb13"


def test_security_suites_come_from_debian_security_on_the_same_host(monkeypatch, tmp_path):
    monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", "http://mirror.example/debian")
    monkeypatch.delenv("KCONFORM_DEBIAN_SECURITY_MIRROR", raising=False)
    assert security_mirror_for("http://mirror.example/debian") == \
        "http://mirror.example/debian-security"
    apt = AptArchive(tmp_path / "apt", "http://mirror.example/debian")
    lines = apt.sources_file(load_specs()["debian-6.1"]).read_text().splitlines()
    assert [line.split()[2:4] for line in lines] == [
        ["http://mirror.example/debian", "bookworm"],
        ["http://mirror.example/debian", "bookworm-updates"],
        ["http://mirror.example/debian-security", "bookworm-security"]]
    monkeypatch.setenv("KCONFORM_DEBIAN_SECURITY_MIRROR", "https://sec.example/ds/")
    assert security_mirror_for("http://mirror.example/debian") == "https://sec.example/ds"
    monkeypatch.setenv("KCONFORM_DEBIAN_SECURITY_MIRROR", "http://x/ds [trusted=yes]")
    with pytest.raises(KconformError, match="KCONFORM_DEBIAN_SECURITY_MIRROR"):
        security_mirror_for("http://mirror.example/debian")
    monkeypatch.delenv("KCONFORM_DEBIAN_SECURITY_MIRROR")
    with pytest.raises(KernelUnavailable, match="set KCONFORM_DEBIAN_SECURITY_MIRROR"):
        security_mirror_for("http://mirror.example/pub/deb")


@pytest.mark.parametrize("value, seconds", [("", None), ("40d", 40 * 86400), ("2w", 14 * 86400),
                                            ("3600s", 3600)])
def test_archive_max_age_is_an_explicit_bounded_setting(monkeypatch, tmp_path, value, seconds):
    monkeypatch.setenv("KCONFORM_ARCHIVE_MAX_AGE", value)
    assert archive_max_age() == seconds
    apt = AptArchive(tmp_path / "apt", "http://deb.debian.org/debian", max_age=seconds)
    options = apt.options(load_specs()["debian-rc"])
    assert (f"Acquire::Min-ValidTime={seconds}" in options) == bool(seconds)
    assert "Min-ValidTime" not in apt.config_file.read_text(), "another run shares that file"
    assert 'Acquire::Check-Valid-Until "true";' in apt.config_file.read_text(), "still checked"


@pytest.mark.parametrize("value", ["forever", "0d", "401d", "40 d", "-1d", "40d;x"])
def test_a_bad_archive_max_age_says_what_to_write(monkeypatch, value):
    monkeypatch.setenv("KCONFORM_ARCHIVE_MAX_AGE", value)
    with pytest.raises(KconformError, match="e.g. 40d"):
        archive_max_age()


def _fake_tree(dest, release="6.1.0-54-amd64"):
    from harness.cache import publish
    built = dest.parent / f".built-{dest.name}"
    (built / "boot").mkdir(parents=True)
    (built / "boot" / f"vmlinuz-{release}").write_bytes(b"kernel")
    publish(built, dest, {"name": "debian-6.1", "release": release, "abi": "6.1.0-54-amd64",
                          "package_version": dest.name.split("_")[1],
                          "suite": "bookworm-security"})


def test_a_pinned_name_boots_that_build_and_records_its_suite(tmp_path, monkeypatch):
    provider = KernelProvider(cache=tmp_path)
    fetched = []
    monkeypatch.setattr(provider, "_listing", lambda spec:
                        type("L", (), {"builds": tuple(BOOKWORM), "current": BOOKWORM[-1]})())
    monkeypatch.setattr(provider, "_fetch", lambda s, build, dest: (fetched.append(build),
                                                                     _fake_tree(dest)))
    tree = provider.get("debian-6.1@6.1.190-1")
    assert fetched == [BOOKWORM[3]]
    assert tree.name == "debian-6.1@6.1.190-1" and tree.package_version == "6.1.190-1"
    assert tree.suite == "bookworm-security"
    assert provider.get("debian-6.1").package_version == "6.1.192-3", "plain: the newest"
    with pytest.raises(KconformError, match="no debian-6.1 build of that version"):
        provider.get("debian-6.1@6.1.1-1")


def test_a_listing_file_round_trips_and_an_old_resolution_is_a_stale_listing(tmp_path):
    path = tmp_path / "debian-6.1.json"
    path.write_text(json.dumps({"at": 5.0, "builds": [
        {"version": "6.1.192-3", "abi": "6.1.0-57-amd64", "suite": "bookworm-security"},
        {"version": "6.1.176-1", "abi": "6.1.0-50-amd64", "suite": "bookworm"}]}))
    listing = _read_listing(path)
    assert [b.version for b in listing.builds] == ["6.1.176-1", "6.1.192-3"]
    assert listing.current.suite == "bookworm-security" and listing.at == 5.0
    path.write_text(json.dumps({"abi": "6.1.0-50-amd64", "version": "6.1.176-1", "at": 1e12}))
    old = _read_listing(path)
    assert old.current.version == "6.1.176-1" and old.at == 0.0, "never fresh"


def test_split_pinned():
    assert split_pinned("debian-6.1@6.1.190-1") == ("debian-6.1", "6.1.190-1")
    assert split_pinned("debian-6.1") == ("debian-6.1", None)


def test_a_kernel_without_9p_is_refused_before_booting_with_its_reason(tmp_path):
    config = tmp_path / "config"
    config.write_text("CONFIG_VIRTIO_FS=y\n# CONFIG_9P_FS is not set\n")
    tree = KernelTree(name="debian-6.12-cloud", vmlinuz=None, release="6.12.118+deb13-cloud-amd64",
                      config_path=config)
    with pytest.raises(KconformError, match="CONFIG_9P_FS and CONFIG_NET_9P_VIRTIO not set.*"
                                            "virtiofsd 1.13"):
        refuse_without_9p(tree)
    config.write_text("CONFIG_9P_FS=m\nCONFIG_NET_9P_VIRTIO=m\n")
    refuse_without_9p(KernelTree(name="debian-6.12", vmlinuz=None, release="6.12",
                                 config_path=config))
    refuse_without_9p(KernelTree(name="bzImage", vmlinuz=None, release="6.12"))  # no config


def test_two_archives_on_one_apt_directory_take_turns(tmp_path):
    """A test's cache linking in the real apt directory ran apt sessions beside a run's, each
    under its own cache's lock, and one moved the shared lists away: the lock is in the apt
    directory, so whoever shares the directory (by a link too) waits its turn."""
    import threading
    import time
    real = tmp_path / "real" / "apt"
    linked = tmp_path / "linked"
    linked.mkdir()
    first = AptArchive(real, "http://deb.debian.org/debian")
    (linked / "apt").symlink_to(real)
    second = AptArchive(linked / "apt", "http://deb.debian.org/debian")
    order = []

    def hold():
        with first.session():
            order.append("first in")
            time.sleep(0.3)
            order.append("first out")

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    with second.session():
        with second.session():  # nested: the same session, no second lock
            order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
