"""Part E of the hardening issue: every bad input a user can give is a usage error that names the
file, the field and the fix, before anything boots (pytest's exit 4; merge/compare exit 2), and
paths are taken from where the user typed them. Nothing here boots: each run is --collect-only,
or reads results files only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import KconformError
from harness.judging import expectations
from harness.kernels import default_kernel_names, expand_kernel_args, load_specs
from harness.reports import results
from tests.conftest import REPO
from tests.test_kernels import _fake_bzimage

USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR
DATA = REPO / "tests" / "data" / "results"
REGRESSION = DATA / "regression.json"
GOOD_SPEC = textwrap.dedent("""\
    description = "Debian 12 bookworm"
    series = "6.1"
    suites = ["bookworm"]
    meta = "linux-image-amd64"
    packages = ["linux-image-{abi}-unsigned"]
    """)


def collect(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """pytest on the suite with --collect-only, as a user's command line runs it (from the repo,
    as ./kconform does): what a usage error looks like to a user."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "cases", "--collect-only",
           "-q", *args]
    environment = {k: v for k, v in os.environ.items() if k != "KCONFORM_CALLER_CWD"}
    environment.update(env or {})
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=environment)


def kconform(*args, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == USAGE_ERROR, output[-3000:]
    assert "Traceback" not in output and "INTERNALERROR" not in output, output[-3000:]
    for word in words:
        assert word in output, (word, output[-3000:])


# ----------------------------------------------------------------------------- --kernel

@pytest.mark.parametrize("value, words", [
    ("", ["--kernel ''", "names no kernel", "debian-6.1"]),
    (",", ["names no kernel"]),
    ("debian-6.1,,debian-5.10", ["empty name", "debian-5.10,debian-6.1"]),
])
def test_an_empty_kernel_name_is_a_usage_error(value, words):
    assert_usage_error(collect(f"--kernel={value}"), *words)


def test_a_kernel_path_that_does_not_exist_is_refused_before_anything_boots(tmp_path):
    proc = collect("--kernel", "./no-such-bzImage", env={"KCONFORM_CALLER_CWD": str(tmp_path)})
    assert_usage_error(proc, str(tmp_path / "no-such-bzImage"), "does not exist")


# ----------------------------------------------------------------------------- kernels/*.toml

def write_spec(directory: Path, text: str, name: str = "debian-6.1") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ('series = "6.1"\nsuites = ["bookworm"\n', ["not valid TOML"]),
    ('series = "6.1"\nsuites = ["bookworm"]\n', ["missing field 'packages'", "packages = ["]),
    (GOOD_SPEC.replace('series = "6.1"', 'series = "six"'), ["series = 'six'", 'series = "6.1"']),
    (GOOD_SPEC.replace('series = "6.1"', "series = 6.1"), ["series = 6.1", "quoted"]),
    (GOOD_SPEC.replace('suites = ["bookworm"]', 'suites = "bookworm"'),
     ["suites = 'bookworm'", "a single string is not a list"]),
    (GOOD_SPEC.replace('suites = ["bookworm"]', "suites = []"), ["suites = []", "non-empty"]),
    (GOOD_SPEC.replace('"bookworm"', '"bookworm main\\ndeb [trusted=yes] http://x y"'),
     ["suites", "Debian suite names"]),
    (GOOD_SPEC.replace('packages = ["linux-image-{abi}-unsigned"]', 'packages = "linux-image"'),
     ["packages = 'linux-image'", "not a list"]),
    (GOOD_SPEC.replace("{abi}-unsigned", "{flavour}"), ["packages", "{abi}"]),
    (GOOD_SPEC.replace('meta = "linux-image-amd64"', "meta = 3"), ["meta = 3", "package name"]),
    (GOOD_SPEC + 'suite = "sid"\n', ["unknown field 'suite'"]),
])
def test_a_malformed_kernel_definition_names_its_file_and_field(tmp_path, text, words):
    path = write_spec(tmp_path, text)
    with pytest.raises(KconformError) as raised:
        load_specs(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("name", ["all", "debian 6.1", "-x"])
def test_a_kernel_definition_file_name_must_be_a_usable_kernel_name(tmp_path, name):
    write_spec(tmp_path, GOOD_SPEC, name=name)
    with pytest.raises(KconformError, match="cannot be a kernel name"):
        load_specs(tmp_path)


def test_the_default_set_names_only_defined_kernels(tmp_path):
    write_spec(tmp_path, GOOD_SPEC)
    (tmp_path / "default.txt").write_text("debian-6.1\ndebian-9.9\n")
    with pytest.raises(KconformError, match=r"default.txt: unknown kernel 'debian-9.9'"):
        default_kernel_names(tmp_path)
    (tmp_path / "default.txt").unlink()
    with pytest.raises(KconformError, match="default.txt: cannot read the default kernels"):
        default_kernel_names(tmp_path)


def test_the_suite_s_own_kernel_definitions_are_valid():
    specs = load_specs()
    assert {"debian-5.10", "debian-6.1", "debian-7.3"} <= set(specs)
    assert specs["debian-6.1"].suites == ("bookworm", "bookworm-updates", "bookworm-security")
    assert set(default_kernel_names()) <= set(specs)


def test_a_malformed_kernel_definition_is_a_usage_error_of_pytest(tmp_path):
    """The plugin reads the repo's kernels/; this run points it at a directory with a bad file."""
    write_spec(tmp_path, GOOD_SPEC.replace('suites = ["bookworm"]', 'suites = "bookworm"'))
    (tmp_path / "default.txt").write_text("debian-6.1\n")
    script = textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        import harness.kernels as kernels, harness.plugin.run as plugin_run
        real = kernels.load_specs
        plugin_run.load_specs = lambda directory=Path({str(tmp_path)!r}): real(directory)
        import pytest
        sys.exit(pytest.main(["-p", "no:cacheprovider", "cases", "--collect-only", "-q",
                              "--kernel", "debian-6.1",
                              "--results-dir", {str(tmp_path / 'results')!r}]))
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert_usage_error(proc, str(tmp_path / "debian-6.1.toml"), "suites = 'bookworm'")


# ----------------------------------------------------------------------------- expectations

BEHAVIOUR = textwrap.dedent("""\
    [X1]
    title = "a thing"
    section = "User space"
    [[X1.outcomes]]
    until = "5.15"
    expect = { errno = "EOPNOTSUPP" }
    reason = "added in 5.15"
    source = "commit abc"
    [[X1.outcomes]]
    since = "5.15"
    expect = { errno = "OK" }
    source = "map_sockmap.rst"
    """)


@pytest.mark.parametrize("text, words", [
    (BEHAVIOUR.replace('source = "commit abc"\n', ""), ["X1 outcome 1", "needs a source"]),
    (BEHAVIOUR.replace('since = "5.15"', 'since = "five.seven"'),
     ["X1 outcome 2", "since", "'five.seven' is not a kernel version"]),
    (BEHAVIOUR.replace('since = "5.15"', "since = 5.7"),
     ["X1 outcome 2", "since = 5.7 is a number", 'since = "5.7"']),
    (BEHAVIOUR.replace('title = "a thing"\n', ""), ["X1", "needs a title"]),
    (BEHAVIOUR.replace('until = "5.15"', 'until = "6.1"'),
     ["X1", "2 outcomes apply to 5.15.0", "overlap"]),
    (BEHAVIOUR.replace('until = "5.15"', 'until = "5.10"'),
     ["X1", "0 outcomes apply to 5.10.0", "gaps"]),
    (BEHAVIOUR.replace('until = "5.15"', 'until = "5.15"\nuntill = "6.1"'),
     ["X1 outcome 1", "unknown field 'untill'"]),
    (BEHAVIOUR.replace('expect = { errno = "OK" }', "expect = 2024-01-01"),
     ["X1 outcome 2", "expect"]),
    (BEHAVIOUR.replace('[[X1.outcomes]]\nsince', '[[X1.outcomes]]\nregression = "yes"\nsince'),
     ["X1 outcome 2", "regression = 'yes' is not true or false"]),
    ("[X1\n", ["not valid TOML"]),
    ("", ["holds no behaviours"]),
])
def test_a_malformed_expectations_file_names_the_behaviour_and_field(tmp_path, text, words):
    path = tmp_path / "expectations.toml"
    path.write_text(text)
    with pytest.raises(KconformError) as raised:
        expectations.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, (word, message)


BACKPORT = textwrap.dedent("""\
    [X2]
    title = "a fix"
    section = "User space"
    [[X2.outcomes]]
    since = SINCE
    expect = { errno = "OK" }
    source = "commit abc, backported to 6.1.72"
    """)


def test_a_stable_backport_bound_ends_with_its_series(tmp_path):
    """'since 6.1.72' covers 6.1.72 and later 6.1.y only: 6.2 on is a gap unless named (from
    its first rc: since = "6.2" leaves 6.2's release candidates out)."""
    path = tmp_path / "expectations.toml"
    path.write_text(BACKPORT.replace("SINCE", '"6.1.72"'))
    with pytest.raises(expectations.ExpectationsError, match="0 outcomes apply to 6.2-rc1"):
        expectations.load(path)
    path.write_text(BACKPORT.replace("SINCE", '["6.2", "6.1.72"]'))
    with pytest.raises(expectations.ExpectationsError, match="0 outcomes apply to 6.2-rc1"):
        expectations.load(path)
    path.write_text(BACKPORT.replace("SINCE", '["6.2-rc1", "6.1.72"]'))
    assert expectations.load(path)["X2"].outcome_for((7, 0, 1)).expect == {"errno": "OK"}


def test_the_suite_s_own_expectations_pass_the_load_time_checks():
    assert len(expectations.load()) > 60


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace('source = "commit abc"\n', ""), ["needs a source"]),
    (lambda t: t.replace('since = "5.15"', "since = 5.7"), ["since = 5.7 is a number"]),
    (lambda t: t.replace('until = "5.15"', 'until = "6.1"'), ["2 outcomes apply"]),
])
def test_a_malformed_expectations_file_is_a_usage_error_of_pytest(tmp_path, edit, words):
    path = tmp_path / "expectations.toml"
    path.write_text(edit(BEHAVIOUR))
    assert_usage_error(collect("--kernel", "debian-6.1", "--expectations", str(path)),
                       str(path), *words)


