"""A bootable kernel tree (what virtme-ng is given, what results record) and the manifest that
proves a cached tree whole."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KconformError
from ..versions import upstream_version


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
    suite: str | None = None          # the Debian suite the package came from
    arch: str = "amd64"               # Debian architecture: amd64 or arm64
    _config: dict[str, str] | None = field(default=None, repr=False)

    @property
    def version(self) -> tuple[int, ...]:
        """Upstream version (major, minor, patch) used to pick expectations."""
        try:
            return upstream_version(self.exact_version)
        except ValueError:
            raise KconformError(f"kernel {self.name}: its release {self.exact_version!r} names no "
                                "version (like 6.1.0-50-amd64), so no expectations apply to it; "
                                "boot a kernel whose release starts with its version") from None

    @property
    def exact_version(self) -> str:
        return self.package_version or self.release

    def config(self) -> dict[str, str]:
        """The kernel's .config as a dict ({} when unknown)."""
        if self._config is None:
            self._config = parse_kconfig(self.config_path.read_text()) \
                if self.config_path and self.config_path.exists() else {}
        return self._config


def parse_kconfig(text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value
    return config


def local_kernel_image(path: Path) -> Path:
    """The bzImage a kernel path names: the path itself, or a built tree's arch/x86/boot/bzImage.
    KconformError when there is none to read."""
    if not path.exists():
        raise KconformError(f"{path} does not exist; give the path of a bzImage or of a built "
                            "kernel tree")
    image = path / "arch" / "x86" / "boot" / "bzImage" if path.is_dir() else path
    if path.is_dir() and not image.is_file():
        raise KconformError(f"{path} is a directory but not a built kernel tree (no "
                            "arch/x86/boot/bzImage): add --build to configure and build it with "
                            "what the suite needs, build it yourself (make), or give the path "
                            "of a bzImage")
    if not image.is_file():  # reading a FIFO or a device would hang or never end
        raise KconformError(f"{path} is not a regular file; give the path of a bzImage or of a "
                            "built kernel tree")
    return image


def bzimage_release(path: Path) -> str:
    """The release string stored in a bzImage header (what `file` prints as 'version')."""
    return bzimage_version_string(path).split(" ", 1)[0]


def bzimage_version_string(path: Path) -> str:
    """The whole version string of a bzImage header: release, builder, build number and the
    kernel's own version (a Debian kernel's ends with its package version and date)."""
    with open(path, "rb") as f:
        head = f.read(0x400)
        if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
            raise KconformError(f"{path} is not a bzImage (no 'HdrS' boot header); give the "
                                "path of a bzImage (e.g. arch/x86/boot/bzImage) or of a built "
                                "kernel tree")
        offset = int.from_bytes(head[0x20E:0x210], "little") + 0x200
        f.seek(offset)
        raw = f.read(256)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


