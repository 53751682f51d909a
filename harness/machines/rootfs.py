"""Pinned guest root filesystems: a minimal Debian built by debootstrap from a recipe in images/.

The default guest root is the host's own, so results can change when the host's Python or libbpf
changes. A pinned root holds only what the guest side needs, from one Debian suite, and is cached
like a kernel: built once per recipe under <cache>/rootfs/<name>-<recipe digest>/, published with
one rename, with a manifest that catches damage later. debootstrap checks the archive's signatures
(--force-check-gpg with Debian's keyring).

virtme-ng takes a kernel's modules from the root it boots (<root>/lib/modules/<release>), so each
kernel's modules are hard-linked into the root on first use; they add no userspace to the pin.

A root is built for one Debian architecture. A foreign one (arm64 on an amd64 host) is built by the
same debootstrap run, with --arch: its maintainer scripts run in a chroot through qemu-user, which
binfmt_misc starts for the foreign binaries (prepare_binfmt checks that, and sets it up as
systemd-binfmt does at boot where it has not been). An arm64 root lives beside the amd64 one, at
<cache>/rootfs/<name>-arm64-<recipe digest>/.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..arches import ARCHITECTURES, host_architecture, named_arch
from ..cache import (
    Manifest,
    cache_dir,
    cache_lock,
    check_manifest,
    check_published,
    disk_full,
    hold_in_use,
    publish,
    remove_published,
    staging_dir,
)
from ..datafiles import read_table
from ..errors import KconformError
from ..kernels import KernelTree
from ..kernels.apt import DEBIAN_KEYRING, require_debian_mirror
from ..kernels.specs import DEBIAN_PACKAGE, DEBIAN_SUITE
from ..paths import REPO_ROOT

IMAGES_DIR = REPO_ROOT / "images"
HOST = "host"
# What building a root does besides debootstrap (_link_poweroff, the mount points), as part of
# the root's digest: a change to them is a new root, not one reused from before it. Bump it with
# any such change.
BUILD_STEPS = "kconform root build steps 2: mount points, busybox poweroff in /usr/local/bin\n"
# The root of a guest whose architecture is not the host's (an arm64 kernel on an amd64 host) when
# --rootfs says 'host', which such a guest cannot run: the pinned Debian 12 root, the release the
# host's root is on this project's machines.
FOREIGN_ROOT = "debian-bookworm"
# Where a guest on a pinned root sees the repo and the BPF objects (machines/qemu.py mounts them);
# the mount points are made when the root is built.
GUEST_REPO = "/kconform/repo"
GUEST_BPF = "/kconform/bpf"


# What images/*.toml may hold. suite and packages reach debootstrap's command line, after
# --force-check-gpg: a value that starts with "-" would be read as an option (debootstrap takes
# no "--" to end them), so each is checked against the grammar of what it names.
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
DEBOOTSTRAP_VARIANTS = ("minbase", "buildd", "fakechroot")
RECIPE_FIELDS = {
    "suite": 'the Debian suite, e.g. suite = "bookworm"',
    "packages": 'a list of Debian packages, e.g. packages = ["python3", "libbpf1"]',
    "variant": f"one of debootstrap's variants ({', '.join(DEBOOTSTRAP_VARIANTS)}), e.g. "
               'variant = "minbase"',
    "description": 'one line saying what the root is, e.g. description = "Debian 12 bookworm"',
}
REQUIRED_RECIPE_FIELDS = ("suite", "packages")


def _recipe_problem(path: Path, field: str, value: object, what: str) -> KconformError:
    return KconformError(f"{path}: {field} = {value!r} is not {what}; write "
                         f"{RECIPE_FIELDS[field]}")


def _recipe_string(path: Path, data: dict[str, object], field: str, valid: Callable[[str], bool],
                   what: str, default: str) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or not valid(value):
        raise _recipe_problem(path, field, value, what)
    return value


def _recipe_packages(path: Path, data: dict[str, object]) -> tuple[str, ...]:
    value = data["packages"]
    if not isinstance(value, list) or not value:
        raise _recipe_problem(path, "packages", value,
                              "a non-empty list (a single string is not a list)")
    for item in value:
        if not isinstance(item, str) or not DEBIAN_PACKAGE.fullmatch(item):
            raise _recipe_problem(path, "packages", value,
                                  f"a list of Debian package names ({item!r} is not one)")
    return tuple(value)


@dataclass(frozen=True)
class RootfsSpec:
    """A recipe: images/<name>.toml."""
    name: str
    suite: str
    packages: tuple[str, ...]
    variant: str
    description: str
    digest: str  # of the recipe's text: a changed recipe is a different root

    @classmethod
    def load(cls, path: Path) -> RootfsSpec:
        """One recipe, every field checked: a KconformError names the file, the field and the
        fix."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KconformError(f"{path}: cannot read this root filesystem recipe ({exc}); make "
                                "it a readable UTF-8 file or remove it") from None
        return cls.parse(path, text)

    @classmethod
    def parse(cls, path: Path, text: str) -> RootfsSpec:
        name = path.stem
        if not RECIPE_NAME.fullmatch(name) or name == HOST:
            raise KconformError(f"{path}: {name!r} cannot be a root filesystem name (it becomes "
                                "a directory name): rename the file to letters, digits and "
                                f". _ + - only, not {HOST!r}, e.g. images/debian-bookworm.toml")
        if named_arch(name) is not None:
            # <name>-arm64-<digest> is the arm64 root of recipe <name>: a recipe named
            # <name>-arm64 with the same text would be cached in the same directory.
            raise KconformError(f"{path}: {name!r} cannot be a root filesystem name: a name "
                                "ending in an architecture is taken by the roots of other "
                                "recipes built for it; a recipe is built for every "
                                "architecture, so rename the file, e.g. "
                                "images/debian-bookworm.toml")
        data = read_table(path, text, fields=RECIPE_FIELDS, required=REQUIRED_RECIPE_FIELDS,
                          kind="a root filesystem recipe", example='suite = "bookworm"')
        return cls(
            name=name,
            suite=_recipe_string(path, data, "suite", lambda v: bool(DEBIAN_SUITE.fullmatch(v)),
                                 "a Debian suite name", default=""),
            packages=_recipe_packages(path, data),
            variant=_recipe_string(path, data, "variant", DEBOOTSTRAP_VARIANTS.__contains__,
                                   f"one of {', '.join(DEBOOTSTRAP_VARIANTS)}",
                                   default="minbase"),
            description=_recipe_string(path, data, "description",
                                       lambda v: not re.search(r"[\x00-\x1f\x7f]", v),
                                       "one line of text", default=""),
            digest=hashlib.sha256((BUILD_STEPS + text).encode()).hexdigest()[:12])


