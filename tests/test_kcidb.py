"""Issue 18 point 1: `./kconform kcidb` writes a run as KCIDB data (harness/reports/kcidb.py),
validated here with kcidb-io itself on saved results of real runs. Nothing boots: the guests
that never boot are fake machines (tests/kcidb_boots.py)."""
from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import kcidb_io
import pytest
from jsonschema.exceptions import ValidationError

from harness.judging.health import KnownCrashes
from harness.judging.verdicts import Verdict
from harness.reports import kcidb, results
from tests.conftest import REPO

DATA = REPO / "tests" / "data"
REGRESSION = DATA / "results" / "regression.json"
MATRIX = DATA / "matrix" / "redirect-matrix.json.gz"
# Every saved results file of a real run (tests/data/results/README.md, tests/data/matrix/
# README.md), and the two derived from one for the architectures (tests/data/arch/README.md).
SAVED = [*sorted((DATA / "results").glob("*.json")), *sorted((DATA / "arch").glob("*.json")),
         MATRIX]
V5_3 = kcidb_io.schema.V5_3


def load(path: Path) -> results.Results:
    if path.suffix == ".gz":
        return results.Results.from_json(json.loads(gzip.decompress(path.read_bytes())))
    return results.load(path)


def exported(res: results.Results, origin: str = kcidb.DEFAULT_ORIGIN) -> dict:
    """The document as the file holds it (JSON text read back), validated by kcidb-io itself."""
    data = json.loads(kcidb.kcidb_text(res, origin))
    V5_3.validate(data)
    return data


def the_test(data: dict, case_id: str) -> dict:
    return next(t for t in data["tests"] if t["misc"]["node_id"] == case_id)


def case_of(res: results.Results, case_id: str) -> results.CaseResult:
    return next(c for c in res.cases if c.id == case_id)


def one_case(res: results.Results, case: results.CaseResult) -> results.Results:
    """The results holding only this case (and its kernel)."""
    return dataclasses.replace(res, kernels={case.kernel: res.kernels[case.kernel]}, cases=[case])


# ---------------------------------------------------------------------- validity

