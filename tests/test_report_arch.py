"""Issue 13 point 4: every result says which architecture ran and whether the BPF JIT was on, and
compare reads one kernel version on two architectures as a pair.

The JIT state travels from the agent's hello (harness/agent/agent.py reads
/proc/sys/net/core/bpf_jit_enable once) through the session's parse of it to the reporter, which
records it per kernel beside the architecture of the kernel's tree. tests/data/arch/ holds a
saved amd64 run and an arm64 one made from it (its README says how).
"""
from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from harness.agent import agent
from harness.kernels import KernelTree, load_specs
from harness.machines.session import BootProtocolError, GuestSession, parse_hello
from harness.plugin import recording
from harness.plugin.run import KconformRun
from harness.reports import compare, grid, junit, results
from harness.reports.results import ResultsError
from tests.conftest import REPO
from tests.fake_machine import FakeMachine, Reply, hello_line
from tests.test_agent_fields import QuietKernelLog
from tests.test_report import ONLY_72, check_reports_agree, kconform

ARCH = REPO / "tests" / "data" / "arch"
AMD64, ARM64 = ARCH / "debian-7.2.json", ARCH / "debian-7.2-arm64.json"


# ---------------------------------------------------------------------- the guest's JIT state

@pytest.mark.parametrize("text, state", [("0\n", 0), ("1\n", 1), ("2\n", 2), ("", None),
                                         ("on\n", None)])
def test_the_agent_reads_the_jit_state_as_the_sysctl_says_it(tmp_path, text, state):
    # Documentation/admin-guide/sysctl/net.rst, bpf_jit_enable: 0 disables the JIT, 1 enables
    # it, 2 enables it with debug traces; an unreadable value is no state.
    sysctl = tmp_path / "bpf_jit_enable"
    sysctl.write_text(text)
    assert agent.bpf_jit_enable(str(sysctl)) == state


def test_a_kernel_without_the_sysctl_has_an_unknown_jit_state(tmp_path):
    # No CONFIG_BPF_JIT: net/core/sysctl_net_core.c registers bpf_jit_enable only under it.
    assert agent.bpf_jit_enable(str(tmp_path / "absent")) is None


def test_the_agents_hello_carries_the_jit_state_the_session_reads():
    hello = agent.ready_event(QuietKernelLog())
    assert hello["bpf_jit_enable"] == agent.bpf_jit_enable()  # this host's, read the same way
    assert parse_hello(json.dumps(hello)).get("bpf_jit_enable") == agent.bpf_jit_enable()


def started(tmp_path, hello: str) -> GuestSession:
    machine = FakeMachine(tmp_path / "console.log", boot=Reply(lines=[hello]))
    session = GuestSession(machine, "fake-6.12", boot_timeout=5)
    session.start()
    return session


@pytest.mark.parametrize("state", [0, 1, 2, None])
def test_the_session_keeps_the_jit_state_of_the_hello(tmp_path, state):
    session = started(tmp_path, hello_line(bpf_jit_enable=state))
    assert session.bpf_jit_enable == state
    session.close()


def test_a_hello_without_the_jit_state_leaves_it_unknown(tmp_path):
    session = started(tmp_path, hello_line())  # an agent from before it was read
    assert session.bpf_jit_enable is None
    session.close()


@pytest.mark.parametrize("value", ["1", True, 1.0, [1]])
def test_a_jit_state_that_is_no_integer_is_not_the_protocol(tmp_path, value):
    machine = FakeMachine(tmp_path / "console.log",
                          boot=Reply(lines=[hello_line(bpf_jit_enable=value)]))
    session = GuestSession(machine, "fake-6.12", boot_timeout=5)
    with pytest.raises(BootProtocolError, match="bpf_jit_enable is .* not an integer"):
        session.start()
    assert not machine.alive


# ---------------------------------------------------------------------- the reporter records them

class FakeRun(SimpleNamespace):
    """What Reporter reads of a KconformRun."""

    def rootfs_label(self, *arch: str) -> str:
        return "host"

    def boot_command(self, tree: KernelTree) -> str | None:
        return None

    arch_of = KconformRun.arch_of  # the run's own: it reads target_trees and specs


def fake_run(tmp_path, trees=None, live=None, kernel_names=()):
    return FakeRun(results_dir=tmp_path, kernels={}, specs=load_specs(), target_trees={},
                   kernel_names=list(kernel_names),
                   pool=SimpleNamespace(trees=trees or {}, live=live or {}))


def reporter(run) -> recording.Reporter:
    config = SimpleNamespace(invocation_params=SimpleNamespace(args=()),
                             addinivalue_line=lambda *a: None)
    return recording.Reporter(config, run)


