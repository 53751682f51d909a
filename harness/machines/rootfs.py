"""Pinned guest root filesystems: a minimal Debian built by debootstrap from a recipe in images/.

The default guest root is the host's own, so results can change when the host's Python or libbpf
changes. A pinned root holds only what the guest side needs, from one Debian suite, and is cached
like a kernel: built once per recipe under <cache>/rootfs/<name>-<recipe digest>/, published with
one rename, with a manifest that catches damage later. debootstrap checks the archive's signatures
(--force-check-gpg with Debian's keyring).

virtme-ng takes a kernel's modules from the root it boots (<root>/lib/modules/<release>), so each
kernel's modules are hard-linked into the root on first use; they add no userspace to the pin.

A root is built for one Debian architecture. A foreign one (arm64 on an amd64 host) is built by the
same debootstrap run, with --arch: its maintainer scripts run in a chroot through qemu-user, which
binfmt_misc starts for the foreign binaries (prepare_binfmt checks that, and sets it up as
systemd-binfmt does at boot where it has not been). An arm64 root lives beside the amd64 one, at
<cache>/rootfs/<name>-arm64-<recipe digest>/.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..arches import ARCHITECTURES, host_architecture, named_arch
from ..cache import (
    Manifest,
    cache_dir,
    cache_lock,
    check_manifest,
    check_published,
    disk_full,
    hold_in_use,
    publish,
    remove_published,
    staging_dir,
)
from ..datafiles import read_table
from ..errors import KconformError
from ..kernels import KernelTree
from ..kernels.apt import DEBIAN_KEYRING, require_debian_mirror
from ..kernels.specs import DEBIAN_PACKAGE, DEBIAN_SUITE
from ..paths import REPO_ROOT

IMAGES_DIR = REPO_ROOT / "images"
HOST = "host"
# What building a root does besides debootstrap (_link_poweroff, the mount points), as part of
# the root's digest: a change to them is a new root, not one reused from before it. Bump it with
# any such change.
BUILD_STEPS = "kconform root build steps 2: mount points, busybox poweroff in /usr/local/bin\n"
# The root of a guest whose architecture is not the host's (an arm64 kernel on an amd64 host) when
# --rootfs says 'host', which such a guest cannot run: the pinned Debian 12 root, the release the
# host's root is on this project's machines.
FOREIGN_ROOT = "debian-bookworm"
# Where a guest on a pinned root sees the repo and the BPF objects (machines/qemu.py mounts them);
# the mount points are made when the root is built.
GUEST_REPO = "/kconform/repo"
GUEST_BPF = "/kconform/bpf"


# What images/*.toml may hold. suite and packages reach debootstrap's command line, after
# --force-check-gpg: a value that starts with "-" would be read as an option (debootstrap takes
# no "--" to end them), so each is checked against the grammar of what it names.
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
DEBOOTSTRAP_VARIANTS = ("minbase", "buildd", "fakechroot")
RECIPE_FIELDS = {
    "suite": 'the Debian suite, e.g. suite = "bookworm"',
    "packages": 'a list of Debian packages, e.g. packages = ["python3", "libbpf1"]',
    "variant": f"one of debootstrap's variants ({', '.join(DEBOOTSTRAP_VARIANTS)}), e.g. "
               'variant = "minbase"',
    "description": 'one line saying what the root is, e.g. description = "Debian 12 bookworm"',
}
REQUIRED_RECIPE_FIELDS = ("suite", "packages")


def _recipe_problem(path: Path, field: str, value: object, what: str) -> KconformError:
    return KconformError(f"{path}: {field} = {value!r} is not {what}; write "
                         f"{RECIPE_FIELDS[field]}")


def _recipe_string(path: Path, data: dict[str, object], field: str, valid: Callable[[str], bool],
                   what: str, default: str) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or not valid(value):
        raise _recipe_problem(path, field, value, what)
    return value


def _recipe_packages(path: Path, data: dict[str, object]) -> tuple[str, ...]:
    value = data["packages"]
    if not isinstance(value, list) or not value:
        raise _recipe_problem(path, "packages", value,
                              "a non-empty list (a single string is not a list)")
    for item in value:
        if not isinstance(item, str) or not DEBIAN_PACKAGE.fullmatch(item):
            raise _recipe_problem(path, "packages", value,
                                  f"a list of Debian package names ({item!r} is not one)")
    return tuple(value)


@dataclass(frozen=True)
class RootfsSpec:
    """A recipe: images/<name>.toml."""
    name: str
    suite: str
    packages: tuple[str, ...]
    variant: str
    description: str
    digest: str  # of the recipe's text: a changed recipe is a different root

    @classmethod
    def load(cls, path: Path) -> RootfsSpec:
        """One recipe, every field checked: a KconformError names the file, the field and the
        fix."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KconformError(f"{path}: cannot read this root filesystem recipe ({exc}); make "
                                "it a readable UTF-8 file or remove it") from None
        return cls.parse(path, text)

    @classmethod
    def parse(cls, path: Path, text: str) -> RootfsSpec:
        name = path.stem
        if not RECIPE_NAME.fullmatch(name) or name == HOST:
            raise KconformError(f"{path}: {name!r} cannot be a root filesystem name (it becomes "
                                "a directory name): rename the file to letters, digits and "
                                f". _ + - only, not {HOST!r}, e.g. images/debian-bookworm.toml")
        if named_arch(name) is not None:
            # <name>-arm64-<digest> is the arm64 root of recipe <name>: a recipe named
            # <name>-arm64 with the same text would be cached in the same directory.
            raise KconformError(f"{path}: {name!r} cannot be a root filesystem name: a name "
                                "ending in an architecture is taken by the roots of other "
                                "recipes built for it; a recipe is built for every "
                                "architecture, so rename the file, e.g. "
                                "images/debian-bookworm.toml")
        data = read_table(path, text, fields=RECIPE_FIELDS, required=REQUIRED_RECIPE_FIELDS,
                          kind="a root filesystem recipe", example='suite = "bookworm"')
        return cls(
            name=name,
            suite=_recipe_string(path, data, "suite", lambda v: bool(DEBIAN_SUITE.fullmatch(v)),
                                 "a Debian suite name", default=""),
            packages=_recipe_packages(path, data),
            variant=_recipe_string(path, data, "variant", DEBOOTSTRAP_VARIANTS.__contains__,
                                   f"one of {', '.join(DEBOOTSTRAP_VARIANTS)}",
                                   default="minbase"),
            description=_recipe_string(path, data, "description",
                                       lambda v: not re.search(r"[\x00-\x1f\x7f]", v),
                                       "one line of text", default=""),
            digest=hashlib.sha256((BUILD_STEPS + text).encode()).hexdigest()[:12])


