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

from ..arches import ARCHITECTURES, host_architecture, named_arch
from ..cache import (
    MANIFEST,
    Manifest,
    cache_dir,
    cache_lock,
    check_manifest,
    check_published,
    disk_full,
    hold_in_use,
    publish,
    read_regular_file,
    remove_published,
    staging_dir,
    write_atomic,
)
from ..errors import KconformError, KernelUnavailable
from ..versions import debian_version_key, upstream_version
from .apt import (
    AptArchive,
    ArchiveVersion,
    archive_max_age,
    require_debian_mirror,
    security_mirror_for,
)
from .packages import ExtractFailed, LocalPackages, classify, extract, unpack
from .selectors import split_pinned, unknown_version_message
from .specs import KernelSpec, _looks_like_path, load_specs
from .trees import KernelTree, bzimage_release, local_kernel_image

LISTS_MAX_AGE = 12 * 3600  # how long a resolution is trusted before apt asks the archive again


# An ABI or package version as it becomes part of a tree's directory name.
_DEBIAN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:-]*")


@dataclass(frozen=True)
class Listing:
    """Every build the archive holds for a spec (oldest first), and when it was asked."""
    builds: tuple[ArchiveVersion, ...]
    at: float

    @property
    def current(self) -> ArchiveVersion:
        return self.builds[-1]


def _read_listing(path: Path) -> Listing | None:
    """A cached listing {at, builds: [{version, abi, suite}]}, or None when there is none or it is
    malformed. A resolution file of kconform before versions ({abi, version, at}) is a listing of
    that one build, known only to be old."""
    try:
        data = json.loads(read_regular_file(path))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("at"), (int, float)):
        return None
    entries = data.get("builds", [data] if "abi" in data else None)
    if not isinstance(entries, list) or not entries:
        return None
    builds = []
    for entry in entries:
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str)
                                                 for k in ("abi", "version"))
                and _DEBIAN_WORD.fullmatch(entry["abi"])
                and _DEBIAN_WORD.fullmatch(entry["version"])):
            return None
        suite = entry.get("suite")
        builds.append(ArchiveVersion(entry["version"], entry["abi"],
                                     suite if isinstance(suite, str) else ""))
    try:
        builds.sort(key=lambda b: debian_version_key(b.version))
    except ValueError:
        return None
    return Listing(builds=tuple(builds), at=float(data["at"]) if "builds" in data else 0.0)


def _write_listing(path: Path, listing: Listing) -> None:
    write_atomic(path, json.dumps({"at": listing.at, "builds": [
        {"version": b.version, "abi": b.abi, "suite": b.suite} for b in listing.builds]},
        indent=1))


