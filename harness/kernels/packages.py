"""Kernels from Debian packages that are in no archive: a candidate .deb before it is published,
the split packages of a 7.x kernel in one directory, or a tree someone extracted from them
(boot/vmlinuz-* beside lib/modules/*).

A bzImage taken out of such a package boots without its modules (9p is a module in Debian's
generic flavour, so no root is mounted): these are unpacked into the cache like an archive
kernel, with depmod run, and boot with their modules. Nothing checks a signature: the results
say the kernel is local and unverified, and carry each package's sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cache import file_sha256
from ..errors import KconformError, KernelUnavailable
from .trees import bzimage_version_string

BUILD_INFO = "kconform-build.json"  # what build.py leaves in a kernel it built
IMAGE_PACKAGES = ("linux-image-", "linux-binary-")  # the 7.x split calls the image linux-binary


@dataclass(frozen=True)
class LocalPackages:
    """What a --kernel path holds that is a Debian kernel rather than a built source tree."""
    path: Path
    debs: tuple[Path, ...] = ()    # .deb files to unpack, or
    extracted: Path | None = None  # a tree already unpacked from them

    def controls(self) -> dict[Path, dict[str, str]]:
        """Each .deb's Package and Version; a KconformError unless one is a kernel image."""
        controls = {deb: _control(deb) for deb in self.debs}
        if self.debs and not any(c.get("Package", "").startswith(IMAGE_PACKAGES)
                                 for c in controls.values()):
            raise KconformError(
                f"{self.path}: none of {', '.join(d.name for d in self.debs)} is a kernel image "
                "package (linux-image-* or, for 7.x, linux-binary-*); give the image package, "
                "with its modules package beside it in one directory for a 7.x kernel")
        return controls

    def digest(self) -> str:
        """A name for the cache entry: the packages' contents, or the extracted tree's files."""
        h = hashlib.sha256()
        for name, sha in sorted(self.sha256().items()):
            h.update(f"{name}\0{sha}\n".encode())
        return h.hexdigest()[:16]

    def sha256(self) -> dict[str, str]:
        """{package file name: sha256}, or {the kernel image's path in the tree: sha256}."""
        if self.extracted is not None:
            return {str(image.relative_to(self.extracted)): file_sha256(image)
                    for image in _images(self.extracted)} | {
                        "lib/modules": _listing_sha256(self.extracted)}
        return {deb.name: file_sha256(deb) for deb in self.debs}


def classify(path: Path) -> LocalPackages | None:
    """The Debian kernel a path names, or None for a bzImage or a built source tree. A path that
    is neither is a KconformError saying what each would look like."""
    if path.is_file() and path.suffix == ".deb":
        return LocalPackages(path, debs=(path,))
    if not path.is_dir() or (path / "arch" / "x86" / "boot" / "bzImage").is_file():
        return None
    debs = tuple(sorted(path.glob("*.deb")))
    if _images(path) and _modules(path):
        if debs:
            raise KconformError(f"{path} holds both an extracted kernel tree (boot/, lib/modules/) "
                                f"and .deb packages ({debs[0].name}): which one is the kernel? "
                                "Move one of them out, or name the .deb itself")
        return LocalPackages(path, extracted=path)
    if debs:
        return LocalPackages(path, debs=debs)
    return None


def unpack(packages: LocalPackages, tree: Path, log: Callable[[str], None]) -> dict[str, object]:
    """Unpack (or copy) into `tree`, a staging directory; the manifest's facts about the kernel.
    The caller lays the tree out and runs depmod, as for an archive kernel."""
    if packages.extracted is not None:
        log(f"{packages.path}: copying the extracted kernel tree into the cache")
        for part in ("boot", "lib", "usr"):
            source = packages.extracted / part
            if source.is_dir():  # hard links where it can: a tree of modules is 400 MB
                shutil.copytree(source, tree / part, symlinks=True, copy_function=_link_or_copy)
        facts: dict[str, object] = {"package_version": debian_version_of(_images(tree)[0]),
                                    "packages": [], "sha256": packages.sha256()}
        built = packages.extracted / BUILD_INFO  # made here by --build (build.py)
        if built.is_file():
            info = json.loads(built.read_text())
            facts["built_from"] = f"{info.get('source')} ({info.get('identity')})"
        return facts
    versions: dict[str, str] = {}
    arch = None
    for deb, fields in packages.controls().items():
        versions[fields.get("Package", deb.name)] = fields.get("Version", "")
        if fields.get("Package", "").startswith(IMAGE_PACKAGES):
            arch = fields.get("Architecture")  # the image's: linux-base-* is "all"
        log(f"{packages.path}: unpacking {deb.name} ({fields.get('Package')} "
            f"{fields.get('Version')})")
        extract(deb, tree)
    image = next(v for name, v in versions.items() if name.startswith(IMAGE_PACKAGES))
    return {"package_version": image or None, "packages": sorted(versions),
            "sha256": packages.sha256(), "arch": arch}


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem, or links refused
        shutil.copy2(source, dest)


class ExtractFailed(KernelUnavailable):
    def __init__(self, deb: Path, detail: str) -> None:
        super().__init__(f"unpacking {deb.name} failed: {detail.strip()[-800:]}")
        self.deb, self.detail = deb, detail


def extract(deb: Path, tree: Path) -> None:
    """dpkg-deb -x, as a package's unpack step would (no maintainer scripts)."""
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise ExtractFailed(deb, proc.stderr)


def debian_version_of(image: Path) -> str | None:
    """The package version a Debian kernel image names in its version string (the bzImage
    header's "6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP ... Debian 6.1.192-3
    (2026-11-20)"), which a tree extracted from the package keeps when its control files are
    gone: without it a 6.1.192 kernel would be judged as 6.1.0."""
    match = re.search(r" Debian (\d[^ ]*) ", bzimage_version_string(image))
    return match.group(1) if match else None


def _control(deb: Path) -> dict[str, str]:
    try:
        proc = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise KconformError(f"{deb}: reading a .deb needs dpkg-deb; install dpkg") from None
    if proc.returncode != 0:
        raise KconformError(f"{deb} is not a Debian package ({proc.stderr.strip()[-200:]}); "
                            "give a .deb downloaded with apt-get download, or a directory of "
                            "them")
    fields: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _images(tree: Path) -> list[Path]:
    return sorted(tree.glob("boot/vmlinuz-*")) + sorted(tree.glob("usr/lib/modules/*/vmlinuz*"))


def _modules(tree: Path) -> bool:
    return any((tree / d).is_dir() for d in ("lib/modules", "usr/lib/modules"))


def _listing_sha256(tree: Path) -> str:
    """The module directories' file names, sizes and mtimes: a changed module makes a new entry,
    without hashing every module on each run."""
    h = hashlib.sha256()
    for d in ("lib/modules", "usr/lib/modules"):
        for path in sorted((tree / d).rglob("*")) if (tree / d).is_dir() else []:
            if path.is_file():
                stat = path.stat()
                h.update(f"{path.relative_to(tree)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                         .encode())
    return h.hexdigest()
