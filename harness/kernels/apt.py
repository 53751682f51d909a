"""apt with a private configuration nothing outside kconform can change: resolves and downloads
Debian's kernel packages with their signatures checked."""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_lock, read_regular_file, write_atomic
from ..errors import KconformError, KernelUnavailable
from ..versions import DEBIAN_ABI_VERSION, debian_version_key, upstream_version
from .specs import KernelSpec

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


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


def _host_mirror(path_suffix: str) -> str | None:
    """The first URI in the host's apt sources that ends in /<path_suffix>."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for uri in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if re.search(rf"/{path_suffix}/?$", uri):
                return check_mirror_url(uri, f"the mirror in {path}").rstrip("/")
    return None


def system_debian_mirror() -> str | None:
    """The Debian mirror the host's own apt uses, so kconform goes where the admin pointed apt;
    KCONFORM_DEBIAN_MIRROR overrides it. Either is checked to be one plain URL."""
    explicit = os.environ.get("KCONFORM_DEBIAN_MIRROR")
    if explicit:  # set but empty: unset, as a CI matrix may leave it
        return check_mirror_url(explicit, "KCONFORM_DEBIAN_MIRROR").rstrip("/")
    return _host_mirror("debian")


def security_mirror_for(mirror: str) -> str:
    """Where the -security suites are: KCONFORM_DEBIAN_SECURITY_MIRROR, else (when the Debian
    mirror is the host's) the host's own debian-security source, else the mirror's sibling path:
    Debian serves them from /debian-security on the same host, never from under /debian."""
    explicit = os.environ.get("KCONFORM_DEBIAN_SECURITY_MIRROR")
    if explicit:
        return check_mirror_url(explicit, "KCONFORM_DEBIAN_SECURITY_MIRROR").rstrip("/")
    if not os.environ.get("KCONFORM_DEBIAN_MIRROR"):
        host = _host_mirror("debian-security")
        if host:
            return host
    if mirror.endswith("/debian"):
        return mirror + "-security"
    raise KernelUnavailable(
        f"the Debian mirror {mirror} does not end in /debian, so kconform cannot tell where its "
        "security suites are: set KCONFORM_DEBIAN_SECURITY_MIRROR to the debian-security "
        "archive, e.g. http://deb.debian.org/debian-security")


# A frozen or snapshot mirror serves Release files past their Valid-Until: apt refuses them, as it
# should by default. KCONFORM_ARCHIVE_MAX_AGE (e.g. 40d) says how old a Release file kconform
# accepts instead (apt's Min-ValidTime: still signed and checked, only older); it is said on every
# resolution and recorded in each tree's manifest.
_MAX_AGE = re.compile(r"(\d{1,4})([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_AGE_LIMIT = 400 * 86400


def archive_max_age() -> int | None:
    """KCONFORM_ARCHIVE_MAX_AGE in seconds, or None when unset."""
    text = os.environ.get("KCONFORM_ARCHIVE_MAX_AGE", "")
    if not text:
        return None
    match = _MAX_AGE.fullmatch(text)
    seconds = int(match.group(1)) * _SECONDS[match.group(2)] if match else 0
    if not match or not 0 < seconds <= MAX_AGE_LIMIT:
        raise KconformError(f"KCONFORM_ARCHIVE_MAX_AGE={text!r} is not an age kconform takes: "
                            "write a number and a unit (s, m, h, d, w) up to 400d, e.g. 40d, "
                            "or unset it to let apt refuse expired Release files")
    return seconds


@dataclass(frozen=True)
class ArchiveVersion:
    """One kernel build the archive holds: package version, ABI (with flavour), and the suite it
    comes from (of several holding it, the one the spec lists last: updates come after the
    release)."""
    version: str      # 6.1.190-1
    abi: str          # 6.1.0-54-amd64
    suite: str        # bookworm-security

    @property
    def abi_number(self) -> str:
        """The ABI without its flavour, as users write it: 6.1.0-54."""
        match = re.match(DEBIAN_ABI_VERSION, self.abi)
        return match[0] if match else self.abi


def image_package_pattern(spec: KernelSpec) -> re.Pattern[str]:
    """The package names of the spec's first template for every ABI of its flavour."""
    template = re.escape(spec.packages[0]).replace(re.escape("{abi}"),
                                                   f"(?P<abi>{DEBIAN_ABI_VERSION}-{spec.flavour})")
    return re.compile(template)


def _search_regex(spec: KernelSpec) -> str:
    """apt-cache search's (POSIX) regex for the image packages; image_package_pattern decides."""
    literal = "".join(f"[{c}]" if c in ".+" else c for c in spec.packages[0])
    return "^" + literal.replace("{abi}", ".*") + "$"


def in_series(spec: KernelSpec, abi: str) -> bool:
    if not spec.series:
        return True
    try:
        return upstream_version(abi)[:2] == spec.series_key[:2]
    except ValueError:
        return False


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

    def __init__(self, root: Path, mirror: str, keyring: str = DEBIAN_KEYRING,
                 security_mirror: str | None = None, max_age: int | None = None):
        self.root = root
        self.mirror = check_mirror_url(mirror, "the Debian mirror").rstrip("/")
        self.security_mirror = (check_mirror_url(security_mirror, "the Debian security mirror")
                                .rstrip("/") if security_mirror else None)
        self.max_age = max_age
        self.keyring = keyring
        self.sandbox_user = apt_sandbox_user()
        self._work: Path | None = None
        self._depth = 0  # sessions entered (nested ones are the outermost one)
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
        stray = list((root / "etc" / "apt.conf.d").iterdir())
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
        lines = ["// Written by kconform; apt reads nothing else (kernels/apt.py AptArchive)."]
        lines += [f'{key} "{value}";' for key, value in opts.items()]
        return "\n".join(lines) + "\n"

    def sources_file(self, spec: KernelSpec) -> Path:
        path = self.root / "sources" / f"{spec.name}.list"
        lines = [f"deb [signed-by={self.keyring}] {self.mirror_of(suite)} {suite} main"
                 for suite in spec.suites]
        text = "\n".join(lines) + "\n"
        if not path.exists() or read_regular_file(path) != text:
            write_atomic(path, text)
        return path

    def mirror_of(self, suite: str) -> str:
        if not suite.endswith("-security"):
            return self.mirror
        return self.security_mirror or security_mirror_for(self.mirror)

    def options(self, spec: KernelSpec) -> list[str]:
        """The -o options of one spec's apt runs (the rest is in config_file)."""
        # The architecture is the spec's, per run: amd64 and arm64 share the lists directory
        # (their Packages files are apart) and this configuration file.
        opts: dict[str, object] = {"Dir::Etc::sourcelist": self.sources_file(spec),
                                   "APT::Architecture": spec.arch,
                                   "APT::Architectures": spec.arch}
        if self.max_age:  # per run, not in the shared configuration file another run rewrites
            opts["Acquire::Min-ValidTime"] = self.max_age
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
        """One apt session: the lists are this process's alone while it lasts (a lock in the apt
        directory itself, so whoever shares the directory shares the lock: a test's cache that
        links in the real one moved the lists away under a run), and (sandboxed) apt runs in a
        work directory holding them. A session nested in one is it."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with cache_lock(self.root, "session"):
            self._depth = 1
            try:
                if self.sandbox_user:
                    with self._sandboxed_lists():
                        yield
                else:
                    yield
            finally:
                self._depth = 0

    @contextlib.contextmanager
    def _sandboxed_lists(self) -> Iterator[None]:
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

    def _run(self, tool: str, spec: KernelSpec, args: list[str],
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(tool, spec, args), cwd=cwd, text=True,
                              capture_output=True, env=self.environment())

    def _refuse_unsandboxed(self, spec: KernelSpec, proc: subprocess.CompletedProcess[str]) -> None:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if UNSANDBOXED in line]
        if lines:
            raise KernelUnavailable(f"{spec.name}: apt could not run its downloads as _apt, and "
                                    "kconform does not let it download as root: make TMPDIR a "
                                    f"directory _apt can enter (or unset it)\n{lines[0]}")

    def update(self, spec: KernelSpec) -> None:
        with self.session():
            proc = self._run("apt-get", spec, ["update"])
        self._refuse_unsandboxed(spec, proc)
        problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if line.startswith(("E:", "W: Failed", "W: GPG", "Err:"))
                    or "NO_PUBKEY" in line or "not signed" in line]
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

    def listing(self, spec: KernelSpec) -> list[ArchiveVersion]:
        """Every build of the spec's flavour and series in its suites, oldest first (dpkg's
        order), each with the suite it comes from. Run after update()."""
        pattern = image_package_pattern(spec)
        with self.session():
            found = self._run("apt-cache", spec, ["search", "--names-only",
                                                   _search_regex(spec)])
            matches = [pattern.fullmatch(line.split(" - ", 1)[0])
                       for line in found.stdout.splitlines()]
            names = sorted({m[0] for m in matches if m and in_series(spec, m["abi"])})
            proc = self._run("apt-cache", spec, ["madison", *names]) if names else None
        if proc is not None and proc.returncode != 0:
            raise KernelUnavailable(f"{spec.name}: apt-cache madison failed: "
                                    f"{proc.stderr.strip()[-800:]}")
        builds: dict[str, ArchiveVersion] = {}
        for line in proc.stdout.splitlines() if proc else ():
            fields = [f.strip() for f in line.split("|")]
            match = pattern.fullmatch(fields[0]) if len(fields) == 3 else None
            where = fields[2].split() if match else []
            if not match or len(where) < 2 or "/" not in where[1]:
                continue
            suite = where[1].split("/", 1)[0]
            version = fields[1]
            try:
                debian_version_key(version)
            except ValueError:
                continue  # not a version kconform can order: never offered
            known = builds.get(version)
            # the suite a patched system takes it from: the spec lists updates after the release
            if suite in spec.suites and (known is None or spec.suites.index(suite)
                                         > spec.suites.index(known.suite)):
                builds[version] = ArchiveVersion(version, match["abi"], suite)
        if not builds:
            raise KernelUnavailable(f"{spec.name}: no {spec.packages[0].format(abi='<abi>')} "
                                    f"of series {spec.series or 'any'} in "
                                    f"{', '.join(spec.suites)} at {self.mirror}")
        return sorted(builds.values(), key=lambda b: debian_version_key(b.version))

    def package_sizes(self, spec: KernelSpec, packages: list[str], version: str) -> int | None:
        """The download size of the packages at `version`, for progress (None when unknown)."""
        with self.session():
            proc = self._run("apt-cache", spec, ["show", *[f"{p}={version}" for p in packages]])
        sizes = [int(s) for s in re.findall(r"^Size: (\d+)$", proc.stdout, re.M)]
        return sum(sizes) if proc.returncode == 0 and sizes else None

    def download(self, spec: KernelSpec, packages: list[str], version: str,
                 dest: Path, progress: Callable[[int, int | None], None] | None = None
                 ) -> list[Path]:
        total = self.package_sizes(spec, packages, version) if progress else None
        with self.session():
            into = dest
            # _apt writes the .debs, so into a directory of its own (a session has a work
            # directory only when there is a sandbox user)
            if self._work and self.sandbox_user:
                into = self._work / "download"
                into.mkdir(mode=0o700)
                os.chown(into, pwd.getpwnam(self.sandbox_user).pw_uid, -1)
            with _watch_bytes(into, total, progress):
                proc = self._run("apt-get", spec,
                                 ["download", *[f"{p}={version}" for p in packages]], cwd=into)
            for deb in into.glob("*.deb") if into != dest else ():
                shutil.move(deb, dest / deb.name)
        self._refuse_unsandboxed(spec, proc)
        if proc.returncode != 0:
            raise KernelUnavailable(f"{spec.name}: apt-get download failed (apt checks the "
                                    "archive's signatures and hashes):\n"
                                    f"{proc.stderr.strip()[-1500:]}")
        debs = sorted(dest.glob("*.deb"))
        if len(debs) != len(packages):
            raise KernelUnavailable(f"{spec.name}: expected {len(packages)} packages, got "
                                    f"{[d.name for d in debs]}")
        return debs




@contextlib.contextmanager
def _watch_bytes(directory: Path, total: int | None,
                 progress: Callable[[int, int | None], None] | None,
                 interval: float = 5.0) -> Iterator[None]:
    """Calls progress(bytes so far, total) every `interval` seconds while apt downloads into
    `directory` (its partial files included), and once at the end."""
    if progress is None:
        yield
        return
    done = threading.Event()

    def size() -> int:
        try:
            return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        except OSError:
            return 0

    def watch() -> None:
        while not done.wait(interval):
            progress(size(), total)

    thread = threading.Thread(target=watch, name="kconform-download-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        progress(size(), total)
