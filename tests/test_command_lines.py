"""Part A of issue 16: nothing kconform hands virtme-ng is read by a shell, and the host's root
stays read-only whichever file sharing virtme-ng picks.

No kernel boots here: `vng --dry-run` builds QEMU's command line through the very shell line a
boot uses (vng's shell=True runs even under --dry-run), so a marker file that some value would
create with `$(touch ...)` shows whether anything was executed. The kernel image is a stand-in
file holding a "Linux version" string, which is all virtme-ng reads of it before QEMU.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import KconformError
from harness.kernels import KernelTree
from harness.machines import qemu as vm
from harness.machines.accel import Accel
from harness.machines.qemu import build_vng_command, check_memory, virtiofs_keeps_root_readonly
from harness.machines.rootfs import Rootfs

TCG = Accel("tcg", "qemu64", "test")
RELEASE = "6.1.0-kconform-test"
# What a shell reads nothing into: a word made only of these is passed through as itself.
SHELL_INERT = re.compile(r"[A-Za-z0-9_.,:=/+@%-]+")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A cache of this test's own (the links to unplain paths go there), and a PATH where no
    virtiofsd of the host's is found first (tests that want one put theirs in front)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KCONFORM_CACHE", str(cache))
    vm.virtiofs_keeps_root_readonly.cache_clear()
    yield cache
    vm.virtiofs_keeps_root_readonly.cache_clear()


def fake_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 64 + f"Linux version {RELEASE} (kconform@test) #1\0".encode())
    return path


def tree_for(image: Path, run_target: Path | None = None) -> KernelTree:
    return KernelTree(name="test", vmlinuz=image, release=RELEASE, run_target=run_target)


def dry_run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """vng's own command line up to QEMU's, without booting; cwd is where a relative
    `touch` would land."""
    assert cmd[0] == "vng"
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([cmd[0], "--dry-run", *cmd[1:]], cwd=cwd, env=vm.vng_environment(),
                          capture_output=True, text=True, timeout=120)


def qemu_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stdout.splitlines() if "qemu-system" in line]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout[-2000:],
                                            proc.stderr[-2000:])
    return lines[-1]


# -- memory, and every other word on the line


def test_hostile_guest_memory_is_refused_before_any_shell_sees_it(tmp_path):
    marker = tmp_path / "pwned"
    image = fake_image(tmp_path / "bzImage")
    with pytest.raises(KconformError) as refused:
        dry_run(build_vng_command(tree_for(image), TCG, "true",
                                  memory=f"1G$(touch {marker})"), tmp_path / "cwd")
    assert not marker.exists(), "a --guest-memory value ran a command in vng's shell"
    assert str(refused.value) == (f"--guest-memory '1G$(touch {marker})': not a size; use a "
                                  "number with an optional K/M/G suffix, e.g. 1G")


@pytest.mark.parametrize("value", ["512M", "1G", "2048", "4g", "1048576K"])
def test_plain_sizes_are_guest_memory(value):
    assert check_memory(value) == value


@pytest.mark.parametrize("value", ["", "0", "1 G", "-1G", "1G;id", "1.5.G", "G", "1GB", "1G\n"])
def test_other_sizes_are_refused(value):
    with pytest.raises(KconformError, match="not a size"):
        check_memory(value)


def test_guest_memory_is_checked_when_the_run_is_configured(tmp_path):
    """A usage error (exit 4) naming the option, before any kernel is fetched or booted."""
    proc = subprocess.run(
        # --collect-only: were the value let through, nothing would be fetched or booted
        [sys.executable, "-m", "pytest", "cases", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--kernel", "debian-6.1", "--guest-memory", "1G$(id)",
         f"--results-dir={tmp_path / 'results'}"],
        cwd=vm.REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KCONFORM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--guest-memory '1G$(id)': not a size" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "cache" / "trees").exists()  # refused before fetching a kernel


@pytest.mark.parametrize("field, kwargs", [
    ("guest name", {"name": "x$(touch {marker})"}),
    ("kernel argument", {"kernel_args": ("quiet;touch {marker}",)}),
    ("vng option", {"extra_vng": ("--ssh", "22`touch {marker}`")}),
    ("CPU model", {"accel": Accel("tcg", "qemu64 $(touch {marker})", "test")}),
    ("CPU count", {"cpus": "1$(touch {marker})"}),
])
def test_every_other_value_is_held_to_a_grammar(tmp_path, field, kwargs):
    marker = tmp_path / "pwned"
    image = fake_image(tmp_path / "bzImage")
    kwargs = {k: (v.replace("{marker}", str(marker)) if isinstance(v, str) else
                  tuple(x.replace("{marker}", str(marker)) for x in v) if isinstance(v, tuple)
                  else Accel(v.name, v.cpu.replace("{marker}", str(marker)), v.reason))
              for k, v in kwargs.items()}
    accel = kwargs.pop("accel", TCG)
    with pytest.raises(KconformError):
        dry_run(build_vng_command(tree_for(image), accel, "true", **kwargs), tmp_path / "cwd")
    assert not marker.exists(), f"a {field} ran a command in vng's shell"


# -- paths


def test_a_kernel_image_named_like_a_command_boots_from_a_plain_link(tmp_path):
    image = fake_image(tmp_path / "images" / "bz$(touch pwned)")
    cwd = tmp_path / "cwd"
    cmd = build_vng_command(tree_for(image), TCG, "true")
    proc = dry_run(cmd, cwd)
    assert not (cwd / "pwned").exists(), "the kernel image's name ran a command in vng's shell"
    kernel = re.search(r" -kernel (\S+)", qemu_line(proc)).group(1)
    assert Path(kernel).resolve() == image.resolve()
    assert SHELL_INERT.fullmatch(kernel)


def test_a_kernel_image_in_a_directory_with_a_space_boots(tmp_path):
    """Before: vng split the path at the space and failed ("... does not exist"), and the boot
    was reported as crashed."""
    image = fake_image(tmp_path / "my kernels" / "bzImage")
    proc = dry_run(build_vng_command(tree_for(image), TCG, "true"), tmp_path / "cwd")
    kernel = re.search(r" -kernel (\S+)", qemu_line(proc)).group(1)
    assert Path(kernel).resolve() == image.resolve()


def test_a_debian_tree_with_a_space_keeps_its_modules(tmp_path):
    """virtme-ng finds a kernel's modules from the directory around its image (lib/modules next
    to boot/), so the link is made to the tree, not to the image."""
    root = tmp_path / "kernel trees" / "t"
    image = fake_image(root / "boot" / f"vmlinuz-{RELEASE}")
    (root / "lib" / "modules" / RELEASE).mkdir(parents=True)
    for name in ("modules.dep", "modules.alias", "modules.builtin", "modules.order"):
        (root / "lib" / "modules" / RELEASE / name).write_text("")
    line = qemu_line(dry_run(build_vng_command(tree_for(image), TCG, "true"), tmp_path / "cwd"))
    kernel = re.search(r" -kernel (\S+)", line).group(1)
    assert Path(kernel).resolve() == image.resolve() and kernel.endswith(f"/boot/vmlinuz-{RELEASE}")
    mods = re.search(r"virtme_link_mods=(\S+)", line).group(1)
    assert Path(mods).resolve() == (root / "lib" / "modules" / RELEASE).resolve()


def test_a_pinned_root_and_mounts_with_shell_characters_reach_no_shell(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    root = tmp_path / "roots" / "r$(touch pwned-root)"
    (root / "kconform").mkdir(parents=True)
    repo = tmp_path / "my repo;touch pwned-rodir"
    repo.mkdir()
    monkeypatch.setattr(vm, "pinned_root_mounts", lambda: ((repo, "/kconform/repo"),))
    rootfs = Rootfs(name="test", path=root, digest="0" * 12, packages={})
    cmd = build_vng_command(tree_for(fake_image(tmp_path / "bzImage")), TCG, "true",
                            rootfs=rootfs)
    dry_run(cmd, cwd)  # whether virtme-ng likes this empty root or not, no shell runs a thing
    assert not any(cwd.iterdir()), list(cwd.iterdir())
    option = dict(a.split("=", 1) if a.startswith("--rodir=") else (a, None) for a in cmd)
    given_root = cmd[cmd.index("--root") + 1]
    assert Path(given_root).resolve() == root.resolve()
    assert cmd[cmd.index("--cwd") + 1] == given_root  # vng takes --cwd relative to --root
    guest, host = option["--rodir"].split("=", 1)
    assert guest == "/kconform/repo" and Path(host).resolve() == repo.resolve()


def test_a_cache_whose_path_a_shell_would_read_is_refused_by_name(tmp_path, monkeypatch):
    cache = tmp_path / "cache $HOME"
    monkeypatch.setenv("KCONFORM_CACHE", str(cache))
    image = fake_image(tmp_path / "my kernels" / "bzImage")
    with pytest.raises(KconformError) as refused:
        build_vng_command(tree_for(image), TCG, "true")
    message = str(refused.value)
    assert str(cache) in message and "' '" in message and "KCONFORM_CACHE" in message


def test_a_link_someone_else_could_swap_is_not_used(tmp_path, private_cache):
    (private_cache / "vng-paths").mkdir(parents=True)
    os.chmod(private_cache / "vng-paths", 0o777)
    image = fake_image(tmp_path / "my kernels" / "bzImage")
    with pytest.raises(KconformError, match="not a directory only you can write to"):
        build_vng_command(tree_for(image), TCG, "true")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                    min_size=1, max_size=24).filter(lambda n: n not in (".", "..")))
def test_whatever_a_kernel_is_called_every_word_but_the_guest_command_is_inert(tmp_path, name):
    image = tmp_path / "k" / name
    image.parent.mkdir(exist_ok=True)
    image.write_bytes(b"x")
    cmd = build_vng_command(tree_for(image), TCG, "true")
    # vng pastes --qemu-opts in as two words on purpose; every other word must stay one
    words = [w for w in cmd[:cmd.index("--exec")] if w != f"--qemu-opts=-cpu {TCG.cpu}"]
    assert all(SHELL_INERT.fullmatch(w) for w in words), words
    kernel = cmd[cmd.index("--run") + 1]
    assert os.path.samefile(kernel, image)


# -- the host root stays read-only


def stand_in_virtiofsd(directory: Path, *, readonly: bool) -> Path:
    """A virtiofsd that answers like the Rust one (1.10 without --readonly, 1.13 with it),
    records how it was started, and creates the pid file virtme-ng waits for."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "started"
    script = directory / "virtiofsd"
    options = "--shared-dir <dir> --socket-path <path>" + (" --readonly" if readonly else "")
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) echo "virtiofsd 1.1x"; exit 0;; '
        f'--help) echo "{options}"; exit 0;; esac\n'
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        'prev=; for a in "$@"; do [ "$prev" = --socket-path ] && : > "$a.pid"; prev=$a; done\n')
    script.chmod(0o755)
    return log


