"""The Debian architectures kconform boots guests of, and the other names they go by: one place
that knows them, at the bottom, for kernel definitions, machines, BPF objects and the cache."""
from __future__ import annotations

import platform

ARCHITECTURES = ("amd64", "arm64")
# `uname -m` (platform.machine()) on a machine of each architecture
MACHINES = {"x86_64": "amd64", "aarch64": "arm64"}


def of_machine(machine: str) -> str:
    """The Debian architecture of a `uname -m` (itself when kconform knows no other name)."""
    return MACHINES.get(machine, machine)


def host_architecture() -> str:
    """The host's Debian architecture (amd64, arm64, or what uname says for others)."""
    return of_machine(platform.machine())


def named_arch(name: str) -> str | None:
    """The architecture a Debian name ends with: an ABI (6.12.118+deb13-arm64), a root's or a
    BPF object's cache name (debian-bookworm-arm64); None when it names none."""
    return next((arch for arch in ARCHITECTURES if name.endswith(f"-{arch}")), None)
