"""Kernel version strings, read in one place: a package version or `uname -r` to its upstream
version, and a version bound of the expectations data."""
from __future__ import annotations

import re

UpstreamVersion = tuple[int, int, int]

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
UNKNOWN = (10**6, 0, 0)  # sorts after every real version


def upstream_version(text: str) -> UpstreamVersion:
    """The upstream version a package version or release starts with: '6.1.176-1' -> (6, 1, 176),
    '6.1.0-50-amd64' -> (6, 1, 0), '6.7' -> (6, 7, 0). ValueError when there is none."""
    match = _VERSION.match(text)
    if not match:
        raise ValueError(f"no kernel version in {text!r}")
    major, minor, patch = (int(g or 0) for g in match.groups())
    return major, minor, patch


def bound_version(text: str) -> UpstreamVersion:
    """A version bound as the expectations write it, whole: '6.1' -> (6, 1, 0),
    '6.1.72' -> (6, 1, 72); anything else is a ValueError."""
    if not _VERSION.fullmatch(text):
        raise ValueError(f"{text!r} is not a kernel version like \"6.1\" or \"6.1.72\"")
    return upstream_version(text)


def sort_key(text: str | None) -> UpstreamVersion:
    """Orders kernels by upstream version; one with no readable version goes last."""
    try:
        return upstream_version(text) if text else UNKNOWN
    except ValueError:
        return UNKNOWN


def dotted(version: UpstreamVersion) -> str:
    return ".".join(map(str, version))