def test_a_virtiofsd_without_readonly_is_not_used_and_9p_shares_the_root_read_only(
        tmp_path, monkeypatch):
    """Before: virtme-ng picked this virtiofsd and shared / without --readonly, so the guest,
    root, could remount / read-write and write the host's files."""
    log = stand_in_virtiofsd(tmp_path / "bin", readonly=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert not virtiofs_keeps_root_readonly(vm.vng_environment()["PATH"])
    cmd = build_vng_command(tree_for(fake_image(tmp_path / "bzImage")), TCG, "true")
    line = qemu_line(dry_run(cmd, tmp_path / "cwd"))
    started = log.read_text() if log.exists() else ""
    assert "--shared-dir" not in started, f"virtiofsd shared a directory writable: {started}"
    assert re.search(r"-fsdev local,id=\w+,path=/,security_model=none,readonly=on", line), line


def test_a_virtiofsd_with_readonly_is_used_with_it(tmp_path, monkeypatch):
    log = stand_in_virtiofsd(tmp_path / "bin", readonly=True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert virtiofs_keeps_root_readonly(vm.vng_environment()["PATH"])
    cmd = build_vng_command(tree_for(fake_image(tmp_path / "bzImage")), TCG, "true")
    assert "--force-9p" not in cmd
    line = qemu_line(dry_run(cmd, tmp_path / "cwd"))
    assert "vhost-user-fs" in line
    shared = [line for line in log.read_text().splitlines() if "--shared-dir / " in line]
    assert shared and all("--readonly" in line for line in shared), log.read_text()


def test_a_virtiofsd_that_cannot_export_a_directory_is_not_used(tmp_path, monkeypatch):
    """QEMU's old C virtiofsd (Debian 12): virtme-ng would wait 3.1 s per directory on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "virtiofsd").write_text("#!/bin/sh\necho 'usage: virtiofsd -o source=PATH'\n")
    (bin_dir / "virtiofsd").chmod(0o755)
    assert not virtiofs_keeps_root_readonly(f"{bin_dir}:/nonexistent")


# -- review finding 1: what virtme-ng pastes into virtiofsd's os.system line


def test_a_hostile_tmpdir_never_reaches_virtiofsds_shell_line(tmp_path, monkeypatch,
                                                               private_cache):
    """Before: virtme-run made virtiofsd's socket with tempfile.mkstemp in $TMPDIR and pasted its
    path into the os.system line that starts virtiofsd, so TMPDIR ran a command."""
    log = stand_in_virtiofsd(tmp_path / "bin", readonly=True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    hostile = tmp_path / "t$(touch pwned-by-tmpdir)"
    hostile.mkdir()
    monkeypatch.setenv("TMPDIR", str(hostile))
    cmd = build_vng_command(tree_for(fake_image(tmp_path / "bzImage")), TCG, "true")
    assert "--force-9p" not in cmd  # virtiofs is used: the line under test is built
    line = qemu_line(dry_run(cmd, tmp_path / "cwd"))
    assert not (tmp_path / "cwd" / "pwned-by-tmpdir").exists(), "TMPDIR ran a command"
    assert "vhost-user-fs" in line
    sockets = re.findall(r"--socket-path (\S+)", log.read_text())
    assert sockets and all(s.startswith(f"{private_cache}/tmp/") for s in sockets), sockets
    tmp = private_cache / "tmp"
    assert tmp.stat().st_mode & 0o777 == 0o700


def test_a_tmpdir_someone_else_could_write_is_not_used(tmp_path, private_cache):
    (private_cache / "tmp").mkdir(parents=True)
    os.chmod(private_cache / "tmp", 0o777)
    with pytest.raises(KconformError, match="tmp is not a directory only you can write to"):
        vm.vng_environment()


def test_a_virtiofsd_whose_path_a_shell_would_read_is_not_used(tmp_path, monkeypatch):
    """virtme-ng pastes virtiofsd's path into its os.system line: such a one means 9p."""
    bin_dir = tmp_path / "bin;touch pwned-by-virtiofsd;"
    stand_in_virtiofsd(bin_dir, readonly=True)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cmd = build_vng_command(tree_for(fake_image(tmp_path / "bzImage")), TCG, "true")
    assert "--force-9p" in cmd
    qemu_line(dry_run(cmd, tmp_path / "cwd"))
    assert not (tmp_path / "cwd" / "pwned-by-virtiofsd").exists()


def test_guest_tools_in_a_venv_whose_path_a_shell_would_read_mean_9p(tmp_path, monkeypatch):
    """virtiofsd's --shared-dir names virtme-ng's guest tools, inside its venv."""
    stand_in_virtiofsd(tmp_path / "bin", readonly=True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setattr(vm, "_guest_tools", lambda: "/home/me/venv $(id)/virtme/guest")
    cmd = build_vng_command(tree_for(fake_image(tmp_path / "bzImage")), TCG, "true")
    assert "--force-9p" in cmd


# -- a guest of another architecture

ARM64_TCG = Accel("tcg", "cortex-a57", "test", arch="arm64")


def _arm64_root(tmp_path: Path) -> Rootfs:
    root = tmp_path / "arm64-root"
    (root / "usr" / "bin").mkdir(parents=True)
    return Rootfs(name="test", path=root, digest="0" * 12, packages={}, arch="arm64")


def test_an_arm64_kernel_boots_qemu_system_aarch64_on_its_arm64_root(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "host_architecture", lambda: "amd64")
    image = fake_image(tmp_path / "vmlinuz")
    tree = KernelTree(name="arm", vmlinuz=image, release=RELEASE, arch="arm64")
    cmd = build_vng_command(tree, ARM64_TCG, "true", rootfs=_arm64_root(tmp_path))
    assert cmd[cmd.index("--arch") + 1] == "arm64" and "--disable-kvm" in cmd
    assert "--qemu-opts=-cpu cortex-a57" in cmd
    proc = dry_run(cmd, tmp_path / "cwd")
    line = next((x for x in proc.stdout.splitlines() if "qemu-system" in x), proc.stderr[-2000:])
    # virtme-ng's own -M virt and console for arm64, and our CPU model after its own
    assert "qemu-system-aarch64" in line and "-M virt" in line, line
    assert line.rindex("-cpu cortex-a57") > line.index("-M virt")
    # the host's amd64 kernels get none of it
    amd64 = build_vng_command(tree_for(image), TCG, "true")
    assert "--arch" not in amd64


@pytest.mark.parametrize("root", ["none", "amd64"])
def test_an_arm64_kernel_without_an_arm64_root_is_refused_before_qemu(tmp_path, monkeypatch,
                                                                     root):
    monkeypatch.setattr(vm, "host_architecture", lambda: "amd64")
    tree = KernelTree(name="arm", vmlinuz=fake_image(tmp_path / "vmlinuz"), release=RELEASE,
                      arch="arm64")
    rootfs = None if root == "none" else Rootfs(name="test", path=tmp_path, digest="0" * 12,
                                                packages={})
    with pytest.raises(KconformError, match="is an arm64 kernel: its guest needs an arm64 root"):
        build_vng_command(tree, ARM64_TCG, "true", rootfs=rootfs)


def test_the_baseline_command_line_is_virtme_ngs_own_without_kconforms_boot_args(tmp_path):
    """./kconform bench's baseline (issue #17) boots with virtme-ng's default kernel command line:
    none of kconform's BOOT_ARGS, the rest of the command the same."""
    tree = tree_for(fake_image(tmp_path / "boot" / "vmlinuz"))
    own = build_vng_command(tree, TCG, "true")
    bare = build_vng_command(tree, TCG, "true", own_boot_args=False)
    for arg in vm.BOOT_ARGS:
        assert arg in own and arg not in bare
    assert [a for a in own if a not in vm.BOOT_ARGS and a != "--append"] == \
        [a for a in bare if a != "--append"]
