"""Part B of the hardening issue: kconform's private apt reads nothing outside kconform (neither
$APT_CONFIG nor the host's apt.conf.d), runs its downloads as _apt when it is root, and takes a
Debian mirror only as one plain URL. Offline: the archives are file:// repositories built here."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.errors import KconformError, KernelUnavailable
from harness.kernels import AptArchive, KernelProvider, KernelSpec, apt_sandbox_user
from harness.kernels import apt as kernels
from harness.kernels.apt import ArchiveVersion, check_mirror_url, system_debian_mirror

needs_apt = pytest.mark.skipif(not shutil.which("apt-get") or not shutil.which("dpkg-deb"),
                               reason="needs apt and dpkg-deb")
SPEC = KernelSpec(name="fake", series="1.0", suites=("s",), meta="linux-image-amd64",
                  packages=("linux-image-{abi}-unsigned",))

BUILD = ArchiveVersion("1.0-1", "1.0", "bookworm")  # what a fake archive lists


@pytest.fixture
def world_readable_tmp():
    """A directory _apt can read (pytest's own tmp_path is 0700 root's): apt's file:// method
    reads the repository as _apt."""
    path = Path(tempfile.mkdtemp(prefix="kconform-test-repo-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _repository(base: Path, gpg_home: Path | None = None) -> tuple[str, str | None]:
    """A file:// archive with suite s holding a fake kernel image package of ABI 1.0.0-1-amd64,
    version 1.0.0-1; unsigned, or signed
    (InRelease) with a fresh key. Returns (mirror URL, keyring or None)."""
    repo = base / "repo"
    pkg = base / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: linux-image-1.0.0-1-amd64-unsigned\nVersion: 1.0.0-1\nArchitecture: amd64\n"
        "Maintainer: kconform <kconform@example.org>\nDescription: fake kernel image\n")
    (repo / "pool").mkdir(parents=True)
    deb = repo / "pool" / "linux-image-1.0.0-1-amd64-unsigned_1.0.0-1_amd64.deb"
    subprocess.run(["dpkg-deb", "-Znone", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True)
    data = deb.read_bytes()
    packages = ((pkg / "DEBIAN" / "control").read_text().rstrip("\n") +
                f"\nFilename: pool/{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    binary = repo / "dists" / "s" / "main" / "binary-amd64"
    binary.mkdir(parents=True)
    (binary / "Packages").write_bytes(packages)
    digest = hashlib.sha256(packages).hexdigest()
    release = ("Origin: kconform-test\nSuite: s\nCodename: s\nArchitectures: amd64\n"
               "Components: main\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nSHA256:\n"
               f" {digest} {len(packages)} main/binary-amd64/Packages\n")
    (repo / "dists" / "s" / "Release").write_text(release)
    for path in [base, *base.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if gpg_home is None:
        return f"file://{repo}", None
    gpg_home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(gpg_home))
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "kconform test <t@example.org>", "ed25519",
                        "sign", "never"], env=env, check=True, capture_output=True)
        keyring = base / "key.gpg"
        keyring.write_bytes(subprocess.run([*gpg, "--export"], env=env, check=True,
                                           capture_output=True).stdout)
        subprocess.run([*gpg, "--clearsign", "-o", str(repo / "dists/s/InRelease"),
                        str(repo / "dists/s/Release")], env=env, check=True, capture_output=True)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)
    os.chmod(keyring, 0o644)
    os.chmod(repo / "dists/s/InRelease", 0o644)
    return f"file://{repo}", str(keyring)


@pytest.fixture
def hostile_apt_config(tmp_path, monkeypatch):
    """$APT_CONFIG as someone who wants kconform to take an unsigned kernel would write it: allow
    insecure archives, run a hook, and read a parts directory of their own."""
    parts = tmp_path / "hostile-parts"
    parts.mkdir()
    (parts / "99hostile").write_text('Kconform::Test::FromParts "read";\n')
    hook = tmp_path / "hook-ran"
    config = tmp_path / "hostile.conf"
    config.write_text(
        'Acquire::AllowInsecureRepositories "true";\n'
        'Acquire::AllowDowngradeToInsecureRepositories "true";\n'
        'APT::Get::AllowUnauthenticated "true";\n'
        'Acquire::Check-Valid-Until "false";\n'
        'APT::Sandbox::User "root";\n'
        f'APT::Update::Pre-Invoke {{ "touch {hook}"; }};\n'
        f'Dir::Etc::parts "{parts}/";\n'
        'Kconform::Test::FromAptConfig "read";\n')
    monkeypatch.setenv("APT_CONFIG", str(config))
    return hook


@needs_apt
def test_an_unsigned_archive_is_refused_whatever_apt_config_says(tmp_path, world_readable_tmp,
                                                                  hostile_apt_config):
    mirror, _ = _repository(world_readable_tmp)
    apt = AptArchive(tmp_path / "apt", mirror)
    with pytest.raises(KernelUnavailable, match="is not signed"):
        apt.update(SPEC)
    # The refused archive's lists are not kept: nothing resolves from them afterwards.
    with pytest.raises(KernelUnavailable, match="no linux-image-<abi>-unsigned of series 1.0 in s"):
        apt.listing(SPEC)
    assert not hostile_apt_config.exists(), "a hook from the caller's APT_CONFIG ran"


def _dump(env: dict, *args: str) -> dict[str, str]:
    out = subprocess.run(["apt-config", "dump", *args], env=env, capture_output=True, text=True,
                         check=True).stdout
    values = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        values[key] = value.rstrip(";").strip('"')
    return values


@needs_apt
def test_apt_runs_with_kconforms_options_only(tmp_path, hostile_apt_config):
    """apt-config dump under exactly the options and environment kconform runs apt with."""
    apt = AptArchive(tmp_path / "apt", "http://deb.debian.org/debian")
    command = apt.command("apt-config", SPEC, ["dump"])
    dump = _dump(apt.environment(), *command[1:-1])
    assert "Kconform::Test::FromAptConfig" not in dump and "Kconform::Test::FromParts" not in dump
    assert not any(k.startswith("APT::Update::Pre-Invoke") for k in dump)
    assert dump["Dir::Etc::parts"] == f"{tmp_path}/apt/etc/apt.conf.d/"
    assert dump["Dir::Etc::main"] == f"{tmp_path}/apt/etc/apt.conf"
    assert list((tmp_path / "apt/etc/apt.conf.d").iterdir()) == []
    assert dump["Acquire::AllowInsecureRepositories"] == "false"
    assert dump["APT::Get::AllowUnauthenticated"] == "false"
    assert dump["Acquire::Check-Valid-Until"] == "true"
    if os.geteuid() == 0:
        assert dump["APT::Sandbox::User"] == "_apt"
    # Whatever the host's own /etc/apt/apt.conf.d sets is absent: the keys a dump of the host's
    # configuration has and one reading no files lacks (e.g. a host's Check-Valid-Until "false").
    plain = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
    host = _dump(plain)
    nothing = _dump(dict(plain, APT_CONFIG="/dev/null"), "-o", "Dir::Etc::parts=/nonexistent",
                    "-o", "Dir::Etc::main=/dev/null")
    from_host_files = {k: v for k, v in host.items()
                       if nothing.get(k) != v and not k.startswith("Dir")}
    leaked = {k: v for k, v in from_host_files.items() if dump.get(k) == v
              and k not in kernels.APT_VERIFICATION}
    assert leaked == {}


@needs_apt
@pytest.mark.skipif(not shutil.which("gpg"), reason="needs gpg to sign the test archive")
def test_a_signed_archive_resolves_and_downloads_as_apt(tmp_path, world_readable_tmp,
                                                        hostile_apt_config):
    """The control: the same archive signed by a key kconform is given works, with downloads run
    by _apt when root (apt would otherwise say 'unsandboxed as root', which kconform refuses)."""
    mirror, keyring = _repository(world_readable_tmp, gpg_home=world_readable_tmp / "gnupg")
    apt = AptArchive(tmp_path / "apt", mirror, keyring=keyring)
    with apt.session():
        apt.update(SPEC)
        assert apt.listing(SPEC) == [ArchiveVersion("1.0.0-1", "1.0.0-1-amd64", "s")]
    dest = tmp_path / "debs"
    dest.mkdir()
    progress: list[tuple[int, int | None]] = []
    debs = apt.download(SPEC, ["linux-image-1.0.0-1-amd64-unsigned"], "1.0.0-1", dest,
                        progress=lambda done, total: progress.append((done, total)))
    assert [d.name for d in debs] == ["linux-image-1.0.0-1-amd64-unsigned_1.0.0-1_amd64.deb"]
    size = debs[0].stat().st_size
    assert progress[-1] == (size, size), "the last progress report is the whole download"
    assert any((tmp_path / "apt/state/lists").glob("*InRelease")), "the lists are kept"
    assert not hostile_apt_config.exists()


@needs_apt
@pytest.mark.skipif(apt_sandbox_user() is None, reason="apt sandboxes only when run as root")
@pytest.mark.skipif(not shutil.which("gpg"), reason="needs gpg to sign the test archive")
def test_apt_downloading_as_root_is_refused(tmp_path, world_readable_tmp, monkeypatch):
    """A work directory _apt cannot enter makes apt fall back to downloading as root: refused."""
    mirror, keyring = _repository(world_readable_tmp, gpg_home=world_readable_tmp / "gnupg")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(closed))
    apt = AptArchive(tmp_path / "apt", mirror, keyring=keyring)
    with pytest.raises(KernelUnavailable, match="could not run its downloads as _apt"):
        apt.update(SPEC)


BAD_MIRRORS = [
    "http://deb.debian.org/debian\ndeb [trusted=yes] http://evil.example/debian",
    "[trusted=yes] http://evil.example/debian",
    "http://deb.debian.org/debian [trusted=yes]",
    "-oAPT::Get::AllowUnauthenticated=true",
    "http://deb.debian.org/debian http://evil.example/debian",
    "http://deb.debian.org/debianhttp://evil.example/debian",
    "http://deb.debian.org/debian\t",
    "ftp://deb.debian.org/debian",
    "file:relative/debian",
    "http:///debian",
    'http://deb.debian.org/"debian',
]


@pytest.mark.parametrize("mirror", BAD_MIRRORS)
def test_a_mirror_that_is_not_one_plain_url_is_refused(mirror, monkeypatch, tmp_path):
    monkeypatch.setenv("KCONFORM_DEBIAN_MIRROR", mirror)
    with pytest.raises(KconformError, match="KCONFORM_DEBIAN_MIRROR.*is not a Debian mirror URL"
                                            ".*e.g. http://deb.debian.org/debian"):
        system_debian_mirror()
    with pytest.raises(KconformError, match="is not a Debian mirror URL"):
        AptArchive(tmp_path / "apt", mirror)


@pytest.mark.parametrize("mirror", ["http://deb.debian.org/debian",
                                    "https://mirror.example:8443/debian/",
                                    "file:///srv/mirror/debian"])
def test_plain_mirror_urls_are_taken(mirror):
    assert check_mirror_url(mirror, "KCONFORM_DEBIAN_MIRROR") == mirror


def test_a_mirror_in_the_hosts_sources_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.delenv("KCONFORM_DEBIAN_MIRROR", raising=False)
    real_path = kernels.Path

    def fake_path(p, *rest):
        if str(p).startswith("/etc/apt"):
            return real_path(str(tmp_path) + str(p), *rest)
        return real_path(p, *rest)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "deb [trusted=yes] http://evil.example/x\"/debian bookworm main\n")
    monkeypatch.setattr(kernels, "Path", fake_path)
    with pytest.raises(KconformError, match="sources.list.*not a Debian mirror URL"):
        system_debian_mirror()


def test_a_refetch_without_a_mirror_says_how_to_name_one(tmp_path, monkeypatch):
    """_fetch (a damaged tree fetched again) asks for a mirror as _resolve does."""
    monkeypatch.setattr(kernels, "system_debian_mirror", lambda: None)
    provider = KernelProvider(cache=tmp_path)
    monkeypatch.setattr(provider, "_resolve", lambda spec: BUILD)
    with pytest.raises(KernelUnavailable, match="no Debian mirror found.*KCONFORM_DEBIAN_MIRROR"):
        provider.get("debian-6.1")
