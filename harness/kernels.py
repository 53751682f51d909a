"""Kernel provider: named kernels (kernels/*.toml) and local ones, resolved to a bootable tree.

A Debian kernel is resolved through a private apt configuration (the system's sources and state are
never touched), downloaded with apt so the archive's signatures and hashes are checked, unpacked,
and laid out as virtme-ng expects: <tree>/boot/vmlinuz-<release> + <tree>/lib/modules/<release>.
Trees live in the cache, are published with one rename (an interrupted fetch never looks complete)
and carry a manifest that catches truncation or corruption later.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KernelUnavailable, KconformError
from .paths import (REPO_ROOT, cache_dir, cache_lock, read_regular_file, staging_dir,
                    write_atomic)

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

# Format 2 records each file's size, mtime and sha256. A run checks size and mtime (a warm start
# stays fast); `./kconform cache verify` re-hashes everything.
MANIFEST_FORMAT = 2


def write_manifest(root: Path, meta: dict, only: set[str] | None = None) -> None:
    """Record every regular file under root (or only those in `only`, relative paths)."""
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            st = p.lstat()
            # Links and device nodes (a root's /dev) are not content; reading a node could hang.
            rel = str(p.relative_to(root))
            wanted = only is None or rel in only
            if not stat.S_ISREG(st.st_mode) or n == MANIFEST or not wanted:
                continue
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                               "sha256": _sha256(p)}
    meta = dict(meta, files=files, format=MANIFEST_FORMAT)
    if "release" in meta:  # a kernel tree: its image is checked by hash on every use too
        meta["vmlinuz_sha256"] = files[f"boot/vmlinuz-{meta['release']}"]["sha256"]
    write_atomic(root / MANIFEST, json.dumps(meta, indent=1, sort_keys=True))


def _read_manifest(root: Path) -> tuple[dict | None, str | None]:
    if root.is_symlink() or not root.is_dir():
        return None, f"{root} is not a directory kconform published (a symlink, or a file)"
    try:
        meta = json.loads(read_regular_file(root / MANIFEST))
    except (OSError, ValueError) as exc:
        return None, f"no readable manifest ({exc})"
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return None, "its manifest lists no files"
    return meta, None


def _file_problem(root: Path, rel: str, recorded, full: bool) -> str | None:
    """What is wrong with one file the manifest lists (None: nothing)."""
    try:
        st = os.lstat(root / rel)
    except OSError:
        return f"{rel} is missing"
    if isinstance(recorded, int):  # format 1 recorded the size of every non-link, nodes too
        recorded = {"size": recorded}
    elif not stat.S_ISREG(st.st_mode):
        return f"{rel} is no longer a regular file"
    if not isinstance(recorded, dict):
        return f"the manifest's entry for {rel} is malformed"
    if st.st_size != recorded.get("size"):
        return f"{rel} is {st.st_size} bytes, expected {recorded.get('size')}"
    if "mtime_ns" in recorded and st.st_mtime_ns != recorded["mtime_ns"]:
        return f"{rel} was modified after the tree was published"
    if full and "sha256" in recorded and _sha256(root / rel) != recorded["sha256"]:
        return f"{rel} does not match its recorded sha256"
    return None


def check_manifest(root: Path, full: bool = False) -> tuple[dict | None, str | None]:
    """(manifest, None) when the tree is whole, else (None, what is wrong). Every file's size
    and mtime, and a kernel image's sha256; with full, every file's sha256."""
    meta, problem = _read_manifest(root)
    if meta is None:
        return None, problem
    if "vmlinuz_sha256" in meta:  # the image is what gets booted: always hashed (~10 ms)
        vmlinuz = root / "boot" / f"vmlinuz-{meta.get('release')}"
        try:
            if _sha256(vmlinuz) != meta["vmlinuz_sha256"]:
                return None, f"{vmlinuz.name} does not match its recorded sha256"
        except OSError:
            return None, f"boot/{vmlinuz.name} is missing"
    for rel, recorded in meta["files"].items():
        problem = _file_problem(root, rel, recorded, full)
        if problem:
            return None, problem
    return meta, None


def check_published(root: Path, log=lambda msg: None) -> tuple[dict | None, str | None]:
    """check_manifest for a tree or root about to be used, under its cache lock. A format-1
    manifest (sizes only) whose checks pass is rewritten with hashes instead of the tree being
    fetched again: the tree passes every check it was published with, and dropping it would
    leave an offline host without the kernel it has."""
    meta, problem = check_manifest(root)
    if meta is not None and meta.get("format") != MANIFEST_FORMAT:
        log(f"{root.name}: recording the file hashes of a tree cached by an older kconform")
        old = {k: v for k, v in meta.items() if k not in ("files", "format", "vmlinuz_sha256")}
        # Only what was published: a root has kernels' modules linked in since, and they change.
        write_manifest(root, old, only=set(meta["files"]))
        meta, problem = check_manifest(root)
    return meta, problem


def verify_cache(cache: Path) -> tuple[list[str], list[str]]:
    """(damaged, unverifiable): every published kernel tree and root re-hashed. damaged holds
    'path: what is wrong'; unverifiable the entries whose manifest predates hashes."""
    damaged, unverifiable = [], []
    for entry in sorted([*(cache / "trees").glob("*"), *(cache / "rootfs").glob("*")]):
        if entry.name.startswith("."):  # locks and staging directories
            continue
        meta, problem = check_manifest(entry, full=True)
        if meta is None:
            damaged.append(f"{entry}: {problem}")
        elif meta.get("format") != MANIFEST_FORMAT:
            unverifiable.append(f"{entry}: its manifest predates file hashes (the next run "
                                "that uses it records them)")
    return damaged, unverifiable


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- apt

MIRROR_SCHEMES = ("http", "https", "file")
# What a mirror URL may hold: it becomes a word of an apt sources line and debootstrap's argument,
# so no whitespace (a newline wrote a second `deb [trusted=yes] ...` line), no [ ] (source
# options), no quotes, and nothing that starts an option.
_MIRROR_CHARS = re.compile(r"[A-Za-z0-9._~:/?#@!$&()*+,;=%-]+")
MIRROR_EXAMPLE = "http://deb.debian.org/debian"


def check_mirror_url(url: str, origin: str) -> str:
    """`url` if it is exactly one http://, https:// or file:/// URL, else a KconformError saying
    where it came from (`origin`: the variable or file) and what to write instead."""
    problem = None
    if not isinstance(url, str) or not url:
        problem = "it is empty"
    elif not _MIRROR_CHARS.fullmatch(url):
        bad = next(c for c in url if not _MIRROR_CHARS.fullmatch(c))
        problem = f"it holds {bad!r} (a mirror is one URL: no spaces, newlines, [ ] or quotes)"
    else:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in MIRROR_SCHEMES or not url.startswith(f"{parts.scheme}://"):
            problem = "it does not start with http://, https:// or file://"
        elif parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
            problem = "a file:// mirror names an absolute path: file:///srv/mirror/debian"
        elif parts.scheme != "file" and not parts.hostname:
            problem = "it names no host"
        elif "://" in url[len(parts.scheme) + 3:]:
            problem = "it holds more than one URL"
    if problem:
        raise KconformError(f"{origin}: {url!r} is not a Debian mirror URL: {problem}. Set "
                            f"KCONFORM_DEBIAN_MIRROR to one URL, e.g. {MIRROR_EXAMPLE}")
    return url


def system_debian_mirror() -> str | None:
    """The Debian mirror the host's own apt uses, so kconform goes where the admin pointed apt;
    KCONFORM_DEBIAN_MIRROR overrides it. Either is checked to be one plain URL."""
    explicit = os.environ.get("KCONFORM_DEBIAN_MIRROR")
    if explicit:  # set but empty: unset, as a CI matrix may leave it
        return check_mirror_url(explicit, "KCONFORM_DEBIAN_MIRROR").rstrip("/")
    candidates = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for path in candidates:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for uri in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return check_mirror_url(uri, f"the mirror in {path}").rstrip("/")
    return None


def require_debian_mirror(what: str) -> str:
    """system_debian_mirror(), or the error saying how to name one."""
    mirror = system_debian_mirror()
    if not mirror:
        raise KernelUnavailable(
            f"{what}: no Debian mirror found in /etc/apt/sources*: set "
            f"KCONFORM_DEBIAN_MIRROR to a Debian mirror URL (one ending in /debian, e.g. "
            f"{MIRROR_EXAMPLE})")
    return mirror


def apt_sandbox_user() -> str | None:
    """Who apt's download methods run as: _apt when kconform runs as root (as the system's apt
    does), None when apt cannot drop privileges anyway (not root) or there is no _apt."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("_apt")
    except KeyError:
        return None
    return "_apt"


