"""What every conformance case needs from the kernel under test, checked before a guest boots."""
import pytest

from harness.plugin.run import RUN_KEY


def pytest_collection_modifyitems(items):
    # Without the bpf() syscall there is no sockmap at all: skip, naming the option, rather than
    # boot a kernel to watch every case fail with ENOSYS.
    for item in items:
        item.add_marker(pytest.mark.requires_config("CONFIG_BPF_SYSCALL"))


# After the plugin's kernel parametrization (a trylast conftest hook; a test module's own
# pytest_generate_tests runs before every plugin's), so the ids start with the kernel:
# test_redirect_matrix[debian-7.3-sockhash-sk_skb-ingress-udp6-unix_dgram].
@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc):
    """The redirect matrix's cases, from the support-table behaviours of the expectations."""
    if metafunc.definition.name != "test_redirect_matrix":
        return
    behaviours = metafunc.config.stash[RUN_KEY].behaviours
    metafunc.parametrize("behaviour, variant", [
        pytest.param(bid, combo.variant,
                     id=f"{combo.map}-{combo.program}-{combo.direction}-{combo.source}-"
                        f"{combo.target}",
                     marks=[pytest.mark.requires_config(*_options_for(combo))])
        for bid, behaviour in behaviours.items() if behaviour.matrix is not None
        for combo in behaviour.matrix.combinations()])


# What a kernel needs to make each socket kind; vsock pairs connect over the loopback transport.
KIND_OPTIONS = {"tcp6": ("CONFIG_IPV6",), "udp6": ("CONFIG_IPV6",),
                "vsock_stream": ("CONFIG_VSOCKETS", "CONFIG_VSOCKETS_LOOPBACK"),
                "vsock_seqpacket": ("CONFIG_VSOCKETS", "CONFIG_VSOCKETS_LOOPBACK")}


def _options_for(combo):
    return sorted({opt for kind in (combo.source_kind, combo.target)
                   for opt in KIND_OPTIONS.get(kind, ())})
