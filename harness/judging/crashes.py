"""Crash fingerprints: the first reliable stack frames of a kernel splat, so one crash keeps one
name across runs and builds, and a known crash can be listed as such."""
from __future__ import annotations

import re

_AT_SYMBOL_START = re.compile(r"\+0x0/0x[0-9a-f]+")
_FRAME = re.compile(r"^\s*(?:\[[ \d.]+\]\s*)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")


# Frames of the reporting machinery, not of the fault: a fingerprint starts after them.
_REPORTING = re.compile(r"^(dump_stack\w*|dump_backtrace|show_stack|panic|_printk|printk|vpanic|"
                        r"__warn\w*|warn_slowpath\w*|report_bug|handle_bug|exc_invalid_op|asm_exc_\w+|"
                        r"die\w*|oops_\w+|__die\w*)$")


# Where a trace ends: x86's register dump or </TASK>, arm64's "Code:" line or its panic footer,
# and the end-of-trace marker both print.
_TRACE_END = ("RIP:", "---[", "</TASK>", "Code: ", "Kernel Offset:")


def crash_fingerprint(lines: list[str], frames: int = 4) -> str | None:
    """The first reliable stack frames after 'Call Trace:' (x86) or 'Call trace:' (arm64),
    e.g. 'sock_map_update_common|...'.

    Frames marked '?' are guesses from x86's stack scan and change between runs; compiler
    suffixes (.cold, .isra.0) change between builds. An arm64 frame at offset 0 is not a call
    site but a return address past a noreturn call (panic), which lands on the next symbol:
    vpanic is followed by whatever the linker put after it. All are left out so one crash keeps
    one fingerprint.
    """
    for i, line in enumerate(lines):
        if "Call Trace:" not in line and "Call trace:" not in line:
            continue
        found: list[str] = []
        for follow in lines[i + 1:]:
            text = follow.split("] ", 1)[-1]
            if any(end in text for end in _TRACE_END):
                break
            m = _FRAME.match(text)
            if not m or text.lstrip().startswith("?") or _AT_SYMBOL_START.search(text):
                continue
            name = m.group(1).split(".", 1)[0]
            if not found and _REPORTING.match(name):
                continue
            found.append(name)
            if len(found) == frames:
                break
        if found:
            return "|".join(found)
    return None
