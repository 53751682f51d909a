"""The cache: where kconform keeps things outside the repo (kernels, BPF objects, probes), and how
it keeps them its own: a private cache directory, locks that never follow a planted symlink, files
replaced in one rename, and staging directories whose builder holds a lock on them."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import KconformError
from .paths import caller_path

# Inside a staging directory: held (flock) by the process building it, for as long as it builds.
BUILDING_LOCK = ".kconform-building"
# A staging directory without BUILDING_LOCK is from a kconform that predates it, or one being
# created this instant: only one this old is taken to be abandoned.
LEGACY_STAGING_AGE = 3600


def cache_dir() -> Path:
    """$KCONFORM_CACHE, else $XDG_CACHE_HOME/kconform, else ~/.cache/kconform; created 0700, and
    refused unless it is the caller's own and nobody else can write it: kernels and roots from
    the cache are booted, and its locks and manifests are trusted."""
    # A relative value is the user's, from where they typed the command (./kconform runs from
    # the repo), not a directory inside the repo.
    explicit = os.environ.get("KCONFORM_CACHE")
    if explicit:
        path, variable = caller_path(explicit), "KCONFORM_CACHE"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path, variable = caller_path(xdg) / "kconform", "KCONFORM_CACHE (or XDG_CACHE_HOME)"
    check_private_dir(path, variable)
    return path


def check_private_dir(path: Path, variable: str = "KCONFORM_CACHE") -> None:
    """Create `path` (mode 0700) or check an existing one: a directory owned by this user,
    writable by nobody else, and writable by this user."""
    fix = f"or set {variable} to a directory of your own"
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise KconformError(f"cannot create the cache directory {path} ({exc.strerror}): "
                            f"create it, {fix}") from None
    try:
        st = path.stat()
    except OSError as exc:
        raise KconformError(f"cannot read the cache directory {path} ({exc.strerror}): {fix}") \
            from None
    if not stat.S_ISDIR(st.st_mode):
        raise KconformError(f"the cache {path} is not a directory: remove it, {fix}")
    if st.st_uid != os.geteuid():
        raise KconformError(f"the cache {path} belongs to uid {st.st_uid}, not to you (uid "
                            f"{os.geteuid()}): whoever owns it could replace the kernels it "
                            f"boots; use a cache you own (chown it), {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KconformError(f"the cache {path} is writable by others (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}): anyone could replace the kernels "
                            f"it boots; run chmod go-w {path}, {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise KconformError(f"the cache {path} is not writable: make it writable, {fix}")


def bpf_cache_dir() -> Path:
    """Where built BPF objects are cached (harness/bpf.py). It exists: a pinned-root guest mounts
    it before the first object is built."""
    path = cache_dir().resolve() / "bpf"
    path.mkdir(exist_ok=True)
    return path


def open_lock_file(path: Path) -> int:
    """An fd to flock: created 0600 if missing, never truncated, and never through a symlink
    (a planted `.lock-apt -> somefile` must not let kconform open, let alone empty, its target)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if path.is_symlink():
            raise KconformError(f"{path} is a symlink, which kconform never makes: remove it "
                                "(kconform recreates its lock files)") from None
        raise KconformError(f"cannot open the lock file {path} ({exc.strerror}): make "
                            f"{path.parent} writable, or set KCONFORM_CACHE to another "
                            "directory") from None


