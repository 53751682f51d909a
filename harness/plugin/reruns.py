"""--rerun-failed N: tell a flaky case from a real failure by running it again on a fresh guest.

A case of a kernel that fails is held back; once the kernel's other cases have run (after its
last one, last_of_kernel: where the plugin's pytest_runtest_teardown frees the kernel's guest,
after the cases expected to hang, which pytest_collection_modifyitems orders last), the held
cases run again, in their order, on one fresh guest per round (not a boot per case), for up to
N rounds, stopping when none fails any more. Under xdist a kernel's cases
are all on one worker (--dist loadgroup), so its reruns are too.

A case that passes in a round is *flaky*: its last run is recorded, carrying the failed runs'
evidence (recording.case_record). One that fails in every round stays *fail*, with every run's.

What is run again: only a call that failed with the verdict fail, i.e. an observation its
expectation does not allow, a failed assertion of the test, or an exception the guest-side code
raised while the kernel stayed healthy (a timing-sensitive observation under emulation, say).
Never a case whose verdict is crashed: its guest died or hung during it, or the kernel reported
a splat or a new taint during the call or the boot (recording.Reporter marks those), and a kernel
crash is never flaky. Nor a case that failed in setup (the kernel could not be fetched, its guest
did not boot, a required option is missing: the kernel's failure, not the case's) or in teardown,
nor one that was skipped. A rerun that crashes ends the case as crashed, with the earlier runs'
evidence; one that is skipped or fails in setup (its round's guest could not be had), and a case
of a kernel given up on before its round, end as their last run failed.

A failed run that will be run again is reported with the outcome "rerun" (pytest-rerunfailures'
word, R in the progress line): pytest counts it neither as passed nor as failed, and the reports
leave it out; the case is reported once, by its last run. If the session stops early (-x, an
interrupt), the cases still held are reported as they last failed.
"""
from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import pytest
from _pytest.runner import runtestprotocol

from ..judging.verdicts import Verdict
from .recording import CONSOLE_MARK, RERUN, attempt_record
from .run import CASE_GUEST_KEY, CRASHED_KEY, kernel_of

if TYPE_CHECKING:
    from .run import KconformRun

T = TypeVar("T")
FLAKY_STATUS = ("flaky", "K", "FLAKY")  # pytest's (category, letter, word) of a flaky case


@dataclass
class Held:
    """A case waiting for its next run, and the reports of each run of it that failed."""
    item: pytest.Item
    failed: list[list[pytest.TestReport]] = field(default_factory=list)


def rerunnable(reports: list[pytest.TestReport]) -> bool:
    """Whether a run's failure is one --rerun-failed runs again (the module's docstring)."""
    by_phase = {report.when: report for report in reports}
    call, teardown = by_phase.get("call"), by_phase.get("teardown")
    if call is None or not call.failed or (teardown is not None and teardown.failed):
        return False
    return dict(call.user_properties).get("verdict") != Verdict.CRASHED.value


