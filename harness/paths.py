"""Where kconform's own files are, and how a machine starts the agent from them."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def agent_argv(python: str, repo_root: str, *, boot_log: bool) -> list[str]:
    """The command that starts the guest agent, given where the machine sees the repo's files.
    boot_log: send the kernel's log since boot with the hello (a guest kconform booted; not an
    SSH target, whose log since boot is not this run's)."""
    return [python, "-I", "-S", f"{repo_root}/harness/agent/agent.py", repo_root,
            *(["--boot-log"] if boot_log else [])]
