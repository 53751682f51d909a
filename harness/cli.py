"""./kconform subcommands. suite, test and bench end in a pytest run, so pytest's own options pass
through; merge, compare and kcidb read results files only (no VM, no pytest)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .paths import REPO_ROOT, caller_cwd, caller_path

USAGE = """\
./kconform suite [--kernel NAME[,NAME...]] [pytest args]   the conformance suite (cases/)
./kconform suite --compare BASE NEW [pytest args]          run two kernels, report what differs
./kconform test [pytest args]                              kconform's own tests (tests/)
./kconform merge RESULTS... [-o DIR]                       one grid from several runs' report.json
./kconform compare RESULTS [RESULTS] [--base K --new K]    what differs; exit 1 on a regression
./kconform kcidb RESULTS -o FILE [--origin NAME]           the run as KCIDB data (KernelCI)
./kconform bisect ID... [-k EXPR] --kernel RANGE          the version whose outcome changed
./kconform kernels [--versions NAME...]                    the known kernel names; their versions
./kconform cache [list]                                    what is cached: size, last use
./kconform cache prune [--keep N] [--older-than 30d]       remove what no run uses [--dry-run]
./kconform cache verify                                    re-hash the cached kernels and roots
./kconform bench [--kernel NAME]                           floor, suite, naive loop, matrix, memory
./kconform config [--format fragment|vng]                  the kernel options the suite needs

