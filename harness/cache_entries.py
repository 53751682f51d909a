"""What the cache holds, listed (`./kconform cache`) and pruned (`./kconform cache prune`).

An entry is a kernel tree (trees/<abi>_<version>/), a pinned root (rootfs/<name>-<digest>/), a
built BPF object (bpf/<program>-<digest>.o), a saved guest's disk image (images/*.ext4) or a saved
guest (snapshots/<release>-<shape>.state with its .json record; machines/snapshot.py). Everything
else under the cache (resolved/, apt/, tmp/, initramfs/, .lock-* and .staging-*) is kconform's
bookkeeping. An entry is removed only while kconform
holds its builder's lock and its in-use lock exclusively (cache.claim_for_removal): a running
kconform that uses it, or is fetching or checking it, makes prune skip it.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .arches import named_arch
from .cache import (
    MANIFEST,
    Manifest,
    cache_lock_busy,
    claim_for_removal,
    entry_in_use,
    last_use,
    read_manifest,
    remove_published,
    try_cache_lock,
)
from .errors import KconformError
from .versions import DebianVersionKey, debian_version_key, upstream_version

KINDS = ("kernel", "root", "bpf", "image", "snapshot")

# (device, inode) -> (bytes on disk, link count, links seen inside the entry)
Inodes = dict[tuple[int, int], tuple[int, int, int]]


@dataclass
class Entry:
    kind: str  # one of KINDS
    path: Path
    label: str  # what the user reads: "debian-6.1 6.1.176-1 (6.1.0-50-amd64, bookworm)"
    group: str  # --keep N keeps the N newest of each group (a kernel series and flavour, ...)
    newness: tuple[object, ...]  # orders a group, newest last
    order: tuple[object, ...]  # the listing's order within its kind
    builder_lock: tuple[Path, str] | None  # the cache_lock that builds and checks it
    last_use: float
    inodes: Inodes = field(repr=False)

    @property
    def size(self) -> int:
        return sum(blocks for blocks, _links, _seen in self.inodes.values())


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _inodes(path: Path) -> Inodes:
    """The files of an entry (a directory tree, or one file) as disk use: each inode once, with
    how many of its links are inside (a root's modules are hard links to a tree's)."""
    found: Inodes = {}

    def add(p: str) -> None:
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            key = (st.st_dev, st.st_ino)
            # a directory's link count counts its subdirectories' "..": it has one name
            links = 1 if stat.S_ISDIR(st.st_mode) else st.st_nlink
            blocks, links, seen = found.get(key, (st.st_blocks * 512, links, 0))
            found[key] = (blocks, links, seen + 1)

    add(str(path))
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirs, names in os.walk(path):
            for name in [*dirs, *names]:
                add(os.path.join(dirpath, name))
    return found


def _union(entries: list[Entry]) -> Inodes:
    union: Inodes = {}
    for entry in entries:
        for key, (blocks, links, seen) in entry.inodes.items():
            before = union.get(key, (blocks, links, 0))[2]
            union[key] = (blocks, links, before + seen)
    return union


def disk_use(entries: list[Entry]) -> int:
    """The bytes these entries take together, each inode once."""
    return sum(blocks for blocks, _links, _seen in _union(entries).values())


def freed_by_removing(entries: list[Entry]) -> int:
    """The bytes removing all these entries frees: the inodes with no link left elsewhere (a
    tree's modules stay on disk while a root links them)."""
    return sum(blocks for blocks, links, seen in _union(entries).values() if seen >= links)


def _text(meta: Manifest | None, key: str) -> str | None:
    value = meta.get(key) if meta else None
    return value if isinstance(value, str) and value else None


def _version_key(version: str) -> tuple[int, DebianVersionKey | str]:
    """dpkg's order; a version dpkg would not take sorts first, by its text."""
    try:
        return 1, debian_version_key(version)
    except ValueError:
        return 0, version


def _series(meta: Manifest | None, release: str) -> tuple[tuple[int, ...], str]:
    """(sort key, text) of a kernel's series, e.g. ((6, 1), '6.1'): the manifest's, else (a tree
    cached before manifests recorded it) the release's major.minor."""
    text = _text(meta, "series")
    if text is None:
        try:
            major, minor = upstream_version(release)[:2]
            text = f"{major}.{minor}"
        except ValueError:
            return (10**6,), "?"
    try:
        return tuple(int(n) for n in text.split(".")), text
    except ValueError:
        return (10**6,), text


def _flavour(abi: str) -> str:
    """The flavour an ABI names, e.g. '6.1.0-50-rt-amd64' -> 'rt-amd64', '6.12.117+deb13-amd64'
    -> 'amd64': --keep keeps versions of an rt kernel apart from the plain kernel's."""
    words = [w for w in abi.split("-")[1:] if w[:1].isalpha() and not re.match(r"rc\d", w)]
    return "-".join(words)


def _kernel(path: Path) -> Entry:
    meta = read_manifest(path)
    abi_from_dir, _, version_from_dir = path.name.partition("_")
    abi = _text(meta, "abi") or abi_from_dir
    version = _text(meta, "package_version") or version_from_dir
    release = _text(meta, "release") or abi
    suites = meta.get("suites") if meta else None
    suite = _text(meta, "suite") or (suites[0] if isinstance(suites, list) and len(suites) == 1
                                     and isinstance(suites[0], str) else None)
    series_key, series = _series(meta, release)
    name = _text(meta, "name") or "?"
    detail = ", ".join(part for part in (abi, suite) if part)
    label = f"{name} {version} ({detail})" + ("" if meta else " [no readable manifest]")
    flavour = _flavour(_text(meta, "abi") or release)  # a local package's directory names none
    # a local package (--kernel x.deb) is kept apart from the archive's builds of its series:
    # --keep counts the versions of each path given
    group = f"local {name}" if meta and meta.get("local") else f"{series} {flavour}"
    return Entry("kernel", path, label, group=group,
                 newness=(_version_key(version),),
                 order=(series_key, _version_key(version), flavour),
                 builder_lock=(path.parent, f"tree-{path.name}"),  # the kernel provider's key
                 last_use=last_use(path), inodes=_inodes(path))


def _built_at(path: Path) -> float:
    """When a root was published: its manifest's mtime (the directory's for one without)."""
    for p in (path / MANIFEST, path):
        with contextlib.suppress(OSError):
            return p.lstat().st_mtime
    return 0.0


def _root(path: Path) -> Entry:
    meta = read_manifest(path)
    stem = path.name.rpartition("-")[0] or path.name
    # machines/rootfs.py names a foreign architecture's root <name>-<arch>-<digest>
    arch = _text(meta, "arch") or named_arch(stem) or "amd64"
    name = _text(meta, "name") or stem.removesuffix(f"-{arch}")
    digest = _text(meta, "recipe_digest") or path.name.rpartition("-")[2]
    suite = _text(meta, "suite")
    label = f"{name}@{digest}" + ("" if arch == "amd64" else f" {arch}") + \
        (f" ({suite})" if suite else "") + ("" if meta else " [no readable manifest]")
    built = _built_at(path)
    group = name if arch == "amd64" else f"{name} {arch}"  # --keep N keeps N of each
    return Entry("root", path, label, group=group, newness=(built,), order=(name, arch, built),
                 builder_lock=(path.parent, path.name),  # machines/rootfs.py's key
                 last_use=last_use(path), inodes=_inodes(path))


def _bpf(path: Path) -> Entry:
    # <program>-<arch>-<digest>.o (bpf.py); before arm64, <program>-<digest>.o, built for amd64:
    # one group per program and architecture, so --keep N keeps N of each
    program = path.stem.rpartition("-")[0] or path.stem
    if named_arch(program) is None:
        program += "-amd64"
    used = last_use(path)
    inodes = _inodes(path)
    for sidecar in path.parent.glob(f"{path.name}.*"):  # files kept beside an object are its own
        inodes.update(_inodes(sidecar))
    return Entry("bpf", path, path.name, group=program, newness=(used,), order=(program, used),
                 builder_lock=None, last_use=used, inodes=inodes)


def _image(path: Path) -> Entry:
    # root-<digest>.ext4, modules-<release>-<digest>.ext4 (machines/guest_image.py) or
    # vmlinux-<image>-<digest>.elf (machines/pvh.py): --keep N keeps N of the root's and N of
    # each release's modules and vmlinux
    group = path.stem.rpartition("-")[0] or path.stem
    used = last_use(path)
    return Entry("image", path, path.name, group=group, newness=(used,), order=(group, used),
                 builder_lock=(path.parent, path.name), last_use=used, inodes=_inodes(path))


def _snapshot(path: Path) -> Entry:
    # <release>-<shape>: one per kernel and machine shape (root, memory, CPUs), replaced in
    # place when stale; --keep N keeps the N last used of each release. Its record goes with it.
    used = last_use(path)
    inodes = _inodes(path)
    record = path.with_suffix(".json")
    if record.exists():
        inodes.update(_inodes(record))
    return Entry("snapshot", path, path.stem, group=path.stem.rpartition("-")[0] or path.stem,
                 newness=(used,),
                 order=(path.stem, used), builder_lock=(path.parent, path.name), last_use=used,
                 inodes=inodes)


def entries(cache: Path) -> list[Entry]:
    """Every entry in the cache, sorted by kind, then series and version (kernels), name and
    age (roots, BPF objects). Names starting with '.' are bookkeeping, not entries."""
    found: list[Entry] = []
    for subdir, reader, wanted in (("trees", _kernel, _is_directory),
                                   ("rootfs", _root, _is_directory),
                                   ("bpf", _bpf, _is_object),
                                   ("images", _image, _is_suffixed(".ext4", ".elf")),
                                   ("snapshots", _snapshot, _is_suffixed(".state"))):
        directory = cache / subdir
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if not path.name.startswith(".") and wanted(path):
                found.append(reader(path))
    return sorted(found, key=lambda e: (KINDS.index(e.kind), e.order))


def _is_directory(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _is_object(path: Path) -> bool:
    return path.suffix == ".o" and path.is_file() and not path.is_symlink()


def _is_suffixed(*suffixes: str) -> Callable[[Path], bool]:
    return lambda path: path.suffix in suffixes and path.is_file() and not path.is_symlink()


def _when(entry: Entry, in_use: bool) -> str:
    if in_use:
        return "in use"
    if not entry.last_use:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_use))