def test_a_kernels_record_takes_its_trees_architecture_and_its_guests_jit_state(tmp_path):
    kernel = "debian-6.12-arm64"
    tree = KernelTree(name=kernel, vmlinuz=None, release="6.12.118+deb13-arm64",
                      package_version="6.12.118-1", arch="arm64")
    session = started(tmp_path, hello_line("6.12.118+deb13-arm64", bpf_jit_enable=0))
    report = reporter(fake_run(tmp_path, trees={kernel: tree}, live={kernel: session}))
    facts = dict(report._kernel_facts(kernel))
    assert facts["kernel_arch"] == "arm64" and facts["bpf_jit_enable"] == 0
    report._note_kernel(kernel, [SimpleNamespace(user_properties=list(facts.items()))])
    record = report.results.kernels[kernel]
    assert (record.arch, record.bpf_jit_enable, record.jit) == ("arm64", 0, "off (0)")
    session.close()


def test_a_kernel_that_never_booted_has_its_definitions_architecture_and_no_jit_state(tmp_path):
    report = reporter(fake_run(tmp_path))
    kernel = "debian-6.12-arm64@6.12.118-1"  # kernels/debian-6.12-arm64.toml: flavour arm64
    assert report._kernel_facts(kernel) == []
    report._note_kernel(kernel, [SimpleNamespace(user_properties=[])])
    record = report.results.kernels[kernel]
    assert (record.arch, record.bpf_jit_enable, record.jit) == ("arm64", None, "unknown")


def test_the_runs_header_names_each_kernels_architecture(tmp_path):
    line = recording.architectures_line(fake_run(
        tmp_path, kernel_names=["debian-6.12", "debian-6.12-arm64", "debian-6.1"]))
    assert line == [("kconform: architectures: amd64 (debian-6.12, debian-6.1), "
                     "arm64 (debian-6.12-arm64)")]
    assert recording.architectures_line(fake_run(tmp_path, kernel_names=["debian-6.1"])) == \
        ["kconform: architecture: amd64"]
    assert recording.architectures_line(fake_run(tmp_path, kernel_names=["./bzImage"])) == []


def test_a_run_over_both_architectures_records_and_prints_them(run_pytest):
    # tests/reportcases/fake.py boots nothing: the architecture is each kernel's definition's
    proc = run_pytest("tests/reportcases/fake.py", "--kernel", "debian-7.2,debian-7.2-arm64",
                      "-n", "0")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # fake.py's failing cases
    assert "kconform: architectures: amd64 (debian-7.2), arm64 (debian-7.2-arm64)" in proc.stdout
    res, md, _page = check_reports_agree(proc.results)
    assert {k: r.arch for k, r in res.kernels.items()} == {"debian-7.2": "amd64",
                                                           "debian-7.2-arm64": "arm64"}
    assert "| debian-7.2 · amd64 | debian-7.2-arm64 · arm64 | changed at |" in md


# ---------------------------------------------------------------------- results and reports

def test_results_from_before_arm64_guests_load_as_amd64_and_are_written_back_without_it():
    data = json.loads(ONLY_72.read_text())
    assert "arch" not in data["kernels"]["debian-7.2"]
    record = results.load(ONLY_72).kernels["debian-7.2"]
    assert (record.arch, record.architecture, record.jit) == (None, "amd64", "unknown")
    assert "arch" not in results.load(ONLY_72).to_json()["kernels"]["debian-7.2"]


@pytest.mark.parametrize("path", [AMD64, ARM64], ids=lambda p: p.stem)
def test_the_architecture_and_jit_state_are_written_back_as_read(path):
    data = json.loads(path.read_text())
    assert results.load(path).to_json() == data
    (record,) = results.load(path).kernels.values()
    assert record.bpf_jit_enable == 1 and record.jit == "on (1)"


@pytest.mark.parametrize("field, value, what", [
    ("bpf_jit_enable", "1", "net.core.bpf_jit_enable"), ("bpf_jit_enable", True, "0, 1 or 2"),
    ("arch", 64, "text or null")])
def test_a_damaged_architecture_or_jit_state_is_named(field, value, what):
    data = json.loads(ARM64.read_text())
    data["kernels"]["debian-7.2-arm64"][field] = value
    with pytest.raises(ResultsError, match=rf"kernels\['debian-7.2-arm64'\]: field '{field}' = "
                                           rf".* is not .*{what}"):
        results.Results.from_json(data)


