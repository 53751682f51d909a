"""A run as KCIDB data: what KernelCI's database takes from the CI systems that submit to it.

KCIDB's schema is kcidb-io's (pinned in requirements.txt); this writes its v5.3, the newest the
pinned kcidb-io knows, and validates every document with kcidb-io before it is written, so a
file this module made is never one KCIDB would refuse. It reads only a results document
(results.py); nothing is sent anywhere: the file is for `kcidb-submit` or a reader.

What becomes what:
- each kernel: one checkout and one build (v5.3 has no other place for what was tested). The
  build says the architecture and, for a package from a Debian suite, the flavour as its config
  name (a Debian image's release ends with it); both say the kernel's name, exact version,
  upstream version, `uname -r` and suite in misc. No git facts: results hold none.
- each case: one test of that build, whose path is the suite, the behaviour, the test and its
  parameters (sockmap.U10.test_udp_unbound.sockhash); its environment says the machine (QEMU and
  its accelerator, or the SSH target), the root and the BPF JIT's state; its misc holds kconform's
  own verdict, the expectation and observation, reason and source, and the rerun line.
- statuses (STATUSES): pass and expected difference are PASS (an expected difference is a
  documented outcome of that kernel's version; misc says which, with its reason and source); fail
  FAIL; crashed FAIL too, since a kernel crash is the kernel's failure, with the crash
  fingerprint in misc and the failure's console lines in log_excerpt; skipped SKIP; flaky PASS
  with its failed attempts in misc. A bad case whose guest never booted (never_booted) is ERROR:
  the case did not run, so KCIDB must not count it as the kernel failing it.
- a known crash (harness/judging/data/known_crashes.toml) becomes an issue, and each case that hit
  it an incident of that issue.

Ids: '<origin>:<kernel>:<key>' for a kernel's checkout and build, and '<origin>:<kernel>:<key>:
<pytest node id>' for a test, where <key> is a digest of that kernel's part of the results. So
exporting one file twice (or a kernel's run alone and in a merge) gives the same ids, and KCIDB
merges a resubmission instead of counting it twice, while two runs of one kernel never share one.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from typing import cast

import kcidb_io
from jsonschema.exceptions import ValidationError

from ..errors import KconformError
from ..versions import debian_release_flavour
from .results import CaseResult, JsonObject, KernelRecord, Results

# Written as v5.3 on purpose, not kcidb_io's LATEST: a newer kcidb-io with a newer schema is a
# change to review (tests/test_kcidb.py checks this is still the newest).
SCHEMA = kcidb_io.schema.V5_3
DEFAULT_ORIGIN = "kconform"
# The suite a case's path starts with: the doc it checks, Documentation/bpf/map_sockmap.rst.
SUITE = "sockmap"

# kconform's verdicts (harness/judging/verdicts.py) as KCIDB test statuses (SCHEMA's $defs/status).
STATUSES = {
    "pass": "PASS",
    "expected-difference": "PASS",
    "fail": "FAIL",
    "crashed": "FAIL",
    "skipped": "SKIP",
    "flaky": "PASS",  # --rerun-failed: failed, then passed on a fresh guest
}
ERROR = "ERROR"  # a bad case whose guest never booted

_SCHEMA_DEFS = cast(dict[str, dict[str, dict[str, dict[str, object]]]], SCHEMA.json["$defs"])
LOG_EXCERPT_MAX = cast(int, _SCHEMA_DEFS["test"]["properties"]["log_excerpt"]["maxLength"])
_ARCHITECTURE = re.compile(cast(str, _SCHEMA_DEFS["build"]["properties"]["architecture"]
                                ["pattern"]))
_TRUNCATED = "\n[truncated: the whole text is in the results file]"


class KcidbError(KconformError):
    pass


def checked_origin(origin: str) -> str:
    """The origin, if KCIDB's grammar takes it (the name every id of the file starts with)."""
    if not re.fullmatch(SCHEMA.origin_pattern, origin):
        raise KcidbError(f"--origin {origin!r}: not a KCIDB origin; an origin (the name of the CI "
                         "system that submits) is lower-case letters, digits and _ only, e.g. "
                         f"--origin my_lab (default: {DEFAULT_ORIGIN})")
    return origin


# ---------------------------------------------------------------------- the document

