"""Where kconform keeps things outside the repo (kernels, BPF objects, probes)."""
import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """$KCONFORM_CACHE, else $XDG_CACHE_HOME/kconform, else ~/.cache/kconform."""
    explicit = os.environ.get("KCONFORM_CACHE")
    if explicit:
        path = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(xdg) / "kconform"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bpf_cache_dir() -> Path:
    """Where built BPF objects are cached (harness/bpf.py). It exists: a pinned-root guest mounts
    it before the first object is built."""
    path = cache_dir().resolve() / "bpf"
    path.mkdir(exist_ok=True)
    return path


def agent_argv(python: str, repo_root: str) -> list[str]:
    """The command that starts the guest agent, given where the machine sees the repo's files."""
    return [python, "-I", "-S", f"{repo_root}/harness/agent/agent.py", repo_root]


@contextlib.contextmanager
def cache_lock(directory: Path, key: str):
    """Serialise builders of one cache entry across xdist workers and concurrent runs (one fetch
    per kernel, one apt, one root). Entries are built in .staging-* directories and published
    with a rename; one older than an hour is from a run that died, and nobody holds it."""
    for stale in directory.glob(".staging-*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    with open(directory / f".lock-{key}", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