@dataclass(frozen=True)
class Rootfs:
    """A built root: what vng --root is given, and what results record about it."""
    name: str
    path: Path
    digest: str
    packages: dict[str, str]  # package -> version, as debootstrap installed them
    arch: str = "amd64"       # the Debian architecture of its binaries

    def describe(self) -> str:
        """e.g. 'debian-bookworm@1a2b3c4d5e6f (python3 3.11.2-1+b1, libbpf1 1:1.1.0-1)', with
        the architecture after the digest when it is not amd64 (which every record before arm64
        roots meant): 'debian-bookworm@1a2b3c4d5e6f arm64 (python3 ...)'."""
        key = ", ".join(f"{p} {self.packages[p]}" for p in ("python3", "libbpf1")
                        if p in self.packages)
        arch = "" if self.arch == "amd64" else f" {self.arch}"
        return f"{self.name}@{self.digest}{arch}" + (f" ({key})" if key else "")


def root_recipe(rootfs_name: str, arch: str, run_arches: Collection[str]) -> str:
    """The root a guest of this architecture boots in a run of these architectures: --rootfs,
    except that a guest of another architecture than the host's cannot run the host's root, so
    it runs FOREIGN_ROOT; and in a run of several architectures, all of them do, so they are
    compared on one Debian release's userspace, not the host's against Debian 12's."""
    if rootfs_name == HOST and (arch != host_architecture() or len(set(run_arches)) > 1):
        return FOREIGN_ROOT
    return rootfs_name


def root_directory_name(name: str, arch: str, digest: str) -> str:
    """A built root's directory in <cache>/rootfs/: amd64 roots keep the name they had before
    there were others, so a cache of them stays valid."""
    return f"{name}-{digest}" if arch == "amd64" else f"{name}-{arch}-{digest}"


def check_architecture(arch: str, what: str) -> None:
    if arch not in ARCHITECTURES:
        raise KconformError(f"{what}: unknown architecture {arch!r}; a root can be built for "
                            f"{', '.join(ARCHITECTURES)} (Debian's names)")