@dataclass(frozen=True)
class Rootfs:
    """A built root: what vng --root is given, and what results record about it."""
    name: str
    path: Path
    digest: str
    packages: dict[str, str]  # package -> version, as debootstrap installed them
    arch: str = "amd64"       # the Debian architecture of its binaries

    def describe(self) -> str:
        """e.g. 'debian-bookworm@1a2b3c4d5e6f (python3 3.11.2-1+b1, libbpf1 1:1.1.0-1)', with
        the architecture after the digest when it is not amd64 (which every record before arm64
        roots meant): 'debian-bookworm@1a2b3c4d5e6f arm64 (python3 ...)'."""
        key = ", ".join(f"{p} {self.packages[p]}" for p in ("python3", "libbpf1")
                        if p in self.packages)
        arch = "" if self.arch == "amd64" else f" {self.arch}"
        return f"{self.name}@{self.digest}{arch}" + (f" ({key})" if key else "")


def root_recipe(rootfs_name: str, arch: str, run_arches: Collection[str]) -> str:
    """The root a guest of this architecture boots in a run of these architectures: --rootfs,
    except that a guest of another architecture than the host's cannot run the host's root, so
    it runs FOREIGN_ROOT; and in a run of several architectures, all of them do, so they are
    compared on one Debian release's userspace, not the host's against Debian 12's."""
    if rootfs_name == HOST and (arch != host_architecture() or len(set(run_arches)) > 1):
        return FOREIGN_ROOT
    return rootfs_name


def root_directory_name(name: str, arch: str, digest: str) -> str:
    """A built root's directory in <cache>/rootfs/: amd64 roots keep the name they had before
    there were others, so a cache of them stays valid."""
    return f"{name}-{digest}" if arch == "amd64" else f"{name}-{arch}-{digest}"


def check_architecture(arch: str, what: str) -> None:
    if arch not in ARCHITECTURES:
        raise KconformError(f"{what}: unknown architecture {arch!r}; a root can be built for "
                            f"{', '.join(ARCHITECTURES)} (Debian's names)")


def recipe_names(directory: Path = IMAGES_DIR) -> list[str]:
    """The recipes' names (their files' stems), none of them read."""
    return [p.stem for p in sorted(directory.glob("*.toml"))]


def load_recipe(name: str, directory: Path = IMAGES_DIR) -> RootfsSpec:
    """The recipe `name` (one of recipe_names), checked; the other recipes are not read, so a
    broken one stops only runs that choose it."""
    return RootfsSpec.load(directory / f"{name}.toml")


def load_recipes(directory: Path = IMAGES_DIR) -> dict[str, RootfsSpec]:
    return {name: load_recipe(name, directory) for name in recipe_names(directory)}


def check_rootfs_name(name: str, directory: Path = IMAGES_DIR) -> None:
    """A --rootfs value: 'host' or a recipe whose every field is valid (checked before any
    boot)."""
    if name == HOST:
        return
    known = recipe_names(directory)
    if name not in known:
        raise KconformError(f"unknown root filesystem {name!r}. Known: {HOST} (the host's own "
                            f"root, the default), {', '.join(known) or 'none'} "
                            "(images/*.toml defines them)")
    load_recipe(name, directory)


