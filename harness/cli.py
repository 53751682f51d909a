"""./kconform subcommands. Each one ends in a pytest run, so pytest's own options pass through."""
from __future__ import annotations

import os
import sys

from .paths import REPO_ROOT

USAGE = """\
./kconform suite [--kernel NAME[,NAME...]] [pytest args]   the conformance suite (cases/)
./kconform test [pytest args]                              kconform's own tests (tests/)
./kconform kernels                                         list the known kernel names
./kconform bench [--kernel NAME] [--calls N]               boot, agent start, per-call overhead

Anything after the subcommand goes to pytest: -k, -n 2, -x, --junitxml=..., --kernel all.
"""


def _pytest(args: list[str]) -> None:
    os.chdir(REPO_ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "suite":
        _pytest(["cases", *rest])
    elif command == "test":
        _pytest(["tests", *rest])
    elif command == "bench":
        from .bench import main as bench
        return bench(rest)
    elif command == "kernels":
        from .kernels import default_kernel_names, load_specs
        defaults = default_kernel_names()
        for name, spec in load_specs().items():
            mark = " (default)" if name in defaults else ""
            print(f"{name:14} {spec.description}{mark}")
        return 0
    else:
        print(f"kconform: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