def tree_dir_name(build: ArchiveVersion) -> str:
    return f"{build.abi}_{build.version}"


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
        self._asked: set[str] = set()  # specs whose listing this provider asked the archive

    def get(self, name: str) -> KernelTree:
        if name == "host":
            return self._host()
        spec_name, pinned = split_pinned(name)
        if spec_name in self.specs:
            return self._debian(self.specs[spec_name], pinned, name)
        if _looks_like_path(name):
            return self._local(Path(name))
        raise KconformError(f"unknown kernel {name!r}; known: {', '.join(self.specs)}")

    def versions(self, spec: KernelSpec) -> list[ArchiveVersion]:
        """Every build of the spec the archive holds, oldest first (dpkg's order)."""
        with self._lock(f"debian-{spec.name}"):
            return list(self._listing(spec).builds)

    def download_packages(self, name: str, dest: Path,
                          packages: list[str] | None = None) -> list[Path]:
        """The .debs of a named kernel's current build (or other packages of its source at
        that version, e.g. linux-source-6.1), into dest: what `apt-get download` of them
        gives, from the archive kconform reads (signatures checked). Candidate packages and
        source trees are tested from such files."""
        spec = self.specs[name]
        with self._lock(f"debian-{spec.name}"):
            build = self._resolve(spec)
        apt = self._archive(spec)
        with apt.session():
            apt.update(spec)
            return apt.download(spec, packages or [p.format(abi=build.abi)
                                                   for p in spec.packages], build.version, dest)

    def cached_tree(self, build: ArchiveVersion) -> Path | None:
        root = self.trees_dir / tree_dir_name(build)
        return root if (root / MANIFEST).is_file() and not root.is_symlink() else None

    # -- Debian

    def _debian(self, spec: KernelSpec, pinned: str | None, name: str) -> KernelTree:
        with self._lock(f"debian-{spec.name}"):  # the spec's listing file
            build = self._resolve(spec) if pinned is None else self._pinned(spec, pinned)
        root = self.trees_dir / tree_dir_name(build)
        # Two specs can resolve to one tree (the same suite under two names): its check, fetch
        # and publish are serialised on the tree itself, not on the name that asked for it.
        with self._lock(f"tree-{root.name}"):
            hold_in_use(root)  # `cache prune` leaves it alone while this run lives
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                if meta:
                    return self._tree_from(name, root, meta, build)
                self.log(f"{name}: cached tree {root} is damaged ({problem}); fetching again")
                remove_published(root)
            self._fetch(spec, build, root)
            meta, problem = check_manifest(root)
            if not meta:
                raise KernelUnavailable(f"{name}: freshly built tree is damaged: {problem}")
            return self._tree_from(name, root, meta, build)

    def _resolve(self, spec: KernelSpec) -> ArchiveVersion:
        """The spec's current build: the newest its suites hold."""
        return self._listing(spec).current

    def _pinned(self, spec: KernelSpec, version: str) -> ArchiveVersion:
        """The build of a pinned name (spec@version), from the listing; a version the archive no
        longer lists but whose tree is cached is still that tree."""
        listing = self._listing(spec)
        for build in listing.builds:
            if build.version == version:
                return build
        for root in sorted(self.trees_dir.glob(f"*_{version}")):
            meta, _ = check_manifest(root)
            if meta and meta.get("name") == spec.name and isinstance(meta.get("abi"), str):
                return ArchiveVersion(version, str(meta["abi"]), str(meta.get("suite", "")))
        raise KconformError(unknown_version_message(spec, version, list(listing.builds)))

    def _listing(self, spec: KernelSpec) -> Listing:
        """The spec's builds, asked of the archive at most every LISTS_MAX_AGE (or when refresh),
        else the cached listing; offline, the last listing with a message."""
        listing_file = self.cache / "resolved" / f"{spec.name}.json"
        listing_file.parent.mkdir(exist_ok=True)
        recent = _read_listing(listing_file)
        fresh = recent and time.time() - recent.at < LISTS_MAX_AGE and not self.refresh
        if recent and fresh:
            return recent
        if recent and self.refresh and spec.name in self._asked:
            return recent  # --refresh-kernels asks once per run, not once per kernel version
        try:
            apt = self._archive(spec)
            self.log(f"{spec.name}: asking the archive for the {spec.flavour} builds of "
                     f"{'series ' + spec.series if spec.series else 'the newest series'} in "
                     f"{', '.join(spec.suites)}" + self._max_age_note(apt))
            # one apt session at a time per apt directory; other workers wait, not fail
            with apt.session():
                apt.update(spec)
                builds = apt.listing(spec)
            odd = [b for b in builds if not (_DEBIAN_WORD.fullmatch(b.abi)
                                             and _DEBIAN_WORD.fullmatch(b.version))]
            if odd:
                raise KernelUnavailable(f"{spec.name}: the archive names an odd kernel "
                                        f"{odd[0].abi!r} version {odd[0].version!r}; kconform "
                                        "does not use it")
        except KernelUnavailable as exc:
            if recent:
                self.log(f"{spec.name}: {exc}\n{spec.name}: using the last listing "
                         f"(current {recent.current.version}) instead")
                return recent
            raise
        listing = Listing(builds=tuple(builds), at=time.time())  # apt.listing: dpkg's order
        _write_listing(listing_file, listing)
        self._asked.add(spec.name)
        return listing

    def _archive(self, spec: KernelSpec) -> AptArchive:
        mirror = require_debian_mirror(spec.name)
        # only a spec with a -security suite needs to know where they are: a snapshot or file://
        # mirror of sid or experimental names none
        security = security_mirror_for(mirror) if any(
            suite.endswith("-security") for suite in spec.suites) else None
        return AptArchive(self.cache / "apt", mirror, security_mirror=security,
                          max_age=archive_max_age())

    @staticmethod
    def _max_age_note(apt: AptArchive) -> str:
        if not apt.max_age:
            return ""
        age = (f"{apt.max_age / 86400:g} days" if apt.max_age >= 86400
               else f"{apt.max_age / 3600:g} hours")
        return (f" (KCONFORM_ARCHIVE_MAX_AGE: Release files up to {age} old are taken, still "
                "signature-checked)")

    def _fetch(self, spec: KernelSpec, build: ArchiveVersion, root: Path) -> None:
        apt = self._archive(spec)
        packages = [p.format(abi=build.abi) for p in spec.packages]
        with staging_dir(self.trees_dir, build.abi) as staging:
            self._fetch_into(spec, apt, packages, build, staging, root)

    def _fetch_into(self, spec: KernelSpec, apt: AptArchive, packages: list[str],
                    build: ArchiveVersion, staging: Path, root: Path) -> None:
        version = build.version
        try:
            debs_dir = staging / "debs"
            tree = staging / "tree"
            debs_dir.mkdir()
            tree.mkdir()
            self.log(f"{spec.name}: downloading {version} from {build.suite or 'the archive'}: "
                     f"{', '.join(packages)}")
            with apt.session():
                # the lists may be older than the listing (another name's update, a cache whose
                # lists were lost): the packages are fetched from lists read just now
                apt.update(spec)
                debs = apt.download(spec, packages, version, debs_dir,
                                    progress=self._progress(f"{spec.name}@{version}"))
            for deb in debs:
                try:
                    extract(deb, tree)
                except ExtractFailed as exc:
                    raise KernelUnavailable(_unpack_error(spec.name, deb.name, exc.detail,
                                                          staging)) from None
            release = _normalise_layout(tree)
            _depmod(spec.name, tree, release)
            publish(tree, root, {"name": spec.name, "release": release, "abi": build.abi,
                                 "package_version": version, "packages": packages,
                                 "suites": list(spec.suites), "suite": build.suite,
                                 "series": spec.series or ".".join(
                                     map(str, upstream_version(release)[:2])),
                                 "flavour": spec.flavour, "arch": spec.arch,
                                 "archive_max_age": apt.max_age})
        except OSError as exc:
            raise KernelUnavailable(_unpack_error(spec.name, "the kernel packages", str(exc),
                                                  staging)) from None

    def _progress(self, what: str) -> Callable[[int, int | None], None]:
        def report(done: int, total: int | None) -> None:
            of = f" of {total / 1e6:.1f} MB" if total else " MB"
            self.log(f"{what}: downloaded {done / 1e6:.1f}{of}")
        return report

    def _tree_from(self, name: str, root: Path, meta: Manifest,
                   build: ArchiveVersion | None = None) -> KernelTree:
        release, version = meta.get("release"), meta.get("package_version")
        if not isinstance(release, str) or not isinstance(version, str):
            raise KernelUnavailable(f"{name}: the manifest of {root} names no release or package "
                                    "version; remove that directory and kconform fetches the "
                                    "kernel again")
        suite = meta.get("suite") or (build.suite if build else None)
        return KernelTree(name=name, vmlinuz=root / "boot" / f"vmlinuz-{release}", release=release,
                          package_version=version, root=root,
                          config_path=root / "boot" / f"config-{release}",
                          suite=suite if isinstance(suite, str) and suite else None,
                          arch=tree_arch(meta, release))

    def _lock(self, key: str) -> AbstractContextManager[None]:
        return cache_lock(self.trees_dir, key)

    # -- local and host kernels

    def _local(self, path: Path) -> KernelTree:
        path = path.expanduser().resolve()
        packages = classify(path) if path.exists() else None
        if packages is not None:
            return self._local_packages(packages)
        image = local_kernel_image(path)
        if path.is_dir():  # a built tree: vng boots it with its modules
            return KernelTree(name=str(path), vmlinuz=image, release=bzimage_release(image),
                              root=None, config_path=path / ".config", run_target=path)
        return KernelTree(name=str(path), vmlinuz=path, release=bzimage_release(path))

    def _local_packages(self, packages: LocalPackages) -> KernelTree:
        """A candidate .deb, a directory of them, or an extracted tree: unpacked into the cache
        (keyed by content) with depmod run, so it boots with its modules."""
        name = str(packages.path)
        try:
            root = self.trees_dir / f"local-{packages.digest()}"
        except OSError as exc:  # a file of the tree vanished or is unreadable since the check
            raise KernelUnavailable(f"{name}: cannot read it ({exc}); give a readable .deb or "
                                    "extracted kernel tree") from None
        with self._lock(f"tree-{root.name}"):
            hold_in_use(root)
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                if meta:
                    return self._local_tree(name, root, meta)
                self.log(f"{name}: cached tree {root} is damaged ({problem}); unpacking again")
                remove_published(root)
            with staging_dir(self.trees_dir, root.name) as staging:
                tree = staging / "tree"
                tree.mkdir()
                try:
                    facts = unpack(packages, tree, self.log)
                    release = _normalise_layout(tree)
                except ExtractFailed as exc:
                    raise KernelUnavailable(_unpack_error(name, exc.deb.name, exc.detail,
                                                          staging)) from None
                except OSError as exc:
                    raise KernelUnavailable(_unpack_error(name, "the packages", str(exc),
                                                          staging)) from None
                _depmod(name, tree, release)
                publish(tree, root, {"name": name, "release": release, "local": True,
                                     "package_version": facts["package_version"] or release,
                                     "packages": facts["packages"], "sha256": facts["sha256"],
                                     "built_from": facts.get("built_from"),
                                     "arch": facts.get("arch")})
            meta, problem = check_manifest(root)
            if not meta:
                raise KernelUnavailable(f"{name}: freshly unpacked tree is damaged: {problem}")
            return self._local_tree(name, root, meta)

    def _local_tree(self, name: str, root: Path, meta: Manifest) -> KernelTree:
        tree = self._tree_from(name, root, meta)
        digests = meta.get("sha256")
        shown = "; ".join(f"{file} sha256:{digest}" for file, digest in sorted(digests.items())) \
            if isinstance(digests, dict) else "no digest recorded"
        built = meta.get("built_from")
        tree.suite = f"built here from {built}" if isinstance(built, str) else \
            f"local, unverified (no archive signature): {shown}"
        return tree

    def _host(self) -> KernelTree:
        release = os.uname().release
        image = Path(f"/boot/vmlinuz-{release}")
        if not image.exists():
            raise KconformError(f"--kernel host: {image} does not exist (the running kernel's "
                                "image is not installed here); name a Debian kernel instead")
        return KernelTree(name="host", vmlinuz=image, release=release,
                          config_path=Path(f"/boot/config-{release}"), arch=host_architecture())


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


def _depmod(name: str, tree: Path, release: str) -> None:
    """The modules' index, which a package's postinst would have made: virtme-ng's init loads
    9p and virtio modules with modprobe."""
    proc = subprocess.run(["depmod", "-b", str(tree), release], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelUnavailable(f"{name}: depmod failed: {proc.stderr.strip()} (install kmod)")


def _unpack_error(name: str, what: str, detail: str, staging: Path) -> str:
    if disk_full(staging, detail):
        return (f"{name}: no space left on the device while unpacking {what} into "
                f"{staging.parent}: free some space, or point KCONFORM_CACHE at a larger disk")
    return f"{name}: unpacking {what} failed: {detail.strip()[-800:]}"


def tree_arch(meta: Manifest, release: str) -> str:
    """A cached tree's architecture: its manifest's, or (a tree fetched before manifests said)
    the end of its release, as Debian names flavours (6.12.118+deb13-arm64)."""
    arch = meta.get("arch")
    if isinstance(arch, str) and arch in ARCHITECTURES:
        return arch
    return named_arch(release) or "amd64"