# Boots a kernel on a root, runs one shell line with a host directory writable in the guest,
# and waits for the guest to power off: None when it did, else what went wrong
# (machines/guest_job.py; given by the caller, since booting is qemu.py's, which needs this
# module's Rootfs). Arguments: root, kernel, command, host directory, its guest path, memory,
# console log, timeout.
GuestJob = Callable[[Rootfs, KernelTree, str, Path, str, str, Path, float], "str | None"]


class RootfsProvider:
    def __init__(self, cache: Path | None = None,
                 log: Callable[[str], None] = lambda msg: None,
                 guest_job: GuestJob | None = None,
                 second_stage_in_guest: bool = False) -> None:
        """guest_job: how a foreign root's second stage runs in a guest, where the host's
        binfmt_misc cannot run it (None: such a root is refused with the fix). With
        second_stage_in_guest, a foreign root takes that path even where binfmt_misc works (how
        the tests build it)."""
        self.dir = (cache or cache_dir()) / "rootfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.guest_job = guest_job
        self.second_stage_in_guest = second_stage_in_guest

    def get(self, name: str, arch: str = "amd64",
            kernel: KernelTree | None = None) -> Rootfs | None:
        """The built root for a recipe name and a Debian architecture (None for the host's own
        root). kernel: the one the caller boots on it, which finishes building a foreign root
        in a guest where the host cannot."""
        if name == HOST:
            return None
        check_rootfs_name(name)
        check_architecture(arch, f"rootfs {name}")
        try:
            return self._get(name, arch, kernel)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise KconformError(f"rootfs {name} ({arch}): {exc}") from None

    def _get(self, name: str, arch: str, kernel: KernelTree | None = None) -> Rootfs:
        spec = load_recipe(name)
        root = self.dir / root_directory_name(name, arch, spec.digest)
        with self._lock(root.name):
            hold_in_use(root)  # before the check: `cache prune` leaves it alone from here on
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                built_for = _recorded_arch(meta) if meta else arch
                if built_for != arch:
                    meta, problem = None, f"its manifest says it was built for {built_for}"
                if meta:
                    return Rootfs(name, root, spec.digest, _recorded_packages(root, meta), arch)
                self.log(f"rootfs {name}: cached root {root} is damaged ({problem}); "
                         "building again")
                remove_published(root)
            self._build(spec, arch, root, kernel)
            meta, problem = check_manifest(root)
            if not meta:
                raise KconformError(f"rootfs {name}: freshly built root is damaged: {problem}")
            return Rootfs(name, root, spec.digest, _recorded_packages(root, meta), arch)

    def _build(self, spec: RootfsSpec, arch: str, root: Path,
               kernel: KernelTree | None = None) -> None:
        if not shutil.which("debootstrap"):
            raise KconformError(f"--rootfs {spec.name} needs debootstrap: apt-get install "
                                "debootstrap (./kconform installs it)")
        if os.geteuid() != 0:
            # the host's root serves only the host's architecture
            instead = ", or use --rootfs host" if arch == host_architecture() else ""
            raise KconformError(f"--rootfs {spec.name}: building a root with debootstrap needs "
                                f"root; run as root{instead}")
        stage_kernel = None
        if arch != host_architecture():
            stage_kernel = self._second_stage_kernel(spec, arch, kernel)
        mirror = require_debian_mirror(f"rootfs {spec.name}")
        with staging_dir(self.dir, spec.name) as staging:
            self._debootstrap(spec, mirror, staging, root, arch, stage_kernel)

    def _second_stage_kernel(self, spec: RootfsSpec, arch: str,
                             kernel: KernelTree | None) -> KernelTree | None:
        """The kernel whose guest runs this foreign root's second stage, or None when the host
        runs it (binfmt_misc ready, or made ready). A KconformError naming the fix when
        neither can."""
        if not self.second_stage_in_guest:
            try:
                prepare_binfmt(arch, self.log)
                return None
            except KconformError as exc:
                problem = str(exc)
        else:
            problem = f"an {arch} root built with its second stage in a guest, as asked"
        why_not = self._why_no_guest_stage(spec, arch, kernel)
        if why_not:
            raise KconformError(f"{problem}. The other way, debootstrap --foreign with its second "
                                f"stage in an {arch} guest, cannot be taken: {why_not}")
        assert kernel is not None  # _why_no_guest_stage says why when it is None
        self.log(f"rootfs {spec.name}: {problem}. Building it with debootstrap --foreign instead, "
                 f"its second stage (dpkg) inside an {arch} guest on {kernel.name}: slower under "
                 "emulation, and once per recipe")
        return kernel

    def _why_no_guest_stage(self, spec: RootfsSpec, arch: str,
                            kernel: KernelTree | None) -> str | None:
        if self.guest_job is None:
            return "this command boots no guest to run it in"
        if kernel is None or kernel.arch != arch or kernel.vmlinuz is None:
            return f"it needs an {arch} kernel to boot, and none was given for this root"
        missing = [p for p in GUEST_BOOT_PACKAGES if p not in spec.packages]
        if missing:
            return (f"the guest boots the half-built root, so the recipe needs "
                    f"{' and '.join(missing)} (virtme-ng's guest needs them); add "
                    f"{', '.join(repr(p) for p in missing)} to its packages")
        return None

    def _debootstrap(self, spec: RootfsSpec, mirror: str, staging: Path, root: Path,
                     arch: str = "amd64", stage_kernel: KernelTree | None = None) -> None:
        target = staging / "root"
        # --arch always: the root's architecture is the one asked for, whatever the host's.
        # --foreign: only the first stage (download, unpack the required packages), the second
        # then runs in a guest of the root's architecture.
        cmd = ["debootstrap", f"--arch={arch}", *(["--foreign"] if stage_kernel else []),
               f"--variant={spec.variant}", f"--include={','.join(spec.packages)}",
               f"--keyring={DEBIAN_KEYRING}", "--force-check-gpg", spec.suite, str(target), mirror]
        self.log(f"rootfs {spec.name}: building for {arch} with {' '.join(cmd)} "
                 "(once per recipe and architecture)")
        try:
            # The caller's APT_CONFIG would reach the apt and dpkg runs inside the new root.
            env = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env=dict(env, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))
            if proc.returncode != 0:
                raise KconformError(_debootstrap_error(spec, mirror, proc, target, arch))
            second_stage = "chroot on the host"
            if stage_kernel is not None:
                self._second_stage_in_guest(spec, target, arch, stage_kernel, staging)
                second_stage = (f"in an {arch} guest on {stage_kernel.name} "
                                f"({stage_kernel.release})")
            _make_mount_points(target, GUEST_REPO, GUEST_BPF)
            _link_poweroff(target)
            # The downloaded .debs are not part of the root.
            for deb in (target / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            publish(target, root, {"name": spec.name, "arch": arch, "suite": spec.suite,
                                   "mirror": mirror, "recipe_digest": spec.digest,
                                   "second_stage": second_stage,
                                   "packages": _installed_packages(target)})
        except OSError as exc:
            detail = str(exc)
            if disk_full(staging, detail):
                detail = (f"no space left in {self.dir}: free some space, or point KCONFORM_CACHE "
                          "at a larger disk")
            raise KconformError(f"rootfs {spec.name}: {detail}") from None

    def _second_stage_in_guest(self, spec: RootfsSpec, target: Path, arch: str,
                               kernel: KernelTree, staging: Path) -> None:
        """Finish a first-stage root by booting `kernel` on it to run debootstrap's second
        stage; a KconformError with the evidence when that did not complete."""
        assert self.guest_job is not None  # _why_no_guest_stage checked it
        out = staging / "stage-out"
        out.mkdir()
        # The first stage's root as it is: what the guest boots with is added only after.
        pack_root(target, out / STAGE_IN_TAR)
        prepare_guest_stage(target)
        half_built = Rootfs(spec.name, target, spec.digest, {}, arch)
        self.add_modules(half_built, kernel)
        console = staging / "second-stage-console.log"
        self.log(f"rootfs {spec.name}: running debootstrap's second stage in an {arch} guest on "
                 f"{kernel.name} (its console: {console})")
        failure = self.guest_job(half_built, kernel, f"sh /{SECOND_STAGE_DIR}/run", out,
                                 GUEST_STAGE_OUT, SECOND_STAGE_MEMORY, console,
                                 SECOND_STAGE_SECONDS)
        problem = second_stage_problem(out, failure)
        if problem:
            raise KconformError(f"rootfs {spec.name} ({spec.suite}, {arch}): debootstrap's second "
                                f"stage in a guest on {kernel.name} did not complete: "
                                f"{problem}\n{_tail(console, 'its console')}")
        unpack_finished_root(out / STAGE_OUT_TAR, target)
        shutil.rmtree(out)

    def add_modules(self, rootfs: Rootfs, tree: KernelTree) -> None:
        """Hard-link a kernel's modules into the root, where virtme-ng looks for them."""
        source = tree.root / "lib" / "modules" / tree.release if tree.root else None
        if source is None or not source.is_dir():
            return  # a local or host kernel: the guest runs without loadable modules
        try:
            self._add_modules(rootfs, source, rootfs.path / "usr/lib/modules" / tree.release)
        except OSError as exc:
            raise KconformError(f"rootfs {rootfs.name}: adding {tree.name}'s modules: {exc}") \
                from None

    def _add_modules(self, rootfs: Rootfs, source: Path, dest: Path) -> None:
        # The tree they came from is recorded: a rebuilt kernel of the same release replaces them.
        origin = dest / ".kconform-source"
        with self._lock(rootfs.path.name):
            if dest.exists():
                if origin.exists() and origin.read_text() == str(source):
                    return
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".modules-", dir=dest.parent))
            try:
                copy = subprocess.run(["cp", "-al", f"{source}/.", str(staging)],
                                      capture_output=True, text=True)
                if copy.returncode != 0:  # another filesystem: copy instead
                    shutil.rmtree(staging)
                    shutil.copytree(source, staging, symlinks=True)
                (staging / origin.name).write_text(str(source))
                os.rename(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _lock(self, key: str) -> AbstractContextManager[None]:
        return cache_lock(self.dir, key)


def _recorded_packages(root: Path, meta: Manifest) -> dict[str, str]:
    """The packages a root's manifest records (package -> version)."""
    packages = meta.get("packages")
    if not (isinstance(packages, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in packages.items())):
        raise KconformError(f"{root}: its manifest does not record the root's packages; remove "
                            "that directory and kconform builds the root again")
    return packages  # every key and value checked to be a str


def _recorded_arch(meta: Manifest) -> object:
    """A root's architecture as its manifest records it: amd64 for one built before roots had
    others."""
    return meta.get("arch", "amd64")


def _installed_packages(root: Path) -> dict[str, str]:
    proc = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                           "-f=${Package} ${Version}\n"],
                          capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def _debootstrap_error(spec: RootfsSpec, mirror: str, proc: subprocess.CompletedProcess[str],
                       target: Path, arch: str = "amd64") -> str:
    log = target / "debootstrap" / "debootstrap.log"
    detail = (proc.stderr + proc.stdout).strip().splitlines()[-8:]
    if log.exists():
        detail += log.read_text(errors="replace").strip().splitlines()[-8:]
    text = "\n".join(detail)
    if disk_full(target.parent, text):
        hint = "no space left on the device: free some, or point KCONFORM_CACHE at a larger disk"
    elif "Release signed by unknown key" in text or "Invalid Release signature" in text:
        hint = "the archive's signature could not be checked: update debian-archive-keyring"
    elif "Failed getting release file" in text or "Couldn't download" in text:
        hint = (f"cannot download from {mirror}: check the network, or set KCONFORM_DEBIAN_MIRROR "
                f"to a reachable Debian mirror that carries {arch}")
    elif "Unable to execute target architecture" in text or "Exec format error" in text:
        # debootstrap's own check (arch-test, when installed), or a chroot that could not start
        hint = f"the host cannot run {arch} programs: {QEMU_BINFMT_FIX}"
    else:
        hint = "debootstrap failed"
    return f"rootfs {spec.name} ({spec.suite}, {arch}): {hint}\n{text}"


