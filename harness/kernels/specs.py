"""Named kernels as data (kernels/*.toml): their definitions, checked field by field, and
the --kernel values that name them."""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..arches import ARCHITECTURES
from ..datafiles import read_table
from ..errors import KconformError
from ..paths import REPO_ROOT
from .packages import classify
from .trees import bzimage_release, local_kernel_image

if TYPE_CHECKING:
    from .selectors import VersionLister

KERNELS_DIR = REPO_ROOT / "kernels"


# What kernels/*.toml may hold. Values reach apt's sources and command lines and become test ids
# and file names, so each is checked against the grammar of what it names.
KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
RESERVED_KERNEL_NAMES = ("all", "default", "host")
DEBIAN_SUITE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]+")
SERIES = re.compile(r"\d+\.\d+")
# A flavour ends with its Debian architecture: amd64, rt-amd64, arm64, cloud-arm64.
FLAVOUR = re.compile(r"(?:[a-z][a-z0-9]*-)*(?:" + "|".join(ARCHITECTURES) + ")")
SPEC_FIELDS = {
    "series": 'the kernel series as a quoted string, e.g. series = "6.1" (leave it out for a '
              'kernel that follows the newest of its suites, as the RC does)',
    "suites": 'a list of every Debian suite a system of that release pulls kernels from, e.g. '
              'suites = ["bookworm", "bookworm-updates", "bookworm-security"]',
    "flavour": 'the kernel flavour, the end of its ABI, which ends with its architecture, e.g. '
               'flavour = "rt-amd64" or flavour = "arm64" (default amd64)',
    "meta": 'the metapackage a system of this flavour installs, e.g. meta = "linux-image-amd64"',
    "packages": 'a list of package templates with {abi}, e.g. packages = '
                '["linux-image-{abi}-unsigned"]',
    "description": 'one line saying what the kernel is, e.g. description = "Debian 12 bookworm"',
}
REQUIRED_SPEC_FIELDS = ("suites", "packages")
NO_SERIES = (10**6,)  # a kernel with no series sorts after every series


@dataclass(frozen=True)
class KernelSpec:
    """A named kernel as data: which Debian suites and packages make it. Its versions are every
    build of its flavour and series those suites hold; the newest (dpkg's order) is current."""
    name: str
    series: str                      # "6.1": orders kernels and columns; "" follows the newest
    suites: tuple[str, ...]
    meta: str                        # the metapackage of its flavour (what a system installs)
    packages: tuple[str, ...]        # templates with {abi}; the first is the image
    description: str = ""
    flavour: str = "amd64"           # the ABI's last part: amd64, rt-amd64, cloud-amd64

    @property
    def arch(self) -> str:
        """The Debian architecture the kernel is built for: the flavour's last part."""
        return self.flavour.rsplit("-", 1)[-1]

    @property
    def series_key(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.series.split(".")) if self.series else NO_SERIES


def _spec_problem(path: Path, field: str, value: object, what: str) -> KconformError:
    return KconformError(f"{path}: {field} = {value!r} is not {what}; write {SPEC_FIELDS[field]}")


def _spec_string(path: Path, data: dict[str, object], field: str, pattern: re.Pattern[str] | None,
                 what: str, default: str | None = None) -> str:
    if field not in data and default is not None:
        return default
    value = data.get(field)
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise _spec_problem(path, field, value, what)
    return value


def _spec_list(path: Path, data: dict[str, object], field: str, valid: Callable[[str], object],
               what: str) -> tuple[str, ...]:
    value = data[field]
    if not isinstance(value, list) or not value:
        raise _spec_problem(path, field, value, "a non-empty list (a single string is not a list)")
    for item in value:
        if not isinstance(item, str) or not valid(item):
            raise _spec_problem(path, field, value, f"a list of {what} ({item!r} is not one)")
    return tuple(value)


def _package_template(template: str) -> bool:
    """linux-image-{abi}-unsigned: a Debian package name once {abi} is filled in, no other field."""
    filled = template.replace("{abi}", "6.1.0-0-amd64")
    return DEBIAN_PACKAGE.fullmatch(filled) is not None


