"""The run's state on one process: the kernels, their trees and guests, the judging data."""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..arches import host_architecture
from ..cache import cache_dir
from ..errors import KconformError
from ..judging import expectations
from ..judging.crashes import crash_fingerprint
from ..judging.health import HealthRules, KnownCrash, KnownCrashes
from ..kernels import KernelProvider, KernelTree, expand_kernel_args, load_specs
from ..kernels.selectors import pinned_name, split_pinned
from ..kernels.specs import KernelSpec, parse_arches
from ..machines.accel import Accel, choose_accel
from ..machines.channel import Machine
from ..machines.factory import guest_machine
from ..machines.guest_job import run_guest_job
from ..machines.qemu import build_vng_command, check_memory
from ..machines.rootfs import (
    HOST,
    Rootfs,
    RootfsProvider,
    check_rootfs_name,
    root_recipe,
)
from ..machines.session import BootFailure, GuestFailure, GuestSession
from ..machines.snapshot import SnapshotMachine
from ..machines.ssh import (
    SshMachine,
    SshTarget,
    describe_target,
    description_from_dict,
    target_kernel_name,
)
from ..paths import caller_cwd, caller_path, safe_file_name
from ..reports.results import writable_directory

MAX_REPLACEMENTS = 3  # a kernel whose guest dies this often gets its remaining tests failed fast


@dataclass
class KernelInfo:
    """What every result records about the kernel that produced it."""
    name: str
    exact_version: str
    uname: str = ""
    suite: str | None = None  # the Debian suite of a Debian kernel
    boot_seconds: float | None = None
    vng_command: str = ""   # for an SSH target: the ssh line that logs in the same way
    console_log: str = ""
    by_hand: str = "boot it by hand"  # what vng_command does
    boot_kind: str = ""     # "restored", "saved", "direct", "virtme-ng" or "ssh": how it started
    root_label: str = ""    # the guest's root when it is the machine's own, not the run's


class GuestPool:
    """This process's guests, one per kernel; boots lazily and replaces dead ones."""

    def __init__(self, run: KconformRun) -> None:
        self.run = run
        self.live: dict[str, GuestSession] = {}
        self.trees: dict[str, KernelTree] = {}
        self.failed: dict[str, Exception] = {}
        self.boots: dict[str, int] = {}
        self.renewals: dict[str, int] = {}  # fresh guests asked for (--rerun-failed's rounds)
        self.fresh: dict[str, GuestSession] = {}
        self.machines: dict[str, Machine] = {}  # the last one started per kernel, even if it failed

    def tree(self, name: str) -> KernelTree:
        if name in self.failed and name not in self.trees:
            raise self.failed[name]  # a kernel that could not be fetched is not fetched per test
        if name not in self.trees and name in self.run.target_trees:
            self.trees[name] = self.run.target_trees[name]  # described when the run began
        if name not in self.trees:
            try:
                # under xdist a plain name is the build the controller resolved, on every worker
                tree = self.run.provider.get(self.run.pinned.get(name, name))
                tree.name = name
                self.trees[name] = tree
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
        deaths = count - 1 - self.renewals.get(name, 0)  # a renewal is no death
        if deaths >= MAX_REPLACEMENTS:
            self.failed[name] = BootFailure(f"{name}: the guest died {deaths} times; "
                                            "not booting it again in this run")
            raise self.failed[name]
        self.boots[name] = count + 1
        log = (self.run.results_dir / "console"
               / f"{safe_file_name(name)}-{self.run.worker}-{count}.log")
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
        info = self.run.kernels.setdefault(name, KernelInfo(name, tree.exact_version,
                                                            suite=tree.suite))
        info.uname, info.boot_seconds = session.uname, session.boot_seconds
        info.vng_command, info.console_log = machine.shell_command(), str(log)
        info.boot_kind = machine.boot_kind
        info.root_label = machine.root_label if isinstance(machine, SnapshotMachine) else ""
        if tree.target:
            info.by_hand = "log in by hand"
        return session

    def new_machine(self, name: str, tree: KernelTree, log: Path) -> tuple[Machine, float]:
        """A machine for this kernel, not started yet, and how long its boot may take."""
        if tree.target:
            boot_timeout = self.run.boot_timeout(None)
            machine = SshMachine(self.run.targets[name], log, connect_within=boot_timeout / 2,
                                 start_within=boot_timeout)
            return machine, boot_timeout
        accel = self.run.accel(tree)
        try:  # a root or a command line that cannot be made fails every test of this kernel
            rootfs = self.run.rootfs(tree)
            guest = guest_machine(tree, accel, log, rootfs=rootfs, memory=self.run.memory,
                                  boot=self.run.guest_boot, cache=self.run.provider.cache,
                                  log=self.run._log, boot_within=self.run.boot_timeout(accel))
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

    def renew(self, name: str) -> None:
        """The kernel's next test gets a fresh guest (a round of --rerun-failed): the live one is
        freed, and the boot that replaces it does not count as a death."""
        session = self.live.get(name)
        if session is not None and not session.dead:  # a dead one's replacement is a death's
            self.renewals[name] = self.renewals.get(name, 0) + 1
        self.release(name)

    def release(self, name: str) -> None:
        session = self.live.pop(name, None)
        if session:
            session.close()

    def close(self) -> None:
        for name in list(self.live):
            self.release(name)


