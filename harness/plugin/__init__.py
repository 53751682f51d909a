"""kconform's pytest plugin: options, kernel parametrization, guest fixtures, verdicts.

A test asks for `guest` (and usually `expect`); it is then run once per selected kernel with ids
like test_x[debian-6.1]. Guests boot lazily, once per kernel per process (xdist worker), and stay
up for every test of that kernel: tests are ordered by kernel and, under xdist, grouped on one
worker with `--dist loadgroup`. `--collect-only` therefore boots and downloads nothing.
"""
from __future__ import annotations

import atexit
from collections.abc import Generator
from typing import Protocol, TypedDict

import pytest

from ..errors import KconformError
from ..judging import expectations
from ..machines.qemu import kill_all_guests
from ..machines.rootfs import HOST
from ..machines.ssh import (
    description_to_dict,
)
from . import interrupts
from .fixtures import behaviours, bpf_object, expect, guest
from .options import pytest_addoption
from .recording import RERUN, Reporter, declared_behaviour, mark_console_start
from .reruns import Reruns, last_of_kernel
from .run import (
    CASE_GUEST_KEY,
    KERNELS_KEY,
    PINNED_KEY,
    RUN_KEY,
    TARGETS_KEY,
    KconformRun,
    kernel_of,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_config(*options): skip on kernels built without "
                            "these CONFIG_ options (read from the kernel's config)")
    try:
        config.stash[RUN_KEY] = KconformRun(config)
    except KconformError as exc:
        raise pytest.UsageError(str(exc)) from None
    selected_behaviours(config, config.stash[RUN_KEY])  # an unknown id: a usage error now
    config.pluginmanager.register(Reporter(config, config.stash[RUN_KEY]), "kconform-report")
    if config.option.rerun_failed:
        config.pluginmanager.register(Reruns(config.stash[RUN_KEY], config.option.rerun_failed),
                                      "kconform-reruns")
    atexit.register(kill_all_guests)
    interrupts.install()


