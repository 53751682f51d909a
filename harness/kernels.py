"""Kernel provider: named kernels (kernels/*.toml) and local ones, resolved to a bootable tree.

A Debian kernel is resolved through a private apt configuration (the system's sources and state are
never touched), downloaded with apt so the archive's signatures and hashes are checked, unpacked,
and laid out as virtme-ng expects: <tree>/boot/vmlinuz-<release> + <tree>/lib/modules/<release>.
Trees live in the cache, are published with one rename (an interrupted fetch never looks complete)
and carry a manifest that catches truncation or corruption later.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KernelUnavailable, KconformError
from .paths import REPO_ROOT, cache_dir, cache_lock

KERNELS_DIR = REPO_ROOT / "kernels"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 12 * 3600  # how long a resolution is trusted before apt asks the archive again
MANIFEST = "kconform-tree.json"


# ----------------------------------------------------------------------------- specs

# What kernels/*.toml may hold. Values reach apt's sources and command lines and become test ids
# and file names, so each is checked against the grammar of what it names.
KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
RESERVED_KERNEL_NAMES = ("all", "default", "host")
DEBIAN_SUITE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]+")
SERIES = re.compile(r"\d+\.\d+")
SPEC_FIELDS = {
    "series": 'the kernel series as a quoted string, e.g. series = "6.1"',
    "suites": 'a list of Debian suites, e.g. suites = ["bookworm"]',
    "meta": 'the metapackage naming the current ABI, e.g. meta = "linux-image-amd64"',
    "packages": 'a list of package templates with {abi}, e.g. packages = '
                '["linux-image-{abi}-unsigned"]',
    "description": 'one line saying what the kernel is, e.g. description = "Debian 12 bookworm"',
}
REQUIRED_SPEC_FIELDS = ("series", "suites", "packages")


@dataclass(frozen=True)
class KernelSpec:
    """A named kernel as data: which Debian suite and packages make it."""
    name: str
    series: str                      # "6.1": orders kernels and columns
    suites: tuple[str, ...]
    meta: str                        # metapackage whose dependency names the current ABI
    packages: tuple[str, ...]        # templates with {abi}
    description: str = ""

    @property
    def series_key(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.series.split("."))


def _spec_problem(path: Path, field: str, value: object, what: str) -> KconformError:
    return KconformError(f"{path}: {field} = {value!r} is not {what}; write {SPEC_FIELDS[field]}")


def _spec_string(path: Path, data: dict, field: str, pattern: re.Pattern | None, what: str,
                 default: str | None = None) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise _spec_problem(path, field, value, what)
    return value


def _spec_list(path: Path, data: dict, field: str, valid, what: str) -> tuple[str, ...]:
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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KconformError(f"{path}: not valid TOML ({exc}); fix the file, e.g. "
                            'suites = ["bookworm"]') from None
    unknown = sorted(set(data) - set(SPEC_FIELDS))
    if unknown:
        raise KconformError(f"{path}: unknown field {unknown[0]!r}; a kernel definition has "
                            f"{', '.join(SPEC_FIELDS)}")
    missing = [f for f in REQUIRED_SPEC_FIELDS if f not in data]
    if missing:
        raise KconformError(f"{path}: missing field {missing[0]!r}; add {SPEC_FIELDS[missing[0]]}")
    return KernelSpec(
        name=name,
        series=_spec_string(path, data, "series", SERIES, "a series like \"6.1\""),
        suites=_spec_list(path, data, "suites", DEBIAN_SUITE.fullmatch, "Debian suite names"),
        meta=_spec_string(path, data, "meta", DEBIAN_PACKAGE, "a Debian package name",
                          default="linux-image-amd64"),
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


def expand_kernel_args(values: list[str], specs: dict[str, KernelSpec],
                       cwd: Path | None = None) -> list[str]:
    """--kernel values (repeatable, comma lists, 'all', 'default') to an ordered list of names.
    A path is taken from `cwd` (where the user typed it) and becomes absolute."""
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
            if part == "all":
                expanded = list(specs)
            elif part == "default":
                expanded = default_kernel_names(specs=specs)
            elif part in specs or part == "host":
                expanded = [part]
            else:
                expanded = [_kernel_path(part, specs, cwd)]
            for name in expanded:
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
            "'host', or a path to a bzImage or a built kernel tree (kernels/*.toml defines "
            "the names).")
    if not path.exists():
        raise KconformError(f"--kernel {name}: {path} does not exist; give the path of a "
                            "bzImage or of a built kernel tree (relative to where you ran the "
                            "command)")
    return str(path.resolve())


def _looks_like_path(name: str) -> bool:
    return "/" in name or name.startswith(".") or os.path.exists(name)


# ----------------------------------------------------------------------------- trees

@dataclass
class KernelTree:
    """A bootable kernel: what virtme-ng is given, and what results record about it."""
    name: str
    vmlinuz: Path | None              # None for a kernel already running on an SSH target
    release: str                      # `uname -r` of the kernel
    package_version: str | None = None  # e.g. 6.1.176-1 for Debian kernels
    root: Path | None = None          # tree with boot/ and lib/modules/, when we built one
    config_path: Path | None = None
    run_target: Path | None = None    # what `vng -r` is given; defaults to vmlinuz
    target: str | None = None         # ssh://user@host:port of a machine running this kernel
    _config: dict | None = field(default=None, repr=False)

    @property
    def version(self) -> tuple[int, ...]:
        """Upstream version (major, minor, patch) used to pick expectations."""
        return parse_upstream_version(self.package_version or self.release)

    @property
    def exact_version(self) -> str:
        return self.package_version or self.release

    def config(self) -> dict[str, str]:
        """The kernel's .config as a dict ({} when unknown)."""
        if self._config is None:
            self._config = parse_kconfig(self.config_path.read_text()) \
                if self.config_path and self.config_path.exists() else {}
        return self._config

    def describe(self) -> dict:
        return {"name": self.name, "release": self.release,
                "package_version": self.package_version, "vmlinuz": str(self.vmlinuz)}


