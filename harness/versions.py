"""Kernel version strings, read in one place: a package version or `uname -r` to its upstream
version, a version bound of the expectations data, and Debian package versions in dpkg's order.

An upstream version is (major, minor, patch, rc). A release has rc = RELEASE, greater than any
release candidate's number, so 7.3-rc7 = (7, 3, 0, 7) sorts after every 7.2.y and before
7.3 = (7, 3, 0, RELEASE): a release candidate is judged as the release it precedes, before it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

UpstreamVersion = tuple[int, int, int, int]

RELEASE = 10**6  # the rc field of a release: after every release candidate of it
UNKNOWN: UpstreamVersion = (10**6, 0, 0, RELEASE)  # sorts after every real version

# major.minor[.patch], then a release candidate as a package writes it (7.3~rc7-1~exp1) or as
# uname does (7.3-rc7-amd64, 7.3.0-rc7-amd64).
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[~-]rc(\d+))?")
_BOUND = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:-rc([1-9]\d*))?")


# The part of a Debian kernel ABI (and `uname -r`) before its flavour: 6.1.0-50, 6.12.117+deb13,
# 7.3 (an RC), 6.1.0-0.deb11.48. A flavour word (rt, cloud) never starts with a digit, so
# 6.1.0-50-rt-amd64 is not the generic flavour's 6.1.0-50-rt.
DEBIAN_ABI_VERSION = r"\d+\.\d+(?:\.\d+)?(?:\+[a-z0-9.]+)?(?:-rc\d+)?(?:-\d[0-9a-z.]*)?"
_DEBIAN_RELEASE = re.compile(DEBIAN_ABI_VERSION + r"-(?P<flavour>[a-z][a-z0-9-]*)")


def debian_release_flavour(release: str) -> str | None:
    """The flavour a Debian kernel's release ends with ('6.1.0-50-rt-amd64' -> 'rt-amd64');
    None when it is not a Debian release."""
    match = _DEBIAN_RELEASE.fullmatch(release)
    return match["flavour"] if match else None


def _from_match(match: re.Match[str]) -> UpstreamVersion:
    major, minor, patch, rc = match.groups()
    return int(major), int(minor), int(patch or 0), int(rc) if rc is not None else RELEASE


def upstream_version(text: str) -> UpstreamVersion:
    """The upstream version a package version or release starts with: '6.1.176-1' ->
    (6, 1, 176, RELEASE), '6.1.0-50-amd64' -> (6, 1, 0, RELEASE), '6.7' -> (6, 7, 0, RELEASE),
    '7.3~rc7-1~exp1' and '7.3-rc7-amd64' -> (7, 3, 0, 7). ValueError when there is none."""
    match = _VERSION.match(text)
    if not match:
        raise ValueError(f"no kernel version in {text!r}")
    return _from_match(match)


def bound_version(text: str) -> UpstreamVersion:
    """A version bound as the expectations write it, whole: '6.1' -> (6, 1, 0, RELEASE),
    '6.1.72' -> (6, 1, 72, RELEASE), '7.3-rc7' -> (7, 3, 0, 7); anything else is a ValueError."""
    match = _BOUND.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a kernel version like \"6.1\", \"6.1.72\" or "
                         "\"7.3-rc7\"")
    return _from_match(match)


def as_upstream(version: tuple[int, ...]) -> UpstreamVersion:
    """A version given as (major, minor[, patch[, rc]]) as a full UpstreamVersion: the fields
    left out are those of a release, so (6, 1, 72) is 6.1.72 itself."""
    if not 2 <= len(version) <= 4:
        raise ValueError(f"{version!r} is not a kernel version (major, minor[, patch[, rc]])")
    major, minor, *rest = version
    patch = rest[0] if rest else 0
    rc = rest[1] if len(rest) > 1 else RELEASE
    return major, minor, patch, rc


def sort_key(text: str | None) -> UpstreamVersion:
    """Orders kernels by upstream version; one with no readable version goes last."""
    try:
        return upstream_version(text) if text else UNKNOWN
    except ValueError:
        return UNKNOWN


def dotted(version: tuple[int, ...]) -> str:
    """(6, 1, 176, RELEASE) -> '6.1.176'; (7, 3, 0, 7) -> '7.3-rc7' (mainline names its release
    candidates without the .0); (6, 1, 72, 1) -> '6.1.72-rc1'."""
    major, minor, patch, rc = as_upstream(version)
    if rc == RELEASE:
        return f"{major}.{minor}.{patch}"
    return f"{major}.{minor}" + (f".{patch}" if patch else "") + f"-rc{rc}"


# Debian package versions: [epoch:]upstream[-revision], compared as dpkg does.

# One part of a version as dpkg compares it: runs of non-digits (each character weighed by
# _weight, then 0 for the run's end) alternating with runs of digits (as numbers).
_Run = tuple[tuple[int, ...], int]
DebianVersionKey = tuple[int, tuple[_Run, ...], tuple[_Run, ...]]

_EPOCH = re.compile(r"\d+")
_EPOCH_MAX = 2**31 - 1  # dpkg holds an epoch in an int
_UPSTREAM = re.compile(r"\d[A-Za-z0-9.+~:-]*")
_REVISION = re.compile(r"[A-Za-z0-9.+~]+")
_RUNS = re.compile(r"(\D*)(\d*)")
_END: _Run = ((0,), 0)  # what a part that has ended compares as


def _weight(char: str) -> int:
    """dpkg's order of one character: '~' before the end of the part (0), letters before
    everything else."""
    if char == "~":
        return -1
    if char.isascii() and char.isalpha():
        return ord(char)
    return ord(char) + 256


def _part_key(part: str) -> tuple[_Run, ...]:
    runs = [((*(_weight(c) for c in letters), 0), int(digits or 0))
            for letters, digits in _RUNS.findall(part) if letters or digits]
    while runs and runs[-1] == _END:
        runs.pop()
    # dpkg compares a part that has ended as endless _END runs. Only the first run can equal
    # _END (every later one starts with a non-digit), so two of them decide every comparison
    # that a tuple's length would otherwise decide wrongly (e.g. '0~1' < '').
    return (*runs, _END, _END)


def _debian_problem(epoch: str, upstream: str, revision: str | None) -> str:
    """What makes these parts no Debian version (dpkg's and Policy's rules), or ''."""
    if not _EPOCH.fullmatch(epoch) or int(epoch) > _EPOCH_MAX:
        return f"its epoch (before ':') must be a number up to {_EPOCH_MAX}"
    if not _UPSTREAM.fullmatch(upstream):
        return ("its upstream version must start with a digit and hold only letters, digits "
                "and . + ~ - :")
    if revision is not None and not _REVISION.fullmatch(revision):
        return "its revision (after the last '-') must be letters, digits and . + ~"
    return ""


def debian_version_key(text: str) -> DebianVersionKey:
    """A sort key ordering Debian package versions as dpkg does: '6.1.192-2' < '6.1.192-3',
    '7.3~rc7-1~exp1' < '7.3-1' < '7.3.4-1~bpo13+1' < '7.3.4-1', '1:0.1' > '9.9'. Versions
    dpkg holds equal ('1.0' and '1.0-0', '0:1' and '1') get equal keys. ValueError for a string
    that is not a Debian version."""
    epoch, colon, rest = text.partition(":")
    if not colon:
        epoch, rest = "0", text
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    problem = _debian_problem(epoch, upstream, revision if hyphen else None)
    if problem:
        raise ValueError(f"{text!r} is not a Debian package version ([epoch:]upstream"
                         f"[-revision], e.g. 6.1.176-1): {problem}")
    return int(epoch), _part_key(upstream), _part_key(revision)


def compare_debian(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version a is older than, the same as, or newer than b."""
    key_a, key_b = debian_version_key(a), debian_version_key(b)
    return (key_a > key_b) - (key_a < key_b)


def has_change(version: tuple[int, ...], bounds: list[tuple[int, ...]]) -> bool:
    """True if a kernel at `version` contains a change that landed at any of `bounds`.
    Versions and bounds are (major, minor[, patch[, rc]]); left-out fields are a release's."""
    version = as_upstream(version)
    for bound in map(as_upstream, bounds):
        mainline = bound[2] == 0
        if mainline and version >= bound:
            return True
        if not mainline and version[:2] == bound[:2] and version >= bound:
            return True
    return False


def in_window(version: tuple[int, ...], since: Sequence[tuple[int, ...]],
              until: Sequence[tuple[int, ...]]) -> bool:
    """True if a kernel at `version` has a change of `since` (or there is none) and none of
    `until`: the kernels an outcome with those bounds applies to."""
    if since and not has_change(version, list(since)):
        return False
    return not (until and has_change(version, list(until)))

