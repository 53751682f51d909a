"""SSH targets without a machine: URLs, and what a target's description says about its kernel."""
import contextlib
import socket
import threading

import pytest

from harness.errors import KconformError
from harness.machines.ssh import (
    SshTarget,
    description_from_dict,
    description_to_dict,
    parse_description,
)
from harness.versions import RELEASE

DEBIAN = ("Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
          "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
          "PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)")
UBUNTU = "Linux version 6.8.0-45-generic (buildd@lcy02) (x86_64-linux-gnu-gcc-13) #45-Ubuntu SMP"


def target():
    return SshTarget.parse("ssh://root@lab1:2222")


def test_target_url_with_and_without_user_and_port():
    assert (target().user, target().host, target().port) == ("root", "lab1", 2222)
    bare = SshTarget.parse("ssh://lab2")
    assert (bare.user, bare.port, bare.url) == ("root", 22, "ssh://root@lab2:22")


@pytest.mark.parametrize("url", ["lab1", "http://lab1", "ssh://", "ssh://lab1/path",
                                 "ssh://lab1:port"])
def test_a_bad_target_url_names_the_form_expected(url):
    with pytest.raises(KconformError, match=r"ssh://user@host\[:port\]|not a number"):
        SshTarget.parse(url)


def test_debian_kernel_is_judged_by_its_package_version_not_the_compilers(tmp_path):
    tree = parse_description(target(), f"6.1.0-50-amd64\n0\n{DEBIAN}\n\n---config---\n", "",
                             tmp_path)
    assert (tree.name, tree.release, tree.exact_version) == ("6.1.0-50-amd64", "6.1.0-50-amd64",
                                                             "6.1.176-1")
    assert tree.version == (6, 1, 176, RELEASE) and tree.config_path is None
    assert tree.target == "ssh://root@lab1:2222"


def test_ubuntu_kernel_is_judged_by_its_upstream_version(tmp_path):
    out = (f"6.8.0-45-generic\n0\n{UBUNTU}\nUbuntu 6.8.0-45.45-generic 6.8.12\n---config---\n"
           "CONFIG_BPF_SYSCALL=y\n# CONFIG_BPF_STREAM_PARSER is not set\n")
    tree = parse_description(target(), out, "", tmp_path)
    assert tree.version == (6, 8, 12, RELEASE)
    assert tree.config() == {"CONFIG_BPF_SYSCALL": "y"}


def test_a_target_without_root_says_to_log_in_as_root(tmp_path):
    with pytest.raises(KconformError, match=r"need root .*\(ssh://root@lab1:2222\)"):
        parse_description(target(), f"6.1.0-50-amd64\n1000\n{DEBIAN}\n", "", tmp_path)


def test_the_ssh_line_logs_in_the_same_way():
    t = SshTarget.parse("ssh://root@127.0.0.1:2299", key_file="/k", known_hosts="/kh")
    assert t.ssh_command() == "ssh -p 2299 -i /k -o UserKnownHostsFile=/kh -- root@127.0.0.1"


def test_an_unreachable_target_is_a_usage_error_naming_it(run_pytest):
    proc = run_pytest("cases", "--target", "ssh://root@127.0.0.1:9", "--collect-only")
    assert proc.returncode == 4
    assert "cannot connect to ssh://root@127.0.0.1:9" in proc.stderr
    assert "check that the machine is up and sshd listens on that port" in proc.stderr


def test_rootfs_names_are_checked_before_anything_runs(run_pytest):
    proc = run_pytest("cases", "--rootfs", "debian-nonesuch", "--collect-only")
    assert proc.returncode == 4
    assert "unknown root filesystem 'debian-nonesuch'" in proc.stderr
    assert "debian-bookworm" in proc.stderr and "images/*.toml" in proc.stderr


def test_a_server_that_hangs_up_after_its_banner_is_a_clear_transient_error():
    """paramiko raises EOFError here, which is no OSError: it must not escape as a crash."""
    import contextlib
    import socket
    import threading

    from harness.machines.ssh import SshError, connect
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def hang_up():
        conn, _ = server.accept()
        conn.sendall(b"SSH-2.0-kconform-test\r\n")
        # The hang-up is a FIN, and what the client sends is read until it gives up: a close
        # with its bytes unread sends a reset instead, and the client then fails at its
        # connect (ECONNRESET), not in the handshake this is about.
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    port = server.getsockname()[1]
    with pytest.raises(SshError, match=rf"ssh://root@127.0.0.1:{port}: the SSH handshake failed") \
            as failure:
        connect(SshTarget.parse(f"ssh://root@127.0.0.1:{port}", accept_any_host_key=True),
                timeout=5)
    assert failure.value.transient
    server.close()


def test_a_missing_key_file_is_named(tmp_path):
    from harness.machines.ssh import SshError, connect
    with pytest.raises(SshError, match="--ssh-key .*/nokey: no such file"):
        connect(SshTarget.parse("ssh://root@127.0.0.1:9", key_file=str(tmp_path / "nokey")))


def test_a_description_survives_the_trip_to_an_xdist_worker(tmp_path):
    from harness.machines.ssh import description_from_dict, description_to_dict
    out = f"6.1.0-50-amd64\n0\n{DEBIAN}\n---config---\nCONFIG_BPF_SYSCALL=y\n"
    tree = parse_description(target(), out, "", tmp_path)
    again = description_from_dict(description_to_dict(tree))
    assert (again.name, again.release, again.exact_version, again.target, again.config()) == \
        (tree.name, tree.release, "6.1.176-1", "ssh://root@lab1:2222", {"CONFIG_BPF_SYSCALL": "y"})


def test_a_target_that_hangs_up_is_a_usage_error_without_paramikos_traceback(run_pytest):
    """paramiko's transport thread logs a failed handshake with a traceback; only kconform's own
    message may reach the user."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        proc = run_pytest("cases", "--target", f"ssh://root@127.0.0.1:{port}", "--collect-only")
    finally:
        listener.close()
    assert proc.returncode == 4
    assert f"ssh://root@127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_a_target_says_its_architecture_with_uname_m(tmp_path, machine, arch):
    # its BPF objects are built for it, and its results say which architecture ran
    out = f"6.1.0-50-{arch}\n0\n{DEBIAN}\n\n---machine---\n{machine}\n---config---\n"
    tree = parse_description(target(), out, "", tmp_path)
    assert tree.arch == arch
    assert description_from_dict(description_to_dict(tree)).arch == arch



def test_a_target_of_an_architecture_kconform_cannot_build_for_is_refused_by_name(tmp_path):
    out = f"6.1.0-50-riscv64\n0\n{DEBIAN}\n\n---machine---\nriscv64\n---config---\n"
    with pytest.raises(KconformError, match="its machine is 'riscv64' .*amd64 and arm64"):
        parse_description(target(), out, "", tmp_path)