def parse_upstream_version(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        raise ValueError(f"no kernel version in {text!r}")
    return tuple(int(g or 0) for g in match.groups())


def parse_kconfig(text: str) -> dict[str, str]:
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value
    return config


def bzimage_release(path: Path) -> str:
    """The release string stored in a bzImage header (what `file` prints as 'version')."""
    with open(path, "rb") as f:
        head = f.read(0x400)
        if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
            raise KconformError(f"{path} is not a bzImage (no 'HdrS' boot header)")
        offset = int.from_bytes(head[0x20E:0x210], "little") + 0x200
        f.seek(offset)
        raw = f.read(256)
    return raw.split(b"\0", 1)[0].decode(errors="replace").split(" ", 1)[0]


# ----------------------------------------------------------------------------- manifests

def write_manifest(root: Path, meta: dict) -> None:
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_symlink() or n == MANIFEST:
                continue
            files[str(p.relative_to(root))] = p.stat().st_size
    meta = dict(meta, files=files)
    if "release" in meta:  # a kernel tree: its image is hashed too
        meta["vmlinuz_sha256"] = _sha256(root / "boot" / f"vmlinuz-{meta['release']}")
    (root / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True))


def check_manifest(root: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) when the tree is whole, else (None, what is wrong)."""
    path = root / MANIFEST
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"no readable manifest ({exc})"
    for rel, size in meta["files"].items():
        try:
            actual = (root / rel).stat().st_size
        except OSError:
            return None, f"{rel} is missing"
        if actual != size:
            return None, f"{rel} is {actual} bytes, expected {size}"
    if "vmlinuz_sha256" in meta:
        vmlinuz = root / "boot" / f"vmlinuz-{meta['release']}"
        if _sha256(vmlinuz) != meta["vmlinuz_sha256"]:
            return None, f"{vmlinuz.name} does not match its recorded sha256"
    return meta, None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- apt

def system_debian_mirror() -> str | None:
    """The Debian mirror the host's own apt uses, so kconform goes where the admin pointed apt."""
    explicit = os.environ.get("KCONFORM_DEBIAN_MIRROR")
    if explicit:
        return explicit.rstrip("/")
    candidates = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return uri.rstrip("/")
    return None