# apt's own signature and freshness checks, stated although they are apt's defaults: no file
# outside kconform is read, and this says which checks kconform relies on.
APT_VERIFICATION = {
    "Acquire::AllowInsecureRepositories": "false",
    "Acquire::AllowWeakRepositories": "false",
    "Acquire::AllowDowngradeToInsecureRepositories": "false",
    "APT::Get::AllowUnauthenticated": "false",
    "Acquire::Check-Valid-Until": "true",
    "Acquire::Check-Date": "true",
}
_APT_CONFIG_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
UNSANDBOXED = "unsandboxed as root"


class AptArchive:
    """apt-get/apt-cache with a private configuration under the cache dir that nothing outside
    kconform can change. apt reads $APT_CONFIG, then Dir::Etc::parts and Dir::Etc::main, before
    any -o option applies, so `-o` alone still let the host's apt.conf.d (hooks, "allow
    insecure" options) in: apt is given kconform's own APT_CONFIG, which points both at empty
    files of kconform's, and the caller's APT_CONFIG is dropped.

    As root, apt's download methods run as _apt. _apt cannot enter a 0700 cache (or /root), so
    for each apt session the lists are moved into a work directory under the system's temporary
    directory that only root and _apt can enter, and moved back afterwards."""

    def __init__(self, root: Path, mirror: str, keyring: str = DEBIAN_KEYRING):
        self.root = root
        self.mirror = check_mirror_url(mirror, "the Debian mirror").rstrip("/")
        self.keyring = keyring
        self.sandbox_user = apt_sandbox_user()
        self._work: Path | None = None
        if _APT_CONFIG_UNSAFE.search(str(root)):
            raise KconformError(f"the cache path {root.parent} holds a quote, backslash or "
                                "control character, which apt's configuration cannot hold: set "
                                "KCONFORM_CACHE to a plain path")
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/trusted.gpg.d", "etc/auth.conf.d",
                    "etc/sources.list.d", "sources", "state/lists/partial",
                    "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "state" / "status").touch()
        (root / "etc" / "apt.conf").touch()
        stray = [p for p in (root / "etc" / "apt.conf.d").iterdir()]
        if stray or (root / "etc" / "apt.conf").stat().st_size:
            raise KconformError(f"kconform's private apt configuration in {root / 'etc'} has "
                                f"been added to ({', '.join(p.name for p in stray) or 'apt.conf'}"
                                f"): remove {root}, and kconform recreates it")
        self.config_file = root / "kconform-apt.conf"
        text = self._config_text()
        if not self.config_file.exists() or read_regular_file(self.config_file) != text:
            write_atomic(self.config_file, text)

    def _config_text(self) -> str:
        r = self.root
        opts = {
            "Dir::Etc": f"{r}/etc/", "Dir::Etc::main": f"{r}/etc/apt.conf",
            "Dir::Etc::parts": f"{r}/etc/apt.conf.d/",
            "Dir::Etc::sourcelist": f"{r}/etc/sources.list",
            "Dir::Etc::sourceparts": f"{r}/etc/sources.list.d/",
            "Dir::Etc::preferences": f"{r}/etc/preferences",
            "Dir::Etc::preferencesparts": f"{r}/etc/preferences.d/",
            "Dir::Etc::trusted": f"{r}/etc/trusted.gpg",
            "Dir::Etc::trustedparts": f"{r}/etc/trusted.gpg.d/",
            "Dir::Etc::netrc": f"{r}/etc/auth.conf",
            "Dir::Etc::netrcparts": f"{r}/etc/auth.conf.d/",
            "Dir::State": f"{r}/state/", "Dir::State::status": f"{r}/state/status",
            "Dir::Cache": f"{r}/cache/", "Dir::Log": f"{r}/log/",
            "APT::Architecture": "amd64", "APT::Architectures": "amd64",
            "Acquire::Languages": "none", "APT::Get::List-Cleanup": "0",
            "APT::Sandbox::User": self.sandbox_user or "_apt",
            "Acquire::Retries": "2", "Acquire::http::Timeout": "30",
            **APT_VERIFICATION,
        }
        lines = ["// Written by kconform; apt reads nothing else (harness/kernels.py AptArchive)."]
        lines += [f'{key} "{value}";' for key, value in opts.items()]
        return "\n".join(lines) + "\n"

    def sources_file(self, spec: KernelSpec) -> Path:
        path = self.root / "sources" / f"{spec.name}.list"
        lines = [f"deb [signed-by={self.keyring}] {self.mirror} {suite} main" for suite in spec.suites]
        text = "\n".join(lines) + "\n"
        if not path.exists() or read_regular_file(path) != text:
            write_atomic(path, text)
        return path

    def options(self, spec: KernelSpec) -> list[str]:
        """The -o options of one spec's apt runs (the rest is in config_file)."""
        opts = {"Dir::Etc::sourcelist": self.sources_file(spec)}
        if self._work:
            opts["Dir::State::lists"] = self._work / "lists"
            opts["Dir::Cache::archives"] = self._work / "archives"
        args = []
        for key, value in opts.items():
            args += ["-o", f"{key}={value}"]
        return args

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
        return dict(env, APT_CONFIG=str(self.config_file), LC_ALL="C",
                    DEBIAN_FRONTEND="noninteractive")

    def command(self, tool: str, spec: KernelSpec, args: list[str]) -> list[str]:
        return [tool, *self.options(spec), *args]

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Where apt runs: the cache itself, or (sandboxed) the work directory holding the lists
        for this session. Callers hold the cache's "apt" lock. A session nested in one is it."""
        if self._work is not None or not self.sandbox_user:
            yield
            return
        lists = self.root / "state" / "lists"
        work = Path(tempfile.mkdtemp(prefix="kconform-apt-"))
        try:
            os.chmod(work, 0o711)  # _apt may pass through to its partial dirs; nobody may list
            shutil.move(lists, work / "lists")
            (work / "lists" / "partial").mkdir(exist_ok=True)
            (work / "archives" / "partial").mkdir(parents=True)
            self._work = work
            yield
        finally:
            self._work = None
            if (work / "lists").is_dir() and not lists.exists():
                shutil.move(work / "lists", lists)
            shutil.rmtree(work, ignore_errors=True)
            lists.mkdir(parents=True, exist_ok=True)

    def _run(self, tool: str, spec: KernelSpec, args: list[str], cwd: Path | None = None):
        return subprocess.run(self.command(tool, spec, args), cwd=cwd, text=True,
                              capture_output=True, env=self.environment())

    def _refuse_unsandboxed(self, spec: KernelSpec, proc) -> None:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if UNSANDBOXED in l]
        if lines:
            raise KernelUnavailable(f"{spec.name}: apt could not run its downloads as _apt, and "
                                    "kconform does not let it download as root: make TMPDIR a "
                                    f"directory _apt can enter (or unset it)\n{lines[0]}")

    def update(self, spec: KernelSpec) -> None:
        with self.session():
            proc = self._run("apt-get", spec, ["update"])
        self._refuse_unsandboxed(spec, proc)
        problems = [l for l in (proc.stdout + proc.stderr).splitlines()
                    if l.startswith(("E:", "W: Failed", "W: GPG", "Err:"))
                    or "NO_PUBKEY" in l or "not signed" in l]
        if proc.returncode != 0 or problems:
            detail = "\n".join(problems[-6:]) or proc.stderr.strip()[-800:]
            if "not signed" in detail:
                hint = (f"the archive at {self.mirror} is not signed, and kconform takes only "
                        "signed archives: set KCONFORM_DEBIAN_MIRROR to a Debian mirror")
            elif "NO_PUBKEY" in detail or "GPG" in detail or "signature" in detail:
                hint = ("the archive's signature could not be checked: update the "
                        "debian-archive-keyring package (apt-get install debian-archive-keyring)")
            elif "is expired" in detail or "not valid yet" in detail:
                hint = (f"the archive at {self.mirror} is out of date (its Release file has "
                        "expired) or the clock is wrong: set KCONFORM_DEBIAN_MIRROR to a current "
                        "Debian mirror, or fix the clock")
            else:
                hint = (f"cannot reach the Debian archive at {self.mirror}: check the network, "
                        "or set KCONFORM_DEBIAN_MIRROR to a reachable Debian mirror")
            raise KernelUnavailable(f"{spec.name}: {hint}\n{detail}")

    def resolve(self, spec: KernelSpec) -> tuple[str, str]:
        """(abi, version): e.g. ('6.1.0-50-amd64', '6.1.176-1') for the suite's current kernel."""
        with self.session():
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
        with self.session():
            into = dest
            if self._work:  # _apt writes the .debs, so into a directory of its own
                into = self._work / "download"
                into.mkdir(mode=0o700)
                os.chown(into, pwd.getpwnam(self.sandbox_user).pw_uid, -1)
            proc = self._run("apt-get", spec, ["download", *[f"{p}={version}" for p in packages]],
                             cwd=into)
            for deb in into.glob("*.deb") if into != dest else ():
                shutil.move(deb, dest / deb.name)
        self._refuse_unsandboxed(spec, proc)
        if proc.returncode != 0:
            raise KernelUnavailable(f"{spec.name}: apt-get download failed (apt checks the "
                                    f"archive's signatures and hashes):\n{proc.stderr.strip()[-1500:]}")
        debs = sorted(dest.glob("*.deb"))
        if len(debs) != len(packages):
            raise KernelUnavailable(f"{spec.name}: expected {len(packages)} packages, got "
                                    f"{[d.name for d in debs]}")
        return debs


