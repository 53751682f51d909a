"""The phases of a boot (harness/boot_phases.py) read off saved real consoles (tests/data), each
figure checked against the console lines it comes from, copied here as read."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from harness.boot_phases import PHASES, boot_phases

DATA = Path(__file__).parent / "data"


def console(name: str) -> list[str]:
    return (DATA / name).read_text(errors="replace").splitlines()


def seconds(phases) -> dict[str, float | None]:
    return {p.name: None if p.seconds is None else round(p.seconds, 6) for p in phases.phases}


def test_the_phases_of_a_debian_6_1_boot_up_to_the_agents_hello():
    """boot-6.1-warning.log, a debian-6.1 guest under TCG, and its agent's hello
    (boot-6.1-warning.hello.json, "uptime": 11.56):
      [    2.394329] Run /init as init process
      [    2.930051] virtme initramfs: done; switching to real root
      [    3.082066] virtme-ng-init: Setting hostname to kconform-23578...
      [    3.143952] virtme-ng-init: running systemd-tmpfiles
      [    4.049696] virtme-ng-init: basic initialization done
      [    4.463201] virtme-ng-init: Starting systemd-udevd version 252.39-1~deb12u2
      [    4.463564] virtme-ng-init: triggering udev coldplug
      [    6.638672] virtme-ng-init: waiting for udev to settle
      [    8.438637] virtme-ng-init: udev is done
      [    8.450134] virtme-ng-init: starting script"""
    hello = json.loads((DATA / "boot-6.1-warning.hello.json").read_text())
    phases = boot_phases(console("boot-6.1-warning.log"), hello_uptime=hello["uptime"])
    assert phases.init == "virtme-ng-init"
    assert seconds(phases) == {"to_init": 2.394329,            # 2.394329 - 0
                               "initramfs": 0.535722,          # 2.930051 - 2.394329
                               "init_setup": 1.119645,         # 4.049696 - 2.930051
                               "udev": 4.388941,               # 8.438637 - 4.049696
                               "to_script": 0.011497,          # 8.450134 - 8.438637
                               "agent": 3.109866}              # 11.56 - 8.450134
    assert phases.to_hello == 11.56
    assert sum(p.seconds or 0 for p in phases.phases) == pytest.approx(11.56)  # contiguous
    assert phases.milestones["init_started"] == 3.082066
    assert phases.milestones["tmpfiles"] == 3.143952
    assert phases.milestones["udevd_started"] == 4.463201
    assert phases.milestones["coldplug"] == 4.463564
    assert phases.milestones["settle"] == 6.638672
    assert phases.as_json() == {"to_init": 2.394, "initramfs": 0.536, "init_setup": 1.12,
                                "udev": 4.389, "to_script": 0.011, "agent": 3.11,
                                "to_hello": 11.56}


def test_a_result_s_agent_start_stands_for_the_hello_s_uptime():
    """What a result records (agent_start_seconds: hello uptime - "starting script", session.py)
    gives the same agent phase and end: 8.450134 + 3.109866 = 11.56."""
    phases = boot_phases(console("boot-6.1-warning.log"), agent_start=3.109866)
    assert phases.seconds("agent") == pytest.approx(3.109866)
    assert phases.to_hello == pytest.approx(11.56)
    with pytest.raises(ValueError):
        boot_phases([], hello_uptime=11.56, agent_start=3.1)


def test_without_a_hello_the_agent_is_unknown_and_the_rest_is_measured():
    """boot-6.1-clean.log, another debian-6.1 boot, without its hello:
      [    3.612593] Run /init as init process
      [    4.312090] virtme initramfs: done; switching to real root
      [    6.319855] virtme-ng-init: basic initialization done
      [   15.849369] virtme-ng-init: udev is done
      [   15.862127] virtme-ng-init: starting script"""
    phases = boot_phases(console("boot-6.1-clean.log"))
    assert seconds(phases) == {"to_init": 3.612593, "initramfs": 0.699497,
                               "init_setup": 2.007765, "udev": 9.529514,
                               "to_script": 0.012758, "agent": None}
    assert phases.to_hello is None


def test_the_phases_of_an_arm64_boot_under_the_shell_script_init():
    """panic-6.12-arm64-sysrq.log, debian-6.12-arm64 on this amd64 host (virtme-init, the shell
    script; no "running systemd-tmpfiles" line: it prints none there), no hello (it crashed):
      [    1.756780] Run /init as init process
      [    2.662441] virtme initramfs: done; switching to real root
      [    5.137341] virtme-init: Setting hostname to kconform-1323...
      [    7.895686] virtme-init: basic initialization done
      [    8.002501] virtme-init: starting udevd
      [    8.503737] virtme-init: triggering udev coldplug
      [   12.404384] virtme-init: waiting for udev to settle
      [   15.722716] virtme-init: udev is done
      [   18.471927] virtme-init: starting script"""
    phases = boot_phases(console("panic-6.12-arm64-sysrq.log"))
    assert phases.init == "virtme-init"
    assert seconds(phases) == {"to_init": 1.75678,            # 1.756780 - 0
                               "initramfs": 0.905661,         # 2.662441 - 1.756780
                               "init_setup": 5.233245,        # 7.895686 - 2.662441
                               "udev": 7.82703,               # 15.722716 - 7.895686
                               "to_script": 2.749211,         # 18.471927 - 15.722716
                               "agent": None}
    assert "tmpfiles" not in phases.milestones
    assert phases.milestones["udevd_started"] == 8.002501
    assert phases.milestones["coldplug"] == 8.503737
    assert phases.milestones["settle"] == 12.404384


def test_a_console_with_a_reboot_gives_its_first_boot():
    """panic-6.1-sysrq.log holds two boots ("Linux version" twice); the first's lines:
      [    3.226416] Run /init as init process
      [    3.769214] virtme initramfs: done; switching to real root
      [    5.881686] virtme-ng-init: basic initialization done
      [   14.554149] virtme-ng-init: udev is done
      [   14.565271] virtme-ng-init: starting script
    (the second's "Run /init" is at 3.196506)."""
    lines = console("panic-6.1-sysrq.log")
    phases = boot_phases(lines)
    assert seconds(phases) == {"to_init": 3.226416, "initramfs": 0.542798,
                               "init_setup": 2.112472, "udev": 8.672463,
                               "to_script": 0.011122, "agent": None}
    # a first boot that never got through udev: the second boot's "udev is done" (13.651846)
    # is not its end
    first_udev_done = next(i for i, line in enumerate(lines) if "udev is done" in line)
    got = seconds(boot_phases(lines[:first_udev_done] + lines[first_udev_done + 1:]))
    assert got["udev"] is None and got["to_script"] is None


def test_a_missing_line_leaves_the_two_phases_it_bounds_unknown():
    lines = [line for line in console("panic-6.12-arm64-sysrq.log")
             if "basic initialization done" not in line]
    got = seconds(boot_phases(lines))
    assert got["init_setup"] is None and got["udev"] is None
    assert got["to_init"] == 1.75678 and got["to_script"] == 2.749211  # the others as before


@pytest.mark.parametrize("lines", [
    [],
    ["virtme: waiting for virtiofsd to start", "", "\x00\xff garbage"],
    ["[    0.000000] Linux version 6.1.0-50-amd64", "[    2.1] Kernel panic - not syncing: VFS"],
])
def test_a_console_without_the_lines_gives_no_phases(lines):
    phases = boot_phases(lines, hello_uptime=None)
    assert all(p.seconds is None for p in phases.phases if p.name != "to_init")
    assert phases.seconds("to_init") is None and phases.init is None and phases.to_hello is None


def test_junk_stamps_are_no_time():
    """The guest writes the console: a stamp that is not a number, one too long to be finite,
    and a line whose stamp runs backwards leave their phases unknown."""
    lines = console("boot-6.1-warning.log")

    def with_line(old: str, new: str) -> list[str]:
        assert any(old in line for line in lines)
        return [new if old in line else line for line in lines]

    bad = with_line("Run /init as init process", "[ 2.39.4329] Run /init as init process")
    assert seconds(boot_phases(bad))["to_init"] is None
    bad = with_line("virtme-ng-init: udev is done",
                    "[" + "9" * 400 + ".0] virtme-ng-init: udev is done")
    assert seconds(boot_phases(bad))["udev"] is None
    # "starting script" stamped before "udev is done" (8.438637): no negative phase
    bad = with_line("virtme-ng-init: starting script",
                    "[    1.000000] virtme-ng-init: starting script")
    assert seconds(boot_phases(bad, hello_uptime=11.56))["to_script"] is None
    for uptime in (float("nan"), float("inf"), -1.0, 2.0):  # 2.0: before the script started
        phases = boot_phases(lines, hello_uptime=uptime)
        assert phases.seconds("agent") is None and phases.to_hello is None


def test_the_phases_cover_the_kernel_start_to_the_hello_in_order():
    """Each phase starts where the one before ended, so their sum is the clock at the hello."""
    assert PHASES[0][1] == "kernel_start" and PHASES[-1][2] == "hello"
    assert all(a[2] == b[1] for a, b in itertools.pairwise(PHASES))


def test_a_direct_boot_has_no_init_set_up_udev_or_script_phase():
    """boot-6.12-direct.log, a debian-6.12 guest booted by machines/direct.py under TCG:
      [    3.556806] Run /init as init process
      [    3.711709] kconform-init: loading modules
      [    4.277963] kconform-init: starting the agent on /dev/vport0p1
    and a hello at 6.0 s by the guest's clock (this console's run recorded none)."""
    phases = boot_phases(console("boot-6.12-direct.log"), hello_uptime=6.0)
    assert phases.init == "kconform-init"
    assert seconds(phases) == {"to_init": 3.556806, "initramfs": round(4.277963 - 3.556806, 6),
                               "init_setup": None, "udev": None, "to_script": None,
                               "agent": round(6.0 - 4.277963, 6)}
    assert phases.to_hello == 6.0
