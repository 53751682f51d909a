"""Kernels: named kernels (kernels/*.toml) and local ones, resolved to a bootable tree.

A Debian kernel is resolved through a private apt configuration (the system's sources and state are
never touched), downloaded with apt so the archive's signatures and hashes are checked, unpacked,
and laid out as virtme-ng expects: <tree>/boot/vmlinuz-<release> + <tree>/lib/modules/<release>.
Trees live in the cache, are published with one rename (an interrupted fetch never looks complete)
and carry a manifest that catches truncation or corruption later.

specs.py    the definitions and the --kernel values that name them
trees.py    a bootable tree and its manifest
apt.py      apt with a configuration of kconform's own
provider.py name -> tree, fetching into the cache
"""
from .apt import DEBIAN_KEYRING, AptArchive, apt_sandbox_user
from .provider import KernelProvider
from .specs import KernelSpec, default_kernel_names, expand_kernel_args, load_specs, parse_spec
from .trees import KernelTree, bzimage_release

__all__ = ["DEBIAN_KEYRING", "AptArchive", "KernelProvider", "KernelSpec", "KernelTree",
           "apt_sandbox_user", "bzimage_release", "default_kernel_names", "expand_kernel_args",
           "load_specs", "parse_spec"]
