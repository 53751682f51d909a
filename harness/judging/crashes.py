"""Crash fingerprints: the first reliable stack frames of a kernel splat, so one crash keeps one
name across runs and builds, and a known crash can be listed as such."""
from __future__ import annotations

import re

_FRAME = re.compile(r"^\s*(?:\[[ \d.]+\]\s*)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")


# Frames of the reporting machinery, not of the fault: a fingerprint starts after them.
_REPORTING = re.compile(r"^(dump_stack\w*|show_stack|panic|_printk|printk|vpanic|__warn\w*|"
                        r"warn_slowpath\w*|report_bug|handle_bug|exc_invalid_op|asm_exc_\w+|"
                        r"die\w*|oops_\w+|__die\w*)$")


def crash_fingerprint(lines: list[str], frames: int = 4) -> str | None:
    """The first reliable stack frames after 'Call Trace:', e.g. 'sock_map_update_common|...'.

    Frames marked '?' are guesses from the stack scan and change between runs; compiler suffixes
    (.cold, .isra.0) change between builds. Both are left out so one crash keeps one fingerprint.
    """
    for i, line in enumerate(lines):
        if "Call Trace:" not in line:
            continue
        found: list[str] = []
        for follow in lines[i + 1:]:
            text = follow.split("] ", 1)[-1]
            if "RIP:" in text or "---[" in text or "</TASK>" in text:
                break
            m = _FRAME.match(text)
            if not m or text.lstrip().startswith("?"):
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
