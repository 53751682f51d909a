"""Turns a kernel name (or a path, or 'host') into a KernelTree, fetching and publishing Debian
trees in the cache."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
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
    publish,
    read_regular_file,
    remove_published,
    staging_dir,
    write_atomic,
)
from ..errors import KconformError, KernelUnavailable
from .apt import AptArchive, require_debian_mirror
from .specs import KernelSpec, _looks_like_path, load_specs
from .trees import KernelTree, bzimage_release, local_kernel_image

LISTS_MAX_AGE = 12 * 3600  # how long a resolution is trusted before apt asks the archive again


# An ABI or package version as it becomes part of a tree's directory name.
_DEBIAN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:-]*")


@dataclass(frozen=True)
class Resolution:
    """Which kernel the archive named for a spec, and when it was asked."""
    abi: str
    version: str
    at: float


def _read_resolution(path: Path) -> Resolution | None:
    """A cached resolution {abi, version, at}, or None when there is none or it is malformed."""
    try:
        data = json.loads(read_regular_file(path))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("abi"), str)
            and isinstance(data.get("version"), str) and isinstance(data.get("at"), (int, float))
            and _DEBIAN_WORD.fullmatch(data["abi"]) and _DEBIAN_WORD.fullmatch(data["version"])):
        return None
    return Resolution(abi=data["abi"], version=data["version"], at=float(data["at"]))


class KernelProvider:
    """Turns a kernel name (or path, or 'host') into a KernelTree, fetching when needed."""

    def __init__(self, cache: Path | None = None, specs: dict[str, KernelSpec] | None = None,
                 refresh: bool = False, log: Callable[[str], None] = lambda msg: None):
        self.cache = cache or cache_dir()
        self.specs = specs if specs is not None else load_specs()
        self.refresh = refresh
        self.log = log
        self.trees_dir = self.cache / "trees"
        self.trees_dir.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> KernelTree:
        if name == "host":
            return self._host()
        if name in self.specs:
            return self._debian(self.specs[name])
        if _looks_like_path(name):
            return self._local(Path(name))
        raise KconformError(f"unknown kernel {name!r}; known: {', '.join(self.specs)}")

    # -- Debian

    def _debian(self, spec: KernelSpec) -> KernelTree:
        with self._lock(f"debian-{spec.name}"):  # the spec's resolution file
            abi, version = self._resolve(spec)
        root = self.trees_dir / f"{abi}_{version}"
        # Two specs can resolve to one tree (the same suite under two names): its check, fetch
        # and publish are serialised on the tree itself, not on the name that asked for it.
        with self._lock(f"tree-{root.name}"):
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                if meta:
                    return self._tree_from(spec.name, root, meta)
                self.log(f"{spec.name}: cached tree {root} is damaged ({problem}); fetching again")
                remove_published(root)
            self._fetch(spec, abi, version, root)
            meta, problem = check_manifest(root)
            if not meta:
                raise KernelUnavailable(f"{spec.name}: freshly built tree is damaged: {problem}")
            return self._tree_from(spec.name, root, meta)

    def _resolve(self, spec: KernelSpec) -> tuple[str, str]:
        resolved_file = self.cache / "resolved" / f"{spec.name}.json"
        resolved_file.parent.mkdir(exist_ok=True)
        recent = _read_resolution(resolved_file)
        fresh = recent and time.time() - recent.at < LISTS_MAX_AGE and not self.refresh
        if recent and fresh and (self.trees_dir / f"{recent.abi}_{recent.version}").exists():
            return recent.abi, recent.version
        try:
            apt = AptArchive(self.cache / "apt", require_debian_mirror(spec.name))
            self.log(f"{spec.name}: asking the archive for the current {spec.meta} "
                     f"in {', '.join(spec.suites)}")
            # apt locks its lists; other workers wait instead of failing
            with self._lock("apt"), apt.session():
                apt.update(spec)
                abi, version = apt.resolve(spec)
            if not (_DEBIAN_WORD.fullmatch(abi) and _DEBIAN_WORD.fullmatch(version)):
                raise KernelUnavailable(f"{spec.name}: the archive names an odd kernel "
                                        f"{abi!r} version {version!r}; kconform does not use it")
        except KernelUnavailable as exc:
            if recent and (self.trees_dir / f"{recent.abi}_{recent.version}").exists():
                self.log(f"{spec.name}: {exc}\n{spec.name}: using the cached "
                         f"{recent.version} instead")
                return recent.abi, recent.version
            raise
        write_atomic(resolved_file, json.dumps({"abi": abi, "version": version, "at": time.time()}))
        return abi, version

    def _fetch(self, spec: KernelSpec, abi: str, version: str, root: Path) -> None:
        apt = AptArchive(self.cache / "apt", require_debian_mirror(spec.name))
        packages = [p.format(abi=abi) for p in spec.packages]
        with staging_dir(self.trees_dir, abi) as staging:
            self._fetch_into(spec, apt, packages, abi, version, staging, root)

    def _fetch_into(self, spec: KernelSpec, apt: AptArchive, packages: list[str], abi: str,
                    version: str, staging: Path, root: Path) -> None:
        try:
            debs_dir = staging / "debs"
            tree = staging / "tree"
            debs_dir.mkdir()
            tree.mkdir()
            self.log(f"{spec.name}: downloading {version}: {', '.join(packages)}")
            with self._lock("apt"), apt.session():
                debs = apt.download(spec, packages, version, debs_dir)
            for deb in debs:
                proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise KernelUnavailable(_unpack_error(spec.name, deb.name, proc.stderr,
                                                          staging))
            release = _normalise_layout(tree)
            proc = subprocess.run(["depmod", "-b", str(tree), release],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise KernelUnavailable(f"{spec.name}: depmod failed: {proc.stderr.strip()} "
                                        "(install kmod)")
            publish(tree, root, {"name": spec.name, "release": release, "abi": abi,
                                 "package_version": version, "packages": packages,
                                 "suites": list(spec.suites)})
        except OSError as exc:
            raise KernelUnavailable(_unpack_error(spec.name, "the kernel packages", str(exc),
                                                  staging)) from None

    def _tree_from(self, name: str, root: Path, meta: Manifest) -> KernelTree:
        release, version = meta.get("release"), meta.get("package_version")
        if not isinstance(release, str) or not isinstance(version, str):
            raise KernelUnavailable(f"{name}: the manifest of {root} names no release or package "
                                    "version; remove that directory and kconform fetches the "
                                    "kernel again")
        return KernelTree(name=name, vmlinuz=root / "boot" / f"vmlinuz-{release}", release=release,
                          package_version=version, root=root,
                          config_path=root / "boot" / f"config-{release}")

    def _lock(self, key: str) -> AbstractContextManager[None]:
        return cache_lock(self.trees_dir, key)

    # -- local and host kernels

    def _local(self, path: Path) -> KernelTree:
        path = path.expanduser().resolve()
        image = local_kernel_image(path)
        if path.is_dir():  # a built tree: vng boots it with its modules
            return KernelTree(name=str(path), vmlinuz=image, release=bzimage_release(image),
                              root=None, config_path=path / ".config", run_target=path)
        return KernelTree(name=str(path), vmlinuz=path, release=bzimage_release(path))

    def _host(self) -> KernelTree:
        release = os.uname().release
        image = Path(f"/boot/vmlinuz-{release}")
        if not image.exists():
            raise KconformError(f"--kernel host: {image} does not exist (the running kernel's "
                                "image is not installed here); name a Debian kernel instead")
        return KernelTree(name="host", vmlinuz=image, release=release,
                          config_path=Path(f"/boot/config-{release}"))


def _normalise_layout(tree: Path) -> str:
    """Lay out 7.x split packages (usr/lib/modules/<rel>/vmlinuz.unsigned) like the older ones."""
    usr_modules = tree / "usr" / "lib" / "modules"
    (tree / "boot").mkdir(exist_ok=True)
    (tree / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    if usr_modules.is_dir():
        for moddir in usr_modules.iterdir():
            release = moddir.name
            for src, dst in (("vmlinuz.unsigned", f"vmlinuz-{release}"),
                             ("vmlinuz", f"vmlinuz-{release}"),
                             ("config", f"config-{release}"),
                             ("System.map", f"System.map-{release}")):
                if (moddir / src).exists():
                    os.rename(moddir / src, tree / "boot" / dst)
            os.rename(moddir, tree / "lib" / "modules" / release)
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise KernelUnavailable(f"expected one kernel image in the packages, found "
                                f"{[i.name for i in images]}")
    return images[0].name[len("vmlinuz-"):]


def _unpack_error(name: str, what: str, detail: str, staging: Path) -> str:
    if disk_full(staging, detail):
        return (f"{name}: no space left on the device while unpacking {what} into "
                f"{staging.parent}: free some space, or point KCONFORM_CACHE at a larger disk")
    return f"{name}: unpacking {what} failed: {detail.strip()[-800:]}"