# ----------------------------------------------------------------------------- provider

# An ABI or package version as it becomes part of a tree's directory name.
_DEBIAN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:-]*")


def _read_resolution(path: Path) -> dict | None:
    """A cached resolution {abi, version, at}, or None when there is none or it is malformed."""
    try:
        data = json.loads(read_regular_file(path))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("abi"), str)
            and isinstance(data.get("version"), str) and isinstance(data.get("at"), (int, float))
            and _DEBIAN_WORD.fullmatch(data["abi"]) and _DEBIAN_WORD.fullmatch(data["version"])):
        return None
    return data


def remove_published(path: Path) -> None:
    """Remove a damaged tree or root: a symlink or file in its place is unlinked, never followed."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


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
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                if meta:
                    return self._tree_from(spec.name, root, meta)
                self.log(f"{spec.name}: cached tree {root} is damaged ({problem}); fetching again")
                remove_published(root)
            self._fetch(spec, abi, version, root)
            meta, problem = check_manifest(root)
            if not meta:
                raise KernelUnavailable(f"{spec.name}: freshly built tree is damaged: {problem}")
            return self._tree_from(spec.name, root, meta)

    def _resolve(self, spec: KernelSpec) -> tuple[str, str]:
        resolved_file = self.cache / "resolved" / f"{spec.name}.json"
        resolved_file.parent.mkdir(exist_ok=True)
        recent = _read_resolution(resolved_file)
        fresh = recent and time.time() - recent["at"] < LISTS_MAX_AGE and not self.refresh
        if fresh and (self.trees_dir / f"{recent['abi']}_{recent['version']}").exists():
            return recent["abi"], recent["version"]
        try:
            apt = AptArchive(self.cache / "apt", require_debian_mirror(spec.name))
            self.log(f"{spec.name}: asking the archive for the current {spec.meta} "
                     f"in {', '.join(spec.suites)}")
            # apt locks its lists; other workers wait instead of failing
            with self._lock("apt"), apt.session():
                apt.update(spec)
                abi, version = apt.resolve(spec)
            if not (_DEBIAN_WORD.fullmatch(abi) and _DEBIAN_WORD.fullmatch(version)):
                raise KernelUnavailable(f"{spec.name}: the archive names an odd kernel "
                                        f"{abi!r} version {version!r}; kconform does not use it")
        except KernelUnavailable as exc:
            if recent and (self.trees_dir / f"{recent['abi']}_{recent['version']}").exists():
                self.log(f"{spec.name}: {exc}\n{spec.name}: using the cached "
                         f"{recent['version']} instead")
                return recent["abi"], recent["version"]
            raise
        write_atomic(resolved_file, json.dumps({"abi": abi, "version": version, "at": time.time()}))
        return abi, version

    def _fetch(self, spec: KernelSpec, abi: str, version: str, root: Path) -> None:
        apt = AptArchive(self.cache / "apt", require_debian_mirror(spec.name))
        packages = [p.format(abi=abi) for p in spec.packages]
        with staging_dir(self.trees_dir, abi) as staging:
            self._fetch_into(spec, apt, packages, abi, version, staging, root)

    def _fetch_into(self, spec: KernelSpec, apt: AptArchive, packages: list[str], abi: str,
                    version: str, staging: Path, root: Path) -> None:
        try:
            debs_dir = staging / "debs"
            tree = staging / "tree"
            debs_dir.mkdir()
            tree.mkdir()
            self.log(f"{spec.name}: downloading {version}: {', '.join(packages)}")
            with self._lock("apt"), apt.session():
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
