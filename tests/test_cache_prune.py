"""`./kconform cache` lists what the cache holds; `cache prune` removes what no run uses, never an
entry a running kconform holds (hold_in_use) or is fetching; kernel versions are kept in dpkg's
order per series. Fake trees, roots and BPF objects with real manifests; no VM."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness import bpf, cache, cli
from harness.cache import (
    cache_lock,
    check_manifest,
    claim_for_removal,
    entry_in_use,
    hold_in_use,
    in_use_lock,
    publish,
    remove_published,
    staging_dir,
    verify_cache,
)
from harness.cache_entries import human_size
from harness.machines import rootfs

REPO = Path(__file__).resolve().parent.parent
DAY = 86400


pytestmark = pytest.mark.usefixtures("release_held_entries")


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("KCONFORM_CACHE", str(path))
    return cache.cache_dir()


def _age(entry: Path, days: float) -> None:
    """Make the entry's last use `days` ago (its own mtime: never held by a run)."""
    when = time.time() - days * DAY
    os.utime(entry, (when, when))


def add_kernel(store: Path, version: str, abi: str, name: str = "debian-6.1", suite: str | None
               = "bookworm", series: str | None = None, days: float = 1) -> Path:
    """A published tree as the kernel provider makes one; without series and suite, as an older
    kconform recorded it."""
    trees = store / "trees"
    trees.mkdir(exist_ok=True)
    root = trees / f"{abi}_{version}"
    with staging_dir(trees, abi) as staging:
        tree = staging / "tree"
        (tree / "boot").mkdir(parents=True)
        (tree / "boot" / f"vmlinuz-{abi}").write_bytes(b"k" * 5000)
        (tree / "lib" / "modules" / abi).mkdir(parents=True)
        (tree / "lib" / "modules" / abi / "a.ko").write_bytes(b"m" * 3000)
        meta: dict[str, object] = {"name": name, "release": abi, "abi": abi,
                                   "package_version": version, "packages": ["linux-image"],
                                   "suites": [suite or "bookworm", "bookworm-security"]}
        if series:
            meta["series"] = series
        if suite:
            meta["suite"] = suite
        publish(tree, root, meta)
    _age(root, days)
    return root


def add_root(store: Path, digest: str, built_days_ago: float, name: str = "debian-bookworm",
             arch: str = "amd64") -> Path:
    roots = store / "rootfs"
    roots.mkdir(exist_ok=True)
    path = roots / rootfs.root_directory_name(name, arch, digest)
    with staging_dir(roots, name) as staging:
        target = staging / "root"
        (target / "usr/bin").mkdir(parents=True)
        (target / "usr/bin/python3").write_bytes(b"p" * 8000)
        publish(target, path, {"name": name, "suite": "bookworm", "recipe_digest": digest,
                               "arch": arch, "packages": {"python3": "3.11.2-1+b1"}})
    when = time.time() - built_days_ago * DAY
    os.utime(path / cache.MANIFEST, (when, when))
    _age(path, built_days_ago)
    return path


def add_bpf(store: Path, program: str, digest: str, days: float) -> Path:
    (store / "bpf").mkdir(exist_ok=True)
    path = store / "bpf" / f"{program}-{digest}.o"
    path.write_bytes(b"\x7fELF" + b"o" * 2000)
    _age(path, days)
    return path


