"""SSH targets treat the URL and the target's own words as untrusted (issue 16, finding 6): user
and host are validated before anything connects, the printed ssh line cannot be read as options,
and the name a target gives its kernel is safe as a path component."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import KconformError
from harness.machines.ssh import SshTarget, parse_description, target_kernel_name
from harness.reports import results
from tests.test_targets_vm import _target_args, ssh_target  # noqa: F401  (ssh_target: a fixture)

DEBIAN = ("Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
          "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
          "PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)")


@pytest.mark.parametrize("url, problem", [
    ("ssh://-oProxyCommand=touch${IFS}pwned@lab1", "is not a user name"),
    ("ssh://root@-oProxyCommand=x", "is not a DNS name"),
    ("ssh://root@lab1;touch pwned", "is not a DNS name"),
    ("ssh://root@lab1$(touch pwned)", "is not a DNS name"),
    ("ssh://ro ot@lab1", "is not a user name"),
    ("ssh://%2DoProxyCommand=x@lab1", "is not a user name"),
    ("ssh://root@lab1\n", "is not a DNS name"),
    ("ssh://root@-lab1", "is not a DNS name"),
    ("ssh://root@lab_1", "is not a DNS name"),
    ("ssh://root@[::1", "no closing"),
    ("ssh://root@[lab1]", "is not an IPv6 address"),
    ("ssh://root@[::1]x", "after the IPv6 address"),
    ("ssh://root@999.0.0.1", "is not an IPv4 address"),
    ("ssh://root:secret@lab1", "password in the URL"),
    ("ssh://root@lab1:0", "port 0 is out of range: give one from 1 to 65535"),
    ("ssh://root@lab1:65536", "port 65536 is out of range"),
    ("ssh://root@lab1:", "the port '' is not a number"),
    ("ssh://root@lab1:-22", "is not a number"),
    ("ssh://root@lab1:２２", "is not a number"),
    ("ssh://root@", "no host"),
    ("ssh://root@lab1?x", "no path, query or fragment"),
    ("ssh://root@lab1/x", "no path, query or fragment"),
    ("lab1", "not an ssh:// URL"),
])
def test_a_bad_target_url_is_refused_naming_it_the_problem_and_the_form(url, problem):
    with pytest.raises(KconformError) as caught:
        SshTarget.parse(url)
    message = str(caught.value)
    assert message.startswith(f"--target {url!r}: ")
    assert problem in message
    assert "expected ssh://user@host[:port]" in message


@pytest.mark.parametrize("url, user, host, port, canonical", [
    ("ssh://lab1", "root", "lab1", 22, "ssh://root@lab1:22"),
    ("ssh://ci.user@Lab-1.example.org.:2222", "ci.user", "lab-1.example.org.", 2222,
     "ssh://ci.user@lab-1.example.org.:2222"),
    ("ssh://root@10.0.0.7:65535", "root", "10.0.0.7", 65535, "ssh://root@10.0.0.7:65535"),
    ("ssh://root@[::1]:2222", "root", "::1", 2222, "ssh://root@[::1]:2222"),
    ("ssh://root@[fe80:0::1]", "root", "fe80::1", 22, "ssh://root@[fe80::1]:22"),
])
def test_good_target_urls_parse(url, user, host, port, canonical):
    target = SshTarget.parse(url)
    assert (target.user, target.host, target.port, target.url) == (user, host, port, canonical)


def test_the_printed_ssh_line_takes_every_value_literally(tmp_path):
    key = tmp_path / "my key; touch pwned"  # ssh -G lists an identity file only if it exists
    key.write_text("")
    key, known_hosts = str(key), '/tmp/kh" -oProxyCommand=touch pwned "x'
    target = SshTarget.parse("ssh://root@[::1]:2299", key_file=key, known_hosts=known_hosts)
    line = target.ssh_command()
    argv = shlex.split(line)
    assert argv == ["ssh", "-p", "2299", "-i", key, "-o",
                    'UserKnownHostsFile="/tmp/kh\\" -oProxyCommand=touch pwned \\"x"',
                    "--", "root@::1"]
    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client to check the line with (the argv check above passed)")
    # What OpenSSH makes of the pasted line (-G: print the configuration, connect to nothing):
    # the values land where they were meant to, and nothing ran.
    shown = subprocess.run(["sh", "-c", line.replace("ssh ", "ssh -G -F /dev/null ", 1)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    config: dict[str, list[str]] = {}
    for option in shown.stdout.splitlines():
        name, _, value = option.partition(" ")
        config.setdefault(name, []).append(value)
    assert (config["user"], config["hostname"], config["port"]) == (["root"], ["::1"], ["2299"])
    assert config["userknownhostsfile"] == ['/tmp/kh" -oProxyCommand=touch pwned "x']
    assert "proxycommand" not in config
    assert key in config["identityfile"]
    assert not (tmp_path / "pwned").exists()


def test_the_printed_ssh_line_ends_options_before_the_destination():
    argv = shlex.split(SshTarget.parse("ssh://root@lab1").ssh_command())
    assert argv == ["ssh", "-p", "22", "--", "root@lab1"]


@pytest.mark.parametrize("release", ["/../../../x", "../../escape", "..", ".", "",
                                     "6.1.0-9-amd64$(touch pwned)", "-oProxyCommand=x",
                                     "a/b\\c d[e]f", "x" * 500, "\x1b[31mred", "ÿñïçødé"])
def test_a_hostile_uname_never_leaves_the_targets_directory(tmp_path, release):
    config_dir = tmp_path / "results" / "targets"
    out = f"{release}\n0\n{DEBIAN}\n\n---config---\nCONFIG_BPF_SYSCALL=y\n"
    tree = parse_description(SshTarget.parse("ssh://root@lab1"), out, "", config_dir)
    assert tree.config_path.parent == config_dir
    assert tree.config_path.read_text().startswith("CONFIG_BPF_SYSCALL=y")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [tree.config_path]
    assert re.fullmatch(r"[A-Za-z0-9_+~][A-Za-z0-9._+~-]{0,63}", tree.name), tree.name
    assert tree.release.isprintable() and len(tree.release) <= 200
    assert not (tmp_path / "pwned").exists()


def test_a_real_uname_keeps_its_name():
    assert target_kernel_name("6.1.0-50-amd64") == "6.1.0-50-amd64"
    assert target_kernel_name("6.8.0-45-generic") == "6.8.0-45-generic"
    assert target_kernel_name("6.12.0+rc1~kc") == "6.12.0+rc1~kc"
    assert target_kernel_name("/../../../x") == "x"
    assert target_kernel_name("6.1.0 <b>x</b>") == "6.1.0_b_x_b_"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_uname_becomes_one_safe_path_component(release):
    name = target_kernel_name(release)
    assert 0 < len(name) <= 64 and name not in (".", "..")
    assert "/" not in name and "\x00" not in name and not name.startswith(("-", "."))
    assert Path("/results/targets", name).parent == Path("/results/targets")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_target_url_parses_or_is_refused_with_kconforms_error(url):
    try:
        target = SshTarget.parse("ssh://" + url)
    except KconformError:
        return
    argv = shlex.split(target.ssh_command())
    assert argv[-2] == "--" and not argv[-1].startswith("-")
    assert not any(c.isspace() or ord(c) < 32 for c in target.user + target.host)
    assert 1 <= target.port <= 65535


# ---------------------------------------------------------------------- sock_ops cgroups (vm)

@pytest.mark.vm
def test_sock_ops_programs_stay_in_kconforms_cgroups_and_a_dead_agents_are_removed(run_pytest,
                                                                                 ssh_target):  # noqa: F811  (the fixture)
    """On an SSH target (a machine that outlives its connections): a case's program sees the
    case's sockets only, never the root cgroup's; an agent's start removes only dead agents'
    groups; and an agent killed mid-case leaves a group with its program attached that the
    next connection removes."""
    proc = run_pytest("tests/faultcases/sock_ops_cgroup.py", *_target_args(ssh_target), "-v")
    verdicts = {c.case: c.verdict for c in results.load(proc.results).cases}
    assert verdicts == {"test_a_case_program_sees_only_the_cases_sockets": "pass",
                        "test_an_agent_start_removes_only_dead_agents_groups": "pass",
                        "test_killed_in_a_case": "crashed",
                        "test_the_next_connection_finds_nothing_left": "pass"}, proc.stdout
    consoles = "".join(p.read_text() for p in (proc.results / "console").glob("*.log"))
    assert re.search(r"kconform: removed cgroup kconform-\d+-\d+-\d+ left by a dead agent "
                     r"\(1 program\(s\) detached\)", consoles), consoles[-3000:]
