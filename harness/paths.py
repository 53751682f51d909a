"""Where kconform's own files are, and how a machine starts the agent from them."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def agent_argv(python: str, repo_root: str, *, boot_log: bool) -> list[str]:
    """The command that starts the guest agent, given where the machine sees the repo's files.
    boot_log: send the kernel's log since boot with the hello (a guest kconform booted; not an
    SSH target, whose log since boot is not this run's)."""
    return [python, "-I", "-S", f"{repo_root}/harness/agent/agent.py", repo_root,
            *(["--boot-log"] if boot_log else [])]


def safe_file_name(name: str) -> str:
    """A kernel name (debian-6.1@6.1.190-1, a path) as one plain file name component."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name).strip("_")


def caller_cwd() -> Path:
    """Where the user typed the command: ./kconform cds to the repo and says where it was."""
    return Path(os.environ.get("KCONFORM_CALLER_CWD") or os.getcwd())


def caller_path(value: str | os.PathLike[str]) -> Path:
    """A path the user typed (an option's value), taken from where it was typed, absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else caller_cwd() / path
