"""kconform's own initramfs for a direct boot (machines/direct.py): the host's static busybox,
the kernel's modules for a 9p root, and an init that mounts that root and starts the agent.

What it does not do is why it exists: virtme-ng's userspace (its init's systemd-tmpfiles, udevd's
coldplug and settle) is most of a virtme-ng boot under TCG (./kconform bench's phases row: udev
alone 5.7 s of a 14.8 s boot of debian-6.12). None of it is needed to run the agent: the agent's
virtio-serial port is found by its name in /sys/class/virtio-ports, not through udev's links,
and the cases' modules are loaded by the kernel's own request_module (through modprobe).

The init runs in the initramfs, then switch_root hands the host's root (9p, read-only) to the
agent, under busybox's sh so that the guest powers off when the agent ends (a PID 1 that exits
panics the kernel).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from ..cache import file_stamp
from ..errors import KconformError
from ..kernels import KernelTree

# What the guest needs before the agent starts, each with what it depends on (modprobe
# --show-depends; a built-in one needs no file): the virtio PCI transport and the console's
# ports (modules in Debian's 5.10 and 6.1, built in from 6.12 on), the 9p root, and overlay for
# the writable /usr/lib that holds the kernel's /lib/modules link.
# A root on disk images (machines/guest_image.py, for a guest that is saved and restored) needs
# the block device and ext4 in their place.
GUEST_MODULES = {"9p": ("virtio_pci", "virtio_console", "9p", "9pnet_virtio", "overlay"),
                 "disk": ("virtio_pci", "virtio_console", "virtio_blk", "ext4")}
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = ("sh", "mount", "insmod", "mkdir", "cat", "ip", "switch_root", "ln", "echo", "poweroff",
           "sleep")
AGENT_PORT = "kconform.agent"   # the virtserialport's name= on QEMU's command line
ROOT_TAG = "kconform-root"      # the 9p mount_tag of the guest's root
# Where the init sees the kernel's modules directory (a host path, through the 9p root) and the
# release it belongs under: given on the kernel command line, so one initramfs serves one tree.
MODULES_PARAM = "kconform.modules"
RELEASE_PARAM = "kconform.release"
ROOT_PARAM = "kconform.root"    # 9p (the host's root) or disk (the images, by their serial=)
ROOT_SERIAL = "kconform-root"   # the virtio-blk serial= of the root image
MODULES_SERIAL = "kconform-mods"  # and of the modules image

# Run by busybox sh as /init. Writes to /dev/kmsg are its console lines (boot_phases.py reads the
# "kconform-init:" ones). Every mount the guest's own init would make that a case or the agent
# uses: proc, sysfs, devtmpfs, tmpfs where programs write, lo up for loopback sockets.
INIT_SCRIPT = r"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
log() { echo "kconform-init: $*" > /dev/kmsg; }
log "loading modules"
for m in $(cat /modules/order); do insmod /modules/$m || log "insmod $m failed"; done
root=9p
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    kconform.modules=*) modules="${arg#kconform.modules=}" ;;
    kconform.release=*) release="${arg#kconform.release=}" ;;
    kconform.root=*) root="${arg#kconform.root=}" ;;
  esac
done
log "mounting root"
tmpfs() {
  mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
  mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp
  mount -t tmpfs -o mode=0755 tmpfs /newroot/run
}
if [ "$root" = disk ]; then
  # each image by the serial= QEMU gave its virtio-blk device, not by probe order
  disk() {
    for b in /sys/block/vd*; do
      [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${b##*/}"
    done
  }
  if ! mount -t ext4 -o ro "$(disk kconform-root)" /newroot; then
    log "cannot mount the root image"; exec poweroff -f
  fi
  tmpfs
  if ! mount -t ext4 -o ro "$(disk kconform-mods)" /newroot/usr/lib/modules; then
    log "cannot mount the modules image"; exec poweroff -f
  fi
else
  # cache=loose: the guest keeps what it read of the host's files (Python's start 1.1 s shorter
  # under TCG). Nothing it reads changes under it during a run: the repo does not, and a BPF
  # object is a new file, named by its content's digest, built before the call that names it.
  if ! mount -t 9p -o ro,trans=virtio,version=9p2000.L,access=any,msize=524288,cache=loose \
      kconform-root /newroot; then
    log "cannot mount the root"; exec poweroff -f
  fi
  tmpfs
  over=/newroot/run/kconform
  mkdir -p $over/lib-upper $over/lib-work
  mount -t overlay -o lowerdir=/newroot/usr/lib,upperdir=$over/lib-upper,workdir=$over/lib-work \
    overlay /newroot/usr/lib
  mkdir -p /newroot/usr/lib/modules
  [ -n "$modules" ] && ln -s "$modules" "/newroot/usr/lib/modules/$release"
fi
ip link set lo up
# A port is announced by QEMU over the device's control queue after the driver binds: wait
# for its name (up to 30 s) rather than race it.
port=
tries=0
while [ -z "$port" ] && [ $tries -lt 300 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = kconform.agent ] && port="/dev/${p##*/}"
  done
  [ -n "$port" ] || { sleep 0.1; tries=$((tries + 1)); }
done
[ -n "$port" ] || { log "no virtio-serial port named kconform.agent"; exec poweroff -f; }
# devtmpfs makes the port's node as the port appears; wait for that too
while [ ! -c "$port" ] && [ $tries -lt 300 ]; do sleep 0.1; tries=$((tries + 1)); done
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
# where systemd and virtme-ng's init mount cgroup v2: a sock_ops case's group goes there
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
echo "kconform-init: starting the agent on $port" > /newroot/dev/kmsg
exec switch_root /newroot /bin/busybox sh -c \
  '"$@" 0<>"$0" 1>&0; /bin/busybox poweroff -f' "$port" "$@"
"""