@contextlib.contextmanager
def cache_lock(directory: Path, key: str) -> Iterator[None]:
    """Serialise builders of one cache entry across xdist workers and concurrent runs (one fetch
    per kernel, one apt, one root). Entries are built in staging directories (staging_dir) and
    published with a rename; the staging directories nobody is building any more are removed."""
    remove_abandoned_staging(directory)
    fd = open_lock_file(directory / f".lock-{key}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(directory: Path, prefix: str) -> Iterator[Path]:
    """A new .staging-<prefix>-* directory in `directory`, held by this process while it builds
    there (flock on BUILDING_LOCK inside it) and removed afterwards. The lock file is locked
    before it takes its name, so remove_abandoned_staging never sees one not yet held."""
    path = Path(tempfile.mkdtemp(prefix=f".staging-{prefix}-", dir=directory))
    fd = -1
    try:
        fd, unnamed = tempfile.mkstemp(prefix=".new-lock-", dir=path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(unnamed, path / BUILDING_LOCK)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd >= 0:
            os.close(fd)  # after the removal: until then nobody else may take the directory


def remove_abandoned_staging(directory: Path) -> None:
    """Remove the staging directories whose builder is gone: those whose BUILDING_LOCK this
    process can lock. One whose builder is alive (a long debootstrap) is left alone, however old."""
    for staging in directory.glob(".staging-*"):
        if staging.is_symlink() or not staging.is_dir():
            continue
        try:
            fd = os.open(staging / BUILDING_LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - staging.stat().st_mtime > LEGACY_STAGING_AGE:
                    shutil.rmtree(staging, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its builder holds it
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` with `text` in one rename: a reader sees the old file or the new one, never
    half of one, and a symlink planted at `path` is replaced, not written through."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_regular_file(path: Path) -> str:
    """The text of `path` if it is a regular file (not through a symlink); OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


MANIFEST = "kconform-tree.json"


# Format 2 records each file's size, mtime and sha256. A run checks size and mtime (a warm start
# stays fast); `./kconform cache verify` re-hashes everything.
MANIFEST_FORMAT = 2

# A manifest as JSON: "files", "format" and "vmlinuz_sha256" are the cache's; the other fields
# are the publisher's (a kernel tree's release, a root's packages), read and checked by it.
Manifest = dict[str, object]


def publish(built: Path, dest: Path, meta: Manifest) -> None:
    """The publish step of a cache entry built in a staging directory: its manifest, then one
    rename, so the entry is complete or absent, whoever looks."""
    write_manifest(built, meta)
    os.rename(built, dest)


def write_manifest(root: Path, meta: Manifest, only: set[str] | None = None) -> None:
    """Record every regular file under root (or only those in `only`, relative paths)."""
    files: dict[str, dict[str, int | str]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            st = p.lstat()
            # Links and device nodes (a root's /dev) are not content; reading a node could hang.
            rel = str(p.relative_to(root))
            wanted = only is None or rel in only
            if not stat.S_ISREG(st.st_mode) or n == MANIFEST or not wanted:
                continue
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                               "sha256": file_sha256(p)}
    meta = dict(meta, files=files, format=MANIFEST_FORMAT)
    if "release" in meta:  # a kernel tree: its image is checked by hash on every use too
        meta["vmlinuz_sha256"] = files[f"boot/vmlinuz-{meta['release']}"]["sha256"]
    write_atomic(root / MANIFEST, json.dumps(meta, indent=1, sort_keys=True))


def _read_manifest(root: Path) -> tuple[Manifest | None, str | None]:
    if root.is_symlink() or not root.is_dir():
        return None, f"{root} is not a directory kconform published (a symlink, or a file)"
    try:
        meta = json.loads(read_regular_file(root / MANIFEST))
    except (OSError, ValueError) as exc:
        return None, f"no readable manifest ({exc})"
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return None, "its manifest lists no files"
    return meta, None


def read_manifest(root: Path) -> Manifest | None:
    """A published entry's manifest as recorded, without checking its files (None when there is
    no readable one): what `cache list` shows."""
    return _read_manifest(root)[0]


def manifest_files(meta: Manifest) -> dict[str, object]:
    """The files a manifest lists, relative path -> what was recorded ({} when it lists none)."""
    files = meta.get("files")
    return files if isinstance(files, dict) else {}


def _file_problem(root: Path, rel: str, recorded: object, full: bool) -> str | None:
    """What is wrong with one file the manifest lists (None: nothing)."""
    try:
        st = os.lstat(root / rel)
    except OSError:
        return f"{rel} is missing"
    if isinstance(recorded, int):  # format 1 recorded the size of every non-link, nodes too
        recorded = {"size": recorded}
    elif not stat.S_ISREG(st.st_mode):
        return f"{rel} is no longer a regular file"
    if not isinstance(recorded, dict):
        return f"the manifest's entry for {rel} is malformed"
    if st.st_size != recorded.get("size"):
        return f"{rel} is {st.st_size} bytes, expected {recorded.get('size')}"
    if "mtime_ns" in recorded and st.st_mtime_ns != recorded["mtime_ns"]:
        return f"{rel} was modified after the tree was published"
    if full and "sha256" in recorded and file_sha256(root / rel) != recorded["sha256"]:
        return f"{rel} does not match its recorded sha256"
    return None


def check_manifest(root: Path, full: bool = False) -> tuple[Manifest | None, str | None]:
    """(manifest, None) when the tree is whole, else (None, what is wrong). Every file's size
    and mtime, and a kernel image's sha256; with full, every file's sha256."""
    meta, problem = _read_manifest(root)
    if meta is None:
        return None, problem
    # sizes and mtimes first: they name a truncated file as such, and cost no reads
    for rel, recorded in manifest_files(meta).items():
        problem = _file_problem(root, rel, recorded, full)
        if problem:
            return None, problem
    if "vmlinuz_sha256" in meta:  # the image is what gets booted: always hashed (~10 ms)
        vmlinuz = root / "boot" / f"vmlinuz-{meta.get('release')}"
        try:
            if file_sha256(vmlinuz) != meta["vmlinuz_sha256"]:
                return None, f"{vmlinuz.name} does not match its recorded sha256"
        except OSError:
            return None, f"boot/{vmlinuz.name} is missing"
    return meta, None


def check_published(root: Path, log: Callable[[str], None] = lambda msg: None
                    ) -> tuple[Manifest | None, str | None]:
    """check_manifest for a tree or root about to be used, under its cache lock. A format-1
    manifest (sizes only) whose checks pass is rewritten with hashes instead of the tree being
    fetched again: the tree passes every check it was published with, and dropping it would
    leave an offline host without the kernel it has."""
    meta, problem = check_manifest(root)
    if meta is not None and meta.get("format") != MANIFEST_FORMAT:
        log(f"{root.name}: recording the file hashes of a tree cached by an older kconform")
        old = {k: v for k, v in meta.items() if k not in ("files", "format", "vmlinuz_sha256")}
        # Only what was published: a root has kernels' modules linked in since, and they change.
        write_manifest(root, old, only=set(manifest_files(meta)))
        meta, problem = check_manifest(root)
    return meta, problem


def verify_cache(cache: Path) -> tuple[list[str], list[str]]:
    """(damaged, unverifiable): every published kernel tree and root re-hashed. damaged holds
    'path: what is wrong'; unverifiable the entries whose manifest predates hashes."""
    damaged, unverifiable = [], []
    for entry in sorted([*(cache / "trees").glob("*"), *(cache / "rootfs").glob("*")]):
        if entry.name.startswith("."):  # locks and staging directories
            continue
        meta, problem = check_manifest(entry, full=True)
        if meta is None:
            damaged.append(f"{entry}: {problem}")
        elif meta.get("format") != MANIFEST_FORMAT:
            unverifiable.append(f"{entry}: its manifest predates file hashes (the next run "
                                "that uses it records them)")
    return damaged, unverifiable


def file_stamp(path: Path | str) -> str:
    """size:mtime_ns of a file: what tells it replaced (a package upgrade, a rebuild) from the one
    a cached thing was made of, without reading it."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_published(path: Path) -> None:
    """Remove a tree or root (damaged, or pruned): a symlink or file in its place is unlinked,
    never followed. A directory is renamed away first, so it never stays half-removed under its
    published name; an interrupted removal leaves a .staging-* directory, which
    remove_abandoned_staging takes care of."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    # rename(2) replaces an empty directory: the new name is reserved by mkdtemp first.
    away = Path(tempfile.mkdtemp(prefix=f".staging-removed-{path.name}-", dir=path.parent))
    try:
        os.rename(path, away)
    except OSError:
        away.rmdir()
        raise
    shutil.rmtree(away, ignore_errors=True)


# -- entries in use: each process that uses a cached entry (a kernel tree, a root, a BPF object)
# holds a shared flock on the entry's in-use lock until it exits, and the lock file's mtime is the
# entry's last use. `cache prune` removes an entry only under an exclusive lock on it.

IN_USE_LOCK = ".lock-in-use-"  # + the entry's name, next to the entry: no manifest lists it

# lock file path -> the fd holding its shared lock, for the life of this process
_held_in_use: dict[str, int] = {}


def in_use_lock(entry: Path) -> Path:
    """The in-use lock file of a cache entry (which need not exist)."""
    return entry.parent / f"{IN_USE_LOCK}{entry.name}"


def _is_still_named(fd: int, path: Path) -> bool:
    """Whether the locked fd is still the file at `path`: prune unlinks the lock file of an
    entry it removed, so a lock taken on the old file protects nothing."""
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def hold_in_use(entry: Path) -> None:
    """Mark a cache entry used by this process: its last use is now, and `cache prune` leaves it
    alone until this process exits (a shared flock, held on an fd kept open for that long).
    Call it before checking that the entry exists, or while holding its builder's cache_lock:
    a prune that got there first has then removed it, and the check sees it missing."""
    lock = in_use_lock(entry)
    key = os.path.abspath(lock)
    fd = _held_in_use.get(key)
    if fd is None:
        while True:
            fd = open_lock_file(lock)
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a prune removing the entry right now
            if _is_still_named(fd, lock):
                break
            os.close(fd)  # that prune removed the entry and its lock: lock the new file
        _held_in_use[key] = fd
    os.utime(fd)


def release_in_use(under: Path) -> None:
    """Let go of the entries this process holds in the cache `under` (a test's cache about to be
    unmounted or removed; a run simply exits)."""
    prefix = os.path.abspath(under) + os.sep
    for key in [k for k in _held_in_use if k.startswith(prefix)]:
        os.close(_held_in_use.pop(key))


def last_use(entry: Path) -> float:
    """When a run last used the entry: its in-use lock's mtime, else (an entry cached before
    kconform recorded use) the entry's own mtime; 0 when neither can be read."""
    for path in (in_use_lock(entry), entry):
        with contextlib.suppress(OSError):
            return path.lstat().st_mtime
    return 0.0


def entry_in_use(entry: Path) -> bool:
    """Whether a running kconform holds the entry (hold_in_use). Nothing is created."""
    return _lock_busy(in_use_lock(entry))


def cache_lock_busy(directory: Path, key: str) -> bool:
    """Whether someone holds cache_lock(directory, key) now. Nothing is created."""
    return _lock_busy(directory / f".lock-{key}")


def _lock_busy(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: nobody ever held it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def claim_for_removal(entry: Path) -> Iterator[bool]:
    """Yields True while this process holds the entry's in-use lock exclusively (no run uses it,
    and none can start to until the block ends), False when a run holds it. When the block has
    removed the entry, its lock file goes too."""
    lock = in_use_lock(entry)
    created = not lock.exists()
    fd = open_lock_file(lock)
    try:
        if created:  # an entry never held: its last use stays its own mtime, not now
            with contextlib.suppress(OSError):
                st = entry.lstat()
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        if not _is_still_named(fd, lock):  # another prune removed it meanwhile
            yield False
            return
        yield True
        if not (entry.exists() or entry.is_symlink()):
            lock.unlink()  # under the exclusive lock: a waiting holder sees the name change
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_cache_lock(directory: Path, key: str) -> Iterator[bool]:
    """cache_lock without waiting: yields whether the lock was free (and is now held)."""
    fd = open_lock_file(directory / f".lock-{key}")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def disk_full(path: Path, detail: str) -> bool:
    """Whether a failed write under `path` ran out of space. tar reports a full disk as "Wrote
    only 7680 of 10240 bytes", not as ENOSPC, so the disk is asked too."""
    try:
        return "No space left" in detail or shutil.disk_usage(path).free < (1 << 20)
    except OSError:
        return "No space left" in detail