Anything after suite/test goes to pytest: -k, -n 2, -x, --kernel all, a test id.
RESULTS is a report.json, or a directory holding one (a run's --results-dir, a CI artifact).
"""


def _pytest_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def _pytest(args: list[str]) -> None:
    os.chdir(REPO_ROOT)
    os.execv(sys.executable, _pytest_argv(args))


def suite_args(rest: list[str]) -> list[str]:
    """pytest arguments of `suite`: cases/ unless the user named tests (a path or a test id), as
    the reproduction line of a failure does."""
    named = any("::" in arg or (not arg.startswith("-") and arg.split("::")[0].endswith(".py"))
                for arg in rest)
    return rest if named else ["cases", *rest]


def results_dir_of(args: list[str]) -> Path:
    """The --results-dir a pytest command line sets (the plugin's default otherwise), taken
    from where the user typed it, as the plugin takes it."""
    value = "results"
    for i, arg in enumerate(args):
        if arg == "--results-dir" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--results-dir="):
            value = arg.split("=", 1)[1]
    return caller_path(value).resolve()


def suite_compare(rest: list[str]) -> int:
    """`suite --compare BASE NEW`: one run over both kernels, then the comparison of its results.
    Exit status: pytest's when the run itself broke (usage error, interrupted), else compare's."""
    i = rest.index("--compare")
    kernels = rest[i + 1:i + 3]
    if len(kernels) != 2 or any(k.startswith("-") for k in kernels):
        print("kconform: --compare takes two kernels: --compare debian-6.1 debian-6.12",
              file=sys.stderr)
        return 2
    args = rest[:i] + rest[i + 3:]
    if any(a == "--kernel" or a.startswith("--kernel=") for a in args):
        print("kconform: --compare names the kernels; leave out --kernel", file=sys.stderr)
        return 2
    if any(a == "--arch" or a.startswith("--arch=") for a in args):
        print("kconform: --compare names the two kernels, architecture and all; leave out "
              "--arch, e.g. --compare debian-6.12 debian-6.12-arm64", file=sys.stderr)
        return 2
    from .errors import KconformError
    from .kernels import expand_kernel_args, load_specs
    try:  # the names the run gives them (a path becomes absolute), so compare finds them
        if "--build" in args:  # a source tree is named by its build
            from .cache import cache_dir
            from .kernel_config import fragment_of_a_child
            from .kernels.build import built_kernel_values
            kernels = built_kernel_values(kernels, cache_dir(),
                                          lambda: fragment_of_a_child(cache_dir()),
                                          lambda m: print(f"kconform: {m}", file=sys.stderr))
        specs = load_specs()
        named = [expand_kernel_args([k], specs, cwd=caller_cwd()) for k in kernels]
    except KconformError as exc:
        print(f"kconform: {exc}", file=sys.stderr)
        return 2
    if any(len(n) != 1 for n in named) or named[0] == named[1]:
        print(f"kconform: --compare {kernels[0]} {kernels[1]}: name two different kernels, one "
              "each (not all or default): --compare debian-6.1 debian-6.12", file=sys.stderr)
        return 2
    kernels = [named[0][0], named[1][0]]
    status = subprocess.call(_pytest_argv(suite_args(["--kernel", ",".join(kernels), *args])),
                             cwd=REPO_ROOT)
    if status not in (0, 1):
        return status
    print(flush=True)
    return compare_main([str(results_dir_of(args)), "--base", kernels[0], "--new", kernels[1]])


def _caller_cwd() -> None:
    """./kconform runs from the repo; paths given to merge and compare are the caller's."""
    os.chdir(caller_cwd())


def merge_main(argv: list[str]) -> int:
    from .errors import KconformError
    from .reports.grid import write_reports
    from .reports.results import load, merge, writable_directory
    parser = argparse.ArgumentParser(
        prog="kconform merge", description="Merge the results of several runs (one kernel each, "
        "e.g. a CI matrix) into one results file with its JUnit file and grid.")
    parser.add_argument("results", nargs="+", help="report.json files, or directories holding one")
    parser.add_argument("-o", "--output", default="results/merged", metavar="DIR",
                        help="where report.{json,junit.xml,md,html} go (default: results/merged)")
    args = parser.parse_args(argv)
    _caller_cwd()
    try:
        merged = merge([(path, load(path)) for path in args.results])
        output = writable_directory(Path(args.output).resolve(), "-o",
                                    "give -o a directory you can write")
        for path in write_reports(merged, output):
            print(path)
    except KconformError as exc:
        print(f"kconform merge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the directory stopped taking files while the reports were written
        print(f"kconform merge: -o {args.output}: cannot write the reports "
              f"({exc.strerror or exc}); "
              "give -o a directory you can write", file=sys.stderr)
        return 2
    return 0


def compare_main(argv: list[str]) -> int:
    from .errors import KconformError
    from .reports.compare import compare, render, sides
    parser = argparse.ArgumentParser(
        prog="kconform compare", description="Print the behaviours whose observed outcome differs "
        "between two kernels. Exit status 1 when a behaviour regressed (pass or expected "
        "difference on the base kernel, fail or crashed on the new one), 0 otherwise.")
    parser.add_argument("results", nargs="+", help="one results file holding both kernels, or two "
                        "(base first); a directory stands for its report.json")
    parser.add_argument("--base", metavar="KERNEL", help="the kernel compared against")
    parser.add_argument("--new", metavar="KERNEL", help="the kernel under test")
    args = parser.parse_args(argv)
    _caller_cwd()
    try:  # every input is checked here: exit 1 means a regression, never a broken input
        base, new = sides(args.results, args.base, args.new)
        result = compare(base, new)
        text = render(result)
    except KconformError as exc:
        print(f"kconform compare: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 1 if result.regressions else 0


def kcidb_main(argv: list[str]) -> int:
    """`kcidb`: a results file as KCIDB data, validated with kcidb-io; nothing is sent."""
    from .errors import KconformError
    from .reports.kcidb import DEFAULT_ORIGIN, SCHEMA, checked_origin, kcidb_text
    from .reports.results import load, write_atomic
    parser = argparse.ArgumentParser(
        prog="kconform kcidb", description=f"Write a run's results as KCIDB data (schema "
        f"{SCHEMA}, validated with kcidb-io), the format KernelCI gathers kernel test results "
        "in. Nothing is sent: submit the file with kcidb-submit.")
    parser.add_argument("results", help="a report.json, or the directory holding one")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="where the KCIDB JSON goes (- for standard output)")
    parser.add_argument("--origin", default=DEFAULT_ORIGIN, metavar="NAME",
                        help="the submitting CI system, which every id starts with: lower-case "
                        f"letters, digits and _ (default: {DEFAULT_ORIGIN})")
    args = parser.parse_args(argv)
    _caller_cwd()
    try:
        results = load(args.results)
        text = kcidb_text(results, checked_origin(args.origin))
    except KconformError as exc:
        print(f"kconform kcidb: {exc}", file=sys.stderr)
        return 2
    if any(not run.complete for run in results.runs):
        print("kconform kcidb: warning: the run had not finished (or was interrupted) when its "
              "results were written; its ids are those of what it holds now, so exporting it "
              "again once it ends gives other ids, which KCIDB counts as another run",
              file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        write_atomic(Path(args.output), text)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"kconform kcidb: -o {args.output}: cannot write it ({reason}); give -o a file "
              "in a directory you can write", file=sys.stderr)
        return 2
    print(args.output)
    return 0


def bisect_main(argv: list[str]) -> int:
    """`bisect`: boots versions of a range in child runs of the suite (harness/bisect.py)."""
    from .bisect import main as bisect
    return bisect(argv)


def cache_main(argv: list[str]) -> int:
    """`cache` (or `cache list`): what is cached, with size and last use; `cache prune`: remove
    what no running kconform uses; `cache verify`: every cached kernel tree and root re-hashed
    against its manifest (a run checks only sizes and mtimes), exit 1 when something is
    damaged."""
    from .cache import cache_dir
    from .errors import KconformError
    command, rest = (argv[0], argv[1:]) if argv else ("list", [])
    if command not in ("list", "prune", "verify") or (rest and command != "prune"):
        print("kconform: usage: ./kconform cache [list | verify | prune [--keep N] "
              "[--older-than DURATION] [--dry-run]]", file=sys.stderr)
        return 2
    if command == "prune":
        return cache_prune_main(rest)
    try:
        cache = cache_dir()
    except KconformError as exc:
        print(f"kconform cache: {exc}", file=sys.stderr)
        return 2
    if command == "list":
        from .cache_entries import entries, render_list
        print(render_list(cache, entries(cache)))
        return 0
    return cache_verify(cache)


def cache_prune_main(argv: list[str]) -> int:
    from .cache import cache_dir
    from .cache_entries import (
        entries,
        parse_duration,
        prune,
        render_prune_total,
        require_a_choice,
        select,
    )
    from .errors import KconformError

    def keep_count(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r} is not a count: give a whole number, "
                                             "e.g. --keep 1 (the newest version of each series)")
        return int(text)

    def duration(text: str) -> float:
        try:
            return parse_duration(text)
        except KconformError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser = argparse.ArgumentParser(
        prog="kconform cache prune", description="Remove cached kernels, roots and BPF objects "
        "that no running kconform uses: those not among the --keep N newest of their kind "
        "(kernels: versions per series and flavour; roots: per recipe; BPF objects: per "
        "program) and, with --older-than, not used for that long.")
    parser.add_argument("--keep", type=keep_count, metavar="N",
                        help="keep the N newest versions of each kernel series, root and BPF "
                        "program")
    parser.add_argument("--older-than", type=duration, metavar="DURATION",
                        help="remove only what no run used for this long: a number and a unit, "
                        "s, m, h, d or w (e.g. 30d)")
    parser.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    args = parser.parse_args(argv)
    try:
        require_a_choice(args.keep, args.older_than)  # before walking a large cache
        cache = cache_dir()
        found = entries(cache)
        doomed = select(found, args.keep, args.older_than, now=time.time())
    except KconformError as exc:
        print(f"kconform cache prune: {exc}", file=sys.stderr)
        return 2
    removed = prune(cache, doomed, args.dry_run)
    print(render_prune_total(removed, args.dry_run))
    return 0


def cache_verify(cache: Path) -> int:
    from .cache import verify_cache
    entries = [p for d in ("trees", "rootfs") for p in (cache / d).glob("*")
               if not p.name.startswith(".")]
    damaged, unverifiable = verify_cache(cache)
    for line in damaged:
        print(f"damaged: {line}")
    for line in unverifiable:
        print(f"not verified: {line}")
    if damaged:
        # Same size and mtime: a run's own check would not notice, so say how to drop them.
        print(f"{len(damaged)} of {len(entries)} entries in {cache} are damaged: remove each "
              "(rm -rf PATH), and the next run that needs it fetches or builds it again")
        return 1
    print(f"{len(entries)} entries in {cache} match their manifests")
    return 0


def kernels_main(argv: list[str]) -> int:
    """`kernels`: the known names; `kernels --versions NAME...`: every build the archive holds for
    each, with its ABI, suite and whether it is cached."""
    from .errors import KconformError
    from .kernels import KernelProvider, default_kernel_names, load_specs
    parser = argparse.ArgumentParser(
        prog="kconform kernels", description="List the named kernels (kernels/*.toml), or with "
        "--versions the versions the archive holds for some of them.")
    parser.add_argument("--versions", nargs="+", metavar="NAME", help="list every build of "
                        "these named kernels: version, ABI, suite, cached (asks the archive)")
    args = parser.parse_args(argv)
    try:
        specs = load_specs()
        defaults = default_kernel_names(specs=specs)
        if not args.versions:
            for name, spec in specs.items():
                mark = " (default)" if name in defaults else ""
                print(f"{name:16} {spec.description}{mark}")
            return 0
        unknown = [n for n in args.versions if n not in specs]
        if unknown:
            raise KconformError(f"--versions {' '.join(unknown)}: not a named kernel; known: "
                                f"{', '.join(specs)}")
        provider = KernelProvider(specs=specs, log=lambda m: print(f"kconform: {m}",
                                                                  file=sys.stderr))
        for name in args.versions:
            builds = provider.versions(specs[name])
            print(f"{name}: {specs[name].description}")
            print(f"  {'version':20} {'ABI':22} {'suite':20} cached")
            for build in builds:
                cached = "yes" if provider.cached_tree(build) else ""
                current = "  (current)" if build == builds[-1] else ""
                print(f"  {build.version:20} {build.abi_number:22} {build.suite:20} "
                      f"{cached:6}{current}".rstrip())
            plural = "s" if len(builds) > 1 else ""
            print(f"  {len(builds)} version{plural}; run one with --kernel {name}@<version>, a "
                  f"range with --kernel '{name}@{builds[0].version}..{builds[-1].version}'")
    except KconformError as exc:
        print(f"kconform kernels: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "suite":
        if "--compare" in rest:
            return suite_compare(rest)
        _pytest(suite_args(rest))
    elif command == "test":
        _pytest(["tests", *rest])
    elif command == "merge":
        return merge_main(rest)
    elif command == "compare":
        return compare_main(rest)
    elif command == "kcidb":
        return kcidb_main(rest)
    elif command == "bench":
        from .bench import main as bench
        return bench(rest)
    elif command == "cache":
        return cache_main(rest)
    elif command == "bisect":
        return bisect_main(rest)
    elif command == "kernels":
        return kernels_main(rest)
    elif command == "config":
        from .kernel_config import main as config
        return config(rest)
    else:
        print(f"kconform: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
