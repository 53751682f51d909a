"""kconform's pytest plugin: options, kernel parametrization, guest fixtures, verdicts.

A test asks for `guest` (and usually `expect`); it is then run once per selected kernel with ids
like test_x[debian-6.1]. Guests boot lazily, once per kernel per process (xdist worker), and stay
up for every test of that kernel: tests are ordered by kernel and, under xdist, grouped on one
worker with `--dist loadgroup`. `--collect-only` therefore boots and downloads nothing.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import expectations
from .accel import choose_accel
from .cli import caller_cwd, caller_path
from .channel import Machine
from .errors import KconformError
from .health import HealthRules, KnownCrash, KnownCrashes
from .kernels import KernelProvider, KernelTree, expand_kernel_args, load_specs
from .paths import cache_dir
from .report import Reporter, declared_behaviour
from .results import writable_directory
from .rootfs import HOST, Rootfs, RootfsProvider, check_rootfs_name
from .session import BootFailure, GuestCallError, GuestFailure, GuestHang, GuestSession
from .ssh import (SshMachine, SshTarget, describe_target, description_from_dict,
                  description_to_dict, target_kernel_name)
from .vm import Guest, check_memory, kill_all_guests

MAX_REPLACEMENTS = 3  # a kernel whose guest dies this often gets its remaining tests failed fast


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above zero (0, negative, nan and inf are refused:
    each made every case fail as crashed, or silently meant the default)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above zero; "
                                         "give e.g. 30 or 2.5")
    return value


def pytest_addoption(parser):
    group = parser.getgroup("kconform", "kconform: documented kernel behaviour on real kernels")
    group.addoption("--kernel", action="append", default=[], metavar="NAME",
                    help="kernel to run on: a name from kernels/*.toml, 'all', 'default', 'host', "
                         "or a path to a bzImage or built kernel tree. Repeatable; comma lists "
                         "allowed. Default: the set in kernels/default.txt.")
    group.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="QEMU accelerator. auto (default) uses KVM only if a probe boot works.")
    group.addoption("--boot-timeout", type=positive_seconds, default=None, metavar="S",
                    help="seconds from starting a guest to its agent answering "
                         "(default 180 under TCG, 60 under KVM)")
    group.addoption("--case-timeout", type=positive_seconds, default=30.0, metavar="S",
                    help="seconds one guest-side call may take before the test fails (default 30)")
    group.addoption("--refresh-kernels", action="store_true",
                    help="ask the archive for the newest package of each kernel now, instead of "
                         "trusting a resolution made in the last 12 hours")
    group.addoption("--results-dir", default="results", metavar="DIR",
                    help="where console logs and reports go (default: results/)")
    group.addoption("--expectations", default=None, metavar="FILE",
                    help="expectations file to judge with (default: cases/expectations.toml)")
    group.addoption("--known-crashes", default=None, metavar="FILE",
                    help="crash fingerprints to report as known (default: "
                         "harness/data/known_crashes.toml)")
    group.addoption("--guest-memory", default="1G", help="memory per guest (default 1G)")
    group.addoption("--rootfs", default="host", metavar="NAME",
                    help="guest root filesystem: 'host' (default: the host's own root, read-only, "
                         "as virtme-ng does) or a pinned root built from images/NAME.toml, e.g. "
                         "debian-bookworm")
    group.addoption("--target", action="append", default=[], metavar="ssh://USER@HOST[:PORT]",
                    help="also run on an already-running machine over SSH; its kernel is named "
                         "by its `uname -r`. Repeatable. Without --kernel, only the targets run.")
    group.addoption("--ssh-key", default=None, metavar="FILE",
                    help="private key for --target (default: ssh-agent and ~/.ssh/id_*)")
    group.addoption("--ssh-known-hosts", default=None, metavar="FILE",
                    help="known_hosts file with the targets' host keys, besides ~/.ssh/known_hosts")
    group.addoption("--ssh-accept-any-host-key", action="store_true",
                    help="do not check --target host keys: only for throwaway VMs on a trusted "
                         "network")


# ----------------------------------------------------------------------------- run state

@dataclass
class KernelInfo:
    """What every result records about the kernel that produced it."""
    name: str
    exact_version: str
    uname: str = ""
    boot_seconds: float | None = None
    vng_command: str = ""   # for an SSH target: the ssh line that logs in the same way
    console_log: str = ""
    by_hand: str = "boot it by hand"  # what vng_command does


class GuestPool:
    """This process's guests, one per kernel; boots lazily and replaces dead ones."""

    def __init__(self, run: "KconformRun"):
        self.run = run
        self.live: dict[str, GuestSession] = {}
        self.trees: dict[str, KernelTree] = {}
        self.failed: dict[str, Exception] = {}
        self.boots: dict[str, int] = {}
        self.fresh: dict[str, GuestSession] = {}
        self.machines: dict[str, Machine] = {}  # the last one started per kernel, even if it failed

    def tree(self, name: str) -> KernelTree:
        if name not in self.trees and name in self.run.target_trees:
            self.trees[name] = self.run.target_trees[name]  # described when the run began
        if name not in self.trees:
            try:
                self.trees[name] = self.run.provider.get(name)
            except KconformError as exc:
                self.failed[name] = exc
                raise
        return self.trees[name]

    def session(self, name: str) -> GuestSession:
        if name in self.failed:
            raise self.failed[name]
        current = self.live.get(name)
        if current and not current.dead:
            return current
        if current:
            current.close()
        self._make_sure_gone(name)
        tree = self.tree(name)
        count = self.boots.get(name, 0)
        if count > MAX_REPLACEMENTS:
            self.failed[name] = BootFailure(f"{name}: the guest died {count - 1} times; "
                                            "not booting it again in this run")
            raise self.failed[name]
        self.boots[name] = count + 1
        log = self.run.results_dir / "console" / f"{_safe(name)}-{self.run.worker}-{count}.log"
        machine, boot_timeout = self.new_machine(name, tree, log)
        self.machines[name] = machine
        session = GuestSession(machine, name, boot_timeout=boot_timeout)
        try:
            session.start()  # kills the machine whatever goes wrong
        except BootFailure as exc:
            self.failed[name] = exc
            raise
        self.live[name] = session
        self.fresh[name] = session  # the test that asked for it carries the boot's timings
        info = self.run.kernels.setdefault(name, KernelInfo(name, tree.exact_version))
        info.uname, info.boot_seconds = session.uname, session.boot_seconds
        info.vng_command, info.console_log = machine.command_line(), str(log)
        if tree.target:
            info.by_hand = "log in by hand"
        return session

    def new_machine(self, name: str, tree: KernelTree, log: Path) -> tuple[Machine, float]:
        """A machine for this kernel, not started yet, and how long its boot may take."""
        if tree.target:
            boot_timeout = self.run.boot_timeout(None)
            return (SshMachine(self.run.targets[name], log, connect_within=boot_timeout / 2),
                    boot_timeout)
        accel = self.run.accel(tree)
        try:  # a root or a command line that cannot be made fails every test of this kernel
            rootfs = self.run.rootfs(tree)
            guest = Guest(tree, accel, log, rootfs=rootfs, memory=self.run.memory)
        except KconformError as exc:
            self.failed[name] = exc
            raise
        return guest, self.run.boot_timeout(accel)

    def _make_sure_gone(self, name: str) -> None:
        """One machine per kernel per process: a replacement starts only once the last machine
        is killed and reaped."""
        previous = self.machines.get(name)
        if previous is None or not previous.alive:
            return
        previous.kill()
        if previous.alive:
            self.failed[name] = BootFailure(
                f"{name}: {previous.noun} that was replaced is still running after being killed; "
                f"not starting another beside it (console log: {previous.console.log_path})",
                previous.console.tail())
            raise self.failed[name]

    def release(self, name: str) -> None:
        session = self.live.pop(name, None)
        if session:
            session.close()

    def close(self) -> None:
        for name in list(self.live):
            self.release(name)