def recipe_names(directory: Path = IMAGES_DIR) -> list[str]:
    """The recipes' names (their files' stems), none of them read."""
    return [p.stem for p in sorted(directory.glob("*.toml"))]


def load_recipe(name: str, directory: Path = IMAGES_DIR) -> RootfsSpec:
    """The recipe `name` (one of recipe_names), checked; the other recipes are not read, so a
    broken one stops only runs that choose it."""
    return RootfsSpec.load(directory / f"{name}.toml")


def load_recipes(directory: Path = IMAGES_DIR) -> dict[str, RootfsSpec]:
    return {name: load_recipe(name, directory) for name in recipe_names(directory)}


def check_rootfs_name(name: str, directory: Path = IMAGES_DIR) -> None:
    """A --rootfs value: 'host' or a recipe whose every field is valid (checked before any
    boot)."""
    if name == HOST:
        return
    known = recipe_names(directory)
    if name not in known:
        raise KconformError(f"unknown root filesystem {name!r}. Known: {HOST} (the host's own "
                            f"root, the default), {', '.join(known) or 'none'} "
                            "(images/*.toml defines them)")
    load_recipe(name, directory)


class RootfsProvider:
    def __init__(self, cache: Path | None = None,
                 log: Callable[[str], None] = lambda msg: None) -> None:
        self.dir = (cache or cache_dir()) / "rootfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    def get(self, name: str, arch: str = "amd64") -> Rootfs | None:
        """The built root for a recipe name and a Debian architecture (None for the host's own
        root)."""
        if name == HOST:
            return None
        check_rootfs_name(name)
        check_architecture(arch, f"rootfs {name}")
        try:
            return self._get(name, arch)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise KconformError(f"rootfs {name} ({arch}): {exc}") from None

    def _get(self, name: str, arch: str) -> Rootfs:
        spec = load_recipe(name)
        root = self.dir / root_directory_name(name, arch, spec.digest)
        with self._lock(root.name):
            hold_in_use(root)  # before the check: `cache prune` leaves it alone from here on
            if root.exists() or root.is_symlink():
                meta, problem = check_published(root, self.log)
                built_for = _recorded_arch(meta) if meta else arch
                if built_for != arch:
                    meta, problem = None, f"its manifest says it was built for {built_for}"
                if meta:
                    return Rootfs(name, root, spec.digest, _recorded_packages(root, meta), arch)
                self.log(f"rootfs {name}: cached root {root} is damaged ({problem}); "
                         "building again")
                remove_published(root)
            self._build(spec, arch, root)
            meta, problem = check_manifest(root)
            if not meta:
                raise KconformError(f"rootfs {name}: freshly built root is damaged: {problem}")
            return Rootfs(name, root, spec.digest, _recorded_packages(root, meta), arch)

    def _build(self, spec: RootfsSpec, arch: str, root: Path) -> None:
        if not shutil.which("debootstrap"):
            raise KconformError(f"--rootfs {spec.name} needs debootstrap: apt-get install "
                                "debootstrap (./kconform installs it)")
        if os.geteuid() != 0:
            # the host's root serves only the host's architecture
            instead = ", or use --rootfs host" if arch == host_architecture() else ""
            raise KconformError(f"--rootfs {spec.name}: building a root with debootstrap needs "
                                f"root; run as root{instead}")
        if arch != host_architecture():
            prepare_binfmt(arch, self.log)
        mirror = require_debian_mirror(f"rootfs {spec.name}")
        with staging_dir(self.dir, spec.name) as staging:
            self._debootstrap(spec, mirror, staging, root, arch)

    def _debootstrap(self, spec: RootfsSpec, mirror: str, staging: Path, root: Path,
                     arch: str = "amd64") -> None:
        target = staging / "root"
        # --arch always: the root's architecture is the one asked for, whatever the host's.
        cmd = ["debootstrap", f"--arch={arch}", f"--variant={spec.variant}",
               f"--include={','.join(spec.packages)}",
               f"--keyring={DEBIAN_KEYRING}", "--force-check-gpg", spec.suite, str(target), mirror]
        self.log(f"rootfs {spec.name}: building for {arch} with {' '.join(cmd)} "
                 "(once per recipe and architecture)")
        try:
            # The caller's APT_CONFIG would reach the apt and dpkg runs inside the new root.
            env = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env=dict(env, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))
            if proc.returncode != 0:
                raise KconformError(_debootstrap_error(spec, mirror, proc, target, arch))
            for point in (GUEST_REPO, GUEST_BPF):
                (target / point.lstrip("/")).mkdir(parents=True, exist_ok=True)
            _link_poweroff(target)
            # The downloaded .debs are not part of the root.
            for deb in (target / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            publish(target, root, {"name": spec.name, "arch": arch, "suite": spec.suite,
                                   "mirror": mirror, "recipe_digest": spec.digest,
                                   "packages": _installed_packages(target)})
        except OSError as exc:
            detail = str(exc)
            if disk_full(staging, detail):
                detail = (f"no space left in {self.dir}: free some space, or point KCONFORM_CACHE "
                          "at a larger disk")
            raise KconformError(f"rootfs {spec.name}: {detail}") from None

    def add_modules(self, rootfs: Rootfs, tree: KernelTree) -> None:
        """Hard-link a kernel's modules into the root, where virtme-ng looks for them."""
        source = tree.root / "lib" / "modules" / tree.release if tree.root else None
        if source is None or not source.is_dir():
            return  # a local or host kernel: the guest runs without loadable modules
        try:
            self._add_modules(rootfs, source, rootfs.path / "usr/lib/modules" / tree.release)
        except OSError as exc:
            raise KconformError(f"rootfs {rootfs.name}: adding {tree.name}'s modules: {exc}") \
                from None

    def _add_modules(self, rootfs: Rootfs, source: Path, dest: Path) -> None:
        # The tree they came from is recorded: a rebuilt kernel of the same release replaces them.
        origin = dest / ".kconform-source"
        with self._lock(rootfs.path.name):
            if dest.exists():
                if origin.exists() and origin.read_text() == str(source):
                    return
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".modules-", dir=dest.parent))
            try:
                copy = subprocess.run(["cp", "-al", f"{source}/.", str(staging)],
                                      capture_output=True, text=True)
                if copy.returncode != 0:  # another filesystem: copy instead
                    shutil.rmtree(staging)
                    shutil.copytree(source, staging, symlinks=True)
                (staging / origin.name).write_text(str(source))
                os.rename(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _lock(self, key: str) -> AbstractContextManager[None]:
        return cache_lock(self.dir, key)


def _recorded_packages(root: Path, meta: Manifest) -> dict[str, str]:
    """The packages a root's manifest records (package -> version)."""
    packages = meta.get("packages")
    if not (isinstance(packages, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in packages.items())):
        raise KconformError(f"{root}: its manifest does not record the root's packages; remove "
                            "that directory and kconform builds the root again")
    return packages  # every key and value checked to be a str


def _recorded_arch(meta: Manifest) -> object:
    """A root's architecture as its manifest records it: amd64 for one built before roots had
    others."""
    return meta.get("arch", "amd64")


def _installed_packages(root: Path) -> dict[str, str]:
    proc = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                           "-f=${Package} ${Version}\n"],
                          capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def _debootstrap_error(spec: RootfsSpec, mirror: str, proc: subprocess.CompletedProcess[str],
                       target: Path, arch: str = "amd64") -> str:
    log = target / "debootstrap" / "debootstrap.log"
    detail = (proc.stderr + proc.stdout).strip().splitlines()[-8:]
    if log.exists():
        detail += log.read_text(errors="replace").strip().splitlines()[-8:]
    text = "\n".join(detail)
    if disk_full(target.parent, text):
        hint = "no space left on the device: free some, or point KCONFORM_CACHE at a larger disk"
    elif "Release signed by unknown key" in text or "Invalid Release signature" in text:
        hint = "the archive's signature could not be checked: update debian-archive-keyring"
    elif "Failed getting release file" in text or "Couldn't download" in text:
        hint = (f"cannot download from {mirror}: check the network, or set KCONFORM_DEBIAN_MIRROR "
                f"to a reachable Debian mirror that carries {arch}")
    elif "Unable to execute target architecture" in text or "Exec format error" in text:
        # debootstrap's own check (arch-test, when installed), or a chroot that could not start
        hint = (f"the host cannot run {arch} programs: {QEMU_BINFMT_FIX}; building with "
                f"debootstrap --foreign and running the second stage inside an {arch} guest is "
                "not available")
    else:
        hint = "debootstrap failed"
    return f"rootfs {spec.name} ({spec.suite}, {arch}): {hint}\n{text}"


