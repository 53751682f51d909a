"""The GitHub workflows: checked by a real workflow linter (actionlint, from the venv), kept in
step with the kernels and commands they run, and their shell steps run here with stand-ins for
gh, sudo and the suite (the compare step with the real `kconform compare`)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import harness.kernels
from harness import cli
from harness.kernels import default_kernel_names, load_specs
from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
KERNELS_YML = WORKFLOWS / "kernels.yml"
SCHEDULED_YML = WORKFLOWS / "scheduled.yml"
SAVED_RESULTS = REPO / "tests" / "data" / "results"  # real runs' report.json (see its README)


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "actionlint"
    if not binary.exists():
        pytest.fail(f"no actionlint beside {sys.executable}: it comes with requirements.txt "
                    "(./kconform test installs it)")
    args = [str(binary), "-no-color"]
    if shutil.which("shellcheck"):  # actionlint then checks every run: script with it too
        args.append(f"-shellcheck={shutil.which('shellcheck')}")
    return subprocess.run([*args, *map(str, paths)], cwd=REPO, capture_output=True, text=True)


def lint_broken(tmp_path, workflow: Path, old: str, new: str) -> subprocess.CompletedProcess:
    broken = workflow.read_text().replace(old, new)
    assert broken != workflow.read_text()
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / workflow.name
    path.write_text(broken)
    return actionlint(path)


# ---------------------------------------------------------------------- reading a workflow

def job_text(text: str, job: str) -> str:
    match = re.search(rf"^  {re.escape(job)}:\n(.*?)(?=^  \S|\Z)", text, re.M | re.S)
    assert match, f"no job {job!r}"
    return match[1]


def step_text(text: str, job: str, name: str) -> str:
    """The lines of the step named `name` in `job` (no YAML parser in the venv: the workflows
    keep to one layout, steps as `      - ` items)."""
    for item in re.split(r"^(?=      - )", job_text(text, job), flags=re.M):
        if re.match(rf"      - name: {re.escape(name)}\n", item):
            return item
    raise AssertionError(f"job {job!r} has no step named {name!r}")


def run_script(step: str) -> str:
    """A step's `run: |` block, dedented: the script GitHub hands to `bash -e`."""
    lines = step.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^( *)run: \|$", line)
        if match:
            body = []
            for row in lines[i + 1:]:
                if row.strip() and len(row) - len(row.lstrip()) <= len(match[1]):
                    break
                body.append(row)
            return textwrap.dedent("\n".join(body)) + "\n"
    raise AssertionError(f"step has no run: | block:\n{step}")


def matrix_of(text: str) -> tuple[list[str], list[str]]:
    """The suite job's kernels, and the comment lines right above them."""
    match = re.search(r"^((?:\s+#.*\n)*)\s+kernel: \[(.*)\]$", job_text(text, "suite"), re.M)
    assert match, "the suite job has no one-line kernel matrix"
    return [k.strip() for k in match[2].split(",")], match[1].splitlines()


def matrix_problems(text: str, specs, required: list[str]) -> list[str]:
    """What is wrong with a workflow's kernel matrix: a name that is no definition, a required
    kernel missing, a definition left out without a `#   NAME: reason` line above the matrix."""
    kernels, comments = matrix_of(text)
    reasons = dict(re.findall(r"^\s*#\s+([A-Za-z0-9][A-Za-z0-9._+-]*): (\S.*)$",
                              "\n".join(comments), re.M))
    problems = [f"{k}: in the matrix but not a definition in kernels/" for k in kernels
                if k not in specs]
    problems += [f"{k}: required but not in the matrix" for k in required if k not in kernels]
    problems += [f"{k}: left out with no reason named above the matrix" for k in specs
                 if k not in kernels and k not in reasons]
    problems += [f"{k}: in the matrix and named as left out" for k in reasons if k in kernels]
    return problems


def scheduled_required(specs) -> list[str]:
    """The newest build of each series (its generic-flavour definition) and every definition
    with no series (the RC, which follows experimental)."""
    return [name for name, spec in specs.items()
            if not spec.series or spec.flavour == "amd64"]


# ---------------------------------------------------------------------- actionlint