def test_a_missing_expectations_file_is_a_usage_error(tmp_path):
    proc = collect("--kernel", "debian-6.1", "--expectations", str(tmp_path / "nope.toml"))
    assert_usage_error(proc, str(tmp_path / "nope.toml"), "no such expectations file")


# ----------------------------------------------------------------------------- results files

def damaged(tmp_path: Path, edit) -> Path:
    data = json.loads(REGRESSION.read_text())
    edit(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


def _crashed_case(data: dict) -> dict:
    return next(c for c in data["cases"] if c["verdict"] == "crashed")


DAMAGE = {
    "a case without reproduce": (lambda d: _crashed_case(d).pop("reproduce"),
                                 ["cases[13]", "'reproduce' is missing"]),
    "a case without verdict": (lambda d: d["cases"][0].pop("verdict"),
                               ["cases[0]", "'verdict' is missing"]),
    "a numeric message": (lambda d: d["cases"][9].update(message=7),
                          ["cases[9]", "'message' = 7 is not text"]),
    "console lines that are not text": (lambda d: _crashed_case(d).update(console=[1, 2]),
                                        ["'console'"]),
    "kernels as a list": (lambda d: d.update(kernels=[]), ["kernels: is a list"]),
    "a behaviour without order": (lambda d: d["behaviours"]["L1"].pop("order"),
                                  ["behaviours['L1']", "'order' is missing"]),
    "a numeric upstream version": (lambda d: d["kernels"]["debian-7.2"].update(upstream=7.2),
                        ["kernels['debian-7.2']", "'upstream' = 7.2"]),
    "a case that is not a table": (lambda d: d["cases"].append("x"), ["cases[14]", "not a table"]),
    "no cases": (lambda d: d.pop("cases"), ["cases: missing"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_compare_of_a_damaged_results_file_exits_2_not_as_a_regression(tmp_path, damage):
    edit, words = DAMAGE[damage]
    path = damaged(tmp_path, edit)
    proc = kconform("compare", path, "--base", "debian-5.10", "--new", "debian-7.2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "regress" not in proc.stdout.lower() and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "damaged results file" in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_merge_of_a_damaged_results_file_exits_2_and_writes_nothing(tmp_path, damage):
    edit, words = DAMAGE[damage]
    path = damaged(tmp_path, edit)
    proc = kconform("merge", path, "-o", tmp_path / "merged")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert not (tmp_path / "merged").exists()


def test_a_results_file_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("[" * 100000)
    proc = kconform("compare", path, REGRESSION)
    assert proc.returncode == 2 and str(path) in proc.stderr and "Traceback" not in proc.stderr


def test_compare_of_a_kernel_against_itself_in_one_file_is_refused():
    proc = kconform("compare", REGRESSION, "--base", "debian-7.2", "--new", "debian-7.2")
    assert proc.returncode == 2 and "twice" in proc.stderr, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- unwritable places

@pytest.fixture
def not_a_directory(tmp_path) -> Path:
    """A path no one can create a directory at, root included (its parent is a file)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "sub"


def test_an_unwritable_results_dir_is_a_usage_error_before_the_first_case(not_a_directory):
    proc = collect("--kernel", "debian-6.1", f"--results-dir={not_a_directory}")
    assert_usage_error(proc, f"--results-dir {not_a_directory}", "cannot write there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_results_dir_is_a_usage_error(tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    proc = collect("--kernel", "debian-6.1", f"--results-dir={out}")
    assert_usage_error(proc, f"--results-dir {out}", "cannot write there")


def test_merge_into_an_unwritable_directory_exits_2(not_a_directory):
    proc = kconform("merge", REGRESSION, "-o", not_a_directory)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"-o {not_a_directory}" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unwritable_cache_is_a_usage_error(not_a_directory):
    proc = collect("--kernel", "debian-6.1", env={"KCONFORM_CACHE": str(not_a_directory)})
    assert_usage_error(proc, str(not_a_directory), "KCONFORM_CACHE")


# ----------------------------------------------------------------------------- timeouts

@pytest.mark.parametrize("option, value", [
    ("--case-timeout", "0"), ("--case-timeout", "-5"), ("--case-timeout", "nan"),
    ("--case-timeout", "inf"), ("--case-timeout", "soon"),
    ("--boot-timeout", "0"), ("--boot-timeout", "-1"),
])
def test_a_timeout_must_be_a_positive_finite_number_of_seconds(option, value):
    proc = collect("--kernel", "debian-6.1", f"{option}={value}")
    assert_usage_error(proc, option, f"{value!r} is not a number of seconds above zero")


def test_a_valid_timeout_is_taken():
    proc = collect("--kernel", "debian-6.1", "--case-timeout=2.5", "--boot-timeout=90")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- relative paths

def test_a_relative_kernel_path_is_taken_from_where_the_user_typed_it(tmp_path):
    image = tmp_path / "bzImage"
    _fake_bzimage(image, "6.13.0-kconform-test")
    proc = collect("--kernel", "./bzImage", "-k", "u32",
                   env={"KCONFORM_CALLER_CWD": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"[{image}-sockmap]" in proc.stdout, proc.stdout


def test_relative_results_dir_expectations_and_known_crashes_are_the_callers(tmp_path):
    (tmp_path / "mine.toml").write_text((REPO / "cases" / "expectations.toml").read_text())
    (tmp_path / "crashes.toml").write_text("")
    proc = collect("--kernel", "debian-6.1", "--results-dir", "out", "--expectations",
                   "mine.toml", "--known-crashes", "crashes.toml",
                   env={"KCONFORM_CALLER_CWD": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out").is_dir() and not (REPO / "out").exists()


def test_a_missing_known_crashes_file_is_a_usage_error(tmp_path):
    proc = collect("--kernel", "debian-6.1", "--known-crashes", "crashes.toml",
                   env={"KCONFORM_CALLER_CWD": str(tmp_path)})
    assert_usage_error(proc, str(tmp_path / "crashes.toml"), "no such file")


def test_suite_compare_reads_the_results_dir_the_run_wrote(tmp_path, monkeypatch):
    from harness import cli
    monkeypatch.setenv("KCONFORM_CALLER_CWD", str(tmp_path))
    assert cli.results_dir_of(["--results-dir", "here"]) == tmp_path / "here"
    assert cli.results_dir_of([]) == tmp_path / "results"


def test_suite_compare_refuses_a_kernel_it_cannot_name_before_running(tmp_path):
    proc = kconform("suite", "--compare", "debian-6.1", "./missing",
                    env={"KCONFORM_CALLER_CWD": str(tmp_path)})
    assert proc.returncode == 2 and "does not exist" in proc.stderr, proc.stderr
    proc = kconform("suite", "--compare", "debian-6.1", "debian-6.1")
    assert proc.returncode == 2 and "two different kernels" in proc.stderr, proc.stderr


def test_expand_kernel_args_makes_a_relative_path_absolute(tmp_path):
    (tmp_path / "linux/arch/x86/boot").mkdir(parents=True)
    _fake_bzimage(tmp_path / "linux/arch/x86/boot/bzImage", "6.13.0-kconform-test")
    names = expand_kernel_args(["debian-6.1,linux/"], load_specs(), cwd=tmp_path)
    assert names == ["debian-6.1", str(tmp_path / "linux")]


def test_junitxml_is_taken_from_where_the_user_typed_it(tmp_path):
    proc = collect("--kernel", "debian-6.1", "--junitxml=j.xml",
                   env={"KCONFORM_CALLER_CWD": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "j.xml").is_file() and not (REPO / "j.xml").exists()


def test_a_results_dir_that_stops_taking_files_mid_run_is_said_once_not_an_internal_error(
        tmp_path, not_a_directory):
    from types import SimpleNamespace

    from harness.plugin import recording as report
    said = []
    config = SimpleNamespace(invocation_params=SimpleNamespace(args=()),
                             addinivalue_line=lambda *a: None)
    reporter = report.Reporter(config, SimpleNamespace(results_dir=not_a_directory,
                                                       _log=said.append))
    reporter.results.kernels["k"] = results.KernelRecord(name="k")
    for n in range(3):
        reporter.results.cases.append(results.CaseResult(
            id=str(n), kernel="k", case="c", file="f", verdict=results.Verdict.PASS,
            reproduce="r"))
        reporter.next_write = 0.0
        reporter._write_incremental()
    assert len(said) == 1 and f"cannot write the reports into {not_a_directory}" in said[0]
    assert "--results-dir" in reporter.write_error


def test_a_kernel_older_than_every_outcome_is_told_so(tmp_path):
    path = tmp_path / "expectations.toml"
    path.write_text(BACKPORT.replace("SINCE", '["6.2-rc1", "6.1.72"]'))
    behaviour = expectations.load(path)["X2"]
    with pytest.raises(KconformError, match=r"0 outcomes apply to 5.10.0: the expectations "
                                            r"start at 6.1.72"):
        expectations.judge(behaviour, (5, 10, 0), {"errno": "OK"})


# ----------------------------------------------------------------------------- review F2
# (the second read of the hardening change: findings 2, 5, 7, 8, 10)

def test_a_kernel_path_that_is_not_a_kernel_is_a_usage_error_before_anything_boots(tmp_path):
    """--kernel /etc/passwd was taken, and every case failed on its own later."""
    assert_usage_error(collect("--kernel", "/etc/passwd"), "/etc/passwd", "not a bzImage")
    (tmp_path / "linux").mkdir()
    assert_usage_error(collect("--kernel", str(tmp_path / "linux")),
                       str(tmp_path / "linux"), "not a built kernel tree", "arch/x86/boot/bzImage")


def test_a_kernel_path_to_a_bzimage_or_a_built_tree_is_taken(tmp_path):
    _fake_bzimage(tmp_path / "bzImage", "6.13.0-kconform-test")
    (tmp_path / "tree/arch/x86/boot").mkdir(parents=True)
    _fake_bzimage(tmp_path / "tree/arch/x86/boot/bzImage", "6.13.0-kconform-test")
    names = expand_kernel_args([f"{tmp_path}/bzImage,{tmp_path}/tree"], load_specs())
    assert names == [str(tmp_path / "bzImage"), str(tmp_path / "tree")]
    os.mkfifo(tmp_path / "fifo")  # reading it for a boot header would wait forever
    with pytest.raises(KconformError, match="not a regular file"):
        expand_kernel_args([str(tmp_path / "fifo")], load_specs())


@pytest.mark.parametrize("expect, words", [
    ("expect = {}", ["X1 outcome 2", "expect = {} checks nothing"]),
    ("expect = { sockmap = {}, sockhash = { errno = \"OK\" } }",
     ["X1 outcome 2", "expect.sockmap = {} checks nothing"]),
])
def test_an_outcome_that_checks_nothing_is_refused(tmp_path, expect, words):
    """expect = {} passed every kernel, whatever it did."""
    path = tmp_path / "expectations.toml"
    path.write_text(BEHAVIOUR.replace('expect = { errno = "OK" }', expect))
    with pytest.raises(KconformError) as raised:
        expectations.load(path)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def _without_behaviour(text: str, bid: str) -> str:
    """The expectations text with behaviour `bid`'s table and outcomes left out."""
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("[") and not line.startswith("[["):
            skipping = line.strip() == f"[{bid}]"
        elif line.startswith("[["):
            skipping = line.strip() == f"[[{bid}.outcomes]]"
        if not skipping:
            kept.append(line)
    return "".join(kept)


def test_a_behaviour_the_cases_check_but_the_expectations_lack_is_a_usage_error(tmp_path):
    """It failed with KeyError in expect(), after the boot, in every case of that behaviour."""
    path = tmp_path / "expectations.toml"
    path.write_text(_without_behaviour((REPO / "cases" / "expectations.toml").read_text(), "C1"))
    assert "C1" not in expectations.load(path)
    proc = collect("--kernel", "debian-6.1", "--expectations", str(path))
    assert_usage_error(proc, str(path), "no expectations for the behaviours C1 (cases/")


def test_a_target_whose_release_names_no_version_is_refused_when_described(tmp_path):
    """uname -r 'custom': every expect() raised ValueError, and the report an INTERNALERROR."""
    from harness.machines.ssh import SshError, SshTarget, parse_description
    target = SshTarget.parse("ssh://root@lab1:2222")
    with pytest.raises(SshError, match=r"ssh://root@lab1:2222: its kernel release 'custom' "
                                       "names no version"):
        parse_description(target, "custom\n0\nLinux version custom #1 SMP\n", "", tmp_path)


def test_a_kernel_without_a_version_is_a_kconform_error_not_a_value_error():
    from harness.kernels import KernelTree
    with pytest.raises(KconformError, match="kernel mine: its release 'custom' names no version"):
        _ = KernelTree(name="mine", vmlinuz=None, release="custom").version


def test_the_report_of_a_kernel_without_a_version_is_written_not_an_internal_error():
    from types import SimpleNamespace

    from harness.plugin.recording import Reporter
    reporter = object.__new__(Reporter)  # only what _note_kernel reads
    reporter.results = results.Results()
    reporter.run = SimpleNamespace(specs={})
    report = SimpleNamespace(user_properties=[("kernel_version", "custom"), ("uname", "custom")])
    reporter._note_kernel("mine", [report])
    entry = reporter.results.kernels["mine"]
    assert (entry.version, entry.uname, entry.upstream) == ("custom", "custom", None)


# ----------------------------------------------------------------------------- images/*.toml

GOOD_RECIPE = textwrap.dedent("""\
    description = "Debian 12 bookworm"
    suite = "bookworm"
    variant = "minbase"
    packages = ["python3", "libbpf1"]
    """)


@pytest.mark.parametrize("text, words", [
    (GOOD_RECIPE.replace('["python3", "libbpf1"]', '"python3"'),
     ["packages = 'python3'", "a single string is not a list"]),
    ('suite = "bookworm"\npackages = ["python3"\n', ["not valid TOML"]),
    ('packages = ["python3"]\n', ["missing field 'suite'", 'suite = "bookworm"']),
    (GOOD_RECIPE.replace('"bookworm"', '"--keyring=/x.gpg"'),
     ["suite = '--keyring=/x.gpg'", "not a Debian suite name"]),
    (GOOD_RECIPE.replace('"bookworm"', '"--no-check-gpg"'), ["suite = '--no-check-gpg'"]),
    (GOOD_RECIPE.replace('"libbpf1"', '"--no-check-gpg"'),
     ["packages", "'--no-check-gpg' is not one"]),
    (GOOD_RECIPE.replace('"libbpf1"', '"a,b"'), ["packages", "'a,b' is not one"]),
    (GOOD_RECIPE.replace("packages = [", "packages = []\n#["), ["packages = []", "non-empty"]),
    (GOOD_RECIPE.replace('"minbase"', '"--print-debs"'), ["variant = '--print-debs'", "minbase"]),
    (GOOD_RECIPE.replace('"Debian 12 bookworm"', '"two\\nlines"'), ["description"]),
    (GOOD_RECIPE + 'include = ["x"]\n', ["unknown field 'include'"]),
])
def test_a_malformed_rootfs_recipe_names_its_file_and_field(tmp_path, text, words):
    """A bad recipe was a TOMLDecodeError or KeyError traceback, or reached debootstrap: a suite
    '--no-check-gpg' came after --force-check-gpg and turned the signature check off."""
    from harness.machines.rootfs import RootfsSpec
    path = tmp_path / "debian-bookworm.toml"
    path.write_text(text)
    with pytest.raises(KconformError) as raised:
        RootfsSpec.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, (word, message)


def test_the_suite_s_own_rootfs_recipes_are_valid():
    from harness.machines.rootfs import load_recipes
    recipes = load_recipes()
    assert "debian-bookworm" in recipes and "python3" in recipes["debian-bookworm"].packages


def test_only_the_chosen_rootfs_recipe_is_read(tmp_path):
    """A broken recipe stops the runs that choose it, with its file named, and no other run."""
    from harness.machines.rootfs import check_rootfs_name
    (tmp_path / "good.toml").write_text(GOOD_RECIPE)
    (tmp_path / "broken.toml").write_text("suite = [\n")
    check_rootfs_name("good", tmp_path)
    check_rootfs_name("host", tmp_path)
    with pytest.raises(KconformError, match=r"broken\.toml: not valid TOML"):
        check_rootfs_name("broken", tmp_path)
    with pytest.raises(KconformError, match="unknown root filesystem 'other'.*broken, good"):
        check_rootfs_name("other", tmp_path)


def test_the_debootstrap_command_holds_no_option_from_the_recipe(tmp_path, monkeypatch):
    """Everything after the options is a recipe value, the target or the mirror: none starts
    with '-', so debootstrap (which takes no '--') reads none of them as an option."""
    from harness.machines import rootfs
    path = tmp_path / "good.toml"
    path.write_text(GOOD_RECIPE)
    spec = rootfs.RootfsSpec.load(path)
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "failed")
    monkeypatch.setattr(rootfs.subprocess, "run", fake_run)
    provider = rootfs.RootfsProvider(cache=tmp_path / "cache")
    with pytest.raises(KconformError):
        provider._debootstrap(spec, "http://deb.debian.org/debian", tmp_path, tmp_path / "root")
    [cmd] = commands
    options = cmd[:cmd.index("--force-check-gpg") + 1]
    assert options[-2:] == [f"--keyring={rootfs.DEBIAN_KEYRING}", "--force-check-gpg"]
    assert cmd[len(options):] == ["bookworm", str(tmp_path / "root"),
                                  "http://deb.debian.org/debian"]


# ----------------------------------------------------------------------------- --guest-boot

@pytest.mark.parametrize("args, words", [
    (["--kernel", "debian-6.12-arm64"], ["--guest-boot direct", "debian-6.12-arm64 is arm64",
                                         "--guest-boot auto"]),
    (["--kernel", "debian-6.1", "--rootfs", "debian-bookworm"],
     ["--guest-boot direct boots the host's files", "--rootfs debian-bookworm"]),
])
def test_a_direct_boot_of_what_only_virtme_ng_boots_is_a_usage_error(args, words):
    assert_usage_error(collect("--guest-boot", "direct", *args), *words)


def test_an_unknown_guest_boot_is_a_usage_error():
    assert_usage_error(collect("--guest-boot", "fast"), "--guest-boot", "direct", "virtme-ng")