def render_list(cache: Path, found: list[Entry]) -> str:
    """One line per entry: kind, name, size, last use; the total at the end."""
    if not found:
        return f"nothing cached in {cache}"
    rows = [(e.kind, e.label, human_size(e.size), _when(e, entry_in_use(e.path))) for e in found]
    width = max(len(r[1]) for r in rows)
    lines = [f"{'kind':<6}  {'name':<{width}}  {'size':>9}  last use"]
    lines += [f"{k:<6}  {label:<{width}}  {size:>9}  {when}" for k, label, size, when in rows]
    total = disk_use(found)
    lines.append(f"{len(found)} entries in {cache}, {human_size(total)} ({total} bytes) on disk")
    return "\n".join(lines)


# -- prune

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'30d' -> seconds. KconformError naming the form for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise KconformError(f"{text!r} is not a duration: give a whole number and "
                            "one unit, s, m, h, d or w (e.g. --older-than 30d, --older-than 12h)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def require_a_choice(keep: int | None, older_than: float | None) -> None:
    """prune with neither option would remove everything: it asks what to remove instead."""
    if keep is None and older_than is None:
        raise KconformError("say what to prune: --keep N (keep the N newest versions of each "
                            "kernel series, each root and each BPF program) and/or "
                            "--older-than DURATION (e.g. 30d: what no run used for that long); "
                            "add --dry-run to see what would go")


def select(found: list[Entry], keep: int | None, older_than: float | None,
           now: float) -> list[Entry]:
    """What prune removes: an entry not among the `keep` newest of its group (kernels: versions
    per series and flavour, in dpkg order; roots: the newest built per recipe; BPF objects: the
    last used per program) and, when older_than is given, not used for that long."""
    require_a_choice(keep, older_than)
    kept: set[Path] = set()
    if keep is not None:
        groups: dict[tuple[str, str], list[Entry]] = {}
        for entry in found:
            groups.setdefault((entry.kind, entry.group), []).append(entry)
        for members in groups.values():
            members.sort(key=lambda e: e.newness)
            kept.update(e.path for e in members[len(members) - keep:] if keep)
    return [e for e in found if e.path not in kept
            and (older_than is None or e.last_use < now - older_than)]


IN_USE = "in use by a running kconform"


@contextlib.contextmanager
def _claimed(entry: Entry, dry_run: bool) -> Iterator[str | None]:
    """None while the entry may be removed (and, unless dry_run, is held so that no run can
    start using it), else why it may not. A dry run takes nothing and creates nothing."""
    building = "being fetched or checked by a running kconform"
    if dry_run:
        if entry.builder_lock and cache_lock_busy(*entry.builder_lock):
            yield building
        else:
            yield IN_USE if entry_in_use(entry.path) else None
        return
    if entry.builder_lock is None:
        builder: contextlib.AbstractContextManager[bool] = contextlib.nullcontext(True)
    else:
        builder = try_cache_lock(*entry.builder_lock)
    with builder as free:
        if not free:
            yield building
        else:
            with claim_for_removal(entry.path) as claimed:
                yield None if claimed else IN_USE


def prune(cache: Path, doomed: list[Entry], dry_run: bool,
          say: Callable[[str], None] = print) -> list[Entry]:
    """Remove the entries no running kconform holds, saying so for each, then the resolutions
    that named a removed tree; returns what was (or, dry_run, would be) removed."""
    removed: list[Entry] = []
    for entry in doomed:
        with _claimed(entry, dry_run) as busy:
            if busy:
                say(f"skipped {entry.kind} {entry.label}: {busy}")
                continue
            if not dry_run:
                if entry.kind == "snapshot":  # its record first: a state alone is never used
                    remove_published(entry.path.with_suffix(".json"))
                remove_published(entry.path)
                if entry.kind == "bpf":  # files kept beside an object go with it
                    for sidecar in entry.path.parent.glob(f"{entry.path.name}.*"):
                        remove_published(sidecar)
            removed.append(entry)
            say(f"{'would remove' if dry_run else 'removed'} {entry.kind} {entry.label}  "
                f"{human_size(entry.size)}")
    return removed


def render_prune_total(removed: list[Entry], dry_run: bool) -> str:
    freed = freed_by_removing(removed)
    verb = "would free" if dry_run else "freed"
    count = f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'}"
    return f"{verb} {human_size(freed)} ({freed} bytes) from {count}"