def parse_spec(path: Path, text: str) -> KernelSpec:
    """One kernels/*.toml file (its name is the kernel's name), every field checked."""
    name = path.stem
    if not KERNEL_NAME.fullmatch(name) or name in RESERVED_KERNEL_NAMES:
        raise KconformError(f"{path}: {name!r} cannot be a kernel name (it becomes test ids and "
                            "file names): rename the file to letters, digits and . _ + - only, "
                            f"not {', '.join(RESERVED_KERNEL_NAMES)}, e.g. kernels/debian-6.1.toml")
    data = read_table(path, text, fields=SPEC_FIELDS, required=REQUIRED_SPEC_FIELDS,
                      kind="a kernel definition", example='suites = ["bookworm"]')
    flavour = _spec_string(path, data, "flavour", FLAVOUR, "a flavour like \"amd64\" or "
                           "\"rt-amd64\" or \"arm64\"", default="amd64")
    return KernelSpec(
        name=name,
        series=_spec_string(path, data, "series", SERIES, "a series like \"6.1\"", default=""),
        suites=_spec_list(path, data, "suites", DEBIAN_SUITE.fullmatch, "Debian suite names"),
        meta=_spec_string(path, data, "meta", DEBIAN_PACKAGE, "a Debian package name",
                          default=f"linux-image-{flavour}"),
        flavour=flavour,
        packages=_spec_list(path, data, "packages", _package_template,
                            "Debian package names with {abi}"),
        description=_spec_string(path, data, "description", re.compile(r"[^\x00-\x1f\x7f]*"),
                                 "one line of text", default=""),
    )


def load_specs(directory: Path = KERNELS_DIR) -> dict[str, KernelSpec]:
    specs = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KconformError(f"{path}: cannot read this kernel definition ({exc}); make it "
                                "a readable UTF-8 file or remove it") from None
        specs[path.stem] = parse_spec(path, text)
    return dict(sorted(specs.items(), key=lambda kv: (kv[1].series_key, kv[0])))


def default_kernel_names(directory: Path = KERNELS_DIR,
                         specs: dict[str, KernelSpec] | None = None) -> list[str]:
    """The default set: kernels/default.txt, one name a line; each must be defined."""
    path = directory / "default.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KconformError(f"{path}: cannot read the default kernels ({exc}); it lists one "
                            "kernel name a line, e.g. debian-6.1") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    known = specs if specs is not None else load_specs(directory)
    for name in names:
        if name not in known:
            raise KconformError(f"{path}: unknown kernel {name!r}; list names defined in "
                                f"{directory}/*.toml ({', '.join(known) or 'none'})")
    return names


def parse_arches(value: str) -> tuple[str, ...]:
    """An --arch value: architectures, comma-separated, e.g. 'amd64,arm64'."""
    arches = tuple(a.strip() for a in value.split(","))
    for arch in arches:
        if arch not in ARCHITECTURES:
            raise KconformError(f"--arch {value!r}: {arch!r} is not an architecture kconform "
                                f"boots; give {' or '.join(ARCHITECTURES)}, or both: "
                                "--arch amd64,arm64")
    return tuple(dict.fromkeys(arches))


def sibling(spec: KernelSpec, arch: str, specs: dict[str, KernelSpec]) -> KernelSpec:
    """The definition of the same kernel for another architecture: same series, suites and
    flavour, but for its last part (debian-6.12 -> debian-6.12-arm64)."""
    if spec.arch == arch:
        return spec
    flavour = spec.flavour[:-len(spec.arch)] + arch
    for other in specs.values():
        if (other.flavour, other.series, other.suites) == (flavour, spec.series, spec.suites):
            return other
    raise KconformError(f"--arch {arch}: {spec.name} has no {arch} definition (no kernels/*.toml "
                        f"with its suites, series {spec.series or 'none'} and flavour "
                        f"{flavour!r}); add one, or leave {spec.name} or {arch} out")