# ------------------------------------------------------------------ foreign roots: binfmt_misc
# debootstrap's second stage runs the new root's programs (dpkg, maintainer scripts) in a chroot.
# For a foreign architecture the kernel hands them to qemu-user through a binfmt_misc entry; with
# its F flag the kernel opens the interpreter when the entry is registered, so it runs inside a
# chroot that does not hold it (binfmt_misc(7), "fix binary").

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
# Where systemd-binfmt reads register lines at boot, first match wins (binfmt.d(5)).
BINFMT_CONF_DIRS = (Path("/etc/binfmt.d"), Path("/run/binfmt.d"), Path("/usr/lib/binfmt.d"))
# qemu-user-static's entry (and binfmt.d file) per Debian architecture.
QEMU_BINFMT_ENTRY = {"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}
QEMU_BINFMT_FIX = ("apt-get install qemu-user-static (./kconform installs it), and mount "
                   f"binfmt_misc: mount -t binfmt_misc binfmt_misc {BINFMT_MISC}")

@dataclass(frozen=True)
class BinfmtStep:
    """What prepare_binfmt does next for an architecture."""
    action: Literal["ready", "mount", "register"]
    line: str = ""             # register: the line written to <binfmt_misc>/register
    source: Path | None = None  # register: the binfmt.d file it is from


def emulation_error(arch: str, problem: str, fix: str = QEMU_BINFMT_FIX) -> KconformError:
    return KconformError(
        f"an {arch} root cannot be built on this {host_architecture()} host: {problem}. "
        f"debootstrap runs the root's {arch} programs through qemu-user, started by binfmt_misc: "
        f"{fix}. (Building with debootstrap --foreign and running the second stage inside an "
        f"{arch} guest is not available.)")


def next_binfmt_step(arch: str, binfmt_dir: Path = BINFMT_MISC,
                     conf_dirs: tuple[Path, ...] = BINFMT_CONF_DIRS) -> BinfmtStep:
    """Whether binfmt_misc runs `arch`'s programs ("ready"), or what would make it: mounting
    binfmt_misc, or registering qemu-user-static's entry from its binfmt.d file (what
    systemd-binfmt does at boot). A KconformError naming the fix when neither would."""
    if not (binfmt_dir / "register").exists():
        return BinfmtStep("mount")
    if _read_first_line(binfmt_dir / "status") == "disabled":
        raise emulation_error(arch, f"binfmt_misc is disabled ({binfmt_dir / 'status'})",
                              f"enable it: echo 1 > {binfmt_dir / 'status'}")
    entry = binfmt_dir / QEMU_BINFMT_ENTRY[arch]
    if entry.exists():
        problem, fix = _binfmt_entry_problem(entry)
        if problem:
            raise emulation_error(arch, problem, fix)
        return BinfmtStep("ready")
    line, source = _binfmt_register_line(arch, entry.name, conf_dirs)
    return BinfmtStep("register", line, source)


def prepare_binfmt(arch: str, log: Callable[[str], None], binfmt_dir: Path = BINFMT_MISC,
                   conf_dirs: tuple[Path, ...] = BINFMT_CONF_DIRS,
                   mount: Callable[[Path], str | None] | None = None,
                   register: Callable[[Path, str], None] | None = None) -> None:
    """Make binfmt_misc run `arch`'s programs through qemu-user, each step logged; a
    KconformError naming the fix when that cannot be done. mount(directory) mounts binfmt_misc
    there and returns None, or returns why it could not; register(file, line) writes a line to
    binfmt_misc's register file (an OSError when refused)."""
    step = next_binfmt_step(arch, binfmt_dir, conf_dirs)
    if step.action == "mount":
        log(f"rootfs: binfmt_misc is not mounted; mounting it at {binfmt_dir} (to run {arch} "
            "programs through qemu-user)")
        failure = (mount or _mount_binfmt)(binfmt_dir)
        if failure is not None:
            raise emulation_error(arch, f"binfmt_misc is not mounted at {binfmt_dir}, and "
                                  f"mounting it failed: {failure}",
                                  f"as root on the host (a container: a privileged one): mount "
                                  f"-t binfmt_misc binfmt_misc {binfmt_dir}")
        step = next_binfmt_step(arch, binfmt_dir, conf_dirs)
        if step.action == "mount":
            raise emulation_error(arch, f"binfmt_misc was mounted at {binfmt_dir} but has no "
                                  "register file there")
    if step.action == "register":
        entry = binfmt_dir / QEMU_BINFMT_ENTRY[arch]
        log(f"rootfs: registering binfmt_misc entry {entry.name} from {step.source}, as "
            "systemd-binfmt does at boot (it was not registered)")
        try:
            (register or _write_register)(binfmt_dir / "register", step.line)
        except OSError as exc:
            raise emulation_error(arch, f"registering {entry.name} from {step.source} in "
                                  f"{binfmt_dir / 'register'} failed ({exc.strerror or exc})",
                                  f"as root on the host: systemctl restart systemd-binfmt, or "
                                  f"write that file's line to {binfmt_dir / 'register'}") \
                from None
        if next_binfmt_step(arch, binfmt_dir, conf_dirs).action != "ready":
            raise emulation_error(arch, f"writing {step.source}'s line to "
                                  f"{binfmt_dir / 'register'} did not create {entry}")


def _mount_binfmt(directory: Path) -> str | None:
    try:
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(directory)],
                              capture_output=True, text=True)
    except OSError as exc:
        return str(exc)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def _write_register(path: Path, line: str) -> None:
    path.write_text(line)  # one write(2): Linux registers the entry within it


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").partition("\n")[0].strip()
    except OSError:
        return None