# ----------------------------------------------------------- foreign roots: a guest's second stage
# Where the host cannot run the root's programs (no binfmt_misc, no qemu-user-static), debootstrap
# --foreign does only its first stage on the host (download, unpack the required packages), and
# its second stage (dpkg installing and configuring every package) runs natively in a guest of
# the root's architecture, booted on the half-built root: debootstrap(8), --foreign and
# --second-stage.

SECOND_STAGE_DIR = ".kconform-stage"  # in the half-built root: the guest's script
GUEST_STAGE_OUT = "/kconform/stage-out"  # in that guest: the host's directory for the job
STAGE_IN_TAR, STAGE_OUT_TAR = "half-built.tar", "root.tar"  # the roots it passes, there
SECOND_STAGE_MEMORY = "3G"  # the root is built in the guest's memory (SECOND_STAGE_SCRIPT)
# Under TCG the second stage of images/debian-bookworm.toml takes ~10 min here; an hour means it
# hung.
SECOND_STAGE_SECONDS = 3600.0
# What virtme-ng's guest takes from the root it boots before dpkg ever ran there: a static busybox
# (a foreign architecture's initramfs and its poweroff are the root's) and udev, through which its
# init finds the virtio-serial ports that carry the command. The first stage unpacks only the
# Priority: required packages, so these, and what they need that is not required, are unpacked
# from the .debs it downloaded: files only; the second stage installs them over the same files.
GUEST_BOOT_PACKAGES = ("busybox-static", "udev")
# dpkg over 9p under TCG is slow (every file is unpacked, synced and renamed through the emulated
# virtio queue: 53 of the bookworm root's ~190 unpack steps took 6.5 min), and so is reading a
# tree of small files (cp -a of the 232 MB first-stage root: 4 min). So the host hands the guest
# the half-built root as one tar file, the guest unpacks it into its memory, runs the second
# stage there, and hands the finished root back as one tar file. container=lxc: debootstrap then
# skips its check that the target holds a working device node (the chroot's /dev is the guest's
# devtmpfs all the same).
SECOND_STAGE_SCRIPT = f"""\
#!/bin/sh
# debootstrap's second stage, in a guest booted on this half-built root: kconform,
# harness/machines/rootfs.py, says why each step is so.
out={GUEST_STAGE_OUT}
build=/run/kconform-build
fail() {{ echo "$1" >> $out/log; echo 125 > $out/rc; exit 0; }}
mkdir -p $build || fail "mkdir failed"
mount -t tmpfs -o size=2600M,mode=0755 tmpfs $build || fail "mounting a tmpfs failed"
tar -C $build --numeric-owner --xattrs -xf $out/{STAGE_IN_TAR} ||
    fail "unpacking {STAGE_IN_TAR} into memory failed"
rm $out/{STAGE_IN_TAR}
mount -t proc proc $build/proc && mount -t sysfs sysfs $build/sys &&
    mount --bind /dev $build/dev || fail "mounting /proc, /sys, /dev for the chroot failed"
container=lxc DEBIAN_FRONTEND=noninteractive LC_ALL=C \\
    chroot $build /debootstrap/debootstrap --second-stage >> $out/log 2>&1
rc=$?
umount $build/dev $build/sys $build/proc 2>/dev/null
if [ $rc = 0 ]; then
    # the .debs: the host removes them from every root it builds
    tar -C $build --one-file-system --numeric-owner --xattrs \
        --exclude=./var/cache/apt/archives/*.deb -cf $out/{STAGE_OUT_TAR} . ||
        fail "writing {STAGE_OUT_TAR} failed"
fi
echo $rc > $out/rc
"""


