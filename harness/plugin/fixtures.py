"""The fixtures a case asks for: guest (a guest as one test sees it), expect, bpf_object."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Protocol

import pytest

from ..errors import KconformError
from ..judging import expectations
from ..judging.health import CallHealth
from ..judging.verdicts import Verdict
from ..kernels import KernelTree
from ..machines.session import CallResult, GuestCallError, GuestFailure, GuestHang, GuestSession
from .run import CASE_GUEST_KEY, CRASHED_KEY, RUN_KEY, KconformRun

# A margin for waits on the kernel's asynchronous work (work queues, softirqs) when TCG emulates
# every guest instruction, not a measured ratio: such a wait ends at its event, so only an event
# that never comes pays the whole bound.
EMULATION_SLOWDOWN = 5.0


class GuestDown(dict[str, str]):
    """What a test observes when the guest did not survive its call: {"guest": "hang"} or
    {"guest": "crash"}. expect() judges it like any observation, since an old kernel can be
    expected to hang (a cited, known bug); reading anything else from it fails the test with the
    crash report."""

    def __init__(self, kind: str, report: str) -> None:
        super().__init__(guest=kind)
        self.report = report

    def __missing__(self, key: str) -> NoReturn:
        pytest.fail(self.report, pytrace=False)


class CaseGuest:
    """The guest as one test sees it: guest-side calls with health checks and clear failures."""

    def __init__(self, item: pytest.Item, run: KconformRun, kernel: str,
                 session: GuestSession) -> None:
        self.item, self.run, self.kernel, self.session = item, run, kernel, session
        self.down: GuestDown | None = None  # set when a call lost the guest
        self.guest_seconds = 0.0  # time spent inside guest functions (the case's own work)
        self.guest_timing: dict[str, float] = {}  # of those, seconds by kind (session.py)
        self.judged = False
        stem = Path(str(item.fspath)).stem
        self.module = f"cases.guest.{stem[len('test_'):] if stem.startswith('test_') else stem}"

    def call(self, fn: str, timeout: float | None = None, **kwargs: object) -> object:
        """Run a guest-side function; a bare name is looked up in cases/guest/<topic>.py."""
        name = fn if ":" in fn else f"{self.module}:{fn}"
        failure: GuestFailure | None = None
        raised: GuestCallError | None = None
        result: CallResult | None = None
        try:
            result = self.session.call(name, timeout=timeout or self.run.case_timeout, **kwargs)
        except GuestCallError as exc:
            raised = exc
        except GuestFailure as exc:
            failure = exc
        # handled outside the except blocks, so the reports are not exception chains
        if raised:  # the guest side's traceback (and verifier log) is the evidence, not ours
            self._check_health(raised.health)
            pytest.fail(f"{name} raised in the guest: {raised}", pytrace=False)
        if failure:
            report = self.run.failure_report(failure, self.kernel, self.item)
            self.down = GuestDown("hang" if isinstance(failure, GuestHang) else "crash", report)
            self.item.user_properties.append(("console", json.dumps(failure.console[-80:])))
            return self.down
        assert result is not None  # session.call returned, or one of the above was set
        self._check_health(result.health)
        self.guest_seconds += result.elapsed
        self.item.user_properties.append(("guest_seconds", round(self.guest_seconds, 4)))
        if result.timing:  # the same calls as guest_seconds, so "other" is what they leave
            for kind, seconds in result.timing.items():
                self.guest_timing[kind] = self.guest_timing.get(kind, 0.0) + seconds
            self.item.user_properties.append(("guest_timing", json.dumps(  # text: see expect
                {kind: round(s, 4) for kind, s in self.guest_timing.items()}, sort_keys=True)))
        return result.result

    @property
    def arch(self) -> str:
        """The Debian architecture of this guest's kernel: what its BPF objects are built for."""
        return self.run.pool.tree(self.kernel).arch  # resolved before the guest fixture made us

    def bounded_wait(self, seconds: float) -> float:
        """A wait in the guest that is enough on hardware, scaled for emulation: TCG runs a
        guest's softirqs and work queues several times slower."""
        return seconds * (EMULATION_SLOWDOWN if self.run.emulated(self.arch) else 1.0)

    def fail_if_down_unjudged(self) -> None:
        """A lost guest that no expectation accounted for fails the test as crashed."""
        if self.down is not None and not self.judged:
            pytest.fail(self.down.report, pytrace=False)

    def _check_health(self, health: CallHealth) -> None:
        findings = self.run.health.check(health)
        if findings:
            self.item.stash[CRASHED_KEY] = True
            lines = "\n".join(f"  {f}" for f in findings)
            log = "\n".join(f"  | {line}" for line in health.get("log_during", [])[-60:])
            pytest.fail(f"the kernel reported a problem during this test:\n{lines}\n"
                        f"kernel log during the test:\n{log}", pytrace=False)


