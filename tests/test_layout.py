"""The folders follow the data path and dependencies point one way (README, "Layout"): judging
and reports read results only, so they never import a machine or the plugin; the guest side
imports nothing of the host's; no package imports another that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

from harness.paths import REPO_ROOT

HARNESS = REPO_ROOT / "harness"
# What each stage may import (besides the standard library, third-party packages and itself).
ALLOWED = {
    "agent": set(),
    "kernels": {"errors", "cache", "paths", "versions", "datafiles", "arches"},
    "machines": {"errors", "cache", "paths", "versions", "kernels", "datafiles", "arches",
                 "boot_phases"},
    "judging": {"errors", "paths", "versions"},
    "reports": {"errors", "paths", "versions", "judging"},
    "plugin": {"errors", "cache", "paths", "versions", "kernels", "machines", "judging",
               "reports", "bpf", "kernel_config", "arches"},
    # the shared modules at the bottom
    "errors": set(), "paths": set(), "versions": set(), "arches": set(),
    "datafiles": {"errors"}, "cache": {"errors", "paths"},
    "bpf": {"errors", "cache", "paths", "arches"},
    "cache_entries": {"errors", "cache", "paths", "versions", "arches"},
    # the suite's config fragment: it collects the cases in a child process, --build reads it
    "kernel_config": {"errors", "cache", "paths"},
    # a boot's phases from its console's lines: pure parsing, for bench and a machine's timings
    "boot_phases": set(),
}


def harness_imports(path: Path, source: str | None = None) -> set[str]:
    """The top-level harness modules or packages a file imports, e.g. {"kernels", "errors"};
    source: the file's text, when it is not on disk."""
    module = path.relative_to(REPO_ROOT).with_suffix("").parts
    package = module[:-1]  # harness/plugin/run.py and harness/plugin/__init__.py: in plugin
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                if not node.module:
                    parts_list = [[*base, alias.name] for alias in node.names]
                else:
                    parts_list = [parts]
            else:
                parts_list = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            parts_list = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in parts_list:
            if len(parts) > 1 and parts[0] == "harness":
                found.add(parts[1])
    return found


def stage_of(path: Path) -> str:
    return path.relative_to(HARNESS).parts[0].removesuffix(".py")


def wrong_imports(path: Path, source: str | None = None) -> list[str]:
    stage = stage_of(path)
    if stage not in ALLOWED:  # the entry points (cli, bench) may use anything
        return []
    return [f"{path.relative_to(REPO_ROOT)} imports harness.{imported}"
            for imported in sorted(harness_imports(path, source) - {stage})
            if imported not in ALLOWED[stage]]


def test_each_stage_imports_only_the_stages_before_it():
    assert [problem for path in sorted(HARNESS.rglob("*.py")) for problem in wrong_imports(path)] \
        == []


def test_the_check_sees_an_import_against_the_direction():
    """A reports module importing a machine and the plugin is caught (so the test above can
    fail); the module is never written, so no other test can see it."""
    probe = HARNESS / "reports" / "_layout_probe.py"
    source = "from ..machines.qemu import QemuMachine\nfrom harness.plugin import run\n"
    assert wrong_imports(probe, source) == [
        "harness/reports/_layout_probe.py imports harness.machines",
        "harness/reports/_layout_probe.py imports harness.plugin"]
