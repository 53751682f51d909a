"""Where kconform keeps things outside the repo (kernels, BPF objects, probes)."""
import os
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
