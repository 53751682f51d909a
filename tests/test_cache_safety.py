"""Part B of the hardening issue: the cache is the user's own and private, kconform never follows
a symlink it did not make there, trees carry hashes checked fast on use and in full on demand,
another run's staging directory is left alone, and the KVM probe memo is read defensively."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from harness import cache, cli
from harness.cache import (
    BUILDING_LOCK,
    cache_dir,
    cache_lock,
    check_manifest,
    remove_abandoned_staging,
    staging_dir,
    verify_cache,
    write_manifest,
)
from harness.errors import KconformError
from harness.kernels import KernelProvider
from harness.kernels import provider as kernels_provider
from harness.kernels.apt import ArchiveVersion
from harness.machines import accel

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")

BUILD = ArchiveVersion("1.0-1", "1.0", "bookworm")  # what a fake archive lists


def _tree(root: Path, release: str = "1.0") -> None:
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"kernel" * 100)
    (root / f"lib/modules/{release}").mkdir(parents=True)
    (root / f"lib/modules/{release}/a.ko").write_bytes(b"module" * 50)
    write_manifest(root, {"release": release, "package_version": f"{release}-1"})


# -- the cache directory

def test_a_new_cache_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_CACHE", str(tmp_path / "new" / "cache"))
    path = cache_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.parametrize("variable, relative, expected", [
    ("KCONFORM_CACHE", "mycache", "mycache"),
    ("XDG_CACHE_HOME", "xdg", "xdg/kconform"),
])
def test_a_relative_cache_is_taken_from_where_the_user_typed_the_command(
        tmp_path, monkeypatch, variable, relative, expected):
    """./kconform runs from the repo: a relative KCONFORM_CACHE made a cache inside the repo."""
    monkeypatch.delenv("KCONFORM_CACHE", raising=False)
    monkeypatch.setenv(variable, relative)
    monkeypatch.setenv("KCONFORM_CALLER_CWD", str(tmp_path / "caller"))
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")  # where the process runs, as the repo is for ./kconform
    assert cache_dir() == tmp_path / "caller" / expected
    assert (tmp_path / "caller" / expected).is_dir() and not any((tmp_path / "repo").iterdir())


def test_a_cache_others_can_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    os.chmod(tmp_path / "cache", 0o777)
    with pytest.raises(KconformError, match=r"writable by others \(mode 0777\).*chmod go-w"):
        cache_dir()


@as_root
def test_a_cache_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(mode=0o700)
    os.chown(tmp_path / "cache", 12345, 12345)
    with pytest.raises(KconformError, match="belongs to uid 12345.*KCONFORM_CACHE"):
        cache_dir()


def test_a_cache_that_is_a_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KCONFORM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").write_text("")
    with pytest.raises(KconformError, match="not a directory"):
        cache_dir()


# -- symlinks kconform did not make

def test_a_planted_lock_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    (tmp_path / "trees").mkdir()
    (tmp_path / "trees" / ".lock-apt").symlink_to(victim)
    with pytest.raises(KconformError, match=r"\.lock-apt is a symlink.*remove it"):
        with cache_lock(tmp_path / "trees", "apt"):
            pass
    assert victim.read_text() == "keep me"


def test_a_published_tree_that_is_a_symlink_is_not_used(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    _tree(elsewhere)  # a whole tree, with a valid manifest, but not one kconform published
    provider = KernelProvider(cache=tmp_path / "cache")
    published = provider.trees_dir / "1.0_1.0-1"
    published.symlink_to(elsewhere)
    fetched = []
    monkeypatch.setattr(provider, "_resolve", lambda s: BUILD)
    monkeypatch.setattr(provider, "_fetch",
                        lambda s, build, dest: (fetched.append(dest), _tree(dest)))
    tree = provider.get("debian-6.1")
    assert fetched == [published]
    assert not published.is_symlink() and tree.vmlinuz.parent.parent == published
    assert check_manifest(elsewhere)[0], "the link's target was left alone"


# -- manifests: hashes recorded, size and mtime on use, full hashes on demand

def test_the_manifest_records_each_files_hash_size_and_mtime(tmp_path):
    _tree(tmp_path)
    files = json.loads((tmp_path / "kconform-tree.json").read_text())["files"]
    entry = files["lib/modules/1.0/a.ko"]
    st = (tmp_path / "lib/modules/1.0/a.ko").stat()
    assert entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "sha256": cache.file_sha256(tmp_path / "lib/modules/1.0/a.ko")}


def test_a_file_changed_in_place_is_caught_on_use(tmp_path):
    _tree(tmp_path)
    module = tmp_path / "lib/modules/1.0/a.ko"
    before = module.stat().st_mtime_ns
    module.write_bytes(b"MODULE" * 50)  # same size
    os.utime(module, ns=(before + 1_000_000_000, before + 1_000_000_000))
    assert check_manifest(tmp_path)[1] == "lib/modules/1.0/a.ko was modified after the tree " \
                                          "was published"


def test_use_hashes_only_the_kernel_image_and_verify_hashes_everything(tmp_path, monkeypatch):
    _tree(tmp_path)
    hashed = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: (hashed.append(p.name), real(p))[1])
    assert check_manifest(tmp_path)[0]
    assert hashed == ["vmlinuz-1.0"]
    hashed.clear()
    assert check_manifest(tmp_path, full=True)[0]
    assert sorted(hashed) == ["a.ko", "vmlinuz-1.0", "vmlinuz-1.0"]


def _damage_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    path.write_bytes(bytes(b ^ 1 for b in path.read_bytes()))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cache_verify_names_each_damaged_entry(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    _tree(cache / "trees" / "1.0_1.0-1")
    _tree(cache / "trees" / "2.0_2.0-1", release="2.0")
    (cache / "rootfs").mkdir()
    monkeypatch.setenv("KCONFORM_CACHE", str(cache))
    assert cli.main(["cache", "verify"]) == 0
    assert "2 entries" in capsys.readouterr().out
    module = cache / "trees/2.0_2.0-1/lib/modules/2.0/a.ko"
    _damage_keeping_size_and_mtime(module)
    assert check_manifest(cache / "trees/2.0_2.0-1")[0], "the fast check cannot see this"
    assert verify_cache(cache)[0] == [(f"{cache}/trees/2.0_2.0-1: lib/modules/2.0/a.ko does not "
                                       "match its recorded sha256")]
    assert cli.main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert "damaged" in out and "2.0_2.0-1" in out and "1.0_1.0-1" not in out


def test_a_tree_with_an_old_manifest_gets_hashes_instead_of_a_download(tmp_path, monkeypatch):
    provider = KernelProvider(cache=tmp_path)
    root = provider.trees_dir / "1.0_1.0-1"
    _tree(root)
    old = json.loads((root / "kconform-tree.json").read_text())
    old["files"] = {rel: entry["size"] for rel, entry in old["files"].items()}
    del old["format"]
    (root / "kconform-tree.json").write_text(json.dumps(old))
    (root / "added-after-publishing").write_text("a root's linked-in modules, say")
    monkeypatch.setattr(provider, "_resolve", lambda s: BUILD)
    monkeypatch.setattr(provider, "_fetch", lambda *a: pytest.fail("fetched again"))
    assert provider.get("debian-6.1").package_version == "1.0-1"
    meta = json.loads((root / "kconform-tree.json").read_text())
    assert meta["format"] == 2 and "sha256" in meta["files"]["lib/modules/1.0/a.ko"]
    assert sorted(meta["files"]) == sorted(old["files"]), "only what was published is recorded"


def test_a_malformed_resolution_is_asked_again_not_a_traceback(tmp_path, monkeypatch):
    (tmp_path / "resolved").mkdir()
    for bad in ('{"abi": "1.0", "version": "1.0-1", "at": "yesterday"}',
                '{"abi": "../../../etc", "version": "1", "at": 1e12}', "[]", "{"):
        (tmp_path / "resolved" / "debian-6.1.json").write_text(bad)
        assert kernels_provider._read_listing(tmp_path / "resolved" / "debian-6.1.json") is None


# -- staging directories

def test_a_staging_directory_being_built_is_left_alone_however_old(tmp_path):
    with staging_dir(tmp_path, "abi") as staging:
        (staging / "half-a-debootstrap").write_text("...")
        two_hours_ago = time.time() - 7200
        os.utime(staging, (two_hours_ago, two_hours_ago))
        with cache_lock(tmp_path, "debian-x"):  # what another run does before it builds
            pass
        assert (staging / "half-a-debootstrap").exists()
    assert not staging.exists(), "the builder removes its own"


def test_a_staging_directory_whose_builder_died_is_removed_however_young(tmp_path):
    dead = tmp_path / ".staging-abi-dead"
    dead.mkdir()
    (dead / BUILDING_LOCK).write_text("")  # nobody holds it: its builder is gone
    legacy_young = tmp_path / ".staging-abi-young"  # no lock file: an older kconform's, or new
    legacy_young.mkdir()
    legacy_old = tmp_path / ".staging-abi-old"
    legacy_old.mkdir()
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    remove_abandoned_staging(tmp_path)
    assert not dead.exists() and legacy_young.exists() and not legacy_old.exists()


# -- the KVM probe memo

@pytest.fixture
def kvm_probe(tmp_path, monkeypatch):
    probes = []
    monkeypatch.setattr(accel.os, "access", lambda path, mode: True)
    monkeypatch.setattr(accel, "probe_kvm",
                        lambda kernel, arch="amd64": (probes.append(kernel), (True, "ok"))[1])
    return probes


@pytest.mark.parametrize("memo_text", ["{", "[]", '{"works": "yes", "why": "x"}', '{"why": 1}',
                                       '{"works": true}', "\xff\xfe"])
def test_a_malformed_probe_memo_means_no_memo(tmp_path, kvm_probe, memo_text):
    memo = accel.memo_path(tmp_path)
    memo.write_text(memo_text, errors="surrogateescape")
    assert accel._kvm_works(Path("vmlinuz"), tmp_path) == (True, "ok")
    assert len(kvm_probe) == 1
    assert accel._kvm_works(Path("vmlinuz"), tmp_path) == (True, "ok (cached probe)")


def test_the_probe_memo_is_replaced_not_written_through_a_symlink(tmp_path, kvm_probe):
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    memo = accel.memo_path(tmp_path)
    memo.symlink_to(victim)
    accel._kvm_works(Path("vmlinuz"), tmp_path)
    assert victim.read_text() == "keep me"
    assert not memo.is_symlink() and json.loads(memo.read_text()) == {"works": True, "why": "ok"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temp left"