def _binfmt_entry_problem(entry: Path) -> tuple[str | None, str]:
    """(None, "") when a registered entry runs its programs inside a chroot, else (what is
    wrong, the fix). An entry reads 'enabled', 'interpreter <path>', 'flags: <letters>', ..."""
    try:
        lines = entry.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"{entry} cannot be read ({exc.strerror or exc})", QEMU_BINFMT_FIX
    if not lines or lines[0].strip() != "enabled":
        return f"binfmt_misc entry {entry} is disabled", f"enable it: echo 1 > {entry}"
    fields = dict(line.strip().partition(" ")[::2] for line in lines[1:])
    if "F" not in fields.get("flags:", ""):
        problem = (f"binfmt_misc entry {entry} was registered without the F flag, so its "
                   f"interpreter ({fields.get('interpreter', '?')}) is not found inside the "
                   "new root's chroot")
        return problem, (f"remove it (echo -1 > {entry}); kconform then registers "
                         "qemu-user-static's entry, which has it")
    return None, ""


def _binfmt_register_line(arch: str, name: str, conf_dirs: tuple[Path, ...]
                          ) -> tuple[str, Path]:
    """The register line for entry `name` from the first binfmt.d file <name>.conf, as
    systemd-binfmt reads them (binfmt.d(5): comments start with # or ;)."""
    for directory in conf_dirs:
        source = directory / f"{name}.conf"
        if not source.exists():
            continue
        try:
            text = source.read_text(errors="replace")
        except OSError as exc:
            raise emulation_error(arch, f"{source} cannot be read ({exc.strerror or exc})") \
                from None
        for line in (raw.strip() for raw in text.splitlines()):
            # :name:type:offset:magic:mask:interpreter:flags, any first character the separator
            if line and line[0] not in "#;" and line[1:].split(line[0])[0] == name:
                return line, source
        raise emulation_error(arch, f"binfmt_misc has no {name} entry, and {source} holds no "
                              f"line registering one (it overrides the files after it in "
                              f"{', '.join(map(str, conf_dirs))})",
                              f"restore that file, or {QEMU_BINFMT_FIX}")
    raise emulation_error(arch, f"binfmt_misc has no {name} entry, and no {name}.conf in "
                          f"{', '.join(map(str, conf_dirs))} says how to register one")


POWEROFF_LINK = "usr/local/bin/poweroff"


def _link_poweroff(root: Path) -> None:
    """virtme-ng's shell-script init (a foreign architecture's) ends a guest with `poweroff -f`;
    a minbase root has no poweroff (systemd-sysv's), and without it the init exits and the kernel
    panics on every guest's shutdown. busybox-static's applet does what -f asks: the reboot
    syscall, no init to signal. In /usr/local/bin: that init's PATH has no /usr/local/sbin."""
    link = root / POWEROFF_LINK
    if any((root / d / "poweroff").exists() for d in ("usr/sbin", "sbin", "usr/bin", "bin")) \
            or not (root / "usr/bin/busybox").exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to("/usr/bin/busybox")
