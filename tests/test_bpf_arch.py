"""BPF objects are built per guest architecture (issue 13 point 3): clang is told the architecture
(__TARGET_ARCH_*) and given that architecture's asm/ headers from Debian's packages, each
architecture's object is cached apart, an arm64 object really builds here, an unknown
architecture is refused, and the bpf_object fixture builds for the test's kernel. No VM."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import arches, bpf
from harness.errors import KconformError
from harness.kernels import KernelTree
from harness.plugin.fixtures import CaseGuest

# libbpf's bpf/bpf_tracing.h picks the registers of each architecture by these macros
# (`#if defined(__TARGET_ARCH_x86)` ... `#elif defined(__TARGET_ARCH_arm64)`, libbpf-dev 1.1.2).
BPF_TRACING_H = Path("/usr/include/bpf/bpf_tracing.h")
DEFINES = {"amd64": "-D__TARGET_ARCH_x86", "arm64": "-D__TARGET_ARCH_arm64"}
# Where Debian's packages put each architecture's asm/ on an amd64 host: linux-libc-dev (amd64)
# in the multiarch directory; linux-libc-dev-arm64-cross (6.1.4-1cross1, read with dpkg -c) in
# the cross toolchain's.
HOST_HEADERS = {"amd64": "usr/include/x86_64-linux-gnu", "arm64": "usr/aarch64-linux-gnu/include"}


pytestmark = pytest.mark.usefixtures("release_held_entries")


def _add_headers(root: Path, relative: str) -> Path:
    asm = root / relative / "asm"
    asm.mkdir(parents=True)
    (asm / "types.h").write_text("/* stand-in */\n")
    return root / relative


@pytest.fixture
def headers(tmp_path, monkeypatch):
    """A system root holding both architectures' asm/ headers as an amd64 host has them."""
    root = tmp_path / "root"
    monkeypatch.setattr(bpf, "SYSTEM_ROOT", root)
    return {arch: _add_headers(root, relative) for arch, relative in HOST_HEADERS.items()}


@pytest.fixture
def source(tmp_path):
    directory = tmp_path / "src"
    directory.mkdir()
    (directory / "prog.bpf.c").write_text("int x;\n")
    return directory


class FakeClang:
    """clang --version and compiles that write a stand-in object, each compile recorded."""

    def __init__(self) -> None:
        self.compiles: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        if cmd[:2] == ["clang", "--version"]:
            return subprocess.CompletedProcess(cmd, 0, "clang version 0\n", "")
        self.compiles.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"\x7fELF")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def clang(monkeypatch):
    fake = FakeClang()
    monkeypatch.setattr(bpf.subprocess, "run", fake)
    monkeypatch.setattr(bpf.shutil, "which", lambda name: f"/usr/bin/{name}")
    return fake


# -- the command and the headers


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_clang_is_told_the_architecture_and_given_its_headers(arch):
    command = bpf.clang_command(Path("p.bpf.c"), Path("p.o"), arch, Path("/inc"))
    assert command[command.index("-target") + 1] == "bpf"
    assert [a for a in command if a.startswith("-D__TARGET_ARCH_")] == [DEFINES[arch]]
    assert command.index("-I/inc") < command.index(f"-I{bpf.BPF_DIR}")
    if BPF_TRACING_H.is_file():  # the macro is one libbpf knows (libbpf-dev, which kconform needs)
        assert f"defined({DEFINES[arch][2:]})" in BPF_TRACING_H.read_text()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_headers_are_the_first_directory_that_has_them(tmp_path, monkeypatch, arch):
    """The multiarch directory (linux-libc-dev of that architecture: the host's own, or one added
    with dpkg --add-architecture) before the cross package's."""
    monkeypatch.setattr(bpf, "SYSTEM_ROOT", tmp_path)
    triplet = bpf.TARGET_ARCHES[arch].triplet
    cross = _add_headers(tmp_path, f"usr/{triplet}/include")
    assert bpf.uapi_include(arch) == cross
    native = _add_headers(tmp_path, f"usr/include/{triplet}")
    assert bpf.uapi_include(arch) == native


@pytest.mark.parametrize(("machine", "package"), [("x86_64", "linux-libc-dev-arm64-cross"),
                                                  ("aarch64", "linux-libc-dev")])
def test_missing_headers_name_the_package_that_has_them(tmp_path, monkeypatch, source, clang,
                                                        machine, package):
    monkeypatch.setattr(bpf, "SYSTEM_ROOT", tmp_path)
    monkeypatch.setattr(arches.platform, "machine", lambda: machine)  # the host is this one
    (tmp_path / "usr/include/aarch64-linux-gnu").mkdir(parents=True)  # libc's part, no asm/
    with pytest.raises(KconformError, match=rf"no arm64 kernel headers .*"
                                            rf"install {re.escape(package)} \(apt-get install"):
        bpf.build("prog", cache=tmp_path / "cache", source_dir=source, arch="arm64")
    assert clang.compiles == []


# -- the cache


