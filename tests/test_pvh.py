"""machines/pvh.py: the vmlinux inside a bzImage, found by the boot protocol's header, and the
PVH entry note that lets QEMU start it directly. Synthetic images, built here byte by byte as
the kernel's build lays them out (arch/x86/boot/header.S, Documentation/arch/x86/boot.rst)."""
import lzma
import shutil
import struct
import subprocess

import pytest

from harness.errors import KconformError
from harness.machines import pvh


def elf_with_notes(*notes: tuple[bytes, int]) -> bytes:
    """An ELF64 little-endian image with one PT_NOTE segment of (name, type) notes."""
    body = b""
    for name, n_type in notes:
        named = name + b"\0"
        body += struct.pack("<III", len(named), 4, n_type) + named.ljust((len(named) + 3) // 4 * 4,
                                                                        b"\0") + b"\0" * 4
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)           # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)       # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(header) + phdr + body


PVH_ELF = elf_with_notes((b"GNU", 3), (b"Xen", pvh.XEN_ELFNOTE_PHYS32_ENTRY))


def bzimage(payload: bytes, size: int | None = len(PVH_ELF), setup_sects: int = 3) -> bytes:
    """A bzImage: setup sectors with the header, then the protected-mode part holding the
    compressed payload at payload_offset, followed by the decompressed size as the build's
    size_append writes it (size None: not, as for gzip, whose trailer ends in it)."""
    compressed = payload + (struct.pack("<I", size) if size is not None else b"")
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0x80, len(compressed))
    return bytes(setup) + b"\0" * 0x80 + compressed + b"\0" * 100


def test_the_pvh_note_is_found_among_others_and_absent_is_absent():
    assert pvh.has_pvh_entry(PVH_ELF)
    assert not pvh.has_pvh_entry(elf_with_notes((b"GNU", 3), (b"Xen", 1)))
    assert not pvh.has_pvh_entry(b"MZ not an ELF at all" + b"\0" * 100)


def test_an_xz_bzimages_vmlinux_is_made_once_and_named_by_the_image(tmp_path):
    image = tmp_path / "vmlinuz-6.1.0-test"
    image.write_bytes(bzimage(lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)))
    made = pvh.pvh_kernel(image, tmp_path / "cache")
    assert made is not None and made.read_bytes() == PVH_ELF
    assert made.parent == tmp_path / "cache" / "images" and made.suffix == ".elf"
    made.write_bytes(PVH_ELF + b"kept")  # not made again while the bzImage is the same
    assert pvh.pvh_kernel(image, tmp_path / "cache").read_bytes() == PVH_ELF + b"kept"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_a_zstd_bzimage_as_debians_6_12_decompresses_too(tmp_path):
    frame = subprocess.run(["zstd", "-q", "-c"], input=PVH_ELF, capture_output=True).stdout
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(frame))
    assert pvh.pvh_kernel(image, tmp_path / "cache").read_bytes() == PVH_ELF


def test_a_kernel_without_the_note_or_a_header_boots_its_bzimage(tmp_path, monkeypatch):
    image = tmp_path / "vmlinuz-nopvh"
    plain_elf = elf_with_notes((b"GNU", 3))
    image.write_bytes(bzimage(lzma.compress(plain_elf, format=lzma.FORMAT_XZ), len(plain_elf)))
    assert pvh.pvh_kernel(image, tmp_path / "cache") is None
    monkeypatch.setattr(pvh, "_payload", lambda data: pytest.fail("read again"))
    assert pvh.pvh_kernel(image, tmp_path / "cache") is None  # remembered, not read again
    monkeypatch.undo()
    plain = tmp_path / "Image"
    plain.write_bytes(b"\0" * 4096)  # not a bzImage (an arm64 Image, a test stub)
    assert pvh.pvh_kernel(plain, tmp_path / "cache") is None


def test_a_damaged_payload_names_the_file_and_the_fix(tmp_path):
    image = tmp_path / "vmlinuz-damaged"
    good = lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)
    image.write_bytes(bzimage(good[:20] + b"\xff" * (len(good) - 20)))
    with pytest.raises(KconformError, match="does not decompress.*remove it from the cache"):
        pvh.pvh_kernel(image, tmp_path / "cache")


def test_a_truncated_payload_is_damaged_not_half_booted(tmp_path):
    """xz and gzip give back what they could of a cut stream without raising: the stream's end
    and the size the build appended decide."""
    image = tmp_path / "vmlinuz-cut"
    whole = lzma.compress(PVH_ELF * 50, format=lzma.FORMAT_XZ)
    cut = bytearray(bzimage(whole[:len(whole) // 2], len(PVH_ELF) * 50))
    struct.pack_into("<I", cut, 0x248 + 4, len(whole) // 2 + 4)
    image.write_bytes(bytes(cut))
    with pytest.raises(KconformError, match="does not decompress"):
        pvh.pvh_kernel(image, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "images").glob("vmlinux-*.elf"))


def test_a_note_that_runs_past_the_file_is_no_note():
    assert not pvh.has_pvh_entry(PVH_ELF[:-6])


def test_a_gzip_bzimage_whose_trailer_holds_the_size_decompresses(tmp_path):
    """A kernel of one's own is often gzip (the kernel's default): its payload is the gzip
    stream as it is, no size appended (cmd_gzip has no size_append)."""
    import gzip
    image = tmp_path / "bzImage"
    image.write_bytes(bzimage(gzip.compress(PVH_ELF), size=None))
    assert pvh.pvh_kernel(image, tmp_path / "cache").read_bytes() == PVH_ELF
