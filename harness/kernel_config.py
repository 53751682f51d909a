"""./kconform config: the kernel options the suite needs, as a config fragment.

Two sources, so the fragment never drifts from what the suite skips on:
- the cases' own `requires_config` marks (read by collecting the suite, booting nothing): what a
  kernel without them gets a skip for;
- what a guest needs to boot under virtme-ng at all (GUEST_OPTIONS): without these no case runs.

Printed as `CONFIG_X=y` lines, the form scripts/kconfig/merge_config.sh takes, or as the
`--configitem` arguments of `vng --kconfig` (--format vng).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from .cache import write_atomic
from .errors import KconformError
from .paths import REPO_ROOT

# The guest's boot path: virtme-ng's own required set (virtme/commands/configkernel.py) keeps
# most of these on, a distro or developer config may not; each says why kconform needs it.
GUEST_OPTIONS: dict[str, str] = {
    "CONFIG_VIRTIO_PCI": "the guest's devices are virtio-pci",
    "CONFIG_NET_9P": "the guest's root is the host's, shared over 9p",
    "CONFIG_NET_9P_VIRTIO": "the 9p transport",
    "CONFIG_9P_FS": "mounting the 9p root",
    "CONFIG_VIRTIO_CONSOLE": "the agent talks to the host over a virtio-serial port",
    "CONFIG_DEVTMPFS": "virtme-ng's init mounts /dev",
    "CONFIG_TMPFS": "virtme-ng's init mounts /tmp and /run",
    "CONFIG_OVERLAY_FS": "virtme-ng overlays the read-only root's /etc",
    "CONFIG_UNIX": "virtme-ng's init and the AF_UNIX cases",
    "CONFIG_INET": "every TCP and UDP case",
    "CONFIG_BPF_SYSCALL": "every case: the bpf() syscall",
}


class _MarkCollector:
    """A pytest plugin that records every collected case's requires_config options."""

    def __init__(self) -> None:
        self.needed_by: dict[str, set[str]] = defaultdict(set)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            test = item.originalname if isinstance(item, pytest.Function) else item.name
            for mark in item.iter_markers("requires_config"):
                for option in mark.args:
                    self.needed_by[str(option)].add(f"{item.path.name}::{test}")


def case_options() -> dict[str, set[str]]:
    """{option: the tests that need it}, from a collection of the suite that boots nothing."""
    collector = _MarkCollector()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        status = pytest.main([str(REPO_ROOT / "cases"), "--collect-only", "-q",
                              "-p", "no:cacheprovider", "--kernel", "debian-6.1"],
                             plugins=[collector])
    if status != 0:  # a usage error is on stderr already; a collection error went to stdout
        sys.stderr.write(quiet.getvalue()[-4000:])
        raise KconformError(f"collecting the suite failed (pytest's exit status {status}); "
                            "its message is above")
    return dict(collector.needed_by)


def fragment() -> list[tuple[str, str]]:
    """(option, why) for every option, the guest's first, then the cases' in name order."""
    needed = case_options()
    lines = list(GUEST_OPTIONS.items())
    for option in sorted(set(needed) - set(GUEST_OPTIONS)):
        tests = sorted(needed[option])
        shown = ", ".join(tests[:3]) + (f" and {len(tests) - 3} more" if len(tests) > 3 else "")
        lines.append((option, f"skipped without it: {shown}"))
    return lines


def fragment_of_a_child(cache: Path) -> list[tuple[str, str]]:
    """fragment(), collected by a child process (inside a pytest run, as --build is, the suite
    cannot be collected a second time in the same process) and kept in the cache under a digest
    of the cases and this file: collecting takes seconds, and a rerun on an unchanged tree
    should start its boot at once."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted((REPO_ROOT / "cases").rglob("*.py")):
        h.update(path.read_bytes())
    kept = cache / f"config-fragment-{h.hexdigest()[:16]}.json"
    if kept.is_file():
        return [(str(o), str(w)) for o, w in json.loads(kept.read_text())]
    lines = _child_fragment()
    write_atomic(kept, json.dumps(lines))
    return lines


def _child_fragment() -> list[tuple[str, str]]:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "config"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise KconformError(f"./kconform config failed:\n{proc.stderr.strip()[-2000:]}")
    lines, why = [], ""
    for line in proc.stdout.splitlines():
        if line.startswith("# "):
            why = line[2:]
        elif line.endswith("=y"):
            lines.append((line[:-2], why))
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kconform config", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="e.g. ./kconform config > kconform.config && "
               "scripts/kconfig/merge_config.sh .config kconform.config; or "
               "vng --kconfig $(./kconform config --format vng)")
    parser.add_argument("--format", choices=("fragment", "vng"), default="fragment",
                        help="fragment: CONFIG_X=y lines with a comment each (merge_config.sh); "
                             "vng: --configitem arguments for vng --kconfig")
    args = parser.parse_args(argv)
    try:
        lines = fragment()
    except KconformError as exc:
        print(f"kconform config: {exc}", file=sys.stderr)
        return 2
    if args.format == "vng":
        text = " ".join(f"--configitem {option}=y" for option, _ in lines) + "\n"
    else:
        text = ("# kconform: what the suite needs (./kconform config); merge into a .config "
                "with\n# scripts/kconfig/merge_config.sh\n"
                + "".join(f"# {why}\n{option}=y\n" for option, why in lines))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `./kconform config | head`: the reader had what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
