"""./kconform bench: where a kernel's time goes, printed as a table and saved as JSON.

Per kernel: boot (vng start to agent hello), agent start (guest init running the agent command to
the agent's hello, from the kernel's own clock), and the harness overhead of one guest call (host
round trip minus the time the guest spent in the function).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

from .accel import Accel, choose_accel
from .kernels import KernelProvider, expand_kernel_args, load_specs
from .session import GuestSession

OVERHEAD_TARGET_MS = 50.0


def agent_start_seconds(console: list[str], hello_uptime: float) -> float | None:
    for line in console:
        m = re.match(r"\[\s*([\d.]+)\] virtme-ng-init: starting script", line)
        if m:
            return hello_uptime - float(m.group(1))
    return None


def measure(name: str, provider: KernelProvider, accel: Accel, calls: int, results: Path) -> dict:
    tree = provider.get(name)
    session = GuestSession(tree, accel, results / f"bench-{name}.log", boot_timeout=300)
    session.start()
    try:
        session.call("harness.agent.probes:noop", timeout=10)  # warm: imports over 9p
        round_trips, inside = [], []
        for _ in range(calls):
            t = time.perf_counter()
            r = session.call("harness.agent.probes:noop", timeout=10)
            round_trips.append(time.perf_counter() - t)
            inside.append(r.elapsed)
    finally:
        session.close()
    overhead = [rt - e for rt, e in zip(round_trips, inside)]
    return {"kernel": name, "version": tree.exact_version, "accel": accel.name,
            "boot_s": round(session.boot_seconds, 2),
            "agent_start_s": round(agent_start_seconds(list(session.guest.console),
                                                       session.info["uptime"]) or -1, 2),
            "call_round_trip_ms": round(statistics.median(round_trips) * 1000, 2),
            "overhead_per_call_ms": round(statistics.median(overhead) * 1000, 2),
            "calls": calls}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kconform bench", description=__doc__)
    parser.add_argument("--kernel", action="append", default=[], help="as for the suite")
    parser.add_argument("--calls", type=int, default=50, help="guest calls timed per kernel")
    parser.add_argument("--json", default="results/bench.json", help="where to save the figures")
    args = parser.parse_args(argv)
    names = expand_kernel_args(args.kernel or ["default"], load_specs())
    provider = KernelProvider(log=lambda m: print(f"kconform: {m}", file=sys.stderr))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    accel = choose_accel(cache=provider.cache)
    rows = [measure(n, provider, accel, args.calls, out.parent) for n in names]
    header = f"{'kernel':14} {'version':12} {'accel':5} {'boot s':>7} {'agent s':>8} " \
             f"{'call ms':>8} {'overhead ms':>12} {'target':>8}"
    print(header)
    for r in rows:
        ok = "met" if r["overhead_per_call_ms"] <= OVERHEAD_TARGET_MS else "MISSED"
        print(f"{r['kernel']:14} {r['version']:12} {r['accel']:5} {r['boot_s']:7.1f} "
              f"{r['agent_start_s']:8.2f} {r['call_round_trip_ms']:8.1f} "
              f"{r['overhead_per_call_ms']:12.2f} {ok:>8}")
    print(f"overhead target: <= {OVERHEAD_TARGET_MS:.0f} ms per case; ratio to target: " +
          ", ".join(f"{r['kernel']} {r['overhead_per_call_ms'] / OVERHEAD_TARGET_MS:.3f}"
                    for r in rows))
    out.write_text(json.dumps(rows, indent=1))
    print(f"saved {out}")
    return 0