class AptArchive:
    """apt-get/apt-cache with a private configuration under the cache dir."""

    def __init__(self, root: Path, mirror: str, keyring: str = DEBIAN_KEYRING):
        self.root = root
        self.mirror = mirror
        self.keyring = keyring
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "sources", "state/lists/partial",
                    "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "state" / "status").touch()

    def sources_file(self, spec: KernelSpec) -> Path:
        path = self.root / "sources" / f"{spec.name}.list"
        lines = [f"deb [signed-by={self.keyring}] {self.mirror} {suite} main" for suite in spec.suites]
        text = "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return path

    def options(self, spec: KernelSpec) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc": r / "etc", "Dir::Etc::sourcelist": self.sources_file(spec),
            "Dir::Etc::sourceparts": "-", "Dir::Etc::parts": r / "etc/apt.conf.d",
            "Dir::Etc::preferencesparts": r / "etc/preferences.d",
            "Dir::State": r / "state", "Dir::State::status": r / "state/status",
            "Dir::Cache": r / "cache", "APT::Architecture": "amd64",
            "APT::Architectures": "amd64", "Acquire::Languages": "none",
            "APT::Get::List-Cleanup": "0", "APT::Sandbox::User": "root",
            "Acquire::Retries": "2", "Acquire::http::Timeout": "30",
        }
        args = []
        for key, value in opts.items():
            args += ["-o", f"{key}={value}"]
        return args

    def _run(self, tool: str, spec: KernelSpec, args: list[str], cwd: Path | None = None):
        cmd = [tool, *self.options(spec), *args]
        return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True,
                              env=dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))

    def update(self, spec: KernelSpec) -> None:
        proc = self._run("apt-get", spec, ["update"])
        problems = [l for l in (proc.stdout + proc.stderr).splitlines()
                    if l.startswith(("E:", "W: Failed", "W: GPG", "Err:"))
                    or "NO_PUBKEY" in l or "not signed" in l]
        if proc.returncode != 0 or problems:
            detail = "\n".join(problems[-6:]) or proc.stderr.strip()[-800:]
            if "NO_PUBKEY" in detail or "GPG" in detail or "not signed" in detail:
                hint = ("the archive's signature could not be checked: update the "
                        "debian-archive-keyring package (apt-get install debian-archive-keyring)")
            else:
                hint = (f"cannot reach the Debian archive at {self.mirror}: check the network, "
                        "or set KCONFORM_DEBIAN_MIRROR to a reachable Debian mirror")
            raise KernelUnavailable(f"{spec.name}: {hint}\n{detail}")

    def resolve(self, spec: KernelSpec) -> tuple[str, str]:
        """(abi, version): e.g. ('6.1.0-50-amd64', '6.1.176-1') for the suite's current kernel."""
        proc = self._run("apt-cache", spec, ["show", "--no-all-versions", spec.meta])
        if proc.returncode != 0:
            raise KernelUnavailable(f"{spec.name}: {spec.meta} is not in {', '.join(spec.suites)} "
                                    f"({proc.stderr.strip()})")
        fields = dict(re.findall(r"^(Version|Depends): (.*)$", proc.stdout, re.M))
        match = re.search(r"linux-image-(\S+?)(?:-unsigned)?\s*\(= ([^)]+)\)", fields.get("Depends", ""))
        if not match:
            raise KernelUnavailable(f"{spec.name}: cannot find the image in {spec.meta}'s "
                                    f"dependencies: {fields.get('Depends')!r}")
        return match.group(1), match.group(2)

    def download(self, spec: KernelSpec, packages: list[str], version: str, dest: Path) -> list[Path]:
        proc = self._run("apt-get", spec, ["download", *[f"{p}={version}" for p in packages]], cwd=dest)
        if proc.returncode != 0:
            raise KernelUnavailable(f"{spec.name}: apt-get download failed (apt checks the "
                                    f"archive's signatures and hashes):\n{proc.stderr.strip()[-1500:]}")
        debs = sorted(dest.glob("*.deb"))
        if len(debs) != len(packages):
            raise KernelUnavailable(f"{spec.name}: expected {len(packages)} packages, got "
                                    f"{[d.name for d in debs]}")
        return debs


# ----------------------------------------------------------------------------- provider