class KconformRun:
    def __init__(self, config: pytest.Config):
        opt = config.option
        # Every option is checked before anything connects or boots. Paths are the user's,
        # taken from where the command was typed; the options keep them absolute, so xdist
        # workers and the reports' rerun lines name the same files.
        self.specs = load_specs()
        self.kernel_names = expand_kernel_args(
            opt.kernel or ([] if opt.target else ["default"]), self.specs, cwd=caller_cwd())
        opt.results_dir = str(caller_path(opt.results_dir).resolve())
        self.results_dir = writable_directory(Path(opt.results_dir), "--results-dir",
                                              "give --results-dir a directory you can write")
        if opt.expectations:
            opt.expectations = str(caller_path(opt.expectations).resolve())
        self.behaviours = expectations.load(Path(opt.expectations)) if opt.expectations \
            else expectations.load()
        self.known_crashes = _known_crashes(opt)
        for name in ("ssh_key", "ssh_known_hosts"):
            if getattr(opt, name):
                setattr(opt, name, str(caller_path(getattr(opt, name))))
        if getattr(opt, "xmlpath", None):  # pytest's --junitxml, read after this hook
            opt.xmlpath = str(caller_path(opt.xmlpath))
        _check_cache()
        check_rootfs_name(opt.rootfs)
        if opt.rootfs != HOST and not self.kernel_names:
            raise KconformError("--rootfs applies to the kernels kconform boots; an SSH target "
                                "runs its own root")
        self.rootfs_name = opt.rootfs
        self._rootfs: Rootfs | None | bool = False  # False: not built yet
        self._rootfs_error: KconformError | None = None
        self.targets: dict[str, SshTarget] = {}
        self.target_trees: dict[str, KernelTree] = {}
        # The controller connects to each target once to describe it; xdist workers get the
        # descriptions from it (pytest_configure_node), so their test ids cannot differ.
        described = getattr(config, "workerinput", {}).get(TARGETS_KEY)
        for url in opt.target:
            target = SshTarget.parse(url, key_file=opt.ssh_key, known_hosts=opt.ssh_known_hosts,
                                     accept_any_host_key=opt.ssh_accept_any_host_key)
            if described is not None:
                tree = description_from_dict(described[target.url])
                name = tree.name
            else:
                tree = describe_target(target, self.results_dir / "targets")
                name = tree.name if tree.name not in self.kernel_names else \
                    f"{tree.name}@{target_kernel_name(target.address)}"  # two on one kernel
                tree.name = name
            self.targets[name], self.target_trees[name] = target, tree
            self.kernel_names.append(name)
        self.case_timeout = opt.case_timeout
        self.memory = check_memory(opt.guest_memory)  # before anything boots
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self._boot_timeout = opt.boot_timeout
        self._accel_choice = opt.accel
        self._accel = None
        self.provider = KernelProvider(refresh=opt.refresh_kernels, log=self._log)
        self.health = HealthRules()
        self.pool = GuestPool(self)
        self.kernels: dict[str, KernelInfo] = {}
        self.config = config

    def _log(self, message: str) -> None:
        """Progress a user should see as it happens (downloads, the accelerator, a damaged cache)
        even while a test's output is captured: it is logged from inside fixtures."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter and self.worker == "main":
                reporter.write_line(f"kconform: {message}")
            else:  # an xdist worker: its stdout carries xdist's protocol, its stderr is ours
                print(f"kconform[{self.worker}]: {message}", file=sys.stderr, flush=True)

    def accel(self, tree: KernelTree):
        """Chosen once per process, probing KVM with the first kernel it boots."""
        if self._accel is None:
            self._accel = choose_accel(tree.vmlinuz, self._accel_choice, cache=self.provider.cache)
            self._log(f"accelerator: {self._accel.name} ({self._accel.reason})")
        return self._accel

    def boot_timeout(self, accel) -> float:
        """accel None: an SSH target (connect, push the files, start the agent)."""
        return self._boot_timeout or (180.0 if accel and accel.name == "tcg" else 60.0)

    def rootfs(self, tree: KernelTree) -> Rootfs | None:
        """The guest root for this run (None: the host's), with this kernel's modules in it."""
        if self._rootfs_error:
            raise self._rootfs_error  # it failed for another kernel: do not build it again
        if self._rootfs is False:
            self._rootfs_provider = RootfsProvider(self.provider.cache, log=self._log)
            try:
                self._rootfs = self._rootfs_provider.get(self.rootfs_name)
            except KconformError as exc:
                self._rootfs_error = exc
                raise
        if self._rootfs is not None:
            self._rootfs_provider.add_modules(self._rootfs, tree)
        return self._rootfs

    def failure_report(self, exc: GuestFailure, kernel: str, item: pytest.Item) -> str:
        known = self.known_crashes.match(exc.fingerprint)
        if known:
            item.user_properties.append(("known_crash", str(known)))
        return _failure_text(exc, self.kernels.get(kernel), self.health, known)

    def rootfs_label(self) -> str:
        return self._rootfs.describe() if self._rootfs else self.rootfs_name


def _known_crashes(opt) -> KnownCrashes:
    if not opt.known_crashes:
        return KnownCrashes()
    opt.known_crashes = str(caller_path(opt.known_crashes).resolve())
    path = Path(opt.known_crashes)
    try:
        return KnownCrashes(path)
    except FileNotFoundError:
        raise KconformError(f"--known-crashes {path}: no such file; give a TOML file of "
                            "[[crash]] entries (fingerprint, reason, link), like "
                            "harness/data/known_crashes.toml") from None
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # TOMLDecodeError is one
        raise KconformError(f"--known-crashes {path}: not a known-crashes file ({exc}); each "
                            "[[crash]] entry needs fingerprint = \"frame|frame\" and "
                            "reason = \"...\"") from None


def _check_cache() -> None:
    """The cache must take files before the first download needs it."""
    chosen_by = "KCONFORM_CACHE" if os.environ.get("KCONFORM_CACHE") else "the cache directory"
    fix = ("set KCONFORM_CACHE to a directory you can write (kernels, BPF objects and roots "
           "are kept there)")
    try:
        path = cache_dir()
    except OSError as exc:
        where = os.environ.get("KCONFORM_CACHE") or exc.filename or "?"
        raise KconformError(f"{chosen_by} {where}: cannot create it ({exc.strerror or exc}); "
                            f"{fix}") from None
    writable_directory(path, chosen_by, fix)


RUN_KEY = pytest.StashKey[KconformRun]()
TARGETS_KEY = "kconform_targets"  # in an xdist worker's workerinput


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name).strip("_")


# ----------------------------------------------------------------------------- hooks

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_config(*options): skip on kernels built without "
                            "these CONFIG_ options (read from the kernel's config)")
    try:
        config.stash[RUN_KEY] = KconformRun(config)
    except KconformError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(Reporter(config, config.stash[RUN_KEY]), "kconform-report")
    atexit.register(kill_all_guests)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist, on the controller: hand each worker the SSH targets' descriptions."""
    run = node.config.stash[RUN_KEY]
    node.workerinput[TARGETS_KEY] = {target.url: description_to_dict(run.target_trees[name])
                                     for name, target in run.targets.items()}


def _terminate(signum, frame):
    # Turn SIGTERM into an interrupt so pytest finishes its reports and the pool shuts down.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run:
        run.pool.close()
    kill_all_guests()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" not in metafunc.fixturenames:
        return
    run = metafunc.config.stash[RUN_KEY]
    # Session scope makes pytest order tests by kernel; the xdist group keeps a kernel on one worker.
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
    run = config.stash[RUN_KEY]
    order = {name: i for i, name in enumerate(run.kernel_names)}

    def may_lose_the_guest(item) -> bool:
        behaviour = run.behaviours.get(declared_behaviour(item)[0] or "")
        return bool(behaviour and behaviour.may_lose_the_guest)

    items.sort(key=lambda item: (order.get(_kernel_of(item), -1), may_lose_the_guest(item)))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    kernel = _kernel_of(item)
    if kernel and (nextitem is None or _kernel_of(nextitem) != kernel):
        item.config.stash[RUN_KEY].pool.release(kernel)  # its last test here: free the CPU


def _kernel_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("kernel") if callspec else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    case_guest = item.stash.get(CASE_GUEST_KEY, None)
    lost_guest = case_guest is not None and case_guest.down is not None
    if report.when == "call" and report.failed and (item.stash.get(CRASHED_KEY, False)
                                                    or lost_guest):
        report.user_properties.append(("verdict", expectations.CRASHED))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    case_guest = item.stash.get(CASE_GUEST_KEY, None)
    if case_guest is not None:
        case_guest.fail_if_down_unjudged()
    return result


CRASHED_KEY = pytest.StashKey[bool]()
CASE_GUEST_KEY = pytest.StashKey["CaseGuest"]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash[RUN_KEY]
    where = [f"guest root: {run.rootfs_name}"] if run.rootfs_name != HOST else []
    where += [f"{name} on {target.url}" for name, target in run.targets.items()]
    return [f"kconform: kernels {', '.join(run.kernel_names)}; results in {run.results_dir}"
            + "".join(f"; {w}" for w in where)]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    seen: dict[str, dict] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = dict(getattr(report, "user_properties", []) or [])
            if "kernel" not in props or getattr(report, "when", None) != "call":
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
        terminalreporter.write_line(f"{name}: {entry['version']} (uname {entry['uname']}): {counts}")


# ----------------------------------------------------------------------------- fixtures

class GuestDown(dict):
    """What a test observes when the guest did not survive its call: {"guest": "hang"} or
    {"guest": "crash"}. expect() judges it like any observation, since an old kernel can be
    expected to hang (a cited, known bug); reading anything else from it fails the test with the
    crash report."""

    def __init__(self, kind: str, report: str):
        super().__init__(guest=kind)
        self.report = report

    def __missing__(self, key):
        pytest.fail(self.report, pytrace=False)


class CaseGuest:
    """The guest as one test sees it: guest-side calls with health checks and clear failures."""

    def __init__(self, item: pytest.Item, run: KconformRun, kernel: str, session: GuestSession):
        self.item, self.run, self.kernel, self.session = item, run, kernel, session
        self.down: GuestDown | None = None  # set when a call lost the guest
        self.guest_seconds = 0.0  # time spent inside guest functions (the case's own work)
        self.judged = False
        stem = Path(str(item.fspath)).stem
        self.module = f"cases.guest.{stem[len('test_'):] if stem.startswith('test_') else stem}"

    def call(self, fn: str, timeout: float | None = None, **kwargs):
        """Run a guest-side function; a bare name is looked up in cases/guest/<topic>.py."""
        name = fn if ":" in fn else f"{self.module}:{fn}"
        failure = raised = None
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
        self._check_health(result.health)
        self.guest_seconds += result.elapsed
        self.item.user_properties.append(("guest_seconds", round(self.guest_seconds, 4)))
        return result.result

    def fail_if_down_unjudged(self) -> None:
        """A lost guest that no expectation accounted for fails the test as crashed."""
        if self.down is not None and not self.judged:
            pytest.fail(self.down.report, pytrace=False)

    def _check_health(self, health: dict) -> None:
        findings = self.run.health.check(health)
        if findings:
            self.item.stash[CRASHED_KEY] = True
            lines = "\n".join(f"  {f}" for f in findings)
            log = "\n".join(f"  | {l}" for l in health.get("log_during", [])[-60:])
            pytest.fail(f"the kernel reported a problem during this test:\n{lines}\n"
                        f"kernel log during the test:\n{log}", pytrace=False)


def _failure_text(exc: GuestFailure, info: KernelInfo | None, rules: HealthRules,
                  known: KnownCrash | None) -> str:
    """What a test that lost its guest reports: why, the crash fingerprint (and whether it is a
    known crash), the console lines from the first splat on, and how to boot that kernel."""
    text = [str(exc)]
    if exc.fingerprint:
        text.append(f"crash fingerprint: {exc.fingerprint}")
    if known:
        text.append(str(known))
    if exc.console:
        # From the first splat line when there is one: the panic message is the evidence.
        start = rules.first_splat(exc.console)
        if start is None:
            start = max(0, len(exc.console) - 40)
        text.append("console lines:")
        text += [f"  | {line}" for line in exc.console[start:start + 80]]
    if info:
        text.append(f"console log: {info.console_log}")
        text.append(f"{info.by_hand}: {info.vng_command}")
    return "\n".join(text)


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
    booted = run.pool.fresh.pop(kernel, None)
    if booted is not None:
        item.user_properties += [("boot_seconds", round(booted.boot_seconds, 3)),
                                 ("agent_start_seconds", booted.agent_start_seconds)]
    item.stash[CASE_GUEST_KEY] = CaseGuest(item, run, kernel, session)
    return item.stash[CASE_GUEST_KEY]


def _skip_without_config(item: pytest.Item, kernel: str, tree: KernelTree) -> None:
    wanted = [opt for mark in item.iter_markers("requires_config") for opt in mark.args]
    config = tree.config()
    if not wanted or not config:
        return
    missing = [opt for opt in wanted if config.get(opt) not in ("y", "m")]
    if missing:
        pytest.skip(f"{kernel} is built without {', '.join(missing)} "
                    f"(read from {tree.config_path})")


@pytest.fixture(scope="session")
def bpf_object(request: pytest.FixtureRequest):
    """bpf_object("sockmap_progs") -> host path of cases/bpf/sockmap_progs.bpf.c built (and
    cached). Given to guest.call() as a Path, it reaches the guest as the path it is seen at."""
    from .bpf import BpfBuildError, build
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            try:
                built[name] = build(name)
            except BpfBuildError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
        return built[name]

    return get


@pytest.fixture
def expect(request: pytest.FixtureRequest, kernel: str, guest: CaseGuest):
    """expect(behaviour_id, observed, variant=None): judge an observation against the data."""
    run = request.config.stash[RUN_KEY]
    item = request.node
    tree = run.pool.trees[kernel]

    def judge(behaviour_id: str, observed: dict, variant: str | None = None):
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
            ("verdict", verdict.verdict)]
        if verdict.verdict == expectations.FAIL:
            if guest.down is not None:
                item.stash[CRASHED_KEY] = True
                pytest.fail(guest.down.report, pytrace=False)
            pytest.fail(verdict.message(kernel, tree.exact_version), pytrace=False)
        return verdict

    return judge