@pytest.mark.parametrize("path", SAVED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_saved_real_run_is_valid_kcidb(path):
    res = load(path)
    data = exported(res)
    assert data["version"] == {"major": 5, "minor": 3}
    assert len(data["checkouts"]) == len(data["builds"]) == len(res.kernels)
    assert len(data["tests"]) == len(res.cases)
    builds = {b["id"]: b for b in data["builds"]}
    assert {b["checkout_id"] for b in builds.values()} == {c["id"] for c in data["checkouts"]}
    assert all(t["build_id"] in builds for t in data["tests"])
    assert len({t["id"] for t in data["tests"]}) == len(res.cases)
    assert all(i.startswith("kconform:") for o in data["checkouts"] + data["builds"]
               + data["tests"] for i in (o["id"],))


def test_the_schema_written_is_the_newest_kcidb_io_knows():
    """A kcidb-io with a newer schema is a change to review, not one to take unseen
    (requirements.txt pins kcidb-io 141, whose LATEST is v5.3)."""
    assert kcidb.SCHEMA is kcidb_io.schema.LATEST is V5_3
    assert str(kcidb.SCHEMA) == "v5.3"


@pytest.mark.parametrize("where, broken, field", [
    (("tests", 0, "status"), "BROKEN", "status"),
    (("tests", 0, "path"), "sockmap.L2.test_x[sockhash]", "path"),
    (("builds", 0, "origin"), "Kconform", "origin"),
    (("tests", 0, "log_excerpt"), "x" * 16385, "log_excerpt"),
    (("builds", 0, "architecture"), "x86-64", "architecture"),
], ids=["status", "path", "origin", "log_excerpt", "architecture"])
def test_kcidb_io_rejects_a_document_broken_in_one_field(where, broken, field):
    """The validation can fail: kcidb-io takes the export and refuses it with one field broken
    (the schema's status enum, path pattern, origin pattern, log_excerpt maxLength and
    architecture pattern), and kcidb.validate says where."""
    data = kcidb.kcidb_data(load(REGRESSION))
    V5_3.validate(data)
    broken_data = copy.deepcopy(data)
    kind, index, name = where
    broken_data[kind][index][name] = broken
    with pytest.raises(ValidationError):
        V5_3.validate(broken_data)
    with pytest.raises(kcidb.KcidbError, match=rf"not valid v5\.3 at \$\.{kind}\[{index}\]"
                       rf"\.{field}: .*harness/reports/kcidb\.py"):
        kcidb.validate(broken_data)


# ---------------------------------------------------------------------- statuses

def test_every_verdict_has_a_status():
    """harness/judging/verdicts.py's verdicts, each with a KCIDB status (v5.3 $defs/status)."""
    statuses = V5_3.json["$defs"]["status"]["enum"]
    assert {v.value for v in Verdict} <= kcidb.STATUSES.keys()
    assert set(kcidb.STATUSES.values()) <= set(statuses) and kcidb.ERROR in statuses


def test_the_statuses_of_a_real_run():
    """tests/data/results/regression.json (README there): L2 passes on 5.10 as an expected
    difference and fails on 7.2 by a doctored expectation; the injected panic crashed."""
    res = load(REGRESSION)
    data = exported(res)
    statuses = {(t["misc"]["kernel"], t["misc"]["case"]): t["status"] for t in data["tests"]}
    verdicts = {(c.kernel, c.case): c.verdict.value for c in res.cases}
    assert {(verdicts[k], s) for k, s in statuses.items()} == {
        ("pass", "PASS"), ("expected-difference", "PASS"), ("fail", "FAIL"), ("crashed", "FAIL")}

    different = the_test(data, "cases/test_lookup.py::test_lookup_with_u32_value_fails_enospc"
                              "[debian-5.10-sockmap]")
    assert different["status"] == "PASS"
    assert different["path"] == "sockmap.L2.test_lookup_with_u32_value_fails_enospc.sockmap"
    assert different["misc"].items() >= {
        "verdict": "expected-difference",
        "reason": "doctored for kconform's tests: pretends 6.0 changed this",
        "source": "tests/data: a deliberately wrong expectation, to record a regression",
        "expected": {"lookup": "ENOSPC", "update": "OK"},
        "observed": {"lookup": "ENOSPC", "update": "OK"}}.items()
    assert "expected difference (doctored" in different["comment"]
    assert "log_excerpt" not in different

    failed = the_test(data, "cases/test_lookup.py::test_lookup_with_u32_value_fails_enospc"
                           "[debian-7.2-sockhash]")
    assert failed["status"] == "FAIL"
    assert "mismatch: lookup: expected 'OK', observed 'ENOSPC'" in failed["log_excerpt"]


def test_a_crash_is_the_kernels_fail_with_its_fingerprint_and_console():
    data = exported(load(REGRESSION))
    crashed = the_test(data, "tests/faultcases/inject.py::test_2_panic[debian-7.2]")
    assert crashed["status"] == "FAIL"  # a kernel crash is the kernel's failure, not an ERROR
    # the fingerprint the run printed for this panic (its message in regression.json)
    assert crashed["misc"]["crash_fingerprint"] == \
        "sysrq_handle_crash|__handle_sysrq|write_sysrq_trigger|proc_reg_write"
    assert crashed["misc"]["verdict"] == "crashed"
    assert "Kernel panic - not syncing: sysrq triggered crash" in crashed["log_excerpt"]
    assert crashed["path"] == "sockmap.test_2_panic"  # no behaviour: suite and test


def test_a_known_crash_is_an_issue_and_its_case_an_incident(tmp_path):
    """The known-crash text is what the run records (KnownCrashes.match of the case's
    fingerprint, harness/plugin/run.py failure_report); the same entry is one issue in every
    export."""
    known = tmp_path / "known.toml"
    known.write_text('[[crash]]\nfingerprint = "sysrq_handle_crash|__handle_sysrq"\n'
                     'reason = "the fault test\'s own sysrq crash"\n'
                     'link = "https://docs.kernel.org/admin-guide/sysrq.html"\n')
    res = load(REGRESSION)
    case = case_of(res, "tests/faultcases/inject.py::test_2_panic[debian-7.2]")
    case.known_crash = str(KnownCrashes(known).match(
        "sysrq_handle_crash|__handle_sysrq|write_sysrq_trigger|proc_reg_write"))
    data = exported(res)
    (issue,) = data["issues"]
    assert issue["comment"] == "the fault test's own sysrq crash"
    assert issue["report_url"] == "https://docs.kernel.org/admin-guide/sysrq.html"
    assert issue["culprit"] == {"code": True, "tool": False, "harness": False}
    (incident,) = data["incidents"]
    test = the_test(data, case.id)
    assert (incident["issue_id"], incident["test_id"], incident["present"]) == \
        (issue["id"], test["id"], True)
    assert test["misc"]["known_crash"] == case.known_crash
    assert exported(res)["issues"] == data["issues"]

    # a link with no scheme, which the schema's "uri" format refuses: kept, in misc
    case.known_crash = "known crash: a reason (lore.kernel.org/r/1)"
    (issue,) = exported(res)["issues"]
    assert "report_url" not in issue and issue["misc"]["link"] == "lore.kernel.org/r/1"
    assert issue["comment"] == "a reason"


def test_a_skip_is_skip_with_its_reason():
    """A kernel built without an option a case needs: the skip the guest fixture gives
    (harness/plugin/fixtures.py _skip_without_config), here on a real case of debian-7.2."""
    res = load(REGRESSION)
    case = case_of(res, "cases/test_lookup.py::test_lookup_with_u32_value_fails_enospc"
                        "[debian-7.2-sockmap]")
    skipped = dataclasses.replace(
        case, verdict=Verdict.SKIPPED, observed=None, expected=None, reason=None, source=None,
        message="debian-7.2 is built without CONFIG_NET_SOCK_MSG (read from /boot/config-x)")
    (test,) = exported(one_case(res, skipped))["tests"]
    assert test["status"] == "SKIP"
    assert test["log_excerpt"] == skipped.message


def test_a_flaky_case_passes_with_its_failed_attempts():
    """--rerun-failed (issue 18 point 2): a case that failed once, then passed on a fresh guest;
    the failed run is the real 7.2 failure of L2 in regression.json."""
    res = load(REGRESSION)
    failed = case_of(res, "cases/test_lookup.py::test_lookup_with_u32_value_fails_enospc"
                          "[debian-7.2-sockmap]")
    attempt = results.Attempt(number=1, verdict=Verdict.FAIL, message=failed.message,
                              observed=failed.observed, console=[], duration=failed.duration)
    flaky = dataclasses.replace(failed, verdict=Verdict("flaky"), message="",
                                observed={"lookup": "OK", "update": "OK"}, attempts=[attempt])
    (test,) = exported(one_case(res, flaky))["tests"]
    assert test["status"] == "PASS"
    assert test["misc"]["verdict"] == "flaky"
    assert test["misc"]["attempts"] == [attempt.to_json()]
    assert test["log_excerpt"].startswith("attempt 1: fail\nL2 lookup from user space")
    assert "1 earlier attempt failed" in test["comment"]


# ---------------------------------------------------------------------- guests that never booted

def fake_run(tmp_path: Path, scenario: str) -> results.Results:
    """tests/bootcases/cases.py on debian-6.1's fake guests (tests/kcidb_boots.py): the
    results the real plugin records."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.kcidb_boots",
         "tests/bootcases/cases.py", "--kernel", "debian-6.1", f"--results-dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KCONFORM_KCIDB_BOOTS": scenario})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results.load(out)


def test_cases_of_a_kernel_that_never_booted_are_errors(tmp_path):
    res = fake_run(tmp_path, "never")
    assert {c.verdict for c in res.cases} == {Verdict.CRASHED}  # as the run records them
    data = exported(res)
    assert [t["status"] for t in data["tests"]] == ["ERROR", "ERROR"]
    test = data["tests"][0]
    assert test["misc"]["guest_never_booted"] is True
    assert "its guest never booted" in test["comment"]
    # the panic the guest died of while starting (tests/data/panic-6.1-sysrq.log)
    assert test["misc"]["crash_fingerprint"] == \
        "sysrq_handle_crash|__handle_sysrq|write_sysrq_trigger|proc_reg_write"
    assert "died while starting (kernel panic)" in test["log_excerpt"]
    (build,) = data["builds"]
    assert build["status"] == "PASS"  # its tree was there (6.1.176-1); only its guest failed


def test_a_case_whose_replacement_guest_never_booted_is_an_error(tmp_path):
    """The first case crashes its guest (FAIL: the kernel's); the second asks for a new guest,
    which dies while starting (ERROR: that case never ran), though the kernel had booted."""
    res = fake_run(tmp_path, "after-crash")
    assert res.kernels["debian-6.1"].uname == "6.1.0-50-amd64"
    data = exported(res)
    statuses = {t["misc"]["case"]: t["status"] for t in data["tests"]}
    assert statuses == {"test_1_first_on_the_guest": "FAIL",
                        "test_2_next_on_the_same_guest": "ERROR"}
    (build,) = data["builds"]
    assert build["config_name"] == "amd64"  # a bookworm-security package's flavour


def test_cases_of_a_kernel_whose_tree_never_came_are_errors(tmp_path):
    """No guest was started: the cases fail (not crash) with the provider's error, and the
    kernel has no version, so its checkout and build do not claim it was had."""
    res = fake_run(tmp_path, "no-tree")
    assert {c.verdict for c in res.cases} == {Verdict.FAIL}
    data = exported(res)
    assert [t["status"] for t in data["tests"]] == ["ERROR", "ERROR"]
    assert "depmod failed" in data["tests"][0]["log_excerpt"]
    (build,), (checkout,) = data["builds"], data["checkouts"]
    assert "status" not in build and "valid" not in checkout
    assert "version unknown" in checkout["comment"]


# ---------------------------------------------------------------------- paths and ids

def test_every_matrix_case_has_a_valid_path_naming_its_combination():
    res = load(MATRIX)
    data = exported(res)
    paths = [t["path"] for t in data["tests"]]
    assert all(V5_3.path_re.fullmatch(p) for p in paths)
    # one path per case of a kernel: 576 per kernel (README, "The redirect matrix")
    assert len(set(paths)) == 576
    assert "sockmap.R7.test_redirect_matrix.sockhash-sk_skb-ingress-udp6-unix_dgram" in paths
    test = the_test(data, "cases/test_redirect_matrix.py::test_redirect_matrix"
                         "[debian-7.3-sockhash-sk_skb-ingress-udp6-unix_dgram]")
    assert test["misc"]["matrix"] == case_of(res, test["misc"]["node_id"]).matrix


@pytest.mark.parametrize("case, path", [
    ("test_x[a.b]", "sockmap.L2.test_x.a_u2e_b"),
    ("test_x[one two/three]", "sockmap.L2.test_x.one_u20_two_u2f_three"),
    ("test_x[a[b]]", "sockmap.L2.test_x.a_u5b_b_u5d_"),
    ("test_x[]", "sockmap.L2.test_x._"),
    ("test_x[caf\u00e9]", "sockmap.L2.test_x.caf_ue9_"),
    ("test_x[\\x00]", "sockmap.L2.test_x._u5c_x00"),
    ("test_\u00fcber", "sockmap.L2.test__ufc_ber"),
    ("test_x[nul\0]", "sockmap.L2.test_x.nul_u0_"),
])
def test_a_case_id_with_odd_characters_has_a_valid_path_and_id(case, path):
    """pytest ids can hold any character (a parameter's own id; an escaped non-ASCII one); the
    schema's path is parts of [a-zA-Z0-9_-] joined by dots (kcidb_io v5.0 test_path_re)."""
    res = load(REGRESSION)
    real = case_of(res, "cases/test_lookup.py::test_lookup_with_u32_value_fails_enospc"
                        "[debian-7.2-sockmap]")
    odd = dataclasses.replace(real, case=case, id=f"cases/test_lookup.py::{case}")
    (test,) = exported(one_case(res, odd))["tests"]
    assert test["path"] == path
    assert test["id"].endswith(f":cases/test_lookup.py::{case}".replace("\0", "\\x00"))
    assert "\0" not in json.dumps(test, ensure_ascii=False)


def test_a_long_failure_is_cut_to_the_schemas_log_excerpt():
    """v5.3's log_excerpt holds at most 16384 characters; the head says what happened."""
    res = load(REGRESSION)
    case = case_of(res, "tests/faultcases/inject.py::test_2_panic[debian-7.2]")
    case.message += "\n" + "  | a console line\n" * 2000
    excerpt = the_test(exported(res), case.id)["log_excerpt"]
    assert len(excerpt) == kcidb.LOG_EXCERPT_MAX == 16384
    assert excerpt.startswith("the guest died during tests.guest.faults:panic (kernel panic)")
    assert excerpt.endswith("[truncated: the whole text is in the results file]")


def test_a_nul_a_guest_printed_is_no_nul_in_the_file():
    """The schema forbids NUL in text fields ("^[^\\0]*$"); console lines are the guest's."""
    res = load(REGRESSION)
    case = case_of(res, "tests/faultcases/inject.py::test_2_panic[debian-7.2]")
    case.message += "\n  | a line with a \0 in it"
    case.console = [*(case.console or []), "\0\0"]
    text = kcidb.kcidb_text(res)
    assert "\0" not in text and "\\u0000" not in text
    assert "a line with a \\\\x00 in it" in text


def test_ids_are_the_same_for_the_same_run_and_differ_between_runs():
    """A kernel's ids come from its part of the results: exported from its own file or from a
    merge they agree (a resubmission is merged by KCIDB, not counted twice); both.json is
    another run of the same kernels (tests/data/results/README.md), so its ids differ."""
    alone = exported(load(DATA / "results" / "debian-5.10.json"))
    merged = exported(results.merge([(str(p), load(p)) for p in
                                     (DATA / "results" / "debian-5.10.json",
                                      DATA / "results" / "debian-7.2.json")]))
    other_run = exported(load(DATA / "results" / "both.json"))
    ids = lambda data, kernel: {t["id"] for t in data["tests"] if t["misc"]["kernel"] == kernel}
    assert ids(alone, "debian-5.10") == ids(merged, "debian-5.10")
    assert not ids(alone, "debian-5.10") & ids(other_run, "debian-5.10")
    assert exported(load(DATA / "results" / "debian-5.10.json")) == alone


def test_the_origin_starts_every_id():
    data = exported(load(REGRESSION), origin="my_lab2")
    objects = data["checkouts"] + data["builds"] + data["tests"]
    assert {o["origin"] for o in objects} == {"my_lab2"}
    assert all(o["id"].startswith("my_lab2:") for o in objects)


@pytest.mark.parametrize("origin", ["Kconform", "my-lab", "", "kconform:x", "kconform\n", "lab "])
def test_a_bad_origin_is_refused_naming_the_grammar(origin):
    """KCIDB's origin grammar: [a-z0-9_]+ (kcidb_io v3.0 origin_pattern, used by v5.3)."""
    with pytest.raises(kcidb.KcidbError, match="lower-case letters, digits and _ only"):
        kcidb.checked_origin(origin)


# ---------------------------------------------------------------------- what a kernel says

def test_a_kernels_build_and_environment_say_what_the_results_know():
    """tests/data/matrix: 6.12.118-1 from trixie-security, on QEMU under TCG with -cpu qemu64
    and the host's root (its boot line and kernel record)."""
    data = exported(load(MATRIX))
    build = next(b for b in data["builds"] if b["misc"]["kernel"] == "debian-6.12")
    # KernelCI's name for the architecture (its build configs' x86_64), Debian's for the flavour
    assert build.items() >= {"architecture": "x86_64", "config_name": "amd64",
                          "status": "PASS"}.items()
    assert build["misc"].items() >= {"version": "6.12.118-1", "upstream": "6.12.118",
                                  "uname": "6.12.118+deb13-amd64",
                                  "suite": "trixie-security"}.items()
    checkout = next(c for c in data["checkouts"] if c["id"] == build["checkout_id"])
    assert checkout["comment"] == "debian-6.12 6.12.118-1, upstream 6.12.118, Debian suite " \
                                  "trixie-security"
    test = next(t for t in data["tests"] if t["build_id"] == build["id"])
    assert test["environment"] == {
        "comment": "QEMU (TCG, -cpu qemu64); root: host; BPF JIT: unknown",
        "misc": {"machine": "qemu", "accelerator": "tcg", "cpu": "qemu64", "rootfs": "host"}}


def test_an_arm64_kernel_and_an_ssh_target_say_so():
    """tests/data/arch/debian-7.2-arm64.json (README there): arm64, the JIT on, no -cpu in its
    boot line. Then the same kernel as an SSH target records it (harness/plugin/recording.py
    _kernel_facts: machine = the target, rootfs "target's own")."""
    res = load(DATA / "arch" / "debian-7.2-arm64.json")
    data = exported(res)
    (build,) = data["builds"]
    assert build["architecture"] == "arm64" and "config_name" not in build  # no suite recorded
    assert data["tests"][0]["environment"]["comment"] == "QEMU (TCG); BPF JIT: on (1)"
    record = res.kernels["debian-7.2-arm64"]
    record.machine, record.rootfs, record.suite = "ssh://root@lab1:2222", "target's own", "sid"
    record.boot = "ssh -p 2222 root@lab1"
    data = exported(res)
    assert data["tests"][0]["environment"] == {
        "comment": "ssh://root@lab1:2222; root: target's own; BPF JIT: on (1)",
        "misc": {"machine": "ssh://root@lab1:2222", "rootfs": "target's own",
                 "bpf_jit_enable": 1}}
    assert data["builds"][0]["config_name"] == "arm64"


@pytest.mark.parametrize("uname, suite, arch, flavour", [
    ("6.12.118+deb13-rt-amd64", "trixie-security", "amd64", "rt-amd64"),
    ("6.1.0-57-amd64", "bookworm-security", "amd64", "amd64"),
    ("6.1.0-0.deb11.48-amd64", "bullseye-backports", "amd64", "amd64"),
    ("6.12.118+deb13-cloud-arm64", "trixie", "arm64", "cloud-arm64"),
    ("7.3-rc7-amd64", "experimental", "amd64", "amd64"),
    ("6.1.0-57-amd64", None, "amd64", None),          # no suite: not known to be Debian's
    ("6.1.190-kconform", "bookworm", "amd64", None),  # not a Debian release
    ("6.1.0-57-amd64", "bookworm", "arm64", None),    # its flavour is another architecture's
])
def test_the_config_name_is_a_debian_packages_flavour(uname, suite, arch, flavour):
    """Releases as Debian names them (harness/kernels/apt.py: ABI, then the flavour)."""
    record = results.KernelRecord(name="k", version="1", uname=uname, suite=suite, arch=arch)
    assert kcidb.debian_flavour(record) == flavour


# ---------------------------------------------------------------------- the command

def kconform(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KCONFORM_CALLER_CWD": str(cwd)})


def assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output[-3000:]
    for word in words:
        assert word in output, (word, output)


def test_the_command_writes_a_valid_file_where_it_was_asked(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(REGRESSION.read_text())
    proc = kconform("kcidb", "run", "-o", "out/kcidb.json", "--origin", "my_lab", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out" / "kcidb.json").read_text())
    V5_3.validate(data)
    assert data == exported(load(REGRESSION), "my_lab")
    stdout = kconform("kcidb", REGRESSION, "-o", "-")
    assert stdout.returncode == 0 and json.loads(stdout.stdout) == exported(load(REGRESSION))


def test_a_bad_origin_is_a_usage_error(tmp_path):
    proc = kconform("kcidb", REGRESSION, "-o", tmp_path / "k.json", "--origin", "My-Lab")
    assert_usage_error(proc, "--origin 'My-Lab'", "lower-case letters, digits and _")
    assert not (tmp_path / "k.json").exists()


def test_a_missing_or_damaged_results_file_is_a_usage_error(tmp_path):
    assert_usage_error(kconform("kcidb", tmp_path / "none.json", "-o", tmp_path / "k.json"),
                       "no such results file")
    damaged = tmp_path / "damaged.json"
    data = json.loads(REGRESSION.read_text())
    data["cases"][0]["verdict"] = "great"
    damaged.write_text(json.dumps(data))
    assert_usage_error(kconform("kcidb", damaged, "-o", tmp_path / "k.json"),
                       "damaged results file", "'great'")
    assert_usage_error(kconform("kcidb", REGRESSION), "-o")  # where it goes is not guessed
    assert not (tmp_path / "k.json").exists()


def test_an_output_that_cannot_be_written_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    assert_usage_error(kconform("kcidb", REGRESSION, "-o", tmp_path / "file" / "k.json"),
                       "cannot write it", "give -o a file")
    assert_usage_error(kconform("kcidb", REGRESSION, "-o", tmp_path), "cannot write it")


def test_every_object_says_when_its_run_started():
    # KernelCI's views select results by time: the run's own start, from report.json's runs
    res = load(MATRIX)
    started = min(run.started for run in res.runs if run.started)
    data = exported(res)
    assert {item.get("start_time") for kind in ("checkouts", "builds", "tests")
            for item in data[kind]} == {started}