def prepare_guest_stage(target: Path) -> None:
    """Make a first-stage root bootable under virtme-ng: unpack GUEST_BOOT_PACKAGES with what
    they need, give it a real /proc, its mount points and poweroff, and the second stage's
    script."""
    for deb in guest_boot_debs(target):
        _unpack_deb(deb, target)
    # On a host debootstrap takes for a docker container, the first stage leaves /proc a
    # link to the host's (debian-common, setup_proc_symlink); the guest's init mounts proc there.
    proc = target / "proc"
    if proc.is_symlink():
        proc.unlink()
    proc.mkdir(exist_ok=True)
    _make_mount_points(target, GUEST_REPO, GUEST_BPF, GUEST_STAGE_OUT)
    _link_poweroff(target)
    stage = target / SECOND_STAGE_DIR
    stage.mkdir(exist_ok=True)
    (stage / "run").write_text(SECOND_STAGE_SCRIPT)


def _make_mount_points(root: Path, *points: str) -> None:
    """The directories a guest on this root has host directories mounted at (qemu.py)."""
    for point in points:
        (root / point.lstrip("/")).mkdir(parents=True, exist_ok=True)


def guest_boot_debs(target: Path) -> list[Path]:
    """The downloaded .debs of GUEST_BOOT_PACKAGES and of everything they depend on that the
    first stage did not unpack, read from the first stage's lists (debootstrap/debpaths:
    package and .deb; debootstrap/required: what it unpacked)."""
    lists = target / "debootstrap"
    try:
        debs = {package: target / path.strip().lstrip("/") for package, path in
                (line.split(None, 1) for line in
                 (lists / "debpaths").read_text().splitlines() if line.strip())}
        unpacked = set((lists / "required").read_text().split())
    except (OSError, ValueError) as exc:
        raise KconformError(f"{target}: debootstrap's first stage left no package lists "
                            f"({exc}); remove {target.parent} and build again") from None
    wanted: list[str] = []
    todo = list(GUEST_BOOT_PACKAGES)
    while todo:
        package = todo.pop(0)
        if package in wanted or package in unpacked:
            continue
        if package not in debs:
            raise KconformError(f"{target}: debootstrap's first stage downloaded no {package}; "
                                "it is needed to boot the half-built root")
        wanted.append(package)
        todo += _depends(debs[package], set(debs))
    return [debs[p] for p in wanted]


