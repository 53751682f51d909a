"""Builds the cases' BPF C programs on the host with clang, cached by content hash.

A case passes the object's host path to the guest call; the machine says where the guest sees it
(the same path on the host's root, a mount on a pinned root, a copy on an SSH target).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache import bpf_cache_dir, hold_in_use
from .errors import KconformError
from .paths import REPO_ROOT

BPF_DIR = REPO_ROOT / "cases" / "bpf"
ARCH_INCLUDE = "/usr/include/x86_64-linux-gnu"  # asm/types.h for -target bpf on Debian


class BpfBuildError(KconformError):
    pass


def clang_command(source: Path, output: Path) -> list[str]:
    return ["clang", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror",
            f"-I{ARCH_INCLUDE}", f"-I{BPF_DIR}", "-c", str(source), "-o", str(output)]


def _inputs_digest(source: Path, clang_version: str) -> str:
    h = hashlib.sha256(clang_version.encode())
    for path in [source, *sorted(BPF_DIR.glob("*.h"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(" ".join(clang_command(Path("src"), Path("out"))).encode())
    return h.hexdigest()[:24]


def build(name: str, cache: Path | None = None, source_dir: Path = BPF_DIR) -> Path:
    """cases/bpf/<name>.bpf.c (or another source_dir's) -> a cached .o; rebuilt only when its
    inputs change."""
    source = source_dir / f"{name}.bpf.c"
    if not source.exists():
        raise BpfBuildError(f"no BPF source {source}")
    if not shutil.which("clang"):
        raise BpfBuildError("clang not found: install clang, llvm and libbpf-dev "
                            "(apt-get install clang llvm libbpf-dev), or run ./kconform")
    version = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
    out_dir = cache / "bpf" if cache else bpf_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{_inputs_digest(source, version)}.o"
    hold_in_use(target)  # before the check: `cache prune` leaves it alone from here on
    if target.is_file() and not target.is_symlink():  # a planted link is replaced, not loaded
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".o", dir=out_dir)
    os.close(fd)
    proc = subprocess.run(clang_command(source, Path(tmp)), capture_output=True, text=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)  # clang removes its output on some errors
        # A clang backend crash appends a stack dump: the diagnostic is what comes before it.
        message = proc.stderr.split("PLEASE submit a bug report")[0].strip()
        raise BpfBuildError(f"building {source.name} failed:\n{message}")
    os.replace(tmp, target)  # concurrent builders of the same inputs write the same bytes
    return target