@pytest.fixture
def filled(store):
    """Three 6.1 versions whose text order is not dpkg's, two 5.10 trees cached by an older
    kconform (no series, no suite), an rt flavour, two roots, three BPF objects."""
    return {
        "6.1.99": add_kernel(store, "6.1.99-1", "6.1.0-20-amd64", days=2),
        "6.1.176": add_kernel(store, "6.1.176-1", "6.1.0-50-amd64", series="6.1", days=40),
        "6.1.192": add_kernel(store, "6.1.192-3", "6.1.0-57-amd64", series="6.1",
                              suite="bookworm-security", days=50),
        "6.1.192-rt": add_kernel(store, "6.1.192-3", "6.1.0-57-rt-amd64", name="debian-6.1-rt",
                                 series="6.1", days=50),
        "5.10.223": add_kernel(store, "5.10.223-1", "5.10.0-32-amd64", name="debian-5.10",
                               suite=None, days=40),
        "5.10.262": add_kernel(store, "5.10.262-1", "5.10.0-46-amd64", name="debian-5.10",
                               suite=None, days=3),
        "root-old": add_root(store, "111111111111", built_days_ago=60),
        "root-new": add_root(store, "222222222222", built_days_ago=5),
        "bpf-old": add_bpf(store, "sockmap_progs", "a" * 24, days=45),
        "bpf-new": add_bpf(store, "sockmap_progs", "b" * 24, days=1),
        "bpf-other": add_bpf(store, "sock_ops", "c" * 24, days=45),
    }


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(["cache", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _left(store: Path) -> set[str]:
    return {p.name for d in ("trees", "rootfs", "bpf") for p in (store / d).iterdir()
            if not p.name.startswith(".")}


# -- list

def test_the_list_names_each_entry_sorted_by_kind_series_and_dpkg_version(filled, store, capsys):
    status, out, _ = _run(capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["kind", "name", "size", "last", "use"]
    names = [" ".join(line.split()[:3]) for line in lines[1:-1]]
    assert names == [
        "kernel debian-5.10 5.10.223-1", "kernel debian-5.10 5.10.262-1",
        "kernel debian-6.1 6.1.99-1", "kernel debian-6.1 6.1.176-1",
        "kernel debian-6.1 6.1.192-3", "kernel debian-6.1-rt 6.1.192-3",
        "root debian-bookworm@111111111111 (bookworm)",
        "root debian-bookworm@222222222222 (bookworm)",
        "bpf sock_ops-cccccccccccccccccccccccc.o 4.0",
        "bpf sockmap_progs-aaaaaaaaaaaaaaaaaaaaaaaa.o 4.0",
        "bpf sockmap_progs-bbbbbbbbbbbbbbbbbbbbbbbb.o 4.0"]
    assert "(6.1.0-57-amd64, bookworm-security)" in out, "the suite it came from, when known"
    assert "(5.10.0-32-amd64)" in out, "an older tree lists several suites: none is named"
    assert " KiB " in lines[1] and time.strftime("%Y-%m-%d", time.localtime(
        time.time() - 40 * DAY)) in lines[1]
    assert lines[-1] == f"11 entries in {store}, {human_size(_du(store))} ({_du(store)} bytes) " \
        "on disk"


def _du(store: Path, paths: list[Path] | None = None) -> int:
    """What du counts for the entries (all, or these): every file and directory in them, each
    inode once."""
    if paths is None:
        paths = [p for d in ("trees", "rootfs", "bpf") for p in (store / d).iterdir()
                 if not p.name.startswith(".")]
    inodes = {}
    for path in [*paths, *(q for p in paths for q in p.rglob("*"))]:
        st = path.lstat()
        inodes[st.st_dev, st.st_ino] = st.st_blocks * 512
    return sum(inodes.values())


def test_an_empty_cache_says_so(store, capsys):
    assert _run(capsys, "list") == (0, f"nothing cached in {store}\n", "")


# -- in use

def _hold_in_child(entry: Path) -> subprocess.Popen[str]:
    """A process holding the entry as a run does, until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from harness.cache import hold_in_use
        hold_in_use(Path({str(entry)!r}))
        print("held", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def test_an_entry_a_run_holds_is_listed_in_use_and_never_pruned(filled, store, capsys):
    held = filled["6.1.99"]
    child = _hold_in_child(held)
    try:
        assert entry_in_use(held)
        out = _run(capsys)[1]
        assert [line for line in out.splitlines() if line.endswith("in use")] == [
            line for line in out.splitlines() if "6.1.99-1" in line]
        status, out, _ = _run(capsys, "prune", "--keep", "1")
        assert status == 0
        assert "skipped kernel debian-6.1 6.1.99-1 (6.1.0-20-amd64, bookworm): in use by a " \
               "running kconform" in out
        assert held.is_dir() and check_manifest(held)[0]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert not entry_in_use(held), "the hold ends with the process"
    assert "removed kernel debian-6.1 6.1.99-1" in _run(capsys, "prune", "--keep", "1")[1]
    assert not held.exists() and not in_use_lock(held).exists()


def test_holding_stamps_the_last_use_without_upsetting_the_manifest_checks(filled, store):
    tree, root = filled["6.1.176"], filled["root-old"]
    for entry in (tree, root, filled["bpf-old"]):
        before = cache.last_use(entry)
        hold_in_use(entry)
        assert cache.last_use(entry) > before + DAY
        hold_in_use(entry)  # a second use in one process keeps the one lock
    assert len(cache._held_in_use) == 3
    _age(in_use_lock(tree), 9)
    hold_in_use(tree)  # a later use by the same process is recorded too
    assert cache.last_use(tree) > time.time() - 60
    assert check_manifest(tree)[0] and check_manifest(root)[0]
    assert verify_cache(store) == ([], [])
    assert cli.main(["cache", "verify"]) == 0


def test_a_builder_at_work_on_a_tree_makes_prune_skip_it(filled, store, capsys):
    tree = filled["6.1.176"]
    root = filled["root-old"]
    with cache_lock(store / "trees", f"tree-{tree.name}"), \
            cache_lock(store / "rootfs", root.name):  # the kernel provider's and rootfs.py's keys
        dry = _run(capsys, "prune", "--keep", "1", "--dry-run")[1]
        out = _run(capsys, "prune", "--keep", "1")[1]
    for said in (dry, out):
        assert "skipped kernel debian-6.1 6.1.176-1 (6.1.0-50-amd64, bookworm): being fetched " \
               "or checked by a running kconform" in said
        assert "skipped root debian-bookworm@111111111111 (bookworm): being fetched" in said
    assert tree.is_dir() and root.is_dir()


def test_a_run_waiting_to_hold_an_entry_being_removed_holds_the_new_one(store):
    """prune unlinks the lock of an entry it removed: a run that opened the old lock file and
    waited must lock the file the next prune sees, or it protects nothing."""
    tree = add_kernel(store, "6.1.176-1", "6.1.0-50-amd64")
    with claim_for_removal(tree) as claimed:
        assert claimed
        waiter = threading.Thread(target=hold_in_use, args=(tree,))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive(), "hold_in_use waits while prune holds the entry"
        remove_published(tree)
    waiter.join(5)
    assert not waiter.is_alive()
    assert entry_in_use(tree), "the waiting run holds the lock file that is there now"


def test_rootfs_and_bpf_hold_what_they_hand_out(store, monkeypatch):
    spec = rootfs.load_recipe("debian-bookworm")
    root = add_root(store, spec.digest, built_days_ago=9)
    got = rootfs.RootfsProvider(cache=store).get("debian-bookworm")
    assert got is not None and got.path == root
    assert entry_in_use(root) and cache.last_use(root) > time.time() - 60
    source = store / "src"
    source.mkdir()
    (source / "prog.bpf.c").write_text("int x;\n")
    monkeypatch.setattr(bpf.subprocess, "run", _fake_clang)
    built = bpf.build("prog", cache=store, source_dir=source)
    assert entry_in_use(built)
    _age(in_use_lock(built), 9)
    assert bpf.build("prog", cache=store, source_dir=source) == built
    assert cache.last_use(built) > time.time() - 60, "a cached object's use is recorded too"


def _fake_clang(cmd, **kwargs):
    if cmd[:2] == ["clang", "--version"]:
        return subprocess.CompletedProcess(cmd, 0, "clang version 0\n", "")
    Path(cmd[cmd.index("-o") + 1]).write_bytes(b"\x7fELF")
    return subprocess.CompletedProcess(cmd, 0, "", "")


# -- prune

def test_keep_1_keeps_the_newest_version_of_each_series_in_dpkg_order(filled, store, capsys):
    doomed = [filled[k] for k in ("6.1.99", "6.1.176", "5.10.223", "root-old", "bpf-old")]
    size = _du(store, doomed)
    status, out, _ = _run(capsys, "prune", "--keep", "1")
    assert status == 0
    assert _left(store) == {
        "6.1.0-57-amd64_6.1.192-3", "6.1.0-57-rt-amd64_6.1.192-3", "5.10.0-46-amd64_5.10.262-1",
        "debian-bookworm-222222222222", "sockmap_progs-" + "b" * 24 + ".o",
        "sock_ops-" + "c" * 24 + ".o"}
    assert "removed kernel debian-6.1 6.1.99-1 (6.1.0-20-amd64, bookworm)  " in out
    assert "removed root debian-bookworm@111111111111 (bookworm)  " in out
    assert out.splitlines()[-1] == f"freed {human_size(size)} ({size} bytes) from 5 entries"
    assert not list(store.glob("*/.staging-*")), "nothing half-removed is left"
    assert not list(store.glob("*/.lock-in-use-*")), "no lock of a removed entry is left"


def test_what_prune_frees_counts_a_file_hard_linked_elsewhere_once_both_go(store, capsys):
    """A root holds hard links to a kernel's modules: removing the tree alone frees only what
    is its own."""
    tree = add_kernel(store, "6.1.176-1", "6.1.0-50-amd64", days=40)
    root = add_root(store, "111111111111", built_days_ago=40)
    module = tree / "lib/modules/6.1.0-50-amd64/a.ko"
    os.link(module, root / "a.ko")
    _age(root, 40)
    alone = _du(store, [tree]) - module.lstat().st_blocks * 512
    hold_in_use(root)
    out = _run(capsys, "prune", "--older-than", "30d", "--dry-run")[1]
    assert out.splitlines()[-1] == f"would free {human_size(alone)} ({alone} bytes) from 1 entry"
    os.close(cache._held_in_use.pop(os.path.abspath(in_use_lock(root))))  # that run ended
    _age(in_use_lock(root), 40)
    both = _du(store, [tree, root])
    out = _run(capsys, "prune", "--older-than", "30d", "--dry-run")[1]
    assert out.splitlines()[-1] == f"would free {human_size(both)} ({both} bytes) from 2 entries"


def test_keep_1_keeps_a_root_of_each_architecture(store, capsys):
    # an arm64 kernel boots the arm64 build of the recipe: it is not an older amd64 one
    add_root(store, "aaaaaaaaaaaa", 5)
    add_root(store, "bbbbbbbbbbbb", 1, arch="arm64")
    add_root(store, "cccccccccccc", 3, arch="arm64")
    assert cli.main(["cache", "prune", "--keep", "1"]) == 0
    assert {p.name for p in (store / "rootfs").iterdir() if not p.name.startswith(".")} == \
        {"debian-bookworm-aaaaaaaaaaaa", "debian-bookworm-arm64-bbbbbbbbbbbb"}
    assert cli.main(["cache"]) == 0
    assert "debian-bookworm@bbbbbbbbbbbb arm64 (bookworm)" in capsys.readouterr().out


def test_keep_1_counts_bpf_objects_per_program_and_architecture(store, capsys):
    # before arm64 an object was <program>-<digest>.o, built for amd64: it is amd64's older one
    old = add_bpf(store, "prog", "0" * 24, days=3)
    amd64 = add_bpf(store, "prog-amd64", "1" * 24, days=1)
    arm64 = add_bpf(store, "prog-arm64", "2" * 24, days=2)
    assert cli.main(["cache", "prune", "--keep", "1"]) == 0
    assert (old.exists(), amd64.exists(), arm64.exists()) == (False, True, True)


def test_older_than_removes_what_no_run_used_for_that_long(filled, store, capsys):
    status, out, _ = _run(capsys, "prune", "--older-than", "30d")
    assert status == 0
    assert "removed kernel debian-6.1 6.1.176-1 (6.1.0-50-amd64, bookworm)" in out
    assert _left(store) == {
        "6.1.0-20-amd64_6.1.99-1", "5.10.0-46-amd64_5.10.262-1", "debian-bookworm-222222222222",
        "sockmap_progs-" + "b" * 24 + ".o"}


def test_keep_and_older_than_remove_only_what_both_select(filled, store, capsys):
    """Not among the newest one AND unused for 30 days: 6.1.99-1 (two days) stays."""
    _run(capsys, "prune", "--keep", "1", "--older-than", "30d")
    assert _left(store) == {
        "6.1.0-20-amd64_6.1.99-1", "6.1.0-57-amd64_6.1.192-3", "6.1.0-57-rt-amd64_6.1.192-3",
        "5.10.0-46-amd64_5.10.262-1", "debian-bookworm-222222222222",
        "sockmap_progs-" + "b" * 24 + ".o", "sock_ops-" + "c" * 24 + ".o"}


def test_a_dry_run_removes_nothing_and_creates_nothing(filled, store, capsys):
    before = sorted(str(p) for p in store.rglob("*"))
    status, out, _ = _run(capsys, "prune", "--keep", "1", "--dry-run")
    assert status == 0
    assert "would remove kernel debian-6.1 6.1.99-1" in out and "removed" not in out
    assert out.splitlines()[-1].startswith("would free ") and "from 5 entries" in out
    assert sorted(str(p) for p in store.rglob("*")) == before


def test_an_interrupted_removal_never_leaves_a_half_tree_under_its_name(filled, monkeypatch):
    tree = filled["6.1.176"]
    monkeypatch.setattr(cache.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        remove_published(tree)
    assert not tree.exists()
    assert [p.name.startswith(".staging-removed-") for p in tree.parent.glob(".staging-*")] \
        == [True]


@pytest.mark.parametrize("argv, words", [
    (["prune"], "say what to prune: --keep N"),
    (["prune", "--dry-run"], "say what to prune"),
    (["prune", "--keep", "-1"], "'-1' is not a count"),
    (["prune", "--keep", "one"], "'one' is not a count"),
    (["prune", "--older-than", "30"], "'30' is not a duration: give a whole number and one unit"),
    (["prune", "--older-than", "3x"], "s, m, h, d or w"),
    (["prune", "--older-than=-1d"], "'-1d' is not a duration"),
    (["prune", "--kep", "1"], "unrecognized arguments"),
    (["purge"], "usage: ./kconform cache [list | verify | prune"),
    (["list", "extra"], "usage: ./kconform cache"),
])
def test_bad_options_exit_2_saying_what_to_give(filled, store, capsys, argv, words):
    try:
        status = cli.main(["cache", *argv])
    except SystemExit as exc:  # argparse's own usage errors, as ./kconform exits with them
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2
    assert words in err
    assert "Traceback" not in err
    assert len(_left(store)) == 11, "nothing removed"


def test_saved_guests_and_their_images_are_listed_and_pruned_with_their_records(store, capsys):
    """A snapshot (machines/snapshot.py) and the disk images it boots from are entries: listed,
    kept per kernel (--keep), and a snapshot goes with its record, never leaving one alone."""
    images, snapshots = store / "images", store / "snapshots"
    images.mkdir()
    snapshots.mkdir()
    old_root, new_root = images / f"root-{'0' * 20}.ext4", images / f"root-{'1' * 20}.ext4"
    modules = images / f"modules-6.1.0-57-amd64-{'2' * 20}.ext4"
    state = snapshots / "6.1.0-57-amd64-abcdef012345.state"
    older = snapshots / "6.1.0-57-amd64-0123456789ab.state"  # another shape, used before
    for path, days in ((old_root, 5), (new_root, 1), (modules, 2), (state, 40), (older, 50)):
        path.write_bytes(b"x" * 4096)
        _age(path, days)
    for path in (state, older):
        path.with_suffix(".json").write_text("{}")
    status, out, _ = _run(capsys, "list")
    assert status == 0
    assert [line.split()[:2] for line in out.splitlines()[1:6]] == [
        ["image", modules.name], ["image", old_root.name], ["image", new_root.name],
        ["snapshot", older.stem], ["snapshot", state.stem]]
    # --keep 1: the newer root image, the one modules image, the kernel's last used snapshot
    assert cli.main(["cache", "prune", "--keep", "1"]) == 0
    assert sorted(p.name for p in images.iterdir() if not p.name.startswith(".")) == sorted(
        [new_root.name, modules.name])
    assert sorted(p.name for p in snapshots.iterdir() if not p.name.startswith(".")) == sorted(
        [state.name, state.with_suffix(".json").name])
    assert cli.main(["cache", "prune", "--older-than", "30d"]) == 0
    assert [p.name for p in snapshots.iterdir() if not p.name.startswith(".")] == []