def test_workflows_pass_actionlint():
    proc = actionlint(*sorted(WORKFLOWS.glob("*.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    proc = lint_broken(tmp_path, KERNELS_YML, "needs: suite", "needs: suites")
    assert proc.returncode == 1
    assert 'job "grid" needs job "suites" which does not exist' in proc.stdout


def test_actionlint_catches_a_broken_scheduled_workflow(tmp_path):
    proc = lint_broken(tmp_path, SCHEDULED_YML, "actions: read", "actions: raed")
    assert proc.returncode == 1
    assert '"raed" is invalid as permission of scope "actions"' in proc.stdout, proc.stdout


# ---------------------------------------------------------------------- the matrices

def test_the_push_matrix_runs_the_defaults_and_names_what_it_leaves_out():
    specs = load_specs()
    text = KERNELS_YML.read_text()
    assert matrix_problems(text, specs, default_kernel_names(specs=specs)) == []
    kernels, _ = matrix_of(text)
    assert "debian-6.12-rt" in kernels and "debian-6.12-cloud" not in kernels
    assert "debian-rc" not in kernels, "the RC runs in the scheduled workflow"
    assert "debian-6.12-arm64" in kernels  # the arm64 path on every push (issue 13)


def test_the_scheduled_matrix_runs_each_series_and_the_rc():
    specs = load_specs()
    text = SCHEDULED_YML.read_text()
    assert matrix_problems(text, specs, scheduled_required(specs)) == []
    kernels, _ = matrix_of(text)
    assert "debian-rc" in kernels
    assert {specs[k].series for k in kernels if specs[k].series} == \
        {s.series for s in specs.values() if s.series}


def test_a_wrong_matrix_is_caught():
    specs = load_specs()
    text = KERNELS_YML.read_text()
    defaults = default_kernel_names(specs=specs)
    no_reason = re.sub(r"^\s+#\s+debian-rc: .*\n", "", text, flags=re.M)
    assert matrix_problems(no_reason, specs, defaults) == \
        ["debian-rc: left out with no reason named above the matrix"]
    unknown = text.replace("kernel: [debian-5.10,", "kernel: [debian-5.10, debian-4.19,")
    assert matrix_problems(unknown, specs, defaults) == \
        ["debian-4.19: in the matrix but not a definition in kernels/"]
    no_default = text.replace("kernel: [debian-5.10, ", "kernel: [")
    assert matrix_problems(no_default, specs, defaults) == \
        ["debian-5.10: required but not in the matrix",
         "debian-5.10: left out with no reason named above the matrix"]
    scheduled = SCHEDULED_YML.read_text().replace(" debian-rc,", "")
    assert "debian-rc: required but not in the matrix" in \
        matrix_problems(scheduled, specs, scheduled_required(specs))


@pytest.mark.parametrize("workflow", [KERNELS_YML, SCHEDULED_YML], ids=lambda p: p.name)
def test_each_kernel_job_runs_the_suite_on_the_pinned_root_and_merges_the_grids(workflow):
    text = workflow.read_text()
    suite = re.search(r"./kconform suite --kernel \"\$KERNEL\" --rootfs debian-bookworm "
                      r"--results-dir \"results/\$KERNEL\"", job_text(text, "suite"))
    assert suite, "each kernel job runs the suite on its kernel, on the pinned root, into " \
                  "results/<kernel>"
    assert 'cat "results/$KERNEL/report.md" >> "$GITHUB_STEP_SUMMARY"' in text
    assert "name: results-${{ matrix.kernel }}\n          path: results/${{ matrix.kernel }}/" \
        in text
    grid = job_text(text, "grid")
    assert "./kconform merge artifacts/results-*/report.json -o results/merged" in grid
    assert "cat results/merged/report.md >> \"$GITHUB_STEP_SUMMARY\"" in grid
    assert re.match(r"\s+name: .*\n\s+needs: suite\n\s+if: always\(\)", grid), \
        "the grid is made even when a kernel fails"


@pytest.mark.parametrize("workflow", [KERNELS_YML, SCHEDULED_YML], ids=lambda p: p.name)
def test_run_scripts_take_values_through_env(workflow):
    # A ${{ }} pasted into a script is shell code from whoever sets the value; and these
    # scripts are run here as they are.
    for script in re.findall(r"run: \|\n((?:\s{10,}.*\n|\n)+)", workflow.read_text()):
        assert "${{" not in script, script


# ---------------------------------------------------------------------- the steps, run here

@pytest.fixture
def step_runner(tmp_path):
    """Runs a step's script as GitHub does (bash -e, in the checkout) with stand-ins on PATH:
    sudo runs its command, gh answers from FAKE_GH_*, ./kconform stands in for `suite` and
    `kernels` and is the real one for the rest."""
    work, bin_dir = tmp_path / "checkout", tmp_path / "bin"
    work.mkdir()
    bin_dir.mkdir()
    fakes = {
        bin_dir / "sudo": '[ "$1" = -E ] && shift\nexec "$@"\n',
        bin_dir / "gh": textwrap.dedent("""\
            printf '%s\\n' "$*" >> "$FAKE_GH_LOG"
            case "$1 $2" in
                "run list") [ -z "$FAKE_GH_RUN" ] || echo "$FAKE_GH_RUN" ;;
                "run download")
                    if [ -z "$FAKE_GH_ARTIFACT" ]; then
                        echo "no valid artifacts found to download" >&2
                        exit 1
                    fi
                    while [ "$1" != -D ]; do shift; done
                    mkdir -p "$2" && cp "$FAKE_GH_ARTIFACT" "$2/report.json" ;;
                *) exit 3 ;;
            esac
            """),
        work / "kconform": textwrap.dedent(f"""\
            case "$1" in
                suite) exit "$FAKE_SUITE_STATUS" ;;
                kernels) cat "$FAKE_LISTING"; exit 0 ;;
            esac
            export KCONFORM_CALLER_CWD="$PWD"
            cd {REPO}
            exec {sys.executable} -m harness.cli "$@"
            """),
    }
    for path, body in fakes.items():
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)

    def run(step: str, **env: str) -> SimpleNamespace:
        (tmp_path / "step.sh").write_text(run_script(step))
        for name in ("output", "summary", "gh.log"):
            (tmp_path / name).write_text("")
        base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
                "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(tmp_path / "output"),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
                "GITHUB_REPOSITORY": "owner/kconform", "FAKE_GH_LOG": str(tmp_path / "gh.log"),
                "FAKE_GH_RUN": "", "FAKE_GH_ARTIFACT": "", "FAKE_SUITE_STATUS": "0"}
        proc = subprocess.run(["bash", "-e", str(tmp_path / "step.sh")], cwd=work,
                              env={**base, **env}, capture_output=True, text=True, timeout=120)
        outputs = dict(line.split("=", 1)
                       for line in (tmp_path / "output").read_text().splitlines())
        return SimpleNamespace(status=proc.returncode, out=proc.stdout + proc.stderr,
                               outputs=outputs, summary=(tmp_path / "summary").read_text(),
                               gh=(tmp_path / "gh.log").read_text().splitlines())

    run.work = work
    return run


def kernels_listing(monkeypatch, capsys, name: str, builds: list[tuple[str, str, str]],
                    cached: str = "") -> str:
    """What `./kconform kernels --versions NAME` prints for these builds (version, ABI, suite),
    the archive stood in for."""
    class Provider:
        def __init__(self, specs, log):
            pass

        def versions(self, spec):
            return [SimpleNamespace(version=v, abi_number=a, suite=s) for v, a, s in builds]

        def cached_tree(self, build):
            return Path("/cache") if build.version == cached else None

    monkeypatch.setattr(harness.kernels, "KernelProvider", Provider)
    assert cli.kernels_main(["--versions", name]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("workflow", [KERNELS_YML, SCHEDULED_YML], ids=lambda p: p.name)
def test_the_kernel_cache_key_is_the_archives_current_version(workflow, step_runner, tmp_path,
                                                               monkeypatch, capsys):
    text = workflow.read_text()
    restore = step_text(text, "suite", "Restore the cached kernel")
    assert "key: kconform-kernel-${{ matrix.kernel }}-${{ steps.version.outputs.version }}-" \
        in restore, "a security update must change the key, not only a changed kernels/*.toml"
    save = step_text(text, "suite", "Save the kernel in the cache")
    assert "key: ${{ steps.kernel-cache.outputs.cache-primary-key }}" in save
    step = step_text(text, "suite", "The kernel's current version")
    listing = tmp_path / "listing"
    listing.write_text(kernels_listing(monkeypatch, capsys, "debian-6.1", [
        ("6.1.176-1", "6.1.0-50", "bookworm"), ("6.1.192-2", "6.1.0-56", "bookworm-security"),
        ("6.1.192-3", "6.1.0-57", "bookworm-security")], cached="6.1.192-3"))
    ran = step_runner(step, KERNEL="debian-6.1", FAKE_LISTING=str(listing))
    assert ran.status == 0, ran.out
    assert ran.outputs == {"version": "6.1.192-3"}
    listing.write_text(kernels_listing(monkeypatch, capsys, "debian-rc", [
        ("7.3~rc7-1~exp1", "7.3", "experimental")]))
    ran = step_runner(step, KERNEL="debian-rc", FAKE_LISTING=str(listing))
    assert ran.outputs == {"version": "7.3~rc7-1~exp1"}
    listing.write_text("")
    ran = step_runner(step, KERNEL="debian-6.1", FAKE_LISTING=str(listing))
    assert ran.status == 1 and "named no current version" in ran.out
    assert ran.outputs == {}


@pytest.mark.parametrize("workflow", [KERNELS_YML, SCHEDULED_YML], ids=lambda p: p.name)
def test_the_cache_keeps_only_complete_entries_and_unpacks_them(workflow, step_runner, tmp_path):
    text = workflow.read_text()
    pack = step_text(text, "suite", "Pack the kernel and the root for the cache")
    cache = tmp_path / "kconform-cache"
    tree = cache / "trees" / "6.1.0-57-amd64_6.1.192-3"
    root = cache / "rootfs" / "debian-bookworm-5d10144f9959"
    for path in (tree / "boot" / "vmlinuz-6.1.0-57-amd64", root / "usr" / "bin" / "mount",
                 root / "usr/lib/modules/6.1.0-57-amd64/kernel/sockmap.ko",
                 cache / "rootfs" / ".staging-debian-bookworm-1" / "half"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    image = tree / "boot" / "vmlinuz-6.1.0-57-amd64"
    os.utime(image, ns=(1_764_000_000_123_456_789,) * 2)  # a manifest records mtime_ns
    env = {"KCONFORM_CACHE": str(cache), "KERNEL_CACHED": "", "ROOTFS_CACHED": ""}

    ran = step_runner(pack, **env, VERSION="6.1.192-3")
    assert ran.status == 0, ran.out
    assert ran.outputs == {"kernel": "true", "rootfs": "true"}
    with tarfile.open(tmp_path / "kconform-rootfs.tar") as tar:
        names = tar.getnames()
    assert "./rootfs/debian-bookworm-5d10144f9959/usr/bin/mount" in names
    assert not [n for n in names if "sockmap.ko" in n], "a kernel's modules are added per run"

    unpacked = tmp_path / "fresh-cache"
    unpacked.mkdir()
    ran = step_runner(step_text(text, "suite", "Unpack them"), KCONFORM_CACHE=str(unpacked))
    assert ran.status == 0, ran.out
    assert (unpacked / image.relative_to(cache)).stat().st_mtime_ns == image.stat().st_mtime_ns, \
        "a tree whose mtimes changed is fetched again"
    assert (unpacked / root.relative_to(cache) / "usr" / "bin" / "mount").is_file()

    for tarball in tmp_path.glob("*.tar"):
        tarball.unlink()
    # the archive's version was not fetched (the run stopped first): nothing to cache for it
    ran = step_runner(pack, **env, VERSION="6.1.192-4")
    assert ran.outputs == {"rootfs": "true"}
    ran = step_runner(pack, **dict(env, KERNEL_CACHED="true", ROOTFS_CACHED="true"),
                      VERSION="6.1.192-3")
    assert ran.status == 0 and ran.outputs == {}


def test_failing_cases_are_for_the_compare_step_a_broken_run_fails(step_runner):
    step = step_text(SCHEDULED_YML.read_text(), "suite", "Run the suite")
    for status, expected in (("0", 0), ("1", 0), ("2", 2), ("4", 4)):
        assert step_runner(step, KERNEL="debian-rc", FAKE_SUITE_STATUS=status).status == \
            expected, f"suite exit status {status}"


# ---------------------------------------------------------------------- the weekly comparison

def test_the_scheduled_workflow_runs_weekly_and_may_read_earlier_runs():
    text = SCHEDULED_YML.read_text()
    assert re.search(r"^on:\n  schedule:\n    - cron: \"\d+ \d+ \* \* \d\"", text, re.M), \
        "weekly: a minute, an hour and a day of the week"
    assert "\n  workflow_dispatch:\n" in text
    permissions = re.search(r"^permissions:\n((?:  .*\n)+)", text, re.M)[1]
    assert re.findall(r"^  (\S+): (\S+)", permissions, re.M) == \
        [("actions", "read"), ("contents", "read")]
    step = step_text(text, "suite", "Compare with the previous scheduled run")
    assert "GH_TOKEN: ${{ github.token }}" in step
    assert "--workflow scheduled.yml" in step and "--status success" in step
    assert './kconform compare previous/report.json "results/$KERNEL/report.json"' in step


def one_kernel(path: Path, kernel: str, version: str | None = None) -> dict:
    """A saved real run cut down to one kernel, optionally relabelled as another version of it
    (a scheduled run's artifact holds one kernel, under the same name every week)."""
    data = json.loads(path.read_text())
    data["kernels"] = {kernel: data["kernels"][kernel]}
    data["cases"] = [c for c in data["cases"] if c["kernel"] == kernel]
    if version:
        data["kernels"][kernel]["version"] = version
        for case in data["cases"]:
            case["kernel_version"] = version
    return data


@pytest.fixture
def reports(step_runner, tmp_path):
    """This week's debian-7.2 results in the checkout; last week's variants beside them."""
    this_week = step_runner.work / "results" / "debian-7.2" / "report.json"
    this_week.parent.mkdir(parents=True)
    # Last week 7.2.12-1 passed L2; this week's 7.2.13-1 run (doctored expectations, see the
    # data's README) fails it: a regression.
    this_week.write_text(json.dumps(one_kernel(SAVED_RESULTS / "regression.json", "debian-7.2")))
    passed = tmp_path / "last-week.json"
    passed.write_text(json.dumps(one_kernel(SAVED_RESULTS / "debian-7.2.json", "debian-7.2",
                                            "7.2.12-1")))
    return SimpleNamespace(this_week=this_week, passed=passed)


def compare_step() -> str:
    return step_text(SCHEDULED_YML.read_text(), "suite", "Compare with the previous scheduled run")


def test_a_regression_since_the_previous_run_fails_the_job(step_runner, reports):
    ran = step_runner(compare_step(), KERNEL="debian-7.2", GH_TOKEN="t", DEFAULT_BRANCH="main",
                      FAKE_GH_RUN="4242", FAKE_GH_ARTIFACT=str(reports.passed))
    assert ran.status == 1, ran.out
    assert ran.gh == [
        ("run list --repo owner/kconform --workflow scheduled.yml --branch main --status success "
         "--limit 1 --json databaseId --jq .[0].databaseId // empty"),
        "run download 4242 --repo owner/kconform -n results-debian-7.2 -D previous"]
    assert "### debian-7.2 against scheduled run 4242" in ran.summary
    assert "debian-7.2 7.2.12-1 -> 7.2.13-1" in ran.summary, "one name, two versions"
    assert "REGRESSION: L2 " in ran.summary


def test_no_regression_since_the_previous_run_passes(step_runner, reports):
    reports.this_week.write_text(json.dumps(one_kernel(SAVED_RESULTS / "debian-7.2.json",
                                                       "debian-7.2")))
    ran = step_runner(compare_step(), KERNEL="debian-7.2", GH_TOKEN="t", DEFAULT_BRANCH="main",
                      FAKE_GH_RUN="4242", FAKE_GH_ARTIFACT=str(reports.passed))
    assert ran.status == 0, ran.out
    assert re.search(r"^0 behaviour\(s\) regressed on debian-7.2 ", ran.summary, re.M)


def test_with_no_previous_results_the_job_passes_with_a_note(step_runner, reports):
    ran = step_runner(compare_step(), KERNEL="debian-7.2", GH_TOKEN="t", DEFAULT_BRANCH="main")
    assert ran.status == 0, ran.out
    assert "No earlier successful scheduled run: nothing to compare debian-7.2 with" in ran.summary
    assert len(ran.gh) == 1, "nothing to download"
    # a run before the kernel joined the matrix, or whose artifact expired
    ran = step_runner(compare_step(), KERNEL="debian-7.2", GH_TOKEN="t", DEFAULT_BRANCH="main",
                      FAKE_GH_RUN="4242")
    assert ran.status == 0, ran.out
    assert "Scheduled run 4242 has no results-debian-7.2" in ran.summary


def test_a_broken_previous_report_fails_the_job(step_runner, reports, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    ran = step_runner(compare_step(), KERNEL="debian-7.2", GH_TOKEN="t", DEFAULT_BRANCH="main",
                      FAKE_GH_RUN="4242", FAKE_GH_ARTIFACT=str(broken))
    assert ran.status == 2, ran.out
    assert "kconform compare:" in ran.out