def kcidb_data(results: Results, origin: str = DEFAULT_ORIGIN) -> JsonObject:
    """The results as one KCIDB document (not yet validated: kcidb_text validates)."""
    origin = checked_origin(origin)
    checkouts: list[JsonObject] = []
    builds: list[JsonObject] = []
    tests: list[JsonObject] = []
    issues: dict[str, JsonObject] = {}
    incidents: list[JsonObject] = []
    for name in results.kernel_order():
        kernel = results.kernels[name]
        cases = results.for_kernel(name)
        kernel_id = f"{origin}:{name}:{_kernel_key(kernel, cases)}"
        checkouts.append(_checkout(origin, kernel_id, name, kernel))
        builds.append(_build(origin, kernel_id, name, kernel))
        environment = _environment(kernel)
        for case in cases:
            test = _test(origin, kernel_id, case, kernel, environment)
            tests.append(test)
            if case.known_crash:
                issue = _issue(origin, case.known_crash)
                issues.setdefault(cast(str, issue["id"]), issue)
                incidents.append(_incident(origin, issue, test, case))
    # When the run started (the earliest of merged runs): KernelCI's views select by time.
    started = min((run.started for run in results.runs if run.started), default=None)
    if started:
        for item in (*checkouts, *builds, *tests):
            item["start_time"] = started
    data: JsonObject = {"version": {"major": SCHEMA.major, "minor": SCHEMA.minor},
                        "checkouts": checkouts, "builds": builds, "tests": tests}
    if issues:
        data |= {"issues": list(issues.values()), "incidents": incidents}
    return cast(JsonObject, _without_nul(data))


def validate(data: JsonObject) -> JsonObject:
    """The document, once kcidb-io's SCHEMA takes it; KcidbError naming the field otherwise."""
    try:
        SCHEMA.validate(data)
    except ValidationError as exc:
        message = exc.message if len(exc.message) <= 300 else exc.message[:297] + "..."
        raise KcidbError(f"the KCIDB data is not valid {SCHEMA} at {exc.json_path}: {message}; "
                         "this is a bug of kconform's KCIDB writer (harness/reports/kcidb.py): "
                         "report it with the results file") from None
    return data


def kcidb_text(results: Results, origin: str = DEFAULT_ORIGIN) -> str:
    return json.dumps(validate(kcidb_data(results, origin)), indent=1) + "\n"


def _kernel_key(kernel: KernelRecord, cases: list[CaseResult]) -> str:
    """A digest of what the results say of one kernel: the same for the same run, exported from
    its own file or from a merge; another for another run (other durations, at least)."""
    part = [kernel.to_json(), [case.to_json() for case in cases]]
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


def _checkout(origin: str, kernel_id: str, name: str, kernel: KernelRecord) -> JsonObject:
    what = [f"{name} {kernel.version or '(version unknown: its tree never came)'}"]
    if kernel.upstream:
        what.append(f"upstream {kernel.upstream}")
    if kernel.suite:
        what.append(f"Debian suite {kernel.suite}")
    checkout: JsonObject = {"id": kernel_id, "origin": origin, "comment": ", ".join(what),
                            "misc": _misc(kernel=name, version=kernel.version,
                                          upstream=kernel.upstream, suite=kernel.suite)}
    if kernel.version:  # its tree was fetched (or found on the target): the source was had
        checkout["valid"] = True
    return checkout


# KernelCI names architectures as its build configurations do (the kernel's own names, with
# x86_64 for 64-bit x86), not as Debian does: builds from other origins group with ours by it.
KERNELCI_ARCHITECTURE = {"amd64": "x86_64", "arm64": "arm64"}


def _build(origin: str, kernel_id: str, name: str, kernel: KernelRecord) -> JsonObject:
    build: JsonObject = {"id": kernel_id, "checkout_id": kernel_id, "origin": origin,
                         "comment": f"{name} {kernel.version or ''}".rstrip()
                         + (f", uname -r {kernel.uname}" if kernel.uname else "")}
    architecture = KERNELCI_ARCHITECTURE.get(kernel.architecture, kernel.architecture)
    if _ARCHITECTURE.fullmatch(architecture):
        build["architecture"] = architecture
    flavour = debian_flavour(kernel)
    if flavour:
        build["config_name"] = flavour
    if kernel.version:  # a built kernel was there to boot (Debian's build, or the user's)
        build["status"] = "PASS"
    build["misc"] = _misc(kernel=name, version=kernel.version, upstream=kernel.upstream,
                          uname=kernel.uname, suite=kernel.suite, arch=kernel.architecture,
                          boot=kernel.boot)  # how to boot it by hand
    return build


def debian_flavour(kernel: KernelRecord) -> str | None:
    """The Debian flavour (rt-amd64) of a kernel packaged in a Debian suite: the configuration
    Debian built it with, named as Debian names it. None for anything else (a built tree, an SSH
    target's own kernel, results from before suites were recorded)."""
    if not kernel.suite or not kernel.uname:
        return None
    flavour = debian_release_flavour(kernel.uname)
    if not flavour or not flavour.endswith(kernel.architecture):
        return None
    return flavour


