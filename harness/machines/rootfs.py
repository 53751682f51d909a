"""Pinned guest root filesystems: a minimal Debian built by debootstrap from a recipe in images/.

The default guest root is the host's own, so results can change when the host's Python or libbpf
changes. A pinned root holds only what the guest side needs, from one Debian suite, and is cached
like a kernel: built once per recipe under <cache>/rootfs/<name>-<recipe digest>/, published with
one rename, with a manifest that catches damage later. debootstrap checks the archive's signatures
(--force-check-gpg with Debian's keyring).

virtme-ng takes a kernel's modules from the root it boots (<root>/lib/modules/<release>), so each
kernel's modules are hard-linked into the root on first use; they add no userspace to the pin.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

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
            digest=hashlib.sha256(text.encode()).hexdigest()[:12])


@dataclass(frozen=True)
class Rootfs:
    """A built root: what vng --root is given, and what results record about it."""
    name: str
    path: Path
    digest: str
    packages: dict[str, str]  # package -> version, as debootstrap installed them

    def describe(self) -> str:
        """e.g. 'debian-bookworm@1a2b3c4d5e6f (python3 3.11.2-1+b1, libbpf1 1:1.1.0-1)'."""
        key = ", ".join(f"{p} {self.packages[p]}" for p in ("python3", "libbpf1")
                        if p in self.packages)
        return f"{self.name}@{self.digest}" + (f" ({key})" if key else "")


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


class RootfsProvider:
    def __init__(self, cache: Path | None = None,
                 log: Callable[[str], None] = lambda msg: None) -> None:
        self.dir = (cache or cache_dir()) / "rootfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    def get(self, name: str) -> Rootfs | None:
        """The built root for a recipe name (None for the host's own root)."""
        if name == HOST:
            return None
        check_rootfs_name(name)
        try:
            return self._get(name)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise KconformError(f"rootfs {name}: {exc}") from None

    def _get(self, name: str) -> Rootfs:
        spec = load_recipe(name)
        root = self.dir / f"{name}-{spec.digest}"
        with self._lock(root.name):
            hold_in_use(root)  # before the check: `cache prune` leaves it alone from here on
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                if meta:
                    return Rootfs(name, root, spec.digest, _recorded_packages(root, meta))
                self.log(f"rootfs {name}: cached root {root} is damaged ({problem}); "
                         "building again")
                remove_published(root)
            self._build(spec, root)
            meta, problem = check_manifest(root)
            if not meta:
                raise KconformError(f"rootfs {name}: freshly built root is damaged: {problem}")
            return Rootfs(name, root, spec.digest, _recorded_packages(root, meta))

    def _build(self, spec: RootfsSpec, root: Path) -> None:
        if not shutil.which("debootstrap"):
            raise KconformError(f"--rootfs {spec.name} needs debootstrap: apt-get install "
                                "debootstrap (./kconform installs it)")
        if os.geteuid() != 0:
            raise KconformError(f"--rootfs {spec.name}: building a root with debootstrap needs "
                                "root; run as root, or use --rootfs host")
        mirror = require_debian_mirror(f"rootfs {spec.name}")
        with staging_dir(self.dir, spec.name) as staging:
            self._debootstrap(spec, mirror, staging, root)

    def _debootstrap(self, spec: RootfsSpec, mirror: str, staging: Path, root: Path) -> None:
        target = staging / "root"
        cmd = ["debootstrap", f"--variant={spec.variant}", f"--include={','.join(spec.packages)}",
               f"--keyring={DEBIAN_KEYRING}", "--force-check-gpg", spec.suite, str(target), mirror]
        self.log(f"rootfs {spec.name}: building with {' '.join(cmd)} (once per recipe)")
        try:
            # The caller's APT_CONFIG would reach the apt and dpkg runs inside the new root.
            env = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env=dict(env, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))
            if proc.returncode != 0:
                raise KconformError(_debootstrap_error(spec, mirror, proc, target))
            for point in (GUEST_REPO, GUEST_BPF):
                (target / point.lstrip("/")).mkdir(parents=True, exist_ok=True)
            # The downloaded .debs are not part of the root.
            for deb in (target / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            publish(target, root, {"name": spec.name, "suite": spec.suite, "mirror": mirror,
                                   "recipe_digest": spec.digest,
                                   "packages": _installed_packages(target)})
        except OSError as exc:
            detail = str(exc)
            if disk_full(staging, detail):
                detail = (f"no space left in {self.dir}: free some space, or point KCONFORM_CACHE "
                          "at a larger disk")
            raise KconformError(f"rootfs {spec.name}: {detail}") from None

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


def _installed_packages(root: Path) -> dict[str, str]:
    proc = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                           "-f=${Package} ${Version}\n"],
                          capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def _debootstrap_error(spec: RootfsSpec, mirror: str, proc: subprocess.CompletedProcess[str],
                       target: Path) -> str:
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
                "to a reachable Debian mirror")
    else:
        hint = "debootstrap failed"
    return f"rootfs {spec.name} ({spec.suite}): {hint}\n{text}"