def _newc(entries: Iterable[tuple[str, int, bytes | None]]) -> bytes:
    """A cpio archive in the kernel's "newc" format: (name, mode, content) each, content None
    for a directory, a link's target as a symlink's content."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    def member(ino: int, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if mode & 0o40000 else 1, 0, len(data), 0, 0, 0, 0,
                  len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % value for value in fields) + encoded)
        pad()
        out.write(data)
        pad()

    ino = 0
    for ino, (name, mode, data) in enumerate(entries, start=1):
        member(ino, name, mode, data or b"")
    member(ino + 1, "TRAILER!!!", 0, b"")
    return out.getvalue()


def _busybox(root: Path | None = None) -> Path:
    """The static busybox for the initramfs: the host's, or (a guest on a pinned root, perhaps
    of another architecture) the root's own, which its recipe installs as busybox-static."""
    for path in BUSYBOX_PATHS:
        if root is not None:
            candidate = root / path.lstrip("/")
            if candidate.is_file():
                return candidate
        elif os.path.isfile(path):
            return Path(path)
    if root is not None:
        raise KconformError(f"the root {root} has no busybox for a direct boot's initramfs: add "
                            "busybox-static to its recipe's packages")
    raise KconformError("a direct boot needs the host's static busybox for its initramfs: "
                        "apt-get install busybox-static (./kconform installs it), or boot "
                        "through virtme-ng with --guest-boot virtme-ng")


def modules_dir(tree: KernelTree) -> Path | None:
    """The tree's lib/modules/<release>, where its vmlinuz's tree keeps it."""
    if tree.vmlinuz is None or not tree.release:
        return None
    for base in (tree.vmlinuz.parent.parent, tree.vmlinuz.parent):
        for lib in ("lib/modules", "usr/lib/modules"):
            candidate = base / lib / tree.release
            if (candidate / "modules.dep").is_file():
                return candidate
    return None


def root_module_files(tree: KernelTree, modules: Path, root: str = "9p") -> list[Path]:
    """The module files a root of this kind needs, dependencies first, each once."""
    base = modules.parents[2]  # <base>/lib/modules/<release>: modprobe -d takes <base>
    if base.name == "usr":
        base = base.parent
    files: list[Path] = []
    for module in GUEST_MODULES[root]:
        proc = subprocess.run(["modprobe", "-d", str(base), "-S", tree.release,
                               "--show-depends", module], capture_output=True, text=True)
        if proc.returncode != 0:
            raise KconformError(f"{tree.name}: modprobe cannot find module {module} in "
                                f"{modules} ({proc.stderr.strip()}); boot it with "
                                "--guest-boot virtme-ng")
        for line in proc.stdout.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and len(words) > 1 and Path(words[1]) not in files:
                files.append(Path(words[1]))  # "builtin 9p" lines need no file
    return files


def _module_bytes(path: Path) -> tuple[str, bytes]:
    """(its name as insmod is given it, its content uncompressed): busybox insmod reads plain
    .ko files, and the kernel's own decompression may not be built in."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".ko.xz"):
        return name[:-3], lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return name[:-3], gzip.decompress(data)
    if name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise KconformError(f"{path} is zstd-compressed: apt-get install zstd")
        return name[:-4], subprocess.run([zstd, "-dc", str(path)], capture_output=True,
                                         check=True).stdout
    return name, data


def initramfs_content(tree: KernelTree, modules: Path, root: str = "9p",
                      busybox_root: Path | None = None) -> bytes:
    busybox = _busybox(busybox_root).read_bytes()
    entries: list[tuple[str, int, bytes | None]] = [
        (d, 0o40755, None) for d in ("bin", "dev", "proc", "sys", "newroot", "modules")]
    entries.append(("bin/busybox", 0o100755, busybox))
    entries += [(f"bin/{applet}", 0o120777, b"busybox") for applet in APPLETS]
    order = []
    for path in root_module_files(tree, modules, root):
        name, data = _module_bytes(path)
        order.append(name)
        entries.append((f"modules/{name}", 0o100644, data))
    entries.append(("modules/order", 0o100644, "\n".join(order).encode() + b"\n"))
    entries.append(("init", 0o100755, INIT_SCRIPT.encode()))
    return _newc(entries)


def initramfs_key(tree: KernelTree, modules: Path, root: str,
                  busybox_root: Path | None = None) -> str:
    """What the initramfs is made of, read without making it: the init, the applets, busybox and
    the module set by their files' size and mtime (modules.dep changes with the modules)."""
    path = _busybox(busybox_root)
    words = [INIT_SCRIPT, " ".join(APPLETS), " ".join(GUEST_MODULES[root]), tree.release,
             str(modules), str(path), file_stamp(path), file_stamp(modules / "modules.dep")]
    return hashlib.sha256("\0".join(words).encode()).hexdigest()[:24]


def initramfs_for(tree: KernelTree, cache: Path, modules: Path, root: str = "9p",
                  busybox_root: Path | None = None) -> Path:
    """The cached initramfs for this tree and root kind: made once, reused while what it is made
    of is the same (initramfs_key), so a boot reads no module and runs no modprobe.
    busybox_root: the pinned root whose busybox it holds (the host's otherwise)."""
    directory = cache / "initramfs"
    directory.mkdir(parents=True, exist_ok=True)
    key = initramfs_key(tree, modules, root, busybox_root)
    path = directory / f"{tree.release}-{root}-{key}.cpio"
    if not path.exists():
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_bytes(initramfs_content(tree, modules, root, busybox_root))
        os.replace(scratch, path)
    return path