def _environment(kernel: KernelRecord) -> JsonObject:
    """Where the cases ran: the machine (QEMU and its accelerator, from the boot line the results
    keep, or the SSH target), the root, and the BPF JIT's state."""
    words = _words(kernel.boot)
    vng = bool(words) and words[0] == "vng"
    machine = kernel.machine or ("qemu" if vng else None)  # results from before "machine"
    accelerator = cpu = None
    if machine == "qemu" and vng:  # harness/machines/qemu.py build_vng_command
        accelerator = "tcg" if "--disable-kvm" in words else "kvm"
        cpu = next((w.removeprefix("--qemu-opts=-cpu ") for w in words
                    if w.startswith("--qemu-opts=-cpu ")), None)
    said = []
    if machine == "qemu":
        how = ", ".join(x for x in ((accelerator or "").upper(), cpu and f"-cpu {cpu}") if x)
        said.append(f"QEMU ({how})" if how else "QEMU")
    elif machine:
        said.append(machine)
    if kernel.rootfs:
        said.append(f"root: {kernel.rootfs}")
    said.append(f"BPF JIT: {kernel.jit}")
    return {"comment": "; ".join(said),
            "misc": _misc(machine=machine, accelerator=accelerator, cpu=cpu, rootfs=kernel.rootfs,
                          bpf_jit_enable=kernel.bpf_jit_enable)}


def _words(line: str | None) -> list[str]:
    try:
        return shlex.split(line) if line else []
    except ValueError:  # a hand-edited line
        return []


# ---------------------------------------------------------------------- one case

def _test(origin: str, kernel_id: str, case: CaseResult, kernel: KernelRecord,
          environment: JsonObject) -> JsonObject:
    status = status_of(case, kernel)
    test: JsonObject = {"id": f"{kernel_id}:{case.id}", "build_id": kernel_id, "origin": origin,
                        "path": path_of(case), "status": status,
                        "comment": _comment(case, status), "environment": environment}
    if case.duration is not None:
        test["duration"] = case.duration
    excerpt = log_excerpt(case)
    if excerpt:
        test["log_excerpt"] = excerpt
    test["misc"] = _misc(
        verdict=case.verdict.value, guest_never_booted=True if status == ERROR else None,
        kernel=case.kernel, kernel_version=case.kernel_version, node_id=case.id, case=case.case,
        file=case.file, behaviour=case.behaviour, variant=case.variant, section=case.section,
        title=case.title, expected=case.expected, observed=case.observed, reason=case.reason,
        source=case.source, matrix=case.matrix, crash_fingerprint=crash_fingerprint_of(case),
        known_crash=case.known_crash, console_log=case.console_log, reproduce=case.reproduce,
        attempts=[attempt.to_json() for attempt in case.attempts] or None)
    return test


def status_of(case: CaseResult, kernel: KernelRecord) -> str:
    if never_booted(case, kernel):
        return ERROR
    status = STATUSES.get(case.verdict.value)
    if status is None:
        raise KcidbError(f"verdict {case.verdict.value!r} (case {case.id}) has no KCIDB status: "
                         "harness/reports/kcidb.py STATUSES needs one")
    return status


# How a case reads whose guest never booted: the first line of its message is a BootFailure
# (harness/machines/session.py GuestSession.start, harness/plugin/run.py GuestPool.session), each
# '<kernel>: ...'. The guest fixture fails the case with it before the test runs.
_BOOT_FAILURE = re.compile(
    r": .*(?:died while starting|no agent within \d+s of starting|did not start the agent: "
    r"instead of its hello|the guest died \d+ times; not booting it again|that was replaced is "
    r"still running after being killed)")


def never_booted(case: CaseResult, kernel: KernelRecord) -> bool:
    """The rule for ERROR: a failed or crashed case that observed nothing, and either no guest of
    its kernel ever answered in the run (the kernel has no `uname -r`: its tree could not be had,
    its root could not be made, or its first boot failed), or its own guest's boot failed (a
    replacement after a crash)."""
    if not case.verdict.bad or case.observed is not None:
        return False
    first_line = case.message.split("\n", 1)[0]
    return kernel.uname is None or _BOOT_FAILURE.search(first_line) is not None


def path_of(case: CaseResult) -> str:
    """'sockmap.U10.test_udp_unbound.sockhash': the suite, the behaviour (when the case has one),
    the test, and its parameters (the case id's [...] without the kernel). SCHEMA's path is
    dot-separated parts of letters, digits, _ and -; any other character of a part is written
    _u<hex code point>_ (a '.' in a parameter would split it)."""
    name, bracket, params = case.case.partition("[")
    parts = [SUITE, case.behaviour, name, params.removesuffix("]") if bracket else None]
    return ".".join(_path_part(part) for part in parts if part is not None)