@pytest.fixture
def guest(request: pytest.FixtureRequest, kernel: str) -> CaseGuest:
    run = request.config.stash[RUN_KEY]
    item = request.node
    problem = None  # failed outside the except blocks, so reports are not exception chains
    try:
        tree = run.pool.tree(kernel)
    except KconformError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    _skip_without_config(item, kernel, tree)
    try:
        session = run.pool.session(kernel)
    except GuestFailure as exc:
        item.stash[CRASHED_KEY] = True
        problem = run.failure_report(exc, kernel, item)
    except KconformError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    info = run.kernels[kernel]
    item.user_properties += [("kernel", kernel), ("kernel_version", info.exact_version),
                             ("uname", info.uname)]
    if info.suite:
        item.user_properties.append(("kernel_suite", info.suite))
    booted = run.pool.fresh.pop(kernel, None)
    if booted is not None:
        boot_seconds = booted.boot_seconds
        item.user_properties += [("boot_seconds",
                                  round(boot_seconds, 3) if boot_seconds is not None else None),
                                 ("agent_start_seconds", booted.agent_start_seconds)]
        _check_boot_health(item, run, booted)
    case_guest = CaseGuest(item, run, kernel, session)
    item.stash[CASE_GUEST_KEY] = case_guest
    return case_guest


def _check_boot_health(item: pytest.Item, run: KconformRun, session: GuestSession) -> None:
    """A splat or taint while the kernel booted fails the first test on that guest, as crashed:
    no case ran yet, but a kernel that warned on its way up is not a healthy one to judge."""
    hello = session.info  # a booted session has its agent's hello
    # Only a guest kconform booted sends its boot (the agent's --boot-log): an SSH target's log
    # and taint since its boot are not this run's, and a lab box tainted last week is no finding.
    if not hello or "boot_log" not in hello:
        return
    boot_log = hello["boot_log"]
    findings = run.health.check({"log_during": boot_log, "taint_before": 0,
                                 "taint_after": hello.get("taint", 0)})
    if not findings:
        return
    item.stash[CRASHED_KEY] = True
    start = run.health.first_splat(boot_log)
    text = "\n".join(f"  {f}" for f in findings)
    if start is not None:  # a taint alone has no log lines to show
        text += "\nkernel log from the first splat on:\n" + "\n".join(
            f"  | {line}" for line in boot_log[start:start + 60])
    pytest.fail(f"the kernel reported a problem while it booted (this is the first test on its "
                f"guest):\n{text}", pytrace=False)


def _skip_without_config(item: pytest.Item, kernel: str, tree: KernelTree) -> None:
    wanted = [opt for mark in item.iter_markers("requires_config") for opt in mark.args]
    config = tree.config()
    if not wanted or not config:
        return
    missing = [opt for opt in wanted if config.get(opt) not in ("y", "m")]
    if missing:
        pytest.skip(f"{kernel} is built without {', '.join(missing)} "
                    f"(read from {tree.config_path})")


# The BPF objects this process built, by (program, architecture): each is looked up once per run,
# whichever kernel's tests ask for it.
BPF_OBJECTS_KEY = pytest.StashKey[dict[tuple[str, str], Path]]()


@pytest.fixture
def bpf_object(request: pytest.FixtureRequest, guest: CaseGuest) -> Callable[[str], Path]:
    """bpf_object("sockmap_progs") -> host path of cases/bpf/sockmap_progs.bpf.c built (and
    cached) for the architecture of the test's kernel. Given to guest.call() as a Path, it
    reaches the guest as the path it is seen at."""
    from ..bpf import BpfBuildError, build
    built = request.config.stash.setdefault(BPF_OBJECTS_KEY, {})

    def get(name: str) -> Path:
        key = (name, guest.arch)
        if key not in built:
            try:
                built[key] = build(name, arch=guest.arch)
            except BpfBuildError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
        return built[key]

    return get


@pytest.fixture(scope="session")
def behaviours(request: pytest.FixtureRequest) -> dict[str, expectations.Behaviour]:
    """The run's expectations by behaviour id (--expectations, or the suite's own file)."""
    behaviours: dict[str, expectations.Behaviour] = request.config.stash[RUN_KEY].behaviours
    return behaviours


class Expect(Protocol):
    """The expect fixture: judge an observation against the behaviour's data."""
    def __call__(self, behaviour_id: str, observed: dict[str, object],
                 variant: str | None = None) -> expectations.Judgement: ...


@pytest.fixture
def expect(request: pytest.FixtureRequest, kernel: str,
           guest: CaseGuest) -> Expect:
    """expect(behaviour_id, observed, variant=None): judge an observation against the data."""
    run = request.config.stash[RUN_KEY]
    item = request.node
    tree = run.pool.trees[kernel]

    def judge(behaviour_id: str, observed: dict[str, object],
              variant: str | None = None) -> expectations.Judgement:
        behaviour = run.behaviours[behaviour_id]
        if guest.down is not None:
            observed = dict(guest.down)  # only the hang or crash itself is observed
        verdict = expectations.judge(behaviour, tree.version, observed, variant)
        guest.judged = True
        item.user_properties += [
            ("behaviour", behaviour_id), ("variant", variant or ""),
            ("section", behaviour.section), ("title", behaviour.title),
            ("expected", json.dumps(verdict.expected, sort_keys=True)),
            ("observed", json.dumps(observed, sort_keys=True)),
            ("source", verdict.outcome.source), ("reason", verdict.outcome.reason),
            ("verdict", verdict.verdict.value)]  # plain text: xdist sends it between processes
        if behaviour.matrix is not None and variant is not None:
            item.user_properties.append(("matrix", json.dumps(
                behaviour.matrix.cell(tree.version, variant, observed), sort_keys=True)))
        if verdict.verdict == Verdict.FAIL:
            if guest.down is not None:
                item.stash[CRASHED_KEY] = True
                pytest.fail(guest.down.report, pytrace=False)
            pytest.fail(verdict.message(kernel, tree.exact_version), pytrace=False)
        return verdict

    return judge