def test_junit_suites_carry_the_architecture_and_the_jit_state():
    merged = results.merge([("amd64", results.load(AMD64)), ("arm64", results.load(ARM64)),
                            ("old", results.load(ONLY_72.parent / "debian-5.10.json"))])
    root = ET.fromstring(junit.junit_text(merged).encode())
    props = {s.get("name"): {p.get("name"): p.get("value") for p in s.iter("property")}
             for s in root}
    assert {name: (p["kernel_arch"], p["bpf_jit_enable"]) for name, p in props.items()} == {
        "kconform debian-5.10": ("amd64", ""), "kconform debian-7.2": ("amd64", "1"),
        "kconform debian-7.2-arm64": ("arm64", "1")}


def test_the_grid_of_both_architectures_names_each_columns_architecture(tmp_path):
    proc = kconform("merge", AMD64, ARM64, "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr
    res, md, page = check_reports_agree(tmp_path)  # JSON, JUnit, Markdown and HTML agree
    assert page.arch == {"debian-7.2": "amd64", "debian-7.2-arm64": "arm64"}
    assert page.jit == {"debian-7.2": "1", "debian-7.2-arm64": "1"}
    # the saved run predates the machine field: where it ran is '?'
    assert "| debian-7.2-arm64 | 7.2.13-1 | 7.2.13+deb14-arm64 | ? | arm64 | on (1) |" in md
    assert grid.build(res).kernels == ["debian-7.2", "debian-7.2-arm64"]  # amd64 first


# ---------------------------------------------------------------------- compare across them

def test_compare_of_two_architectures_of_one_version_names_them_and_their_differences():
    proc = kconform("compare", AMD64, ARM64)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the made-up L1 regression
    lines = proc.stdout.splitlines()
    assert lines[0] == "kconform compare: 7.2.13-1 amd64 -> arm64 (debian-7.2 -> debian-7.2-arm64)"
    assert lines[1] == ("6 cases compared; 1 differ: 1 regressed, 0 fixed, 0 changed as "
                        "documented, 0 still failing")
    assert not any("BPF JIT" in line for line in lines)  # on (1) on both
    case = lines.index("  case test_lookup_with_u64_value_returns_socket_cookie[sockmap]")
    assert lines[case + 1].split()[:3] == ["base", "amd64", "pass"]
    assert lines[case + 2].split()[:3] == ["new", "arm64", "fail"]
    assert lines[-1] == ("1 behaviour(s) regressed on debian-7.2-arm64 (arm64) against "
                         "debian-7.2 (amd64): L1")


def test_compare_of_one_file_holding_both_architectures_pairs_them(tmp_path):
    # what `suite --compare debian-7.2 debian-7.2-arm64` compares: one run's file, both named
    assert kconform("merge", AMD64, ARM64, "-o", tmp_path).returncode == 0
    for args in ((), ("--base", "debian-7.2", "--new", "debian-7.2-arm64")):
        proc = kconform("compare", tmp_path, *args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stdout.startswith("kconform compare: 7.2.13-1 amd64 -> arm64 ")


def test_compare_shows_the_jit_states_when_they_differ(tmp_path):
    data = json.loads(ARM64.read_text())
    data["kernels"]["debian-7.2-arm64"]["bpf_jit_enable"] = 0
    interpreted = tmp_path / "interpreted.json"
    interpreted.write_text(json.dumps(data))
    lines = kconform("compare", AMD64, interpreted).stdout.splitlines()
    assert "BPF JIT (net.core.bpf_jit_enable) differs: amd64 on (1), arm64 off (0)" in lines


def test_compare_of_an_old_amd64_file_with_an_arm64_one_takes_it_as_amd64(tmp_path):
    old = json.loads(AMD64.read_text())
    for name in ("arch", "bpf_jit_enable"):
        del old["kernels"]["debian-7.2"][name]  # as results from before them
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    lines = kconform("compare", path, ARM64).stdout.splitlines()
    assert lines[0].endswith(" amd64 -> arm64 (debian-7.2 -> debian-7.2-arm64)")
    assert "BPF JIT (net.core.bpf_jit_enable) differs: amd64 unknown, arm64 on (1)" in lines


def test_kernels_of_one_architecture_are_compared_as_before():
    base, new = (compare.Side(results.load(p), k, str(p)) for p, k in
                 ((ONLY_72.parent / "debian-5.10.json", "debian-5.10"), (ONLY_72, "debian-7.2")))
    result = compare.compare(base, new)
    assert not result.across_arch and result.jit_difference is None
    assert result.title.startswith("base debian-5.10 (5.10.") and "amd64" not in result.title
    # an arm64 side of another version: the names stay, the architectures join the title
    arm = copy.deepcopy(results.load(ARM64))
    other = compare.compare(base, compare.Side(arm, "debian-7.2-arm64", "arm"))
    assert other.title.endswith(", amd64 -> arm64") and other.shown(other.new) == \
        "debian-7.2-arm64"