def _for_arches(name: str, specs: dict[str, KernelSpec],
                arches: tuple[str, ...] | None) -> list[str]:
    """A named kernel (or NAME@version) for each of the run's architectures; a path or the
    host is its own architecture."""
    base, at, version = name.partition("@")
    if arches is None or base not in specs:
        return [name]
    return [sibling(specs[base], arch, specs).name + at + version for arch in arches]


def expand_kernel_args(values: list[str], specs: dict[str, KernelSpec],
                       cwd: Path | None = None,
                       versions: VersionLister | None = None,
                       arches: tuple[str, ...] | None = None) -> list[str]:
    """--kernel values (repeatable, comma lists, 'all', 'default', versions as selectors.py
    reads them) to an ordered list of names. A path is taken from `cwd` (where the user typed
    it) and becomes absolute. `versions` lists a spec's builds (default: the archive's, through
    a KernelProvider); it is asked only for a value that names versions. `arches` (--arch): each
    named kernel runs once per architecture, as the definition of that architecture; 'all' is
    every kernel of those architectures (without --arch: every amd64 kernel)."""
    from .selectors import expand_versions, is_selector  # selectors reads specs: no cycle
    names: list[str] = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if not any(parts):
            raise KconformError(f"--kernel {value!r} names no kernel; give a name from "
                                f"kernels/*.toml ({', '.join(specs)}), 'all', 'default', 'host' "
                                "or a path to a bzImage or a built kernel tree")
        for part in parts:
            if not part:
                raise KconformError(f"--kernel {value!r} has an empty name in its comma list; "
                                    "write names separated by single commas, e.g. "
                                    "--kernel debian-5.10,debian-6.1")
            if part == "all":  # already every kernel of those architectures: no siblings
                for name in specs:
                    if specs[name].arch in (arches or ("amd64",)) and name not in names:
                        names.append(name)
                continue
            elif part == "default":
                expanded = default_kernel_names(specs=specs)
            elif part in specs or part == "host":
                expanded = [part]
            elif is_selector(part, specs):
                if versions is None:
                    from .provider import KernelProvider  # the archive, only when asked
                    versions = KernelProvider(specs=specs).versions
                expanded = expand_versions(part, specs, versions)
            else:
                expanded = [_kernel_path(part, specs, cwd)]
            for name in (each for named in expanded for each in _for_arches(named, specs, arches)):
                if name not in names:
                    names.append(name)
    return names


def _kernel_path(name: str, specs: dict[str, KernelSpec], cwd: Path | None) -> str:
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    if "/" not in name and not name.startswith(".") and not path.exists():
        raise KconformError(
            f"unknown kernel {name!r}. Known kernels: {', '.join(specs)}, 'all', 'default', "
            "'host', or a path to a bzImage, a built kernel tree, a kernel .deb, a directory "
            "of .debs or a tree extracted from them (kernels/*.toml defines the names).")
    if not path.exists():
        raise KconformError(f"--kernel {name}: {path} does not exist; give the path of a "
                            "bzImage, a built kernel tree or a kernel .deb (relative to where "
                            "you ran the command)")
    _check_local_kernel(name, path)
    return str(path.resolve())


def _check_local_kernel(name: str, path: Path) -> None:
    """What the provider boots from a path, checked now: a bzImage, or a built tree holding one
    (else each case would fail on its own, after the run started)."""
    try:
        packages = classify(path)
        if packages is not None:  # Debian packages: one must be a kernel image
            packages.controls()
            if packages.extracted is not None:
                packages.digest()  # every image is readable
            return
        image = local_kernel_image(path)
        bzimage_release(image)
    except KconformError as exc:
        raise KconformError(f"--kernel {name}: {exc}") from None
    except OSError as exc:
        raise KconformError(f"--kernel {name}: cannot read {path} ({exc.strerror}); give a "
                            "readable bzImage or built kernel tree") from None


def _looks_like_path(name: str) -> bool:
    return "/" in name or name.startswith(".") or os.path.exists(name)


