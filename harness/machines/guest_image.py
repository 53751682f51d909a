"""The guest's root and its kernel's modules as read-only ext4 disk images, for a guest that is
saved once booted and restored after (machines/snapshot.py).

Why images: QEMU refuses to migrate, and so to save, a guest that has a 9p share mounted (its
virtio-9p device adds a migration blocker at the guest's attach), and the direct boot's root is
the host's over 9p. A disk image is not part of the saved state: QEMU saves the guest's memory
and devices and takes the image to be the same when it restores, so each image is named by a
digest of what went into it and never changed once written.

On the host's files, the root holds what the agent and the cases run, taken from the host: the
Python that runs the agent (interpreter, standard library, the shared libraries its extension
modules link), libbpf, kmod as modprobe (the kernel's request_module and eligibility's
vsock_loopback), busybox (the final shell, mount), and the repo's guest side (harness/agent,
cases/guest) at GUEST_REPO with its bytecode compiled, since a read-only root keeps Python from
writing it at each start. On a
pinned root (--rootfs, and every arm64 guest), it is that root as built, with the repo's guest
side added the same way. The modules image is the tree's lib/modules as it is, mounted at
/lib/modules.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..cache import MANIFEST, cache_lock, file_stamp, hold_in_use, staging_dir
from ..errors import KconformError
from ..paths import REPO_ROOT, safe_file_name
from .rootfs import Rootfs

GUEST_REPO = "/opt/kconform"  # where the root image holds the repo's guest side
# What of the repo runs in the guest: the agent's package, the cases' guest functions and those
# of kconform's own tests (the agent puts GUEST_REPO on sys.path and imports them by name).
GUEST_SOURCES = ("harness/__init__.py", "harness/agent", "cases/__init__.py", "cases/guest",
                 "tests/__init__.py", "tests/guest")
# Host files the root needs besides Python; each is copied with the libraries it links.
HOST_PROGRAMS = {"modprobe": ("/usr/sbin/modprobe", "/sbin/modprobe"),
                 "busybox": ("/usr/bin/busybox", "/bin/busybox")}
LIBBPF = "libbpf.so.1"  # what harness/agent/libbpf.py dlopens
BUSYBOX_LINKS = ("sh", "mount", "umount")  # cgroups.py may run mount; init's exec is busybox sh
# Standard-library parts no case imports, left out of the image (a third of its size)
STDLIB_SKIP = frozenset({"idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                         "pydoc_data", "__phello__", "site-packages", "dist-packages"})
# ext4 without the features whose checksums ext4 asks the crypto API for at mount time
# (crc32c through request_module, which the initramfs cannot answer) or needs only for writes
MKFS_FEATURES = "^has_journal,^metadata_csum,^resize_inode"
# Changes whenever this module changes what goes into an image, so old images are not reused
IMAGE_FORMAT = "1"
_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


def _host_program(name: str) -> Path:
    for candidate in HOST_PROGRAMS[name]:
        if os.path.isfile(candidate):
            return Path(candidate)
    package = "kmod" if name == "modprobe" else "busybox-static"
    raise KconformError(f"a saved guest's root needs the host's {name}: apt-get install "
                        f"{package} (./kconform installs it), or use --guest-boot direct")


def _libbpf() -> Path:
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.split(" ")[0] == LIBBPF and "x86-64" in name:
            return Path(target)
    raise KconformError(f"a saved guest's root needs the host's {LIBBPF}: apt-get install "
                        "libbpf1 (./kconform installs it)")


def python_layout(python: str) -> tuple[Path, Path]:
    """(the interpreter's real file, its standard library) for the guest's python."""
    real = Path(os.path.realpath(python))
    script = "import sysconfig; print(sysconfig.get_paths()['stdlib'])"
    proc = subprocess.run([str(real), "-I", "-S", "-c", script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KconformError(f"cannot run the guest's python {python} to find its standard "
                            f"library ({proc.stderr.strip()[-200:]})")
    return real, Path(proc.stdout.strip())


def _stdlib_files(stdlib: Path) -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(stdlib):
        subdirs[:] = sorted(d for d in subdirs if d not in STDLIB_SKIP)
        files += [Path(directory, name) for name in sorted(names)]
    return files


def _guest_source_files() -> list[Path]:
    files: list[Path] = []
    for rel in GUEST_SOURCES:
        path = REPO_ROOT / rel
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def stat_words(paths: Iterable[Path]) -> list[str]:
    """Each file as path:size:mtime_ns, what tells a file replaced from the one recorded."""
    return [f"{path}:{file_stamp(path)}" for path in paths]


def root_inputs(python: str) -> dict[str, object]:
    """What shapes the root image, cheap to read at each start: the host files by size and
    mtime (a package upgrade replaces them), the library directories by mtime (dpkg renames a new
    library in), the repo's guest side by content (an edit need not change a size)."""
    real, stdlib = python_layout(python)
    programs = [real, *(_host_program(name) for name in HOST_PROGRAMS), _libbpf()]
    lib_dirs = sorted({p.resolve().parent for p in programs} | {Path("/usr/lib/x86_64-linux-gnu")})
    return {"format": IMAGE_FORMAT, "python": python, "programs": stat_words(programs),
            "stdlib": hashlib.sha256("\n".join(stat_words(_stdlib_files(stdlib))).encode())
            .hexdigest(), "lib_dirs": stat_words(d for d in lib_dirs if d.exists()),
            "guest_sources": _guest_sources_digest()}


def _digest(inputs: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def _linked_libraries(elf: Path) -> list[Path]:
    """The shared libraries `elf` loads (ldd), the dynamic loader among them; none for a static
    program."""
    proc = subprocess.run(["ldd", str(elf)], capture_output=True, text=True)
    return [Path(m.group(1)) for line in proc.stdout.splitlines()
            if (m := _LDD_LINE.match(line))]


def _copy_into(root: Path, host_path: Path, *, follow: bool = True) -> Path:
    """Copy a host file to the same path under `root` (as a regular file with the content it
    names, so a library's soname link becomes the library)."""
    dest = root / str(host_path).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(host_path, dest, follow_symlinks=follow)
    return dest


def _make_root(root: Path, python: str) -> None:
    # merged /usr, as Debian's own: what the host names /lib/x86_64-linux-gnu/... lands in usr/lib
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    for name in ("dev", "proc", "sys", "tmp", "run", "var/tmp", "etc", "usr/lib/modules", "root"):
        (root / name).mkdir(parents=True, exist_ok=True)
    real, stdlib = python_layout(python)
    elves = [_copy_into(root, real)]
    if Path(python) != real:
        link = root / python.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real.name if real.parent == Path(python).parent else str(real))
    for path in _stdlib_files(stdlib):
        _copy_into(root, path, follow=False)
        if path.suffix == ".so":
            elves.append(path)
    modprobe, busybox, libbpf = _host_program("modprobe"), _host_program("busybox"), _libbpf()
    elves += [modprobe, libbpf]
    _copy_into(root, libbpf)
    shutil.copy2(modprobe, root / "usr/sbin/modprobe")  # kmod's content, where the kernel runs it
    shutil.copy2(busybox, root / "usr/bin/busybox")
    for applet in BUSYBOX_LINKS:
        with contextlib.suppress(FileExistsError):
            (root / "usr/bin" / applet).symlink_to("busybox")
    libraries: set[Path] = set()
    for elf in elves:
        libraries.update(_linked_libraries(elf))
    for library in sorted(libraries):
        _copy_into(root, library)
    _add_guest_side(root, real)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # a loader cache naming only what is here, for the dlopen of libbpf by its soname
        (root / "etc/ld.so.conf").write_text("/usr/lib/x86_64-linux-gnu\n/usr/lib\n")
        subprocess.run(["/sbin/ldconfig", "-r", str(root)], check=True, capture_output=True)


def _add_guest_side(root: Path, python: Path) -> None:
    for path in _guest_source_files():
        dest = root / GUEST_REPO.lstrip("/") / path.relative_to(REPO_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    # bytecode now: a read-only root would compile it at every start. By the guest's python
    # (or, for a pinned root, the host's: bytecode is the same on every architecture, and one of
    # another Python version is simply not used)
    subprocess.run([str(python), "-I", "-m", "compileall", "-q",
                    str(root / GUEST_REPO.lstrip("/"))], check=True, capture_output=True)


def _make_pinned_root(root: Path, rootfs: Rootfs) -> None:
    """The pinned root as built (hard links, not a copy: mkfs reads it once), its lib/modules
    emptied for the modules image's mount, and the repo's guest side."""
    subprocess.run(["cp", "-al", str(rootfs.path), str(root)], check=True, capture_output=True)
    modules = root / "usr/lib/modules"
    if modules.is_dir() and not modules.is_symlink():
        shutil.rmtree(modules)  # the links only: the root's own files stay
    modules.mkdir(parents=True, exist_ok=True)
    _add_guest_side(root, Path(sys.executable))


def _tree_bytes(path: Path) -> int:
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size + 4096
    return total


def _mkfs(source: Path, image: Path, label: str) -> None:
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not os.path.exists(mkfs):
        raise KconformError("a saved guest's images need mkfs.ext4: apt-get install e2fsprogs")
    size_mib = _tree_bytes(source) * 5 // 4 // (1 << 20) + 32
    image.unlink(missing_ok=True)
    proc = subprocess.run([mkfs, "-q", "-F", "-t", "ext4", "-L", label, "-O", MKFS_FEATURES,
                           "-m", "0", "-E", "root_owner=0:0", "-d", str(source), str(image),
                           f"{size_mib}M"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KconformError(f"mkfs.ext4 could not make {image.name} from {source} "
                            f"({proc.stderr.strip()[-300:]})")


def _published(cache: Path, name: str, build: Callable[[Path, Path], None]) -> Path:
    """images/<name>, built by `build(staging, image)` unless it is there already."""
    directory = cache / "images"
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / name
    hold_in_use(image)  # before the check: a prune from here on leaves it alone
    if image.is_file():
        return image
    with cache_lock(directory, name):
        if image.is_file():  # another worker made it while this one waited
            return image
        with staging_dir(directory, "image") as staging:
            built = staging / name
            try:
                build(staging, built)
            except (OSError, subprocess.CalledProcessError) as exc:
                detail = exc.stderr.decode(errors="replace").strip()[-300:] \
                    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else exc
                raise KconformError(f"cannot make the guest image {name} ({detail}); free space "
                                    f"in {directory} or boot with --guest-boot direct") from None
            os.replace(built, image)
    return image


def _guest_sources_digest() -> str:
    sources = hashlib.sha256()
    for path in _guest_source_files():
        sources.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return sources.hexdigest()


def root_image(cache: Path, python: str, rootfs: Rootfs | None = None) -> Path:
    """The root image for this host's python, or this pinned root, with this repo's guest side
    (made once per change)."""
    if rootfs is None:
        name = f"root-{_digest(root_inputs(python))}.ext4"
    else:
        inputs = {"format": IMAGE_FORMAT, "rootfs": str(rootfs.path), "digest": rootfs.digest,
                  "built": file_stamp(rootfs.path / MANIFEST),
                  "guest_sources": _guest_sources_digest()}
        name = f"root-{safe_file_name(rootfs.name)}-{rootfs.arch}-{_digest(inputs)}.ext4"

    def build(staging: Path, image: Path) -> None:
        tree = staging / "root"
        if rootfs is None:
            _make_root(tree, python)
        else:
            _make_pinned_root(tree, rootfs)
        _mkfs(tree, image, "kconform-root")
    return _published(cache, name, build)


def modules_image(release: str, modules: Path, cache: Path) -> Path:
    """The image of a tree's lib/modules (holding <release>/), named by its modules.dep."""
    inputs = {"format": IMAGE_FORMAT, "modules": str(modules), "release": release,
              "dep": file_stamp(modules / "modules.dep")}
    name = f"modules-{release}-{_digest(inputs)}.ext4"

    def build(staging: Path, image: Path) -> None:
        _mkfs(modules.parent, image, "kconform-mods")
    return _published(cache, name, build)
