"""./kconform bench: what the suite costs against the floor (a bare boot) and against the naive
loop (one `vng --exec` per case), printed as tables and saved as JSON to compare later runs.

In one run, on the kernels given (default: BENCH_KERNELS, the generic flavour's five series):
  floor    `vng ... --exec true` with the suite's own QEMU settings, per kernel
  baseline `vng ... --exec true` with virtme-ng's default kernel command line (none of kconform's
           boot arguments), per kernel, beside the floor: issue #17's baseline
  suite    the whole suite per kernel (from one `-n 1` run over all kernels): wall time split into
           boot (kernel + init), agent start, the cases' own work (time inside guest functions)
           and expected hangs (a known stable-release deadlock waits out its timeout)
  phases   where each kernel's first boot of that run went, by the guest's clock from its console
           (harness/boot_phases.py): to /init, initramfs, init set-up, udev, to the script, the
           agent's start (issue #17)
  work     the cases' guest seconds of that run by kind, as the agent measures them
           (harness/agent/timing.py): BPF object open and load, waiting for the kernel, socket
           set-up, and the other rest; in total and per case (issue #17)
  restore  per kernel, each to its agent's hello: a cold direct boot (9p root; not for a pinned
           root's or an arm64 guest), a cold boot on the snapshot's disk images that saves the
           guest, and RESTORE_ROUNDS restores of that save (their median): issue #17's cold-boot
           and restore goals
  old path the same suite run (-n 1 and -n 2, same kernels, same venv) from a git worktree of
           --old-path REF (default OLD_PATH_REF, main before issue #17's cuts): per kernel, on the
           cases both ran, suite wall, boot to a ready agent and guest time per case, old
           against new
  overhead (suite - boot - cases' work - expected hangs) / cases: what the harness adds per case
  naive    a sample of the same guest functions, each in its own `vng --exec` boot, extrapolated
  matrix   wall time of all kernels with -n 1 and with -n 2
  memory   peak RSS of the host-side processes and of each QEMU
  bisect   boots and wall time of `./kconform bisect U10` over the seven bookworm versions
  redirect the redirect matrix's share of each kernel's suite (its 576 cases): guest seconds and
           harness overhead per case
  arm64    each arm64 kernel's floor and suite beside its amd64 sibling's (the same ratios)
  cpus     seconds to the root-mount panic under TCG, per -cpu model and architecture (3 rounds,
           interleaved; the median): which model the guests use
  build    --build on a kernel source tree: a rerun with no change, an incremental rebuild after
           one source file is touched, and the full build's time as recorded when it was made
Targets (issue #6): suite <= 1.3 x floor + case work; overhead <= 50 ms/case; naive/suite >= 20;
the full matrix with -n 2 <= 4 minutes. Issue #11: a bisect over N versions boots at most
ceil(log2(N - 1)) + 2 kernels (5 for the seven bookworm versions). Issue #12: the redirect matrix
adds at most 60 s of guest time per kernel, and its harness overhead stays <= 50 ms per case.
Issue #13: an arm64 kernel keeps suite <= 1.3 x floor + case work. Issue #15: a --build rerun of
an unchanged tree takes under 2 s. Issue #17, from this run's figures: a cold boot to a ready agent
<= 0.4 x baseline on every kernel; the cases' guest time per case <= 0.5 x the old path's; the
suite with -n 2 <= 0.6 x the old path's; debian-5.10@5.10.223-1's suite <= 1.3 x baseline +
case work + expected hangs; a restored guest answering in <= 0.1 x baseline (the restore row).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict

from .agent.timing import KINDS as TIMING_KINDS
from .arches import host_architecture
from .boot_phases import PHASES, boot_phases
from .errors import KconformError
from .kernels import KernelProvider, KernelTree, expand_kernel_args, load_specs
from .machines.accel import TCG_CPU, Accel, choose_accel, probe_boot
from .machines.guest_job import run_guest_job
from .machines.qemu import build_vng_command, guest_python, seen_on_pinned_root
from .machines.rootfs import HOST, Rootfs, RootfsProvider, root_recipe
from .paths import REPO_ROOT, safe_file_name

OVERHEAD_TARGET_MS = 50.0
FLOOR_FACTOR = 1.3
NAIVE_RATIO_TARGET = 20.0
MATRIX_TARGET_S = 240.0
REDIRECT_WORK_TARGET_S = 60.0
REDIRECT_CASES_FILE = "cases/test_redirect_matrix.py"
# The bisect row: U10 (unbound UDP) changed inside bookworm's point releases, at 6.1.187-1.
BISECT_RANGE = "debian-6.1@6.1.170-3..6.1.192-3"
BISECT_BEHAVIOUR = "U10"
NO_CHANGE_BUILD_TARGET_S = 2.0
# The build row's tree: the one tests/test_source_build_vm.py unpacks into the cache, and the
# file it touches (the one whose fix that test reverts).
BUILD_TREE_GLOB = "test-sources/linux-source-6.1_*/linux-source-6.1"
BUILD_TOUCHED = "net/core/sock_map.c"
# The CPU models the cpus row races, per architecture (TCG_CPU's choice among them).
CPU_MODELS = {"amd64": ("qemu64", "max"),
              "arm64": ("cortex-a57", "cortex-a53", "cortex-a72", "neoverse-n1", "max")}
CPU_ROUNDS = 3

# Issue #17's goals, as ratios within one run (see the module's docstring).
BOOT_GOAL = 0.4            # a cold boot to a ready agent, of the baseline
RESTORE_GOAL = 0.1         # a restored guest's answer, of the baseline
CASE_WORK_GOAL = 0.5       # the cases' guest time per case, of the old path's
MATRIX_GOAL = 0.6          # the suite with -n 2, of the old path's
GOAL_KERNEL = "debian-5.10@5.10.223-1"  # whose suite (its expected hangs) has a budget
# The old path: main before issue #17's cuts to the boot and to the cases' work.
OLD_PATH_REF = "95dff92fc1e99ef4fc00e974891879a4029e5298"
RESTORE_ROUNDS = 3
# The work row's kinds: what the agent measures, and the rest of the cases' guest time.
WORK_KINDS = (*TIMING_KINDS, "other")

# Guest functions a user without kconform would script one boot each for, with their arguments.
NAIVE_SAMPLE: list[tuple[str, dict[str, object]]] = [
    ("cases.guest.create:create_with_value_sizes", {"map_type": "sockmap"}),
    ("cases.guest.update:update_flags", {"map_type": "sockhash"}),
    ("cases.guest.redirect:redirect", {"obj": "@sockmap_progs", "kind": "skb", "helper": "map",
                                       "flags": 0}),
]


# report.json as the suite wrote it; reports/results owns its shape, bench reads a few fields
Report = dict[str, Any]


class MemoryFigures(TypedDict):
    qemu_peak_mib: float
    host_peak_mib: float
    host_total_peak_mib: float


class MatrixFigures(MemoryFigures):
    wall_s: float
    cases: int   # of every kernel: the case set the wall time is of


class WorkFigures(TypedDict):
    """A kernel's cases' guest seconds in the -n 1 run, by kind (WORK_KINDS)."""
    seconds: dict[str, float]
    per_case_ms: dict[str, float]   # over every case of the kernel
    unsplit_s: float   # guest seconds of cases that sent no split (an agent from before it)


class PathFigures(TypedDict):
    """One path's run of one kernel, on the cases both paths ran."""
    suite_s: float     # those cases' wall time, with every boot of the kernel's run (a boot is
    #                    the kernel's, whichever case started it)
    boots: int
    boot_to_agent_s: float | None   # per boot: the machine's start to the agent's hello
    work_ms_per_case: float         # guest time per case