class KconformRun:
    def __init__(self, config: pytest.Config) -> None:
        opt = config.option
        # Every option is checked before anything connects or boots. Paths are the user's,
        # taken from where the command was typed; the options keep them absolute, so xdist
        # workers and the reports' rerun lines name the same files.
        self.config = config
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.specs = load_specs()
        self._provider: KernelProvider | None = None  # made when first asked: it creates the cache
        # Versions (name@A..B) are asked of the archive once, on the controller: xdist workers
        # take its names, so their test ids cannot differ if the archive moved meanwhile.
        expanded = getattr(config, "workerinput", {}).get(KERNELS_KEY)
        self.pinned: dict[str, str] = dict(getattr(config, "workerinput", {}).get(PINNED_KEY, {}))
        if expanded is None and opt.build:  # the controller builds; workers take its names
            from ..kernel_config import fragment_of_a_child
            from ..kernels.build import built_kernel_values
            cache = self.provider.cache
            opt.kernel = built_kernel_values(opt.kernel, cache,
                                             lambda: fragment_of_a_child(cache), self._log)
        self.kernel_names = list(expanded) if expanded is not None else expand_kernel_args(
            opt.kernel or ([] if opt.target else ["default"]), self.specs, cwd=caller_cwd(),
            versions=lambda spec: self.provider.versions(spec),
            arches=parse_arches(opt.arch) if opt.arch else None)
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
        self.rootfs_name: str = opt.rootfs
        # per architecture: the root built (or found) for it, None for the host's own
        self._roots: dict[str, Rootfs | None] = {}
        self._rootfs_provider: RootfsProvider | None = None
        self._rootfs_errors: dict[str, KconformError] = {}
        self.memory = check_memory(opt.guest_memory)
        self.guest_boot: str = opt.guest_boot
        if opt.guest_boot == "direct":
            _check_direct_boot(opt.guest_boot, opt.rootfs, self.kernel_names, self.specs)
        self.health = HealthRules()
        # Every target URL is checked before the first target is connected to.
        parsed_targets = [
            SshTarget.parse(url, key_file=opt.ssh_key, known_hosts=opt.ssh_known_hosts,
                            accept_any_host_key=opt.ssh_accept_any_host_key)
            for url in opt.target]
        self.targets: dict[str, SshTarget] = {}
        self.target_trees: dict[str, KernelTree] = {}
        # The controller connects to each target once to describe it; xdist workers get the
        # descriptions from it (pytest_configure_node), so their test ids cannot differ.
        # Nothing after this loop may refuse an option: it would have connected for nothing.
        described = getattr(config, "workerinput", {}).get(TARGETS_KEY)
        for target in parsed_targets:
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
        self._boot_timeout = opt.boot_timeout
        self._accel_choice = opt.accel
        self._accels: dict[str, Accel] = {}  # per guest architecture
        self.pool = GuestPool(self)
        self.kernels: dict[str, KernelInfo] = {}

    @functools.cached_property  # asked once per run, not once per worker
    def current_builds(self) -> dict[str, str]:
        """Each plain Debian name of the run -> NAME@<its current version>, resolved once here so
        xdist workers boot the same build (each resolving it could straddle a listing's expiry
        or a --refresh-kernels). A name that cannot be resolved now is left to the workers, whose
        failure then says why."""
        pinned = {}
        for name in self.kernel_names:
            spec = self.specs.get(name)
            if spec is None or name in self.targets:
                continue
            try:
                pinned[name] = pinned_name(spec, self.provider.versions(spec)[-1])
            except KconformError:
                continue
        return pinned

    @property
    def provider(self) -> KernelProvider:
        if self._provider is None:
            self._provider = KernelProvider(refresh=self.config.option.refresh_kernels,
                                            log=self._log)
        return self._provider

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

    def accel(self, tree: KernelTree) -> Accel:
        """Chosen once per process and guest architecture, probing KVM with the first kernel of
        that architecture it boots."""
        if tree.arch not in self._accels:
            if tree.vmlinuz is None:  # only an SSH target's kernel, and it boots no QEMU
                raise KconformError(f"{tree.name}: no kernel image to boot under QEMU")
            accel = choose_accel(tree.vmlinuz, self._accel_choice, cache=self.provider.cache,
                                 arch=tree.arch)
            self._accels[tree.arch] = accel
            self._log(f"accelerator for {tree.arch} guests: {accel.name} ({accel.reason})")
        return self._accels[tree.arch]

    def emulated(self, arch: str) -> bool:
        """Whether this architecture's guests run without KVM: under TCG, and an SSH target, whose
        host nobody measured (a bounded wait in the guest is then scaled up, not trusted short)."""
        accel = self._accels.get(arch)
        return accel is None or accel.name == "tcg"

    def boot_timeout(self, accel: Accel | None) -> float:
        """accel None: an SSH target (connect, push the files, start the agent)."""
        return self._boot_timeout or (180.0 if accel and accel.name == "tcg" else 60.0)

    def arch_of(self, name: str) -> str | None:
        """A kernel's architecture before its tree is fetched: an SSH target's as it said, a
        definition's; None for a path or a build (known once fetched)."""
        tree = self.target_trees.get(name)
        if tree is not None:
            return tree.arch
        spec = self.specs.get(split_pinned(name)[0])
        return spec.arch if spec is not None else None

    @functools.cached_property
    def arches(self) -> set[str]:
        """The architectures of the kernels the run boots (a path or the host: the host's); an
        SSH target runs on its own root, so it has no say in the roots'."""
        return {self.arch_of(name) or host_architecture() for name in self.kernel_names
                if name not in self.targets}

    def root_recipe(self, arch: str) -> str:
        """The root this run's guests of `arch` boot (machines/rootfs.py root_recipe)."""
        return root_recipe(self.rootfs_name, arch, self.arches)

    def rootfs(self, tree: KernelTree) -> Rootfs | None:
        """The guest root for this kernel's architecture (None: the host's), with this kernel's
        modules in it."""
        if tree.arch in self._rootfs_errors:
            raise self._rootfs_errors[tree.arch]  # it failed for another kernel: not again
        if tree.arch not in self._roots:
            if self._rootfs_provider is None:
                self._rootfs_provider = RootfsProvider(self.provider.cache, log=self._log,
                                                       guest_job=run_guest_job)
            try:
                self._roots[tree.arch] = self._rootfs_provider.get(
                    self.root_recipe(tree.arch), arch=tree.arch, kernel=tree)
            except KconformError as exc:
                self._rootfs_errors[tree.arch] = exc
                raise
        root = self._roots[tree.arch]
        if root is not None and self._rootfs_provider is not None:
            self._rootfs_provider.add_modules(root, tree)
        return root

    def failure_report(self, exc: GuestFailure, kernel: str, item: pytest.Item) -> str:
        known = self.known_crashes.match(crash_fingerprint(exc.console))
        if known:
            item.user_properties.append(("known_crash", str(known)))
        return _failure_text(exc, self.kernels.get(kernel), self.health, known)

    def rootfs_label(self, arch: str = "amd64") -> str:
        root = self._roots.get(arch)
        return root.describe() if root else self.root_recipe(arch)

    def boot_command(self, tree: KernelTree) -> str | None:
        """The vng line this kernel's guest boots with, for the reports of a kernel whose guest
        never booted. None for an SSH target, or while no accelerator is chosen (choosing one
        may boot a probe guest, which a report must not do)."""
        accel = self._accels.get(tree.arch)
        if tree.target or accel is None:
            return None
        try:
            return shlex.join(build_vng_command(tree, accel, "true", memory=self.memory,
                                                rootfs=self._roots.get(tree.arch)))
        except KconformError:
            return None  # a line that cannot be made safe: the kernel's tests already say why


