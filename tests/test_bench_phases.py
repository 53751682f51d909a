"""./kconform bench's phases row (harness/bench.py phases_row, print_phases) on a suite run's
results laid out as the pool names them (console/<kernel>-<worker>-<boot>.log), the consoles
being the saved real ones of tests/data; no VM."""
from __future__ import annotations

import shutil
from pathlib import Path

from harness import bench

DATA = Path(__file__).parent / "data"


def run_dir(tmp_path: Path) -> Path:
    """debian-6.12's first boot is boot-6.1-warning.log (virtme-ng-init; see
    tests/test_boot_phases.py for its lines), its second (a replacement) boot-6.1-clean.log;
    debian-6.12-arm64's first panic-6.12-arm64-sysrq.log (virtme-init)."""
    console = tmp_path / "console"
    console.mkdir()
    shutil.copy(DATA / "boot-6.1-warning.log", console / "debian-6.12-gw0-0.log")
    shutil.copy(DATA / "boot-6.1-clean.log", console / "debian-6.12-gw0-1.log")
    shutil.copy(DATA / "panic-6.12-arm64-sysrq.log", console / "debian-6.12-arm64-gw0-0.log")
    return tmp_path


def case(kernel: str, agent: float | None = None) -> dict[str, object]:
    return {"kernel": kernel, "duration": 1.0} | (
        {"boot_seconds": 20.0, "agent_start_seconds": agent} if agent is not None else {})


def test_the_row_reads_each_kernels_first_boot_and_the_agents_start(tmp_path):
    """The agent phase is the report's agent_start_seconds (hello uptime 11.56 - "starting
    script" 8.450134 = 3.109866 for the warning boot); debian-6.12's console is not the arm64
    sibling's, whose name it begins."""
    report = {"cases": [case("debian-6.12", 3.109866), case("debian-6.12"),
                        case("debian-6.12-arm64")]}
    row = bench.phases_row(run_dir(tmp_path), report, "debian-6.12")
    assert row == {"console": "debian-6.12-gw0-0.log", "init": "virtme-ng-init",
                   "agent_boots": 1,
                   "seconds": {"to_init": 2.394, "initramfs": 0.536, "init_setup": 1.12,
                               "udev": 4.389, "to_script": 0.011, "agent": 3.11,
                               "to_hello": 11.56}}
    arm64 = bench.phases_row(tmp_path, report, "debian-6.12-arm64")
    assert arm64 is not None and arm64["console"] == "debian-6.12-arm64-gw0-0.log"
    # the arm64 console's lines (tests/test_boot_phases.py); no agent start in the report
    assert arm64["init"] == "virtme-init" and arm64["agent_boots"] == 0
    assert arm64["seconds"] == {"to_init": 1.757, "initramfs": 0.906, "init_setup": 5.233,
                                "udev": 7.827, "to_script": 2.749, "agent": None,
                                "to_hello": None}
    assert bench.phases_row(tmp_path, report, "debian-7.3") is None  # it never booted


def test_with_several_boots_the_agent_is_their_median(tmp_path):
    """A report does not say which case carried the first boot: the median of three."""
    report = {"cases": [case("debian-6.12", 9.0), case("debian-6.12", 1.0),
                        case("debian-6.12", 3.109866)]}
    row = bench.phases_row(run_dir(tmp_path), report, "debian-6.12")
    assert row is not None and row["agent_boots"] == 3
    assert row["seconds"]["agent"] == 3.11 and row["seconds"]["to_hello"] == 11.56


def test_a_replacement_boots_console_is_not_the_first_boot(tmp_path):
    """Only boot 1's console (a guest booted again after a crash or an expected hang): no row."""
    (run_dir(tmp_path) / "console" / "debian-6.12-gw0-0.log").unlink()
    assert bench.phases_row(tmp_path, {"cases": []}, "debian-6.12") is None


def test_the_row_prints_a_line_per_kernel(tmp_path, capsys):
    report = {"cases": [case("debian-6.12", 9.0), case("debian-6.12", 3.109866),
                        case("debian-6.12", 1.0)]}
    kernels: dict[str, bench.KernelFigures] = {"debian-7.3": {"floor_s": 14.0}}
    results = run_dir(tmp_path)
    for name in ("debian-6.12", "debian-6.12-arm64"):
        row = bench.phases_row(results, report, name)
        assert row is not None
        kernels[name] = {"phases": row}
    bench.print_phases(kernels)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("phases of each kernel's first cold boot (its first guest")
    assert out[1].split() == ["kernel", "to", "/init", "initramfs", "init", "set-up", "udev",
                              "to", "script", "agent", "total", "to", "hello"]
    assert out[2].split() == ["debian-6.12", "2.39", "0.54", "1.12", "4.39", "0.01", "3.11",
                              "11.56", "(virtme-ng-init;", "agent:", "median", "of", "3",
                              "boots)"]
    assert out[3].split() == ["debian-6.12-arm64", "1.76", "0.91", "5.23", "7.83", "2.75", "-",
                              "-", "(virtme-init)"]
    assert len(out) == 4  # debian-7.3 has no phases: no line
