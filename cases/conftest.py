"""What every conformance case needs from the kernel under test, checked before a guest boots."""
import pytest


def pytest_collection_modifyitems(items):
    # Without the bpf() syscall there is no sockmap at all: skip, naming the option, rather than
    # boot a kernel to watch every case fail with ENOSYS.
    for item in items:
        item.add_marker(pytest.mark.requires_config("CONFIG_BPF_SYSCALL"))