class WorkerNode(Protocol):
    """What pytest_configure_node is given: xdist's WorkerController (xdist ships no types)."""
    config: pytest.Config
    workerinput: dict[str, object]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: WorkerNode) -> None:
    """xdist, on the controller: hand each worker the kernels and the SSH targets' descriptions."""
    run = node.config.stash[RUN_KEY]
    node.workerinput[KERNELS_KEY] = [name for name in run.kernel_names if name not in run.targets]
    node.workerinput[PINNED_KEY] = run.current_builds
    node.workerinput[TARGETS_KEY] = {target.url: description_to_dict(run.target_trees[name])
                                     for name, target in run.targets.items()}


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run:
        run.pool.close()
    kill_all_guests()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" not in metafunc.fixturenames:
        return
    run = metafunc.config.stash[RUN_KEY]
    # Session scope makes pytest order tests by kernel; the xdist group keeps a kernel on one
    # worker.
    params = [pytest.param(name, id=name, marks=pytest.mark.xdist_group(name))
              for name in run.kernel_names]
    metafunc.parametrize("kernel", params, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest's reordering by the session-scoped kernel parameter stops keeping a kernel's tests
    # together once tests carry parameters of their own, and every switch of kernel frees the guest
    # (see below), so a run without -n booted each kernel again and again until the pool gave up.
    # A stable sort keeps each kernel's tests together, in their collected order.
    # Cases some kernel is expected to hang on (a cited stable-release deadlock) go last on their
    # kernel: a replacement guest booted after the last of them serves no test, so none is booted.
    # --rerun-failed's rounds come after all of them (reruns.py): the kernel's last case is where
    # its guest is freed below, and where its failed cases start again on a fresh one.
    run = config.stash[RUN_KEY]
    _deselect_other_behaviours(config, run, items)
    _check_behaviours_declared(config, run, items)
    order: dict[str | None, int] = {name: i for i, name in enumerate(run.kernel_names)}

    def may_lose_the_guest(item: pytest.Item) -> bool:
        behaviour = run.behaviours.get(declared_behaviour(item)[0] or "")
        return bool(behaviour and behaviour.may_lose_the_guest)

    items.sort(key=lambda item: (order.get(kernel_of(item), -1), may_lose_the_guest(item)))


def selected_behaviours(config: pytest.Config, run: KconformRun) -> list[str]:
    """The ids --behaviour names, each checked against the expectations file ([] = all)."""
    ids = [part.strip() for value in config.option.behaviour for part in value.split(",")]
    if any(not bid for bid in ids):
        raise pytest.UsageError(f"--behaviour {','.join(config.option.behaviour)!r} has an empty "
                                "id in its comma list; write e.g. --behaviour U10,E1")
    unknown = [bid for bid in ids if bid not in run.behaviours]
    if unknown:
        path = config.option.expectations or expectations.DEFAULT_FILE
        raise pytest.UsageError(f"--behaviour: unknown behaviour {', '.join(unknown)}; the ids "
                                f"are the [ID] tables of {path}: {', '.join(run.behaviours)}")
    return ids


def _deselect_other_behaviours(config: pytest.Config, run: KconformRun,
                               items: list[pytest.Item]) -> None:
    """--behaviour: the cases checking other behaviours are deselected, as -k deselects."""
    wanted = set(selected_behaviours(config, run))
    if not wanted:
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        (kept if declared_behaviour(item)[0] in wanted else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def _check_behaviours_declared(config: pytest.Config, run: KconformRun,
                               items: list[pytest.Item]) -> None:
    """Every behaviour a collected kernel case checks is in the expectations file, or the run
    stops here, before anything boots (expect() would otherwise fail each case after the boot)."""
    missing: dict[str, str] = {}
    for item in items:
        if kernel_of(item) is None:
            continue
        bid = declared_behaviour(item)[0]
        if bid and bid not in run.behaviours:
            missing.setdefault(bid, item.nodeid)
    if missing:
        cases = ", ".join(f"{bid} ({nodeid})" for bid, nodeid in missing.items())
        path = config.option.expectations or expectations.DEFAULT_FILE
        raise pytest.UsageError(f"{path}: no expectations for the behaviours "
                                f"{cases}; add a [ID] table with [[ID.outcomes]] for each, or "
                                "deselect those cases")


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    kernel = kernel_of(item)
    if kernel and last_of_kernel(item, nextitem):
        item.config.stash[RUN_KEY].pool.release(kernel)  # its last test here: free the CPU


# A test's reports (what each carries, a crash's verdict included) are the Reporter's alone:
# recording.Reporter.pytest_runtest_makereport.


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    case_guest = item.stash.get(CASE_GUEST_KEY, None)
    if case_guest is not None:  # a failure's report carries the console lines from here on
        mark_console_start(item, case_guest.session.machine.console)
    result = yield
    if case_guest is not None:
        case_guest.fail_if_down_unjudged()
    return result


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash[RUN_KEY]
    where = [f"guest root: {run.rootfs_name}"] if run.rootfs_name != HOST else []
    where += [f"{name} on {target.url}" for name, target in run.targets.items()]
    return [f"kconform: kernels {', '.join(run.kernel_names)}; results in {run.results_dir}"
            + "".join(f"; {w}" for w in where)]


class KernelTally(TypedDict):
    version: str | None
    uname: str | None
    verdicts: dict[str, int]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: pytest.ExitCode,
                            config: pytest.Config) -> None:
    seen: dict[str, KernelTally] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = dict(getattr(report, "user_properties", []) or [])
            when = getattr(report, "when", None)
            # a case is counted by its call, or by its setup when that failed (a guest that never
            # booted, a splat while it booted): report.json counts those too
            if "kernel" not in props or not (when == "call" or (when == "setup" and report.failed)):
                continue
            if report.outcome == RERUN:  # a failed run that ran again: its last run counts
                continue
            entry = seen.setdefault(props["kernel"], {"version": props.get("kernel_version"),
                                                      "uname": props.get("uname"), "verdicts": {}})
            verdict = props.get("verdict", report.outcome)
            entry["verdicts"][verdict] = entry["verdicts"].get(verdict, 0) + 1
    if not seen:
        return
    terminalreporter.section("kconform kernels")
    for name, entry in seen.items():
        counts = ", ".join(f"{n} {v}" for v, n in sorted(entry["verdicts"].items()))
        terminalreporter.write_line(f"{name}: {entry['version']} (uname {entry['uname']}): "
                                    f"{counts}")


# The hooks above, the options and the fixtures make the plugin pytest registers (conftest.py).
__all__ = ["behaviours", "bpf_object", "expect", "guest", "pytest_addoption"]
