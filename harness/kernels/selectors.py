"""--kernel values that name versions of a named kernel: NAME@VERSION (a package version),
NAME@ABI (the newest build of that ABI), NAME@all, NAME@A..B (inclusive, dpkg's order), and
NAME1..NAME2 (the named kernels of one flavour in series order, each at its current version).
Each expands to canonical names, NAME@<package version>, which is what the provider boots and
what results, test ids and file names carry."""
from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import KconformError
from .apt import ArchiveVersion
from .specs import KernelSpec

VersionLister = Callable[[KernelSpec], list[ArchiveVersion]]

# What may follow NAME@: a Debian version or ABI (it becomes a test id and a file name, and is
# compared with what the archive lists, never passed to a shell).
_SELECTOR = re.compile(r"[0-9][A-Za-z0-9.+~:-]*|all")


def split_pinned(name: str) -> tuple[str, str | None]:
    """'debian-6.1@6.1.190-1' -> ('debian-6.1', '6.1.190-1'); a plain name -> (name, None)."""
    spec, at, version = name.partition("@")
    return (spec, version) if at else (name, None)


def pinned_name(spec: KernelSpec, build: ArchiveVersion) -> str:
    return f"{spec.name}@{build.version}"


def is_selector(part: str, specs: dict[str, KernelSpec]) -> bool:
    """Whether a --kernel part names versions (rather than a kernel name or a path)."""
    spec, version = split_pinned(part)
    if version is not None and spec in specs:
        return True
    first, dots, last = part.partition("..")
    return bool(dots) and first in specs and last in specs


def available(builds: list[ArchiveVersion], limit: int = 40) -> str:
    shown = [f"{b.version} (ABI {b.abi_number}, {b.suite or 'suite unknown'})"
             for b in builds[-limit:]]
    more = f"{len(builds) - limit} older, " if len(builds) > limit else ""
    return more + ", ".join(shown)


def unknown_version_message(spec: KernelSpec, wanted: str, builds: list[ArchiveVersion]) -> str:
    return (f"--kernel {spec.name}@{wanted}: the archive holds no {spec.name} build of that "
            f"version or ABI. Available ({', '.join(spec.suites)}): {available(builds)}. "
            f"Write {spec.name}@<version>, @<ABI>, @all or @<first>..<last>; "
            f"`./kconform kernels --versions {spec.name}` lists them")


def _find(spec: KernelSpec, wanted: str, builds: list[ArchiveVersion],
          oldest: bool = False) -> int:
    """Index of the build a version names, or of the newest build of an ABI (its oldest, for the
    first end of a range, so the range holds every build of that ABI)."""
    for i, build in enumerate(builds):
        if build.version == wanted:
            return i
    of_abi = [i for i, b in enumerate(builds) if wanted in (b.abi, b.abi_number)]
    if of_abi:
        return of_abi[0] if oldest else of_abi[-1]
    raise KconformError(unknown_version_message(spec, wanted, builds))


def expand_versions(part: str, specs: dict[str, KernelSpec], versions: VersionLister) -> list[str]:
    """The canonical names one selector part stands for, oldest first."""
    spec_name, selector = split_pinned(part)
    if selector is None:
        return _series_range(part, specs)
    spec = specs[spec_name]
    if not selector or not all(_SELECTOR.fullmatch(p) for p in selector.split("..") if p):
        raise KconformError(f"--kernel {part}: {selector!r} is not a version: write "
                            f"{spec_name}@<package version> (e.g. 6.1.190-1), @<ABI> (6.1.0-54), "
                            f"@all, or a range @<first>..<last>")
    builds = versions(spec)
    if selector == "all":
        chosen = builds
    elif ".." in selector:
        first, _, last = selector.partition("..")
        if not first or not last:
            raise KconformError(f"--kernel {part}: a range names both ends: "
                                f"{spec_name}@6.1.176-1..6.1.192-3")
        lo, hi = _find(spec, first, builds, oldest=True), _find(spec, last, builds)
        if lo > hi:
            raise KconformError(f"--kernel {part}: {first} is newer than {last}; write the "
                                f"older end first: {spec_name}@{last}..{first}")
        chosen = builds[lo:hi + 1]
    else:
        chosen = [builds[_find(spec, selector, builds)]]
    return [pinned_name(spec, b) for b in chosen]


def _series_range(part: str, specs: dict[str, KernelSpec]) -> list[str]:
    first, _, last = part.partition("..")
    a, b = specs[first], specs[last]
    if a.flavour != b.flavour:
        raise KconformError(f"--kernel {part}: {first} is the {a.flavour} flavour and {last} the "
                            f"{b.flavour} one; a range across series keeps to one flavour")
    if (a.series_key, a.name) > (b.series_key, b.name):
        raise KconformError(f"--kernel {part}: {first} comes after {last} in series order; "
                            f"write {last}..{first}")
    return [name for name, spec in specs.items()
            if spec.flavour == a.flavour and (spec.series or name in (first, last))
            and (a.series_key, a.name) <= (spec.series_key, name) <= (b.series_key, b.name)]