class KernelProvider:
    """Turns a kernel name (or path, or 'host') into a KernelTree, fetching when needed."""

    def __init__(self, cache: Path | None = None, specs: dict[str, KernelSpec] | None = None,
                 refresh: bool = False, log=lambda msg: None):
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
        with self._lock(f"debian-{spec.name}"):
            abi, version = self._resolve(spec)
            root = self.trees_dir / f"{abi}_{version}"
            if root.exists():
                meta, problem = check_manifest(root)
                if meta:
                    return self._tree_from(spec.name, root, meta)
                self.log(f"{spec.name}: cached tree {root} is damaged ({problem}); fetching again")
                shutil.rmtree(root, ignore_errors=True)
            self._fetch(spec, abi, version, root)
            meta, problem = check_manifest(root)
            if not meta:
                raise KernelUnavailable(f"{spec.name}: freshly built tree is damaged: {problem}")
            return self._tree_from(spec.name, root, meta)

    def _resolve(self, spec: KernelSpec) -> tuple[str, str]:
        resolved_file = self.cache / "resolved" / f"{spec.name}.json"
        resolved_file.parent.mkdir(exist_ok=True)
        try:
            recent = json.loads(resolved_file.read_text())
        except (OSError, ValueError):
            recent = None
        fresh = recent and time.time() - recent["at"] < LISTS_MAX_AGE and not self.refresh
        if fresh and (self.trees_dir / f"{recent['abi']}_{recent['version']}").exists():
            return recent["abi"], recent["version"]
        mirror = system_debian_mirror()
        try:
            if not mirror:
                raise KernelUnavailable(
                    f"{spec.name}: no Debian mirror found in /etc/apt/sources*: set "
                    "KCONFORM_DEBIAN_MIRROR to a Debian mirror URL (one ending in /debian)")
            apt = AptArchive(self.cache / "apt", mirror)
            self.log(f"{spec.name}: asking the archive for the current {spec.meta} "
                     f"in {', '.join(spec.suites)}")
            with self._lock("apt"):  # apt locks its lists; other workers wait instead of failing
                apt.update(spec)
                abi, version = apt.resolve(spec)
        except KernelUnavailable as exc:
            if recent and (self.trees_dir / f"{recent['abi']}_{recent['version']}").exists():
                self.log(f"{spec.name}: {exc}\n{spec.name}: using the cached "
                         f"{recent['version']} instead")
                return recent["abi"], recent["version"]
            raise
        resolved_file.write_text(json.dumps({"abi": abi, "version": version, "at": time.time()}))
        return abi, version

    def _fetch(self, spec: KernelSpec, abi: str, version: str, root: Path) -> None:
        mirror = system_debian_mirror()
        apt = AptArchive(self.cache / "apt", mirror)
        packages = [p.format(abi=abi) for p in spec.packages]
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{abi}-", dir=self.trees_dir))
        try:
            debs_dir = staging / "debs"
            tree = staging / "tree"
            debs_dir.mkdir()
            tree.mkdir()
            self.log(f"{spec.name}: downloading {version}: {', '.join(packages)}")
            with self._lock("apt"):
                debs = apt.download(spec, packages, version, debs_dir)
            for deb in debs:
                proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise KernelUnavailable(_unpack_error(spec.name, deb.name, proc.stderr, staging))
            release = _normalise_layout(tree)
            proc = subprocess.run(["depmod", "-b", str(tree), release], capture_output=True, text=True)
            if proc.returncode != 0:
                raise KernelUnavailable(f"{spec.name}: depmod failed: {proc.stderr.strip()} "
                                        "(install kmod)")
            write_manifest(tree, {"name": spec.name, "release": release, "abi": abi,
                                  "package_version": version, "packages": packages,
                                  "suites": list(spec.suites)})
            os.rename(tree, root)  # the publish step: a tree is complete or absent
        except OSError as exc:
            raise KernelUnavailable(_unpack_error(spec.name, "the kernel packages", str(exc), staging))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _tree_from(self, name: str, root: Path, meta: dict) -> KernelTree:
        release = meta["release"]
        return KernelTree(name=name, vmlinuz=root / "boot" / f"vmlinuz-{release}", release=release,
                          package_version=meta["package_version"], root=root,
                          config_path=root / "boot" / f"config-{release}")

    def _lock(self, key: str):
        return cache_lock(self.trees_dir, key)

    # -- local and host kernels

    def _local(self, path: Path) -> KernelTree:
        path = path.expanduser().resolve()
        if path.is_dir():
            image = path / "arch" / "x86" / "boot" / "bzImage"
            if not image.exists():
                raise KconformError(f"{path} is a directory but not a built kernel tree "
                                    "(no arch/x86/boot/bzImage): build it, or pass the bzImage")
            return KernelTree(name=str(path), vmlinuz=image, release=bzimage_release(image),
                              root=None, config_path=path / ".config", run_target=path)
        if not path.exists():
            raise KconformError(f"kernel path {path} does not exist")
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
            for src, dst in (("vmlinuz.unsigned", f"vmlinuz-{release}"), ("vmlinuz", f"vmlinuz-{release}"),
                             ("config", f"config-{release}"), ("System.map", f"System.map-{release}")):
                if (moddir / src).exists():
                    os.rename(moddir / src, tree / "boot" / dst)
            os.rename(moddir, tree / "lib" / "modules" / release)
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise KernelUnavailable(f"expected one kernel image in the packages, found "
                                f"{[i.name for i in images]}")
    return images[0].name[len("vmlinuz-"):]


def disk_full(path: Path, detail: str) -> bool:
    """Whether a failed write under `path` ran out of space. tar reports a full disk as "Wrote
    only 7680 of 10240 bytes", not as ENOSPC, so the disk is asked too."""
    try:
        return "No space left" in detail or shutil.disk_usage(path).free < (1 << 20)
    except OSError:
        return "No space left" in detail


def _unpack_error(name: str, what: str, detail: str, staging: Path) -> str:
    if disk_full(staging, detail):
        return (f"{name}: no space left on the device while unpacking {what} into {staging.parent}: "
                "free some space, or point KCONFORM_CACHE at a larger disk")
    return f"{name}: unpacking {what} failed: {detail.strip()[-800:]}"