def _path_part(text: str) -> str:
    part = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else f"_u{ord(c):x}_"
                   for c in text)
    return part or "_"  # an empty parameter id (test[]): a path part cannot be empty


def _comment(case: CaseResult, status: str) -> str:
    what = " ".join(x for x in (case.behaviour, case.title or case.case) if x)
    if case.variant:
        what += f" [{case.variant}]"
    verdict = case.verdict.label
    if status == ERROR:
        verdict += ", its guest never booted"
    comment = f"{what} on {case.kernel}: {verdict}"
    if case.reason and case.verdict.good:
        comment += f" ({case.reason})"
    if case.attempts:  # --rerun-failed ran it again
        count = len(case.attempts)
        comment += f"; {count} earlier attempt{'s' if count > 1 else ''} failed"
    return comment


# The line a lost guest's failure report holds (harness/plugin/run.py _failure_text).
_FINGERPRINT = re.compile(r"^crash fingerprint: (\S+)$", re.MULTILINE)


def crash_fingerprint_of(case: CaseResult) -> str | None:
    match = _FINGERPRINT.search(case.message)
    return match[1] if match else None


def log_excerpt(case: CaseResult) -> str | None:
    """The text most relevant to the outcome: the failure's message (a lost guest's holds the
    console lines from its first splat on), and the guest console lines of the test when it
    holds none; a skip's reason; the failed attempts of a case run again (a flaky one passed at
    last, so they are all there is to read). Cut to SCHEMA's length, the head kept: it says what
    happened."""
    text = case.message.strip()
    if case.console and "console lines:" not in text:
        text += ("\n\n" if text else "") + "guest console during this test:\n" \
            + "\n".join(case.console)
    for attempt in case.attempts:
        text += ("\n\n" if text else "") + f"attempt {attempt.number}: {attempt.verdict.label}"
        text += f"\n{attempt.message.strip()}" if attempt.message.strip() else ""
    if not text:
        return None
    if len(text) > LOG_EXCERPT_MAX:
        text = text[:LOG_EXCERPT_MAX - len(_TRUNCATED)] + _TRUNCATED
    return text


# A known crash as the results hold it: KnownCrash.__str__ (harness/judging/health.py).
_KNOWN_CRASH = re.compile(r"known crash: (?P<reason>.*?)(?: \((?P<link>[^()\s]+)\))?", re.DOTALL)


def _issue(origin: str, known_crash: str) -> JsonObject:
    """The known crash as a KCIDB issue: the same entry gives the same id in every run."""
    match = _KNOWN_CRASH.fullmatch(known_crash)
    reason, link = (match["reason"], match["link"]) if match else (known_crash, None)
    digest = hashlib.sha256(known_crash.encode()).hexdigest()[:12]
    issue: JsonObject = {"id": f"{origin}:known-crash:{digest}", "version": 1, "origin": origin,
                         "comment": reason,
                         # a kernel crash is the kernel's (README: a crash is never a pass)
                         "culprit": {"code": True, "tool": False, "harness": False},
                         "misc": {"known_crash": known_crash}}
    if link:
        with_url = issue | {"report_url": link}
        if SCHEMA.is_valid({"version": {"major": SCHEMA.major, "minor": SCHEMA.minor},
                            "issues": [with_url]}):
            return with_url
        issue["misc"] = {"known_crash": known_crash, "link": link}  # not a URI KCIDB takes
    return issue


def _incident(origin: str, issue: JsonObject, test: JsonObject, case: CaseResult) -> JsonObject:
    incident: JsonObject = {"id": f"{test['id']}:{issue['id']}", "origin": origin,
                            "issue_id": issue["id"], "issue_version": issue["version"],
                            "test_id": test["id"], "present": True}
    fingerprint = crash_fingerprint_of(case)
    if fingerprint:
        incident["comment"] = f"crash fingerprint: {fingerprint}"
    return incident


# ---------------------------------------------------------------------- values

def _misc(**fields: object) -> JsonObject:
    """A misc object without its unknown fields: KCIDB data holds no nulls."""
    return {name: value for name, value in fields.items() if value is not None}


def _without_nul(value: object) -> object:
    """SCHEMA forbids NUL in every text field, and misc goes to the same database (PostgreSQL's
    jsonb refuses \\u0000): a NUL a guest printed is written as the text \\x00."""
    if isinstance(value, str):
        return value.replace("\0", "\\x00")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