class OldPathKernel(TypedDict):
    shared_cases: int
    new_only: int      # cases only this tree ran (new ones), left out of the ratios
    old_only: int
    new: PathFigures
    old: PathFigures
    suite_ratio: float | None       # new / old
    boot_ratio: float | None
    work_ratio: float | None


class OldPathFigures(TypedDict):
    ref: str
    commit: str
    matrix: dict[str, MatrixFigures]   # n1, n2: the old path's runs
    kernels: dict[str, OldPathKernel]


class GoalFigures(TypedDict):
    goal: str
    met: bool | None   # None: not measured
    detail: str


class PhaseFigures(TypedDict):
    """A kernel's first boot in the suite's -n 1 run, phase by phase (harness/boot_phases.py)."""
    console: str                       # the console log's name in the run's console/
    init: str | None                   # virtme-ng-init or virtme-init
    seconds: dict[str, float | None]   # to_init ... agent, to_hello; None: not on the console
    agent_boots: int                   # the boots whose agent start's median is the agent phase


class RestoreFigures(TypedDict):
    """A kernel's boots to a ready agent, one way each (machines/direct.py, snapshot.py)."""
    direct_s: float | None   # a cold direct boot on the host's root over 9p (None: a pinned
    #                          root's guest, an arm64 one, which no 9p boot covers)
    images_s: float      # a cold boot on the disk images, to the hello
    save_s: float        # then saving it
    saved_s: float       # both, as the session saw it
    restore_s: float     # the median of RESTORE_ROUNDS restores of that save
    restores_s: list[float]
    phases: PhaseFigures  # of the cold boot on the images, by the guest's clock


class KernelFigures(TypedDict, total=False):
    """One kernel's figures: the floor first, the suite's split once it ran, then the ratios."""
    version: str
    arch: str
    floor_s: float
    floor_qemu_peak_mib: float
    cases: int
    suite_s: float
    boots: int
    boot_s: float
    agent_start_s: float
    work_s: float
    expected_hangs_s: float
    overhead_ms: float
    verdicts: dict[str, int]
    suite_over_floor: float
    suite_budget_s: float
    naive_over_suite: float
    redirect_cases: int
    redirect_work_s: float
    redirect_overhead_ms: float
    phases: PhaseFigures
    baseline_s: float            # issue #17's: vng's default command line, the same root
    boot_to_agent_s: float       # per boot of the -n 1 run: the machine's start to the hello
    work: WorkFigures
    restore: RestoreFigures


class NaiveFigures(TypedDict):
    kernel: str
    sample_s: list[float]
    per_case_s: float
    extrapolated_suite_s: float


class BisectFigures(TypedDict):
    range: str
    behaviour: str
    versions: int
    boots: int             # distinct versions booted
    bound: int             # ceil(log2(versions - 1)) + 2
    replacement_boots: int  # guests booted again after an expected hang, besides
    skipped: list[str]
    wall_s: float
    change: str            # "older -> newer", or why none was found


class BuildFigures(TypedDict):
    tree: str
    identity: str
    full_build_s: float | None   # as recorded when the build was made (not re-measured)
    no_change_s: float
    incremental_s: float         # after touching BUILD_TOUCHED


class Figures(TypedDict, total=False):
    """What bench saves as JSON (and prints as tables)."""
    accel: str
    accels: dict[str, str]       # per architecture: "tcg cortex-a57"
    cpus: dict[str, dict[str, float]]  # arch -> -cpu model -> median seconds to the panic
    build: BuildFigures
    kernels: dict[str, KernelFigures]
    started: str
    matrix: dict[str, MatrixFigures]
    naive: NaiveFigures
    bisect: BisectFigures
    old_path: OldPathFigures
    goals: list[GoalFigures]     # issue #17's


class PeakMemory:
    """Samples /proc while something runs: the highest VmHWM of each QEMU and of the host side
    (the pytest processes of this benchmark), in MiB."""

    def __init__(self, marker: str, interval: float = 0.5) -> None:
        self.marker, self.interval = marker, interval
        self.qemu: dict[int, float] = {}
        self.host: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = (pid_dir / "status").read_text()
                except OSError:
                    continue
                hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines()
                            if line.startswith("VmHWM:")), None)
                if hwm is None:
                    continue
                pid = int(pid_dir.name)
                if "qemu-system" in cmd and "kconform-" in cmd:
                    self.qemu[pid] = max(hwm, self.qemu.get(pid, 0.0))
                elif self.marker in cmd and "pytest" in cmd:
                    self.host[pid] = max(hwm, self.host.get(pid, 0.0))
            self._stop.wait(self.interval)

    def figures(self) -> MemoryFigures:
        return {"qemu_peak_mib": round(max(self.qemu.values(), default=0.0), 1),
                "host_peak_mib": round(max(self.host.values(), default=0.0), 1),
                "host_total_peak_mib": round(sum(self.host.values()), 1)}


# The generic flavour's series, one each, as the figures were first taken: 5.10 pinned to
# 5.10.223-1, whose E1/E3 deadlock (expected hangs, replacement boots) the suite row measures;
# not the cloud flavour (refused) nor the RC (its mirror may need KCONFORM_ARCHIVE_MAX_AGE).
# debian-6.12-arm64 beside its amd64 sibling: the arm64 row (issue #13).
BENCH_KERNELS = ["debian-5.10@5.10.223-1", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3",
                 "debian-6.12-arm64"]