def _depends(deb: Path, available: set[str]) -> list[str]:
    """The packages a .deb's Depends and Pre-Depends name, each alternative group as its first
    member that was downloaded (deb-control(5))."""
    fields = subprocess.run(["dpkg-deb", "--field", str(deb), "Pre-Depends", "Depends"],
                            capture_output=True, text=True, check=True).stdout
    names: list[str] = []
    for line in fields.splitlines():
        _, _, value = line.partition(":")
        for group in value.split(","):
            choices = [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
            names += [name for name in choices if name in available][:1]
    return names


def _unpack_deb(deb: Path, target: Path) -> None:
    # As debootstrap unpacks: through tar, keeping /bin and the other merged-/usr links links.
    data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-C", str(target), "--keep-directory-symlink", "-xf", "-"],
                         stdin=data.stdout, capture_output=True, text=True)
    assert data.stdout is not None
    data.stdout.close()
    if data.wait() != 0 or tar.returncode != 0:
        raise KconformError(f"unpacking {deb.name} into {target} failed: {tar.stderr.strip()}")


def second_stage_problem(out: Path, boot_failure: str | None) -> str | None:
    """What went wrong with a second stage run in a guest (None: it completed), from what the
    guest left in `out`: its status, its log, the finished root's tar."""
    rc = _read_first_line(out / "rc")
    log = _tail(out / "log", "the second stage's output")
    if rc is None:
        return f"{boot_failure or 'the guest ended'} before the script wrote its status\n{log}"
    if rc != "0":
        return f"the second stage failed (status {rc})\n{log}"
    if not (out / STAGE_OUT_TAR).is_file():
        return f"the guest wrote no {STAGE_OUT_TAR}\n{log}"
    return None


