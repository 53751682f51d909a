"""Builds the cases' BPF C programs on the host with clang, per guest architecture, cached by
content hash and architecture.

A case passes the object's host path to the guest call; the machine says where the guest sees it
(the same path on the host's root, a mount on a pinned root, a copy on an SSH target).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .arches import host_architecture
from .cache import bpf_cache_dir, hold_in_use
from .errors import KconformError
from .paths import REPO_ROOT

BPF_DIR = REPO_ROOT / "cases" / "bpf"
SYSTEM_ROOT = Path("/")  # where Debian's header packages install (tests point it elsewhere)


@dataclass(frozen=True)
class TargetArch:
    """What building BPF objects for one guest architecture needs to know of it."""
    define: str    # __TARGET_ARCH_<define>: libbpf's bpf/bpf_tracing.h picks its registers by it
    triplet: str   # Debian's multiarch triplet, which names the directories of its asm/ headers


TARGET_ARCHES = {"amd64": TargetArch("x86", "x86_64-linux-gnu"),
                 "arm64": TargetArch("arm64", "aarch64-linux-gnu")}


class BpfBuildError(KconformError):
    pass


def target_arch(arch: str) -> TargetArch:
    try:
        return TARGET_ARCHES[arch]
    except KeyError:
        raise BpfBuildError(f"no BPF build for architecture {arch!r}: kconform builds BPF objects "
                            f"for {', '.join(TARGET_ARCHES)}") from None


def uapi_include(arch: str) -> Path:
    """The directory holding `arch`'s kernel UAPI asm/ headers: linux-libc-dev's on a host of
    that architecture (or with it added to dpkg), else the cross package's."""
    spec = target_arch(arch)
    candidates = [SYSTEM_ROOT / "usr" / "include" / spec.triplet,   # linux-libc-dev:<arch>
                  SYSTEM_ROOT / "usr" / spec.triplet / "include"]   # linux-libc-dev-<arch>-cross
    for directory in candidates:
        if (directory / "asm" / "types.h").is_file():
            return directory
    package = "linux-libc-dev" if host_architecture() == arch else f"linux-libc-dev-{arch}-cross"
    raise BpfBuildError(f"no {arch} kernel headers (asm/types.h) in "
                        f"{' or '.join(str(c) for c in candidates)}, which BPF objects for "
                        f"{arch} guests are built with: install {package} (apt-get install "
                        f"{package}), or run ./kconform")


def clang_command(source: Path, output: Path, arch: str, include: Path) -> list[str]:
    """clang for `arch`'s guests, with its UAPI headers at `include` (uapi_include's answer).
    -I puts a cross package's own linux/*.h (bookworm's are 6.1.4's) before the host's too;
    -idirafter would not, but then gcc-multilib's /usr/include/asm (a link to x86_64's asm/)
    would win over the architecture's own."""
    return ["clang", "-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{target_arch(arch).define}",
            "-Wall", "-Werror", f"-I{include}", f"-I{BPF_DIR}",
            "-c", str(source), "-o", str(output)]


def _inputs_digest(source: Path, clang_version: str, arch: str, include: Path) -> str:
    h = hashlib.sha256(clang_version.encode())
    for path in [source, *sorted(BPF_DIR.glob("*.h"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    # the command names the architecture (its __TARGET_ARCH_* and headers): digests differ by it
    h.update(" ".join(clang_command(Path("src"), Path("out"), arch, include)).encode())
    return h.hexdigest()[:24]


def build(name: str, cache: Path | None = None, source_dir: Path = BPF_DIR,
          arch: str = "amd64") -> Path:
    """cases/bpf/<name>.bpf.c (or another source_dir's) -> a cached .o for `arch`'s guests
    (<name>-<arch>-<digest>.o, so `cache prune --keep` counts each architecture's apart);
    rebuilt only when its inputs change."""
    include = uapi_include(arch)
    source = source_dir / f"{name}.bpf.c"
    if not source.exists():
        raise BpfBuildError(f"no BPF source {source}")
    if not shutil.which("clang"):
        raise BpfBuildError("clang not found: install clang, llvm and libbpf-dev "
                            "(apt-get install clang llvm libbpf-dev), or run ./kconform")
    version = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
    out_dir = cache / "bpf" if cache else bpf_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{arch}-{_inputs_digest(source, version, arch, include)}.o"
    hold_in_use(target)  # before the check: `cache prune` leaves it alone from here on
    if target.is_file() and not target.is_symlink():  # a planted link is replaced, not loaded
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".o", dir=out_dir)
    os.close(fd)
    proc = subprocess.run(clang_command(source, Path(tmp), arch, include),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)  # clang removes its output on some errors
        # A clang backend crash appends a stack dump: the diagnostic is what comes before it.
        message = proc.stderr.split("PLEASE submit a bug report")[0].strip()
        raise BpfBuildError(f"building {source.name} for {arch} failed:\n{message}")
    os.replace(tmp, target)  # concurrent builders of the same inputs write the same bytes
    return target
