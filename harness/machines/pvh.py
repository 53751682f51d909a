"""An x86 kernel's vmlinux, taken out of its bzImage, for QEMU to start at its PVH entry point
(issue #17: under TCG, booting a bzImage costs 3-4 s before the kernel prints its first line:
SeaBIOS, the linuxboot option ROM, and the kernel's own decompressor, xz for Debian's 5.10 and
6.1, all emulated; given an ELF with a PVH entry note, QEMU loads it itself and starts it at that
entry, 0.1-0.3 s. Measured on 5.10.223: 6.5-9.0 s to the agent's hello booted from the bzImage,
3.3-4.7 s from its vmlinux, same command line otherwise).

It is the same kernel: the bzImage's payload is the vmlinux, compressed (with its size appended,
the boot protocol's payload_offset and payload_length saying where, Documentation/arch/x86/boot
.rst). What differs is only how it is entered: the PVH entry (arch/x86/platform/pvh, CONFIG_PVH,
set in Debian's kernels) takes the command line, the initramfs and the memory map from QEMU's
start info instead of the boot_params the decompressor would have set up. A kernel without the
note, or a payload this module cannot decompress, boots from its bzImage as before.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from ..cache import hold_in_use
from ..errors import KconformError

XEN_ELFNOTE_PHYS32_ENTRY = 18  # include/xen/interface/elfnote.h: the PVH entry's note
_SETUP_SECTS, _HDRS, _PAYLOAD = 0x1F1, 0x202, 0x248  # the x86 boot protocol's header fields


def _payload(image: bytes) -> bytes | None:
    """The compressed vmlinux in a bzImage (boot protocol 2.08 on), or None."""
    if len(image) < 0x250 or image[_HDRS:_HDRS + 4] != b"HdrS":
        return None
    setup_sects = image[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", image, _PAYLOAD)
    start = (setup_sects + 1) * 512 + offset
    if not length or start + length > len(image):
        return None
    return image[start:start + length]


class Damaged(Exception):
    pass


def _decompress(payload: bytes) -> bytes | None:
    """The payload decompressed: xz, zstd and gzip (what Debian's kernels use); None for
    another compressor, or zstd without the zstd program. Damaged when it does not decompress
    whole to the size the build appended."""
    # The build appends the decompressed size to every compressor's output but gzip's, whose
    # own trailer ends in it (scripts/Makefile.lib: cmd_gzip has no size_append)
    body, (size,) = payload[:-4], struct.unpack("<I", payload[-4:])
    if payload.startswith(b"\x1f\x8b"):
        body = payload
    if body.startswith(b"\xfd7zXZ\x00"):
        xz = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out, whole = xz.decompress(body), xz.eof
    elif body.startswith(b"\x1f\x8b"):
        gz = zlib.decompressobj(wbits=31)
        out, whole = gz.decompress(body), gz.eof
    elif body.startswith(b"\x28\xb5\x2f\xfd"):
        zstd = shutil.which("zstd")
        if zstd is None:
            return None
        proc = subprocess.run([zstd, "-dcq"], input=body, capture_output=True)
        out, whole = proc.stdout, proc.returncode == 0
    else:
        return None
    if not whole or len(out) != size:
        raise Damaged(f"{len(out)} bytes of the {size} it holds")
    return out


def has_pvh_entry(elf: bytes) -> bool:
    """Whether an ELF64 little-endian image has the PVH entry note (a header or note that runs
    past the file is no note)."""
    try:
        return _has_pvh_entry(elf)
    except struct.error:
        return False


def _has_pvh_entry(elf: bytes) -> bool:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        at, end = p_offset, p_offset + p_filesz
        while at + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, at)
            name = elf[at + 12:at + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def pvh_kernel(image: Path, cache: Path) -> Path | None:
    """The vmlinux of the bzImage `image`, made once into <cache>/images/ and named by the
    bzImage's size and mtime; None when it has no PVH entry (boot the bzImage)."""
    st = image.stat()
    key = hashlib.sha256(f"{image}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
    directory = cache / "images"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"vmlinux-{image.name}-{key}.elf"
    hold_in_use(path)  # before the check: a prune from here on leaves it alone
    if path.is_file():
        return path
    none = directory / f".{path.stem}.no-pvh"  # a kernel found without one is not read again
    if none.exists():
        return None
    payload = _payload(image.read_bytes())
    try:
        vmlinux = _decompress(payload) if payload is not None else None
    except (lzma.LZMAError, zlib.error, EOFError, Damaged) as exc:
        raise KconformError(f"{image}: its compressed kernel does not decompress ({exc}); the "
                            "file may be damaged: remove it from the cache to fetch it again") \
            from None
    if vmlinux is None:
        return None  # another compressor, or no zstd: its bzImage, this time
    if not has_pvh_entry(vmlinux):
        none.write_text("")
        return None
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_bytes(vmlinux)
    os.replace(scratch, path)
    return path