def _check_direct_boot(boot: str, rootfs: str, names: list[str],
                       specs: dict[str, KernelSpec]) -> None:
    """--guest-boot direct or snapshot with what only virtme-ng boots (machines/direct.py
    direct_boot_modules) is a usage error, before anything is fetched: a pinned root, or a
    kernel definition of another architecture than the host's."""
    if rootfs != HOST:
        raise KconformError(f"--guest-boot {boot} boots the host's files; --rootfs {rootfs} "
                            "boots through virtme-ng: drop one, or use --guest-boot auto")
    for name in names:
        spec = specs.get(split_pinned(name)[0])
        if spec is not None and spec.arch != host_architecture():
            raise KconformError(f"--guest-boot {boot} boots {host_architecture()} kernels; "
                                f"{name} is {spec.arch}, which boots through virtme-ng: use "
                                "--guest-boot auto")


def _known_crashes(opt: argparse.Namespace) -> KnownCrashes:
    if not opt.known_crashes:
        return KnownCrashes()
    opt.known_crashes = str(caller_path(opt.known_crashes).resolve())
    path = Path(opt.known_crashes)
    try:
        return KnownCrashes(path)
    except FileNotFoundError:
        raise KconformError(f"--known-crashes {path}: no such file; give a TOML file of "
                            "[[crash]] entries (fingerprint, reason, link), like "
                            "harness/judging/data/known_crashes.toml") from None
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
KERNELS_KEY = "kconform_kernels"  # the controller's expansion of --kernel, ditto
PINNED_KEY = "kconform_pinned"  # plain name -> name@version the controller resolved, ditto


CRASHED_KEY = pytest.StashKey[bool]()
if TYPE_CHECKING:  # fixtures imports this module
    from .fixtures import CaseGuest

CASE_GUEST_KEY: pytest.StashKey[CaseGuest] = pytest.StashKey()

def _failure_text(exc: GuestFailure, info: KernelInfo | None, rules: HealthRules,
                  known: KnownCrash | None) -> str:
    """What a test that lost its guest reports: why, the crash fingerprint (and whether it is a
    known crash), the console lines from the first splat on, and how to boot that kernel."""
    text = [str(exc)]
    fingerprint = crash_fingerprint(exc.console)
    if fingerprint:
        text.append(f"crash fingerprint: {fingerprint}")
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


def kernel_of(item: pytest.Item) -> str | None:
    """The kernel a test item runs on (its session-scoped `kernel` parameter), if it has one."""
    callspec = getattr(item, "callspec", None)
    kernel = callspec.params.get("kernel") if callspec else None
    return kernel if isinstance(kernel, str) else None
