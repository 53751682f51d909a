"""Guest-side functions the harness itself calls (benchmarks, capability checks)."""


def noop():
    return None