def last_of_kernel(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """The kernel's cases run together (pytest_collection_modifyitems), so this is its last."""
    kernel = kernel_of(item)
    return kernel is not None and (nextitem is None or kernel_of(nextitem) != kernel)


class Reruns:
    """The test protocol of kernel cases under --rerun-failed (registered only then)."""

    def __init__(self, run: KconformRun, rounds: int) -> None:
        self.run, self.rounds = run, rounds
        self.held: dict[str, list[Held]] = {}  # kernel -> its held cases, in run order
        self.running: list[Held] = []  # the cases of the round being run, not yet decided

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> bool | None:
        kernel = kernel_of(item)
        if kernel is None:
            return None  # not a kernel case: pytest's own protocol
        try:
            reports = self._run(item, nextitem)
            if rerunnable(reports):
                self._hold(kernel, Held(item), reports)
            else:
                _log(item, reports)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            if item.session.shouldfail or item.session.shouldstop:
                self._report_held()  # pytest stops after this item: nothing will run again
            elif last_of_kernel(item, nextitem):
                self._rerun(kernel, nextitem)
        except BaseException:  # an interrupt: every case that ran is reported
            self._report_held()
            raise
        return True

    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        if report.outcome == RERUN:
            return RERUN, "R", "RERUN"
        if report.when == "call" and report.passed \
                and dict(report.user_properties).get("verdict") == Verdict.FLAKY.value:
            return FLAKY_STATUS
        return None

    def _run(self, item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.TestReport]:
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        return runtestprotocol(item, nextitem=nextitem, log=False)

    def _hold(self, kernel: str, held: Held, reports: list[pytest.TestReport]) -> None:
        """Keep a failed run's reports as an attempt, and show it as a rerun to come."""
        held.failed.append(reports)
        self.held.setdefault(kernel, []).append(held)
        call = next(report for report in reports if report.when == "call")
        shown = copy.copy(call)  # the kept report stays "failed", for the attempt's record
        shown.outcome = RERUN  # type: ignore[assignment]  # pytest-rerunfailures' outcome
        shown.user_properties = list(call.user_properties)
        with _reported_as(held.item):
            held.item.ihook.pytest_runtest_logreport(report=shown)

    def _rerun(self, kernel: str, nextitem: pytest.Item | None) -> None:
        """The kernel's held cases, round after round, each round on a fresh guest."""
        for round_number in range(1, self.rounds + 1):
            waiting = self.held.pop(kernel, [])
            if not waiting:
                return
            if kernel in self.run.pool.failed:  # not booted again: they end as they last failed
                for held in waiting:
                    _log_last_failure(held)
                    held.item.ihook.pytest_runtest_logfinish(nodeid=held.item.nodeid,
                                                             location=held.item.location)
                return
            self.running = list(waiting)
            self.run.pool.renew(kernel)
            for i, held in enumerate(waiting):
                session = held.item.session
                if session.shouldfail or session.shouldstop:  # -x after a case that failed
                    self._report_held()
                    return
                after = waiting[i + 1].item if i + 1 < len(waiting) else nextitem
                reports = self._run_again(held.item, after)
                self.running.remove(held)
                if rerunnable(reports) and round_number < self.rounds:
                    self._hold(kernel, held, reports)
                elif any(report.skipped or (report.when == "setup" and report.failed)
                         for report in reports):
                    # a skip proves nothing, and neither does a round whose guest could not be
                    # had: the case is what its last run came to, not a guest that never booted
                    _log_last_failure(held)
                else:
                    _log(held.item, reports, held.failed)
                held.item.ihook.pytest_runtest_logfinish(nodeid=held.item.nodeid,
                                                         location=held.item.location)

    def _run_again(self, item: pytest.Item,
                   nextitem: pytest.Item | None) -> list[pytest.TestReport]:
        # What an earlier run left on the item is not this run's: its properties, its guest, the
        # start of its console lines.
        item.user_properties.clear()
        _forget(item, CASE_GUEST_KEY)
        _forget(item, CRASHED_KEY)
        _forget(item, CONSOLE_MARK)
        # The item before this one was torn down for another next item (the kernel's last case
        # for the next kernel's, or for none): what this one does not share with that one is
        # torn down now, as pytest's teardown would have done had it known.
        item.session._setupstate.teardown_exact(item)
        return self._run(item, nextitem)

    def _report_held(self) -> None:
        """Every case not decided yet, as its last run failed (the session stops early)."""
        undecided = self.running + [held for kernel in list(self.held)
                                    for held in self.held.pop(kernel)]
        self.running = []
        for held in undecided:
            _log_last_failure(held)


def _forget(item: pytest.Item, key: pytest.StashKey[T]) -> None:
    if key in item.stash:
        del item.stash[key]


@contextlib.contextmanager
def _reported_as(item: pytest.Item) -> Iterator[None]:
    """An xdist worker sends only the reports of the item it runs (its WorkerInteractor asserts
    that a report's node id is its item_index's), and a rerun runs inside the protocol of the
    kernel's last item: while a rerun's reports go out, the item running is the rerun's."""
    worker = next((plugin for plugin in item.config.pluginmanager.get_plugins()
                   if type(plugin).__name__ == "WorkerInteractor"
                   and hasattr(plugin, "item_index")), None)
    if worker is None or worker.session.items[worker.item_index] is item:  # no xdist, or no rerun
        yield
        return
    running = worker.item_index
    worker.item_index = worker.session.items.index(item)
    try:
        yield
    finally:
        worker.item_index = running


def _log_last_failure(held: Held) -> None:
    """Report a held case as its last run failed, the runs before it as its attempts."""
    *earlier, last = held.failed
    _log(held.item, last, earlier)


def _log(item: pytest.Item, reports: list[pytest.TestReport],
         failed: list[list[pytest.TestReport]] | None = None) -> None:
    """Report a run, as pytest's own protocol would have, carrying the runs that failed before."""
    if failed:
        attempts = json.dumps([attempt_record(runs, i).to_json()
                               for i, runs in enumerate(failed, start=1)])
        passed = all(not report.failed for report in reports) \
            and not any(report.skipped for report in reports)
        for report in reports:
            report.user_properties.append(("attempts", attempts))
            if passed:  # the verdict pytest's summary and the kernel's tally show
                report.user_properties.append(("verdict", Verdict.FLAKY.value))
    with _reported_as(item):
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
