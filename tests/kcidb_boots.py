"""A pytest plugin (-p tests.kcidb_boots) for tests/test_kcidb.py: the kconform run's guests are
fake machines (tests/fake_machine.py) whose boots fail as $KCONFORM_KCIDB_BOOTS says, so the
results hold cases whose guest never booted exactly as a real run records them. Run with
tests/bootcases/cases.py (two cases on one guest). Nothing is fetched or booted.

  never        every boot dies before the agent's hello, its console a real kernel panic
               (tests/data/panic-6.1-sysrq.log): no guest of the kernel ever answers
  after-crash  the first guest boots and panics during the first case (the same console); the
               replacement the second case asks for dies while starting, the same way
  no-tree      the kernel's tree cannot be had (the provider's depmod failure), so no guest is
               ever started
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.errors import KernelUnavailable
from harness.kernels import KernelTree
from harness.plugin.run import RUN_KEY, GuestPool
from tests.fake_machine import DIE, FakeMachine, Reply, hello_line, saved_console

# the tree tests/bootcases/replay.py gives debian-6.1, with the suite a fetched one records
TREE = KernelTree(name="debian-6.1", vmlinuz=None, release="6.1.0-50-amd64",
                  package_version="6.1.176-1", suite="bookworm-security")


@pytest.hookimpl(trylast=True)  # after kconform's own pytest_configure made the run
def pytest_configure(config: pytest.Config) -> None:
    scenario = os.environ["KCONFORM_KCIDB_BOOTS"]
    panic = saved_console("panic-6.1-sysrq.log")
    pool = config.stash[RUN_KEY].pool
    booted = []

    def new_machine(self: GuestPool, name: str, tree: KernelTree, log: Path):
        first = not booted
        booted.append(name)
        if scenario == "after-crash" and first:
            machine = FakeMachine(log, boot=Reply(lines=[hello_line(TREE.release)]),
                                  replies=[Reply(console=panic, then=DIE)])
        else:
            machine = FakeMachine(log, boot=Reply(console=panic, then=DIE))
        return machine, 10.0

    if scenario == "no-tree":  # as harness/kernels/provider.py words a failed depmod
        pool.failed["debian-6.1"] = KernelUnavailable(
            "debian-6.1: depmod failed: depmod: FATAL: could not search modules: No such file "
            "or directory (install kmod)")
        return
    pool.trees["debian-6.1"] = TREE
    pool.new_machine = new_machine.__get__(pool)