def timed(cmd: list[str],
          cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    return time.monotonic() - start, proc


def floor(tree: KernelTree, accel: Accel, rootfs: Rootfs | None = None, *,
          own_boot_args: bool = True) -> float:
    """A bare boot of the kernel with the suite's QEMU settings, doing nothing; without
    own_boot_args, with virtme-ng's default kernel command line (issue #17's baseline)."""
    seconds, proc = timed(build_vng_command(tree, accel, "true", rootfs=rootfs,
                                            own_boot_args=own_boot_args))
    if proc.returncode != 0:
        raise RuntimeError(f"vng --exec true failed on {tree.name}:\n{proc.stderr[-2000:]}")
    return seconds


def restore_row(tree: KernelTree, accel: Accel, cache: Path, consoles: Path,
                rootfs: Rootfs | None = None) -> RestoreFigures:
    """Each way of starting a direct guest, timed from the machine's start to the agent's hello
    (GuestSession.boot_seconds). Its kernel's snapshot is removed first, so the second boot is a
    cold one that saves, and the restores restore that save."""
    from .machines.direct import DirectMachine
    from .machines.session import GuestSession
    from .machines.snapshot import SnapshotMachine

    agent_starts: dict[str, float | None] = {}

    def start(machine: DirectMachine, expected_kind: str) -> float:
        session = GuestSession(machine, tree.name, boot_timeout=600)
        session.start()
        try:
            if machine.boot_kind != expected_kind or session.boot_seconds is None:
                raise RuntimeError(f"restore row: {tree.name}'s guest booted "
                                   f"{machine.boot_kind!r}, not {expected_kind!r} (console: "
                                   f"{machine.console.log_path})")
            session.call("tests.guest.faults:healthy", timeout=60)  # it answers a call too
            agent_starts[expected_kind] = session.agent_start_seconds
            return round(session.boot_seconds, 2)
        finally:
            session.close()

    consoles.mkdir(parents=True, exist_ok=True)
    stem = safe_file_name(tree.name)
    direct = None if rootfs is not None else start(
        DirectMachine(tree, accel, consoles / f"{stem}-direct.log", cache=cache), "direct")
    saving = SnapshotMachine(tree, accel, consoles / f"{stem}-saved.log", cache=cache,
                             rootfs=rootfs)
    saving.state.unlink(missing_ok=True)
    saving.record.unlink(missing_ok=True)
    saved = start(saving, "saved")
    if saving.hello_seconds is None or saving.save_seconds is None:
        raise RuntimeError(f"restore row: {tree.name}'s guest was not saved (console: "
                           f"{saving.console.log_path})")
    restores = [start(SnapshotMachine(tree, accel, consoles / f"{stem}-restored-{n}.log",
                                      cache=cache, rootfs=rootfs), "restored")
                for n in range(RESTORE_ROUNDS)]
    lines = saving.console.log_path.read_text(errors="replace").splitlines()
    phases = boot_phases(lines, agent_start=agent_starts.get("saved"))
    return {"direct_s": direct, "images_s": round(saving.hello_seconds, 2),
            "save_s": round(saving.save_seconds, 2), "saved_s": saved,
            "restore_s": sorted(restores)[len(restores) // 2], "restores_s": restores,
            "phases": {"console": saving.console.log_path.name, "init": phases.init,
                       "seconds": phases.as_json(), "agent_boots": 1}}


def _seen_in_guest(path: str, rootfs: Rootfs | None) -> str:
    """Where a guest on `rootfs` (None: the host's root) sees a host file of the repo or the BPF
    cache."""
    return path if rootfs is None else seen_on_pinned_root(Path(path), rootfs.name)


def naive_case(tree: KernelTree, accel: Accel, fn: str, kwargs: dict[str, object],
               objects: dict[str, str], rootfs: Rootfs | None = None) -> float:
    """One guest function the way a shell loop would run it: its own boot, its own Python, on
    the kernel's root (an arm64 kernel's is a pinned root: the host's cannot run it)."""
    kwargs = {k: _seen_in_guest(objects[v[1:]], rootfs)
              if isinstance(v, str) and v.startswith("@") else v for k, v in kwargs.items()}
    module, func = fn.split(":")
    repo = _seen_in_guest(str(REPO_ROOT), rootfs)
    script = (f"import sys; sys.path.insert(0, {repo!r}); "
              f"import json, {module} as m; print(json.dumps(m.{func}(**{kwargs!r})))")
    seconds, proc = timed(build_vng_command(tree, accel, shlex.join([guest_python(rootfs), "-c",
                                                                     script]), rootfs=rootfs))
    if proc.returncode != 0:
        raise RuntimeError(f"naive run of {fn} failed on {tree.name}:\n{proc.stderr[-2000:]}")
    return seconds


def run_suite(names: list[str], workers: int, results: Path,
              repo: Path = REPO_ROOT) -> tuple[float, Report, MemoryFigures]:
    """The conformance suite over `names` with -n workers, from the kconform tree at `repo` (an
    old path's worktree, run with this venv); wall time, report.json, memory."""
    cmd = [sys.executable, "-m", "pytest", "cases", "-q", "-p", "no:cacheprovider",
           "--kernel", ",".join(names), "-n", str(workers), f"--results-dir={results}"]
    with PeakMemory(str(results)) as memory:
        seconds, proc = timed(cmd, cwd=repo)  # python -m puts the tree's harness first
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"suite run failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    report: Report = json.loads((results / "report.json").read_text())
    return seconds, report, memory.figures()


def _hangs_s(cases: list[dict[str, Any]]) -> float:
    """An expected hang's own time: a case that boots a replacement first carries that boot."""
    return float(sum(c["duration"] - (c.get("boot_seconds") or 0) for c in cases
                     if (c.get("observed") or {}).get("guest")))


def _overhead_ms(cases: list[dict[str, Any]]) -> float:
    """What the harness adds per case: wall time less boots, guest work and expected hangs."""
    if not cases:
        return 0.0
    wall = sum(c["duration"] for c in cases)
    boot = sum(c.get("boot_seconds") or 0 for c in cases)
    work = sum(c.get("guest_seconds") or 0 for c in cases)
    return round(float(wall - boot - work - _hangs_s(cases)) / len(cases) * 1000, 1)


def split_by_kernel(report: Report, name: str) -> KernelFigures:
    cases = [c for c in report["cases"] if c["kernel"] == name]
    redirect = [c for c in cases if c["file"] == REDIRECT_CASES_FILE]
    hangs = _hangs_s(cases)
    boot = sum(c.get("boot_seconds") or 0 for c in cases)
    agent = sum(c.get("agent_start_seconds") or 0 for c in cases)
    work = sum(c.get("guest_seconds") or 0 for c in cases)
    wall = sum(c["duration"] for c in cases)
    count = len(cases)
    verdicts: dict[str, int] = {}
    for c in cases:
        verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
    boots = sum(1 for c in cases if c.get("boot_seconds"))
    figures: KernelFigures = {
        "cases": count, "suite_s": round(wall, 1), "boots": boots,
        "boot_s": round(boot - agent, 1),
        "agent_start_s": round(agent, 1), "work_s": round(work, 1),
        "expected_hangs_s": round(hangs, 1), "overhead_ms": _overhead_ms(cases),
        "verdicts": verdicts, "redirect_cases": len(redirect),
        "redirect_work_s": round(sum(c.get("guest_seconds") or 0 for c in redirect), 1),
        "redirect_overhead_ms": _overhead_ms(redirect), "work": work_row(cases)}
    if boots:
        figures["boot_to_agent_s"] = round(boot / boots, 2)
    return figures


def work_row(cases: list[dict[str, Any]]) -> WorkFigures:
    """The cases' guest seconds by kind: each kind the agent measured (a case's guest_timing),
    and other, the rest of the case's guest_seconds (Python, map operations, ...). A case
    without a split (results of an agent before it) counts in unsplit_s only."""
    seconds = dict.fromkeys(WORK_KINDS, 0.0)
    unsplit = 0.0
    for c in cases:
        work = c.get("guest_seconds") or 0.0
        split = c.get("guest_timing")
        if not isinstance(split, dict):
            unsplit += work
            continue
        measured = sum(split.get(kind, 0.0) for kind in TIMING_KINDS)
        for kind in TIMING_KINDS:
            seconds[kind] += split.get(kind, 0.0)
        # each kind is rounded to 0.1 ms as recorded, so the rest may come out a hair below 0
        seconds["other"] += max(0.0, work - measured)
    count = max(len(cases), 1)
    return {"seconds": {kind: round(s, 2) for kind, s in seconds.items()},
            "per_case_ms": {kind: round(s / count * 1000, 2) for kind, s in seconds.items()},
            "unsplit_s": round(unsplit, 2)}


def _ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 3) if new is not None and old else None


def _path_figures(cases: list[dict[str, Any]], shared: set[str]) -> PathFigures:
    boots = [c["boot_seconds"] for c in cases if c.get("boot_seconds")]
    on_shared = [c for c in cases if c["id"] in shared]
    wall = sum(c["duration"] for c in on_shared) + sum(
        c.get("boot_seconds") or 0 for c in cases if c["id"] not in shared)
    work = sum(c.get("guest_seconds") or 0 for c in on_shared)
    return {"suite_s": round(wall, 1), "boots": len(boots),
            "boot_to_agent_s": round(sum(boots) / len(boots), 2) if boots else None,
            "work_ms_per_case": round(work / len(on_shared) * 1000, 2) if on_shared else 0.0}


def compare_paths(new: Report, old: Report, name: str) -> OldPathKernel | None:
    """`name`'s run on this tree against the old path's, on the case ids both reports hold for
    it (a case either path added or dropped is left out of the ratios, and counted); None when
    they share none."""
    new_cases = [c for c in new["cases"] if c["kernel"] == name]
    old_cases = [c for c in old["cases"] if c["kernel"] == name]
    new_ids, old_ids = {c["id"] for c in new_cases}, {c["id"] for c in old_cases}
    shared = new_ids & old_ids
    if not shared:
        return None
    new_path, old_path = _path_figures(new_cases, shared), _path_figures(old_cases, shared)
    return {"shared_cases": len(shared), "new_only": len(new_ids - shared),
            "old_only": len(old_ids - shared), "new": new_path, "old": old_path,
            "suite_ratio": _ratio(new_path["suite_s"], old_path["suite_s"]),
            "boot_ratio": _ratio(new_path["boot_to_agent_s"], old_path["boot_to_agent_s"]),
            "work_ratio": _ratio(new_path["work_ms_per_case"], old_path["work_ms_per_case"])}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def old_path_commit(ref: str, repo: Path = REPO_ROOT) -> str:
    """The commit --old-path names, checked before anything boots: a KconformError when `repo`
    is no git checkout or has no such commit."""
    if shutil.which("git") is None:
        raise KconformError("bench --old-path: git is not installed; install git, or give "
                            "--old-path none to leave the old path out")
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise KconformError(f"bench --old-path: {repo} is not a git checkout, so it has no old "
                            "path to run; run bench from a clone of kconform, or give "
                            "--old-path none")
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0:
        raise KconformError(f"bench --old-path {ref!r}: no such commit in {repo} (a shallow "
                            "clone lacks old ones: git fetch --unshallow); give a commit or ref "
                            "it has, or none to leave the old path out")
    return found.stdout.strip()


@contextlib.contextmanager
def old_path_worktree(commit: str, work_dir: Path, repo: Path = REPO_ROOT) -> Iterator[Path]:
    """A detached git worktree of `commit` in `work_dir`, removed again afterwards. Not under
    /tmp: a guest on the host's root sees its own tmpfs there, not the tree its agent runs from."""
    path = work_dir / "old-path"
    added = _git(repo, "worktree", "add", "--detach", str(path), commit)
    if added.returncode != 0:
        raise KconformError(f"bench --old-path: cannot check {commit} out into {path} "
                            f"({added.stderr.strip()}); free space there, or give --old-path "
                            "none")
    try:
        yield path
    finally:
        if _git(repo, "worktree", "remove", "--force", str(path)).returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            _git(repo, "worktree", "prune")


def phases_row(results: Path, report: Report, name: str) -> PhaseFigures | None:
    """The phases of `name`'s first boot in the suite run whose results are in `results`: its
    console, console/<kernel>-<worker>-0.log (the pool's name for it). The agent's start is not on
    the console: the report's, the median of the kernel's boots, as a report does not say which
    case carried which boot (one boot per kernel in a run without crashes or expected hangs)."""
    # the worker has no '-' (main, gw0): debian-6.12's console is not debian-6.12-arm64's
    first = re.compile(re.escape(safe_file_name(name)) + r"-[^-]+-0\.log")
    consoles = sorted(p for p in (results / "console").glob("*.log") if first.fullmatch(p.name))
    if not consoles:
        return None
    starts = sorted(c["agent_start_seconds"] for c in report["cases"]
                    if c["kernel"] == name and c.get("agent_start_seconds") is not None)
    agent = starts[len(starts) // 2] if starts else None
    lines = consoles[0].read_text(errors="replace").splitlines()
    phases = boot_phases(lines, agent_start=agent)
    return {"console": consoles[0].name, "init": phases.init, "seconds": phases.as_json(),
            "agent_boots": len(starts)}


def bisect_row(kernel_range: str, behaviour: str, results: Path) -> BisectFigures:
    """A bisect as `./kconform bisect` runs it (one child run of the behaviour's cases per
    version booted), timed whole: its boots against the bound."""
    from . import bisect
    kernels = bisect.expand_range(kernel_range)
    start = time.monotonic()
    result = bisect.search(kernels, bisect.SuiteProber([behaviour], None, results))
    wall = time.monotonic() - start
    change = f"{result.older.kernel} -> {result.newer.kernel}" \
        if result.older is not None and result.newer is not None else result.why_none
    return {"range": kernel_range, "behaviour": behaviour, "versions": len(kernels),
            "boots": len(result.probes), "bound": bisect.boot_bound(len(kernels)),
            "replacement_boots": result.replacements,
            "skipped": [p.kernel for p in result.skipped], "wall_s": round(wall, 1),
            "change": change}


def cpu_row(images: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Seconds from QEMU's start to the kernel's root-mount panic under TCG, per -cpu model: the
    median of CPU_ROUNDS, the models interleaved so a noisy moment hits them alike."""
    times: dict[str, dict[str, list[float]]] = {
        arch: {cpu: [] for cpu in CPU_MODELS[arch]} for arch in images}
    for _ in range(CPU_ROUNDS):
        for arch, image in images.items():
            for cpu in CPU_MODELS[arch]:
                start = time.monotonic()
                works, why = probe_boot(image, "tcg", cpu, timeout=120, arch=arch)
                if not works:
                    raise RuntimeError(f"cpus: {image.name} with -cpu {cpu}: {why}")
                times[arch][cpu].append(time.monotonic() - start)
    return {arch: {cpu: round(sorted(t)[len(t) // 2], 2) for cpu, t in models.items()}
            for arch, models in times.items()}


def build_row(source: Path, cache: Path, say: Callable[[str], None]) -> BuildFigures:
    """--build on an already built tree: a rerun that must build nothing, then one source file
    touched (a new state, so make rebuilds that file and links), then its mtime put back."""
    from .kernel_config import fragment_of_a_child
    from .kernels.build import SourceBuild
    from .kernels.packages import BUILD_INFO
    build = SourceBuild(source, cache / "builds", fragment_of_a_child(cache), say)
    start = time.monotonic()
    out = build.build()
    no_change = time.monotonic() - start
    recorded = json.loads((out / BUILD_INFO).read_text()).get("seconds")
    touched = source / BUILD_TOUCHED
    before = touched.stat()
    try:
        os.utime(touched)
        start = time.monotonic()
        incremental_out = build.build()
        incremental = time.monotonic() - start
    finally:
        os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns))
    if incremental_out != out:  # the touched state's kernel: not one anybody will run again
        shutil.rmtree(incremental_out, ignore_errors=True)
    return {"tree": str(source), "identity": out.name,
            "full_build_s": recorded if isinstance(recorded, (int, float)) else None,
            "no_change_s": round(no_change, 2), "incremental_s": round(incremental, 1)}


def _root_for(tree: KernelTree, run_arches: set[str], cache: Path) -> Rootfs | None:
    """The root the suite run gives guests of this kernel's architecture (its --rootfs left as
    'host'), so a floor boots on the root its suite ran on: in a run of both architectures,
    amd64's too is the pinned one."""
    return RootfsProvider(cache, guest_job=run_guest_job).get(
        root_recipe(HOST, tree.arch, run_arches), arch=tree.arch, kernel=tree)


def _build_tree(value: str | None, cache: Path) -> Path | None:
    """--build-tree: a path, 'none', or (default) the tree the build test leaves in the cache."""
    if value == "none":
        return None
    if value is not None:
        return Path(value).resolve()
    found = sorted(cache.glob(BUILD_TREE_GLOB))
    return found[-1] if found else None


def _sibling(name: str, names: list[str], arch: str) -> str | None:
    """The kernel of `names` that is `name` built for another architecture (debian-6.12-arm64
    -> debian-6.12), as the kernel definitions pair them."""
    from .kernels.specs import sibling
    specs = load_specs()
    base, at, version = name.partition("@")
    if base not in specs:
        return None
    try:
        other = sibling(specs[base], arch, specs).name + at + version
    except KconformError:
        return None
    return other if other in names else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kconform bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", action="append", default=[],
                        help="kernels to measure, as for the suite (default: "
                        f"{','.join(BENCH_KERNELS)})")
    parser.add_argument("--naive-kernel", default=None,
                        help="kernel for the naive sample (default: the first one)")
    parser.add_argument("--json", default="results/bench.json", help="where to save the figures")
    parser.add_argument("--bisect-range", default=BISECT_RANGE, metavar="RANGE",
                        help=f"versions the bisect row bisects {BISECT_BEHAVIOUR} over (default "
                             f"{BISECT_RANGE}); 'none' leaves the row out")
    parser.add_argument("--build-tree", default=None, metavar="PATH",
                        help="kernel source tree the build row measures --build on (default: the "
                             "linux-source-6.1 tree kconform's tests unpack into the cache, if "
                             "there); 'none' leaves the row out")
    parser.add_argument("--cpu-models", choices=("yes", "no"), default="yes",
                        help="whether to race the -cpu models (the cpus row; about 1 min)")
    parser.add_argument("--old-path", default=OLD_PATH_REF, metavar="REF",
                        help="the kconform commit whose suite the issue #17 goals compare with, "
                             f"run from a git worktree of it (default {OLD_PATH_REF}, main "
                             "before issue #17's cuts); 'none' leaves it out")
    args = parser.parse_args(argv)
    # before anything is fetched or booted: a bad REF is a usage error, not a failure at the end
    old_commit = None if args.old_path == "none" else old_path_commit(args.old_path)
    names = expand_kernel_args(args.kernel or BENCH_KERNELS, load_specs())
    provider = KernelProvider(log=lambda m: print(f"kconform: {m}", file=sys.stderr))
    trees = {n: provider.get(n) for n in names}
    accels: dict[str, Accel] = {}
    roots: dict[str, Rootfs | None] = {}
    run_arches = {tree.arch for tree in trees.values()}
    for name in names:
        tree = trees[name]
        if tree.vmlinuz is None:  # only an SSH target's kernel has none, and bench boots its own
            raise KconformError(f"bench: {name} has no kernel image to boot")
        if tree.arch not in accels:
            accels[tree.arch] = choose_accel(tree.vmlinuz, cache=provider.cache, arch=tree.arch)
            roots[tree.arch] = _root_for(tree, run_arches, provider.cache)
    accel = accels.get(host_architecture()) or next(iter(accels.values()))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside the JSON, not under /tmp: the old path's worktree must be visible to its guests
    work_dir = Path(tempfile.mkdtemp(prefix="kconform-bench-", dir=out.parent.resolve()))

    def say(message: str) -> None:
        print(f"kconform bench: {message}", file=sys.stderr, flush=True)

    figures: Figures = {"accel": accel.name, "kernels": {}, "started": time.strftime("%F %T"),
                        "accels": {arch: f"{a.name} {a.cpu}" for arch, a in accels.items()}}
    kernels: dict[str, KernelFigures] = figures["kernels"]
    for name in names:
        say(f"floor: {name}")
        tree = trees[name]
        root = roots[tree.arch]
        if root is not None:
            RootfsProvider(provider.cache).add_modules(root, tree)
        with PeakMemory("vng --run") as floor_memory:
            kernels[name] = {"version": tree.exact_version, "arch": tree.arch,
                             "floor_s": round(floor(tree, accels[tree.arch], root), 1),
                             "floor_qemu_peak_mib": floor_memory.figures()["qemu_peak_mib"]}
        say(f"baseline: {name}")  # right after its floor, so both see the same moment
        kernels[name]["baseline_s"] = round(
            floor(tree, accels[tree.arch], root, own_boot_args=False), 1)
        say(f"restore: {name}")
        kernels[name]["restore"] = restore_row(tree, accels[tree.arch], provider.cache,
                                               work_dir / "restore", root)
    matrix: dict[str, MatrixFigures] = {}
    old_matrix: dict[str, MatrixFigures] = {}
    new_n1: Report = {"cases": [], "kernels": {}}  # the -n 1 reports, once run
    old_n1: Report = {"cases": [], "kernels": {}}
    with contextlib.ExitStack() as cleanup:
        old_repo = cleanup.enter_context(old_path_worktree(old_commit, work_dir)) \
            if old_commit is not None else None
        for workers in (1, 2):  # each path's -n 1, then each's -n 2: drift hits both alike
            say(f"suite on {len(names)} kernels with -n {workers}")
            wall, report, memory = run_suite(names, workers, work_dir / f"n{workers}")
            matrix[f"n{workers}"] = {"wall_s": round(wall, 1), "cases": len(report["cases"]),
                                     **memory}
            if workers == 1:
                for name in names:
                    kernels[name].update(split_by_kernel(report, name))
                    phases = phases_row(work_dir / "n1", report, name)
                    if phases is None or phases["init"] is None:  # its first guest was restored
                        restored = kernels[name].get("restore")
                        phases = restored["phases"] if restored else phases
                    if phases is not None:
                        kernels[name]["phases"] = phases
                new_n1 = report
            if old_repo is not None:
                say(f"old path ({args.old_path}): suite on {len(names)} kernels with "
                    f"-n {workers}")
                wall, report, memory = run_suite(names, workers, work_dir / f"old-n{workers}",
                                                 repo=old_repo)
                old_matrix[f"n{workers}"] = {"wall_s": round(wall, 1),
                                             "cases": len(report["cases"]), **memory}
                if workers == 1:
                    old_n1 = report
    figures["matrix"] = matrix
    if old_commit is not None:
        figures["old_path"] = {"ref": args.old_path, "commit": old_commit, "matrix": old_matrix,
                               "kernels": {}}
        for name in names:
            versions = {r["kernels"].get(name, {}).get("version") for r in (new_n1, old_n1)}
            if len(versions) > 1:
                say(f"old path: {name} booted other versions on the two paths "
                    f"({', '.join(sorted(str(v) for v in versions))}): its ratios compare them")
            compared = compare_paths(new_n1, old_n1, name)
            if compared is not None:
                figures["old_path"]["kernels"][name] = compared
    naive_kernel = args.naive_kernel or names[0]
    from .bpf import build
    objects = {"sockmap_progs": str(build("sockmap_progs", arch=trees[naive_kernel].arch))}
    samples: list[float] = []
    for fn, kwargs in NAIVE_SAMPLE:
        say(f"naive: {fn} on {naive_kernel}")
        arch = trees[naive_kernel].arch
        samples.append(naive_case(trees[naive_kernel], accels[arch], fn, kwargs, objects,
                                  roots[arch] if arch != host_architecture() else None))
    per_case = sum(samples) / len(samples)
    k = kernels[naive_kernel]
    figures["naive"] = {"kernel": naive_kernel, "sample_s": [round(s, 1) for s in samples],
                        "per_case_s": round(per_case, 1),
                        "extrapolated_suite_s": round(per_case * k["cases"], 1)}
    for k in kernels.values():
        k["suite_over_floor"] = round(k["suite_s"] / k["floor_s"], 2)
        k["suite_budget_s"] = round(FLOOR_FACTOR * k["floor_s"] + k["work_s"]
                                    + k["expected_hangs_s"], 1)
        k["naive_over_suite"] = round(per_case * k["cases"] / k["suite_s"], 1)
    if args.cpu_models == "yes":
        say("cpus: the -cpu models to the root-mount panic")
        images: dict[str, Path] = {}
        for tree in trees.values():
            if tree.vmlinuz is not None and tree.arch in CPU_MODELS:
                images.setdefault(tree.arch, tree.vmlinuz)
        figures["cpus"] = cpu_row(images)
    build_tree = _build_tree(args.build_tree, provider.cache)
    if build_tree is not None:
        say(f"build: --build on {build_tree}")
        figures["build"] = build_row(build_tree, provider.cache, say)
    if args.bisect_range != "none":
        say(f"bisect: {BISECT_BEHAVIOUR} over {args.bisect_range}")
        figures["bisect"] = bisect_row(args.bisect_range, BISECT_BEHAVIOUR, work_dir / "bisect")
    figures["goals"] = issue17_goals(figures)
    out.write_text(json.dumps(figures, indent=1))
    print_tables(figures)
    print(f"saved {out}; the runs' results are in {work_dir}")
    return 0


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def issue17_goals(f: Figures) -> list[GoalFigures]:
    """Issue #17's goals, each met, missed or not measured, from this run's figures alone."""
    kernels = f["kernels"]
    old = f.get("old_path")
    no_old = "not measured: --old-path none"
    goals: list[GoalFigures] = []

    # the restore row's cold boot on the images, the one the suite's default boot makes when it
    # has no snapshot (the suite's own boots may be restores); the save after it is not a boot
    boots = {name: (k["restore"]["images_s"], k["baseline_s"]) for name, k in kernels.items()
             if "restore" in k and "baseline_s" in k}
    goals.append({
        "goal": f"cold boot to a ready agent <= {BOOT_GOAL} x baseline, every kernel",
        "met": all(boot <= BOOT_GOAL * base for boot, base in boots.values()) if boots else None,
        "detail": ", ".join(f"{name} {boot:.1f} s against {base:.1f} s (x{boot / base:.2f})"
                            for name, (boot, base) in boots.items()) or "not measured: no boots"})

    restores = {name: (k["restore"]["restore_s"], k["baseline_s"])
                for name, k in kernels.items() if "restore" in k and "baseline_s" in k}
    goals.append({
        "goal": f"a restored guest answers in <= {RESTORE_GOAL} x baseline",
        "met": all(r <= RESTORE_GOAL * base for r, base in restores.values())
        if restores else None,
        "detail": ", ".join(f"{name} {r:.2f} s against {base:.1f} s (x{r / base:.3f})"
                            for name, (r, base) in restores.items())
        or "not measured: no kernel a snapshot covers"})

    work_goal = f"cases' guest time per case <= {CASE_WORK_GOAL} x the old path's"
    if old is None:
        goals.append({"goal": work_goal, "met": None, "detail": no_old})
    else:
        ratios = {name: k["work_ratio"] for name, k in old["kernels"].items()
                  if k["work_ratio"] is not None}
        goals.append({
            "goal": work_goal,
            "met": all(r <= CASE_WORK_GOAL for r in ratios.values()) if ratios else None,
            "detail": ", ".join(
                f"{name} {old['kernels'][name]['new']['work_ms_per_case']:.1f} ms against "
                f"{old['kernels'][name]['old']['work_ms_per_case']:.1f} ms (x{r:.2f}, "
                f"{old['kernels'][name]['shared_cases']} cases)" for name, r in ratios.items())
            or "not measured: no cases both paths ran"})

    matrix_goal = f"the suite of {len(kernels)} kernels with -n 2 <= {MATRIX_GOAL} x the old path's"
    new_n2 = f.get("matrix", {}).get("n2")
    old_n2 = old["matrix"].get("n2") if old is not None else None
    if old is None:
        goals.append({"goal": matrix_goal, "met": None, "detail": no_old})
    elif new_n2 is None or old_n2 is None or not old_n2["wall_s"]:
        goals.append({"goal": matrix_goal, "met": None, "detail": "not measured: no -n 2 run"})
    else:
        ratio = new_n2["wall_s"] / old_n2["wall_s"]
        differ = "" if new_n2["cases"] == old_n2["cases"] else (
            f"; the case sets differ: {new_n2['cases']} cases against {old_n2['cases']}, so "
            "the ratio is not of the same work")
        goals.append({"goal": matrix_goal, "met": ratio <= MATRIX_GOAL,
                      "detail": f"{new_n2['wall_s']} s against {old_n2['wall_s']} s "
                                f"(x{ratio:.2f}){differ}"})

    hang_goal = f"{GOAL_KERNEL}'s suite <= {FLOOR_FACTOR} x baseline + case work + expected hangs"
    k = kernels.get(GOAL_KERNEL)
    if k is None or "baseline_s" not in k or "suite_s" not in k:
        goals.append({"goal": hang_goal, "met": None,
                      "detail": f"not measured: {GOAL_KERNEL} was not among the kernels"})
    else:
        budget = FLOOR_FACTOR * k["baseline_s"] + k["work_s"] + k["expected_hangs_s"]
        goals.append({"goal": hang_goal, "met": k["suite_s"] <= budget,
                      "detail": f"{k['suite_s']} s against {budget:.1f} s"})
    return goals


def print_goals(goals: list[GoalFigures]) -> None:
    print("issue #17 goals:")
    for g in goals:
        state = "not measured" if g["met"] is None else _met(g["met"])
        detail = g["detail"].removeprefix("not measured: ") if g["met"] is None else g["detail"]
        print(f"  {g['goal']}: {state} ({detail})")


def print_restore(kernels: dict[str, KernelFigures]) -> None:
    rows = {name: k["restore"] for name, k in kernels.items() if "restore" in k}
    if not rows:
        return
    print("restore (s to the agent's hello; direct: 9p root, images: the snapshot's disks, then "
          "its save):")
    print(f"  {'kernel':24} {'direct':>7} {'images':>7} {'save':>6} {'restore':>8} "
          f"{'baseline':>8} {'images/base':>11} {'restore/base':>12}")
    for name, r in rows.items():
        base = kernels[name].get("baseline_s")
        ratios = (f"{r['images_s'] / base:11.2f} {r['restore_s'] / base:12.3f}" if base
                  else f"{'-':>11} {'-':>12}")
        direct = f"{r['direct_s']:7.2f}" if r["direct_s"] is not None else f"{'-':>7}"
        print(f"  {name:24} {direct} {r['images_s']:7.2f} {r['save_s']:6.2f} "
              f"{r['restore_s']:8.2f} {base if base else '-':>8} {ratios}")


def print_work(kernels: dict[str, KernelFigures]) -> None:
    """The work row: each kernel's cases' guest seconds by kind, and per case in ms."""
    rows = {name: k["work"] for name, k in kernels.items() if "work" in k}
    if not rows:
        return
    print("work: the cases' guest seconds by kind (-n 1 run), s and [ms per case]:")
    print(f"{'kernel':24} " + " ".join(f"{kind:>17}" for kind in WORK_KINDS) + f" {'total':>17}")
    for name, w in rows.items():
        total = sum(w["seconds"].values())
        per_case = sum(w["per_case_ms"].values())
        print(f"{name:24} " + " ".join(
            f"{w['seconds'][kind]:7.2f} [{w['per_case_ms'][kind]:7.2f}]" for kind in WORK_KINDS)
            + f" {total:7.2f} [{per_case:7.2f}]"
            + (f"  (+{w['unsplit_s']} s of cases without a split)" if w["unsplit_s"] else ""))


def print_old_path(old: OldPathFigures) -> None:
    """The old path against this tree: per kernel on the cases both ran; the matrix runs."""
    print(f"old path {old['commit'][:12]} ({old['ref']}) against this tree, per kernel on the "
          "cases both ran (old -> new, new/old):")
    print(f"{'kernel':24} {'cases':>5} {'suite s':>22} {'boot to agent s':>22} "
          f"{'guest ms/case':>22}")

    def cell(old_value: float | None, new_value: float | None, ratio: float | None) -> str:
        if old_value is None or new_value is None:
            return f"{'-':>22}"
        return f"{old_value:7.1f} -> {new_value:6.1f} x{ratio or 0:.2f}".rjust(22)

    for name, k in old["kernels"].items():
        print(f"{name:24} {k['shared_cases']:5d} "
              f"{cell(k['old']['suite_s'], k['new']['suite_s'], k['suite_ratio'])} "
              f"{cell(k['old']['boot_to_agent_s'], k['new']['boot_to_agent_s'], k['boot_ratio'])} "
              f"{cell(k['old']['work_ms_per_case'], k['new']['work_ms_per_case'], k['work_ratio'])}"
              + (f"  (left out: {k['new_only']} new, {k['old_only']} old-only cases)"
                 if k["new_only"] or k["old_only"] else ""))
    for key, m in old["matrix"].items():
        print(f"old path matrix -{key[0]} {key[1:]}: {m['wall_s']} s wall, {m['cases']} cases")


def print_phases(kernels: dict[str, KernelFigures]) -> None:
    """The phases row: one line per kernel whose first boot's console was found."""
    rows = {name: k["phases"] for name, k in kernels.items() if "phases" in k}
    if not rows:
        return
    headings = [heading for _, _, _, heading in PHASES] + ["total to hello"]
    print("phases of each kernel's first cold boot (its first guest in the suite, or the "
          "restore row's saving boot when that guest was restored; guest clock, s; firmware and "
          "the kernel's decompression come before that clock starts):")
    print(f"{'kernel':24} " + " ".join(f"{h:>{max(len(h), 6)}}" for h in headings))
    for name, p in rows.items():
        values = [p["seconds"].get(phase) for phase, _, _, _ in PHASES] \
            + [p["seconds"].get("to_hello")]
        print(f"{name:24} " + " ".join(
            f"{'-' if v is None else f'{v:.2f}':>{max(len(h), 6)}}"
            for h, v in zip(headings, values, strict=True))
            + f"  ({p['init'] or 'no init line'}"
            + (f"; agent: median of {p['agent_boots']} boots" if p["agent_boots"] > 1 else "")
            + ")")


def print_tables(f: Figures) -> None:
    print(f"accelerator: {f['accel']}"
          + "".join(f"; {arch} {a}" for arch, a in f.get("accels", {}).items()))
    print(f"{'kernel':24} {'floor s':>7} {'base s':>6} {'suite s':>7} {'boots':>5} {'boot':>6} "
          f"{'agent':>6} {'work':>6} "
          f"{'hangs':>6} {'cases':>5} {'ovh ms':>7} {'suite/floor':>11} {'budget s':>8} "
          f"{'naive/suite':>11} {'qemu MiB':>8}")
    for name, k in f["kernels"].items():
        baseline = f"{k['baseline_s']:6.1f}" if "baseline_s" in k else f"{'-':>6}"
        print(f"{name:24} {k['floor_s']:7.1f} {baseline} {k['suite_s']:7.1f} "
              f"{k.get('boots', 1):5d} {k['boot_s']:6.1f} "
              f"{k['agent_start_s']:6.1f} {k['work_s']:6.1f} {k['expected_hangs_s']:6.1f} "
              f"{k['cases']:5d} {k['overhead_ms']:7.1f} {k['suite_over_floor']:11.2f} "
              f"{k['suite_budget_s']:8.1f} {k['naive_over_suite']:11.1f} "
              f"{k['floor_qemu_peak_mib']:8.0f}")
    print_phases(f["kernels"])
    print_restore(f["kernels"])
    print_work(f["kernels"])
    n = f["naive"]
    print(f"naive: {n['per_case_s']} s per case on {n['kernel']} (sample {n['sample_s']}), "
          f"{n['extrapolated_suite_s']} s for its suite")
    for key, m in f["matrix"].items():
        print(f"matrix -{key[0]} {key[1:]}: {m['wall_s']} s wall ({m.get('cases', '?')} cases); "
              f"peak RSS: QEMU "
              f"{m['qemu_peak_mib']} MiB, host process {m['host_peak_mib']} MiB "
              f"(all host processes {m['host_total_peak_mib']} MiB)")
    if "old_path" in f:
        print_old_path(f["old_path"])
    for name, k in f["kernels"].items():
        if k.get("redirect_cases"):
            print(f"redirect matrix on {name}: {k['redirect_cases']} cases, "
                  f"{k['redirect_work_s']} s in the guest, {k['redirect_overhead_ms']} ms "
                  "overhead per case")
    for name, k in f["kernels"].items():
        amd64 = _sibling(name, list(f["kernels"]), "amd64") if k.get("arch") == "arm64" else None
        if amd64 is not None:
            a = f["kernels"][amd64]
            print(f"arm64 {name} against {amd64}: floor {k['floor_s']} / {a['floor_s']} s "
                  f"(x{k['floor_s'] / a['floor_s']:.1f}), suite {k['suite_s']} / {a['suite_s']} s "
                  f"(x{k['suite_s'] / a['suite_s']:.1f}), work {k['work_s']} / {a['work_s']} s, "
                  f"suite/floor {k['suite_over_floor']} / {a['suite_over_floor']}")
    for arch, models in f.get("cpus", {}).items():
        fastest = min(models, key=lambda cpu: models[cpu])
        print(f"cpus {arch} (TCG, s to the root-mount panic, median of {CPU_ROUNDS}): "
              + ", ".join(f"{cpu} {t}" for cpu, t in models.items())
              + f"; fastest {fastest}, the guests use {TCG_CPU.get(arch, '?')}")
    build = f.get("build")
    if build is not None:
        full = f"{build['full_build_s']} s as recorded" if build["full_build_s"] else "not recorded"
        print(f"build {build['identity']}: full build {full}; rerun with no change "
              f"{build['no_change_s']} s; after touching {BUILD_TOUCHED} "
              f"{build['incremental_s']} s")
    b = f.get("bisect")
    if b is not None:
        print(f"bisect {b['behaviour']} over {b['range']}: {b['boots']} boots of {b['versions']} "
              f"versions (bound {b['bound']}), {b['replacement_boots']} replacement boots, "
              f"{b['wall_s']} s wall; {b['change']}"
              + (f"; skipped {', '.join(b['skipped'])}" if b["skipped"] else ""))
    ks = f["kernels"].values()
    print("targets:")
    print(f"  suite <= {FLOOR_FACTOR} x floor + case work: " + ", ".join(
        f"{name} {_met(k['suite_s'] <= k['suite_budget_s'])}" for name, k in f["kernels"].items()))
    print(f"  overhead <= {OVERHEAD_TARGET_MS:.0f} ms/case: "
          f"{_met(all(k['overhead_ms'] <= OVERHEAD_TARGET_MS for k in ks))} "
          f"(worst {max(k['overhead_ms'] for k in ks)} ms)")
    print(f"  naive/suite >= {NAIVE_RATIO_TARGET:.0f}: "
          f"{_met(all(k['naive_over_suite'] >= NAIVE_RATIO_TARGET for k in ks))} "
          f"(lowest {min(k['naive_over_suite'] for k in ks)})")
    n2 = f["matrix"]["n2"]["wall_s"]
    print(f"  matrix -n 2 <= {MATRIX_TARGET_S:.0f} s: {_met(n2 <= MATRIX_TARGET_S)} ({n2} s, "
          f"ratio {n2 / MATRIX_TARGET_S:.2f})")
    redirect = {name: k for name, k in f["kernels"].items() if k.get("redirect_cases")}
    if redirect:
        print(f"  redirect matrix <= {REDIRECT_WORK_TARGET_S:.0f} s guest time per kernel: "
              + ", ".join(f"{name} {_met(k['redirect_work_s'] <= REDIRECT_WORK_TARGET_S)} "
                          f"({k['redirect_work_s']} s)" for name, k in redirect.items()))
        print(f"  redirect matrix overhead <= {OVERHEAD_TARGET_MS:.0f} ms/case: "
              + _met(all(k["redirect_overhead_ms"] <= OVERHEAD_TARGET_MS
                         for k in redirect.values()))
              + f" (worst {max(k['redirect_overhead_ms'] for k in redirect.values())} ms)")
    if build is not None:
        print(f"  --build rerun with no change < {NO_CHANGE_BUILD_TARGET_S:.0f} s: "
              f"{_met(build['no_change_s'] < NO_CHANGE_BUILD_TARGET_S)} "
              f"({build['no_change_s']} s)")
    if b is not None:
        print(f"  bisect boots <= ceil(log2(N - 1)) + 2 = {b['bound']}: "
              f"{_met(b['boots'] <= b['bound'])} ({b['boots']} boots)")
    if "goals" in f:
        print_goals(f["goals"])
