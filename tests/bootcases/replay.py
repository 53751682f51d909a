"""A pytest plugin (-p tests.bootcases.replay) that gives the kconform run fake machines replaying
a saved boot: the console log and the agent's hello named by $KCONFORM_REPLAY_BOOT (a stem in
tests/data, e.g. boot-6.1-warning). Nothing is fetched or booted; the plugin's own fixtures,
health checks and reports run as on a real guest."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.kernels import KernelTree
from harness.plugin.run import RUN_KEY, GuestPool
from tests.fake_machine import DATA, FakeMachine, Reply, saved_console

TREE = KernelTree(name="debian-6.1", vmlinuz=None, release="6.1.0-50-amd64",
                  package_version="6.1.176-1")


@pytest.hookimpl(trylast=True)  # after kconform's own pytest_configure made the run
def pytest_configure(config: pytest.Config) -> None:
    stem = os.environ["KCONFORM_REPLAY_BOOT"]
    hello = (DATA / f"{stem}.hello.json").read_text().strip()
    console = saved_console(os.environ.get("KCONFORM_REPLAY_CONSOLE", f"{stem}.log"))
    pool = config.stash[RUN_KEY].pool

    def new_machine(self: GuestPool, name: str, tree: KernelTree, log: Path):
        return FakeMachine(log, boot=Reply(console=console, lines=[hello])), 10.0

    pool.trees["debian-6.1"] = TREE
    pool.new_machine = new_machine.__get__(pool)
