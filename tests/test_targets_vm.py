"""Beyond the default path: the same cases on a pinned root filesystem and on an SSH target give
the verdicts of the default path (QEMU on the host's root) on the same kernel, debian-6.1.

The SSH target is debian-6.1 booted by virtme-ng with its SSH server forwarded to a loopback port
(`vng --ssh PORT --ssh-tcp`); kconform reaches it only through --target, as it would a lab machine.
"""
import re
import socket
import time
from pathlib import Path

import pytest

from harness.kernels import KernelProvider
from harness.machines.accel import choose_accel
from harness.machines.qemu import QemuMachine
from harness.machines.ssh import SshError, SshTarget, connect, run
from harness.reports import results
from tests.conftest import verdicts_of

pytestmark = pytest.mark.vm

VNG_SSH = Path.home() / ".cache" / "virtme-ng" / ".ssh"  # where vng --ssh keeps its keys
# virtme-ng's DHCP configures eth0, but udev in these guests sometimes renames it (enp0s9) first,
# and then the forwarded port never reaches sshd (seen with virtme-ng 1.42 on Debian 12, always
# with --verbose, now and then without). So the guest gives its one NIC the address QEMU's user
# network forwards to, whatever it is called; where DHCP did it already, `ip` just says so.
CONFIGURE_NETWORK = ("for nic in /sys/class/net/*; do n=${nic##*/}; [ \"$n\" = lo ] && continue; "
                     "ip link set \"$n\" up; ip addr add 10.0.2.15/24 dev \"$n\"; "
                     "done 2>/dev/null; "
                     "ip route add default via 10.0.2.2 2>/dev/null; ")


def test_suite_on_the_pinned_root_gives_the_verdicts_of_the_default_path(reference_run,
                                                                         run_pytest):
    proc = run_pytest("cases", "--kernel", "debian-6.1", "--rootfs", "debian-bookworm")
    assert proc.returncode == 0
    pinned = verdicts_of(proc.results, "debian-6.1")
    assert len(pinned) > 100
    assert pinned == verdicts_of(reference_run.results, "debian-6.1")
    kernel = results.load(proc.results).kernels["debian-6.1"]
    assert kernel.machine == "qemu"
    assert re.match(r"debian-bookworm@[0-9a-f]{12} \(python3 3\.11\.\S+, libbpf1 \S+\)$",
                    kernel.rootfs), kernel.rootfs
    assert "--root " in kernel.boot and "ran on" in (proc.results / "report.md").read_text()


@pytest.fixture(scope="module")
def ssh_target(tmp_path_factory):
    """debian-6.1 with an SSH server on 127.0.0.1:<free port>, and a known_hosts file holding
    its host key (vng --ssh generates the keys when it starts)."""
    tmp = tmp_path_factory.mktemp("ssh-target")
    provider = KernelProvider()
    tree = provider.get("debian-6.1")
    port = _free_port()
    accel = choose_accel(tree.vmlinuz, cache=provider.cache)  # the run's probe answer, if cached
    guest = QemuMachine(tree, accel, tmp / "console.log",
                        command=CONFIGURE_NETWORK + "cat >/dev/null",
                        extra_vng=("--ssh", str(port), "--ssh-tcp"))
    guest.start()
    try:
        key = VNG_SSH / "id_virtme"
        known_hosts = tmp / "known_hosts"
        deadline = time.monotonic() + 240
        while True:
            host_key = VNG_SSH / "etc" / "ssh" / "ssh_host_ed25519_key.pub"
            if host_key.exists():
                known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.read_text().strip()}\n")
            target = SshTarget.parse(f"ssh://root@127.0.0.1:{port}", key_file=str(key),
                                     known_hosts=str(known_hosts))
            try:
                connect(target, timeout=5).close()
                break
            except SshError:
                if time.monotonic() > deadline or not guest.alive:
                    raise AssertionError("the SSH target never answered; its console:\n"
                                         + "\n".join(guest.console.tail(40))) from None
                time.sleep(2)
        yield target
    finally:
        guest.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _target_args(target: SshTarget) -> list[str]:
    return ["--target", target.url, "--ssh-key", target.key_file,
            "--ssh-known-hosts", target.known_hosts]


def _pushed_directories(target: SshTarget) -> str:
    client = connect(target)
    try:
        return run(client, "ls -d /tmp/kconform.* 2>/dev/null")[1].strip()
    finally:
        client.close()


# Runs before the whole suite on the same target: after that suite (742 cases, about 3 min on
# the one emulated vCPU) the reconnection after a dropped session did not answer within 60 s here
# (2026-12-02; not yet understood, and on a fresh target it passes).
def test_a_lost_connection_fails_its_test_and_the_rest_reconnect(run_pytest, ssh_target):
    # under xdist: the worker takes the target's description from the controller
    proc = run_pytest("tests/faultcases/connection.py", *_target_args(ssh_target), "-n", "1")
    verdicts = {c.case: c.verdict for c in results.load(proc.results).cases}
    assert verdicts == {"test_1_before": "pass", "test_2_connection_lost": "crashed",
                        "test_3_after": "pass"}, proc.stdout
    assert (f"the SSH session died during tests.guest.faults:drop_connection (the connection to "
            f"{ssh_target.url} was lost)") in proc.stdout
    assert f"log in by hand: ssh -p {ssh_target.port} " in proc.stdout
    lost = next(c for c in results.load(proc.results).cases
                if c.case == "test_2_connection_lost")
    assert lost.boot.startswith(f"ssh -p {ssh_target.port} ")  # how to log in by hand
    assert _pushed_directories(ssh_target) == ""  # both sessions' directories are gone


def test_suite_on_an_ssh_target_gives_the_verdicts_of_the_default_path(reference_run, run_pytest,
                                                                       ssh_target):
    proc = run_pytest("cases", *_target_args(ssh_target))
    assert proc.returncode == 0
    res = results.load(proc.results)
    # named by its `uname -r`, judged by its package version, recorded as an SSH target
    (name, kernel), = res.kernels.items()
    assert re.fullmatch(r"6\.1\.0-\d+-amd64", name)
    assert kernel.version.startswith("6.1.") and kernel.uname == name
    assert kernel.machine == ssh_target.url and kernel.rootfs == "target's own"
    assert verdicts_of(proc.results, name) == verdicts_of(reference_run.results, "debian-6.1")
    assert _pushed_directories(ssh_target) == ""  # the private directory was removed


def test_an_unknown_host_key_is_refused_naming_the_fixes(run_pytest, ssh_target, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = run_pytest("cases", "--target", ssh_target.url, "--ssh-key", ssh_target.key_file,
                      "--ssh-known-hosts", str(empty), "--collect-only")
    assert proc.returncode == 4  # a usage error, before any test runs
    assert "its host key is not known" in proc.stderr
    assert "--ssh-known-hosts FILE" in proc.stderr and "--ssh-accept-any-host-key" in proc.stderr
    accepted = run_pytest("cases", "--target", ssh_target.url, "--ssh-key", ssh_target.key_file,
                          "--ssh-accept-any-host-key", "--collect-only", "-q")
    named = run_pytest("cases", "--kernel", "debian-6.1", "--collect-only", "-q")
    counts = [re.search(r"\b(\d+) tests collected", p.stdout) for p in (accepted, named)]
    assert accepted.returncode == 0 and all(counts), accepted.stdout[-2000:]
    assert counts[0].group(1) == counts[1].group(1)  # the whole suite, as on a named kernel