def pack_root(target: Path, tar: Path) -> None:
    """A root as one tar file, for a guest to unpack (owners as numbers, extended attributes
    kept)."""
    proc = subprocess.run(["tar", "-C", str(target), "--numeric-owner", "--xattrs", "-cf",
                           str(tar), "."], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KconformError(f"packing {target} into {tar} failed: {proc.stderr.strip()[-500:]}")


def unpack_finished_root(tar: Path, target: Path) -> None:
    """Replace the half-built root with the one the guest finished (owners as numbers, as the
    guest wrote them; modes, device nodes, links and extended attributes kept)."""
    shutil.rmtree(target)
    target.mkdir()
    proc = subprocess.run(["tar", "-C", str(target), "--numeric-owner", "--same-owner",
                           "--same-permissions", "--xattrs", "-xf", str(tar)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise KconformError(f"unpacking the root the guest built ({tar}) failed: "
                            f"{proc.stderr.strip()[-500:]}")
    if (target / "debootstrap").exists():
        raise KconformError(f"the root the guest built ({tar}) still holds /debootstrap: its "
                            "second stage did not finish")


def _tail(path: Path, what: str, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return f"({what}: none, {path})"
    return f"{what} ({path}), last lines:\n" + "\n".join(text)


# ------------------------------------------------------------------ foreign roots: binfmt_misc
# debootstrap's second stage runs the new root's programs (dpkg, maintainer scripts) in a chroot.
# For a foreign architecture the kernel hands them to qemu-user through a binfmt_misc entry; with
# its F flag the kernel opens the interpreter when the entry is registered, so it runs inside a
# chroot that does not hold it (binfmt_misc(7), "fix binary").

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
# Where systemd-binfmt reads register lines at boot, first match wins (binfmt.d(5)).
BINFMT_CONF_DIRS = (Path("/etc/binfmt.d"), Path("/run/binfmt.d"), Path("/usr/lib/binfmt.d"))
# qemu-user-static's entry (and binfmt.d file) per Debian architecture.
QEMU_BINFMT_ENTRY = {"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}
QEMU_BINFMT_FIX = ("apt-get install qemu-user-static (./kconform installs it), and mount "
                   f"binfmt_misc: mount -t binfmt_misc binfmt_misc {BINFMT_MISC}")

@dataclass(frozen=True)
class BinfmtStep:
    """What prepare_binfmt does next for an architecture."""
    action: Literal["ready", "mount", "register"]
    line: str = ""             # register: the line written to <binfmt_misc>/register
    source: Path | None = None  # register: the binfmt.d file it is from


def emulation_error(arch: str, problem: str, fix: str = QEMU_BINFMT_FIX) -> KconformError:
    return KconformError(
        f"an {arch} root cannot be built on this {host_architecture()} host: {problem}. "
        f"debootstrap runs the root's {arch} programs through qemu-user, started by binfmt_misc: "
        f"{fix}")


def next_binfmt_step(arch: str, binfmt_dir: Path = BINFMT_MISC,
                     conf_dirs: tuple[Path, ...] = BINFMT_CONF_DIRS) -> BinfmtStep:
    """Whether binfmt_misc runs `arch`'s programs ("ready"), or what would make it: mounting
    binfmt_misc, or registering qemu-user-static's entry from its binfmt.d file (what
    systemd-binfmt does at boot). A KconformError naming the fix when neither would."""
    if not (binfmt_dir / "register").exists():
        return BinfmtStep("mount")
    if _read_first_line(binfmt_dir / "status") == "disabled":
        raise emulation_error(arch, f"binfmt_misc is disabled ({binfmt_dir / 'status'})",
                              f"enable it: echo 1 > {binfmt_dir / 'status'}")
    entry = binfmt_dir / QEMU_BINFMT_ENTRY[arch]
    if entry.exists():
        problem, fix = _binfmt_entry_problem(entry)
        if problem:
            raise emulation_error(arch, problem, fix)
        return BinfmtStep("ready")
    line, source = _binfmt_register_line(arch, entry.name, conf_dirs)
    return BinfmtStep("register", line, source)


def prepare_binfmt(arch: str, log: Callable[[str], None], binfmt_dir: Path = BINFMT_MISC,
                   conf_dirs: tuple[Path, ...] = BINFMT_CONF_DIRS,
                   mount: Callable[[Path], str | None] | None = None,
                   register: Callable[[Path, str], None] | None = None) -> None:
    """Make binfmt_misc run `arch`'s programs through qemu-user, each step logged; a
    KconformError naming the fix when that cannot be done. mount(directory) mounts binfmt_misc
    there and returns None, or returns why it could not; register(file, line) writes a line to
    binfmt_misc's register file (an OSError when refused)."""
    step = next_binfmt_step(arch, binfmt_dir, conf_dirs)
    if step.action == "mount":
        log(f"rootfs: binfmt_misc is not mounted; mounting it at {binfmt_dir} (to run {arch} "
            "programs through qemu-user)")
        failure = (mount or _mount_binfmt)(binfmt_dir)
        if failure is not None:
            raise emulation_error(arch, f"binfmt_misc is not mounted at {binfmt_dir}, and "
                                  f"mounting it failed: {failure}",
                                  f"as root on the host (a container: a privileged one): mount "
                                  f"-t binfmt_misc binfmt_misc {binfmt_dir}")
        step = next_binfmt_step(arch, binfmt_dir, conf_dirs)
        if step.action == "mount":
            raise emulation_error(arch, f"binfmt_misc was mounted at {binfmt_dir} but has no "
                                  "register file there")
    if step.action == "register":
        entry = binfmt_dir / QEMU_BINFMT_ENTRY[arch]
        log(f"rootfs: registering binfmt_misc entry {entry.name} from {step.source}, as "
            "systemd-binfmt does at boot (it was not registered)")
        try:
            (register or _write_register)(binfmt_dir / "register", step.line)
        except OSError as exc:
            raise emulation_error(arch, f"registering {entry.name} from {step.source} in "
                                  f"{binfmt_dir / 'register'} failed ({exc.strerror or exc})",
                                  f"as root on the host: systemctl restart systemd-binfmt, or "
                                  f"write that file's line to {binfmt_dir / 'register'}") \
                from None
        if next_binfmt_step(arch, binfmt_dir, conf_dirs).action != "ready":
            raise emulation_error(arch, f"writing {step.source}'s line to "
                                  f"{binfmt_dir / 'register'} did not create {entry}")


def _mount_binfmt(directory: Path) -> str | None:
    try:
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(directory)],
                              capture_output=True, text=True)
    except OSError as exc:
        return str(exc)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def _write_register(path: Path, line: str) -> None:
    path.write_text(line)  # one write(2): Linux registers the entry within it


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").partition("\n")[0].strip()
    except OSError:
        return None


def _binfmt_entry_problem(entry: Path) -> tuple[str | None, str]:
    """(None, "") when a registered entry runs its programs inside a chroot, else (what is
    wrong, the fix). An entry reads 'enabled', 'interpreter <path>', 'flags: <letters>', ..."""
    try:
        lines = entry.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"{entry} cannot be read ({exc.strerror or exc})", QEMU_BINFMT_FIX
    if not lines or lines[0].strip() != "enabled":
        return f"binfmt_misc entry {entry} is disabled", f"enable it: echo 1 > {entry}"
    fields = dict(line.strip().partition(" ")[::2] for line in lines[1:])
    if "F" not in fields.get("flags:", ""):
        problem = (f"binfmt_misc entry {entry} was registered without the F flag, so its "
                   f"interpreter ({fields.get('interpreter', '?')}) is not found inside the "
                   "new root's chroot")
        return problem, (f"remove it (echo -1 > {entry}); kconform then registers "
                         "qemu-user-static's entry, which has it")
    return None, ""


def _binfmt_register_line(arch: str, name: str, conf_dirs: tuple[Path, ...]
                          ) -> tuple[str, Path]:
    """The register line for entry `name` from the first binfmt.d file <name>.conf, as
    systemd-binfmt reads them (binfmt.d(5): comments start with # or ;)."""
    for directory in conf_dirs:
        source = directory / f"{name}.conf"
        if not source.exists():
            continue
        try:
            text = source.read_text(errors="replace")
        except OSError as exc:
            raise emulation_error(arch, f"{source} cannot be read ({exc.strerror or exc})") \
                from None
        for line in (raw.strip() for raw in text.splitlines()):
            # :name:type:offset:magic:mask:interpreter:flags, any first character the separator
            if line and line[0] not in "#;" and line[1:].split(line[0])[0] == name:
                return line, source
        raise emulation_error(arch, f"binfmt_misc has no {name} entry, and {source} holds no "
                              f"line registering one (it overrides the files after it in "
                              f"{', '.join(map(str, conf_dirs))})",
                              f"restore that file, or {QEMU_BINFMT_FIX}")
    raise emulation_error(arch, f"binfmt_misc has no {name} entry, and no {name}.conf in "
                          f"{', '.join(map(str, conf_dirs))} says how to register one")


POWEROFF_LINK = "usr/local/bin/poweroff"


def _link_poweroff(root: Path) -> None:
    """virtme-ng's shell-script init (a foreign architecture's) ends a guest with `poweroff -f`;
    a minbase root has no poweroff (systemd-sysv's), and without it the init exits and the kernel
    panics on every guest's shutdown. busybox-static's applet does what -f asks: the reboot
    syscall, no init to signal. In /usr/local/bin: that init's PATH has no /usr/local/sbin."""
    link = root / POWEROFF_LINK
    if any((root / d / "poweroff").exists() for d in ("usr/sbin", "sbin", "usr/bin", "bin")) \
            or not (root / "usr/bin/busybox").exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to("/usr/bin/busybox")