def test_each_architecture_has_its_own_cached_object(tmp_path, headers, source, clang):
    store = tmp_path / "cache"
    built = {arch: bpf.build("prog", cache=store, source_dir=source, arch=arch)
             for arch in ("amd64", "arm64")}
    assert built["amd64"] != built["arm64"]
    for arch, path in built.items():
        # <program>-<arch>-<digest>: cache_entries groups by what comes before the last "-", so
        # `cache prune --keep 1` keeps one object of each architecture.
        assert re.fullmatch(rf"prog-{arch}-[0-9a-f]{{24}}\.o", path.name), path.name
        assert path.parent == store / "bpf" and path.is_file()
    assert [[a for a in c if a.startswith(("-D__TARGET", "-I"))][:2] for c in clang.compiles] == [
        [DEFINES["amd64"], f"-I{headers['amd64']}"], [DEFINES["arm64"], f"-I{headers['arm64']}"]]
    for arch, path in built.items():
        assert bpf.build("prog", cache=store, source_dir=source, arch=arch) == path
    assert len(clang.compiles) == 2, "a second build of either architecture is the cached one"


@pytest.mark.parametrize("arch", ["i386", "x86_64", "aarch64", ""])
def test_an_architecture_kconform_does_not_build_for_is_refused(tmp_path, headers, source, clang,
                                                                arch):
    """Debian's names only: x86_64 and aarch64 are the kernel's and GNU's names of the two."""
    with pytest.raises(KconformError, match=r"no BPF build for architecture .*amd64, arm64"):
        bpf.build("prog", cache=tmp_path / "cache", source_dir=source, arch=arch)
    assert clang.compiles == []


# -- real clang

# The system call numbers differ: arm64 takes asm-generic/unistd.h's (__NR_openat 56), x86_64
# its own table (arch/x86/entry/syscalls/syscall_64.tbl: 257 openat). Each object compiles only
# with its own architecture's asm/ headers and __TARGET_ARCH_* macro.
ASM_PROBE = """\
#include <asm/unistd.h>
#if defined(__TARGET_ARCH_arm64)
_Static_assert(__NR_openat == 56, "arm64's asm/unistd.h");
#elif defined(__TARGET_ARCH_x86)
_Static_assert(__NR_openat == 257, "x86_64's asm/unistd_64.h");
#else
#error "no __TARGET_ARCH_ macro"
#endif
int openat_nr = __NR_openat;
"""
EM_BPF = 247  # e_machine of a BPF object (elf.h)


@pytest.mark.skipif(not shutil.which("clang"), reason="clang is not installed (./kconform does)")
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_objects_build_with_clang_against_the_architectures_own_headers(tmp_path, arch):
    probe = tmp_path / "src"
    probe.mkdir()
    (probe / "asm_probe.bpf.c").write_text(ASM_PROBE)
    built = bpf.build("asm_probe", cache=tmp_path / "cache", source_dir=probe, arch=arch)
    assert built.read_bytes()[:4] == b"\x7fELF"
    # the suite's own programs too (the main one, with libbpf's headers)
    progs = bpf.build("sockmap_progs", cache=tmp_path / "cache", arch=arch)
    assert int.from_bytes(progs.read_bytes()[18:20], "little") == EM_BPF
    assert f"-{arch}-" in progs.name


# -- the fixture


class FakeGuest:
    arch = "amd64"


@pytest.fixture
def guest():
    """Stands in for the plugin's guest: bpf_object only asks it for its kernel's architecture."""
    return FakeGuest()


@pytest.fixture
def builds(monkeypatch):
    calls: list[tuple[str, str]] = []

    def build(name, cache=None, source_dir=bpf.BPF_DIR, arch="amd64"):
        calls.append((name, arch))
        return Path(f"/objects/{name}-{arch}.o")

    monkeypatch.setattr(bpf, "build", build)  # before bpf_object imports it
    return calls


def test_bpf_object_builds_once_per_program_and_architecture(builds, guest, bpf_object):
    first = bpf_object("fixture_memo_prog")
    assert bpf_object("fixture_memo_prog") == first
    guest.arch = "arm64"  # another kernel of the run, on the same worker
    assert bpf_object("fixture_memo_prog") == Path("/objects/fixture_memo_prog-arm64.o")
    guest.arch = "amd64"
    assert bpf_object("fixture_memo_prog") == first
    assert builds == [("fixture_memo_prog", "amd64"), ("fixture_memo_prog", "arm64")]


def test_bpf_object_fails_the_test_with_the_build_error(guest, bpf_object):
    guest.arch = "s390x"
    with pytest.raises(pytest.fail.Exception, match="no BPF build for architecture 's390x'"):
        bpf_object("sockmap_progs")


def test_a_case_guest_is_of_its_kernel_trees_architecture():
    tree = KernelTree("debian-6.12-arm64", None, "6.12.57+deb13-arm64", arch="arm64")
    run = SimpleNamespace(pool=SimpleNamespace(tree={tree.name: tree}.__getitem__))
    item = SimpleNamespace(fspath="cases/test_attach.py")
    case_guest = CaseGuest(item, run, tree.name, session=None)
    assert case_guest.arch == "arm64"
