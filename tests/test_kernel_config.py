"""./kconform config: the options the suite needs, from the cases' own requires_config marks and
the guest's boot path, in the forms merge_config.sh and vng --kconfig take."""
import re
import subprocess
import sys

from harness.paths import REPO_ROOT


def _config(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", "config", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_fragment_holds_what_cases_skip_without_and_what_the_guest_boots_with():
    proc = _config()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(re.fullmatch(r"# .*|CONFIG_[A-Z0-9_]+=y", line) for line in lines), lines
    options = {line.split("=")[0] for line in lines if not line.startswith("#")}
    # from the cases' marks (a mark removed drops its option) ...
    assert {"CONFIG_BPF_STREAM_PARSER", "CONFIG_NET_SOCK_MSG", "CONFIG_IPV6",
            "CONFIG_DEBUG_INFO_BTF", "CONFIG_VSOCKETS_LOOPBACK"} <= options
    # ... and from the boot path
    assert {"CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO", "CONFIG_VIRTIO_CONSOLE"} <= options
    why = proc.stdout.split("CONFIG_DEBUG_INFO_BTF=y")[0].splitlines()[-1]
    assert "test_iterate.py::test_iterator_visits_each_slot" in why


def test_the_vng_form_is_one_configitem_per_option():
    proc = _config("--format", "vng")
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0::2] == ["--configitem"] * (len(words) // 2)
    assert "CONFIG_IPV6=y" in words[1::2]


def test_a_bad_format_is_a_usage_error():
    proc = _config("--format", "yaml")
    assert proc.returncode == 2 and "invalid choice: 'yaml'" in proc.stderr
