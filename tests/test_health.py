"""Splat detection and taint, on saved kernel logs."""
import datetime
import re
from pathlib import Path

import pytest

from harness.judging.crashes import crash_fingerprint
from harness.judging.health import HealthRules

DATA = Path(__file__).parent / "data"


def test_clean_boot_log_has_no_findings():
    lines = (DATA / "boot-6.1-clean.log").read_text().splitlines()
    assert HealthRules().check_lines(lines) == []


def test_warning_splat_is_found():
    findings = HealthRules().check({"log_during": [
        "[   20.1] ------------[ cut here ]------------",
        "[   20.1] WARNING: CPU: 0 PID: 312 at net/core/skmsg.c:123 sk_psock_drop+0x1/0x2",
        "[   20.1] Call Trace:"], "taint_before": 0, "taint_after": 512})
    kinds = [f.kind for f in findings]
    assert kinds == ["WARNING", "Call Trace", "taint"]


def test_new_unsigned_module_taint_is_not_a_finding():
    assert HealthRules().check({"log_during": [], "taint_before": 0, "taint_after": 8192}) == []


def test_allow_list_entries_expire(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'patterns = [{ name = "WARNING", regex = "WARNING: CPU" }]\n'
        '[[allow]]\nregex = "skmsg"\nreason = "known"\nexpires = "2030-01-01"\n')
    line = ["WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1"]
    assert HealthRules(rules, today=datetime.date(2029, 12, 31)).check_lines(line) == []
    assert len(HealthRules(rules, today=datetime.date(2030, 1, 2)).check_lines(line)) == 1


def test_panic_log_gives_a_fingerprint_of_the_first_frames():
    lines = (DATA / "panic-6.1-sysrq.log").read_text().splitlines()
    assert crash_fingerprint(lines) == \
        "sysrq_handle_crash|__handle_sysrq|write_sysrq_trigger|proc_reg_write"


def test_an_arm64_panic_gives_a_fingerprint_past_its_return_address_after_vpanic():
    # A real arm64 console (Debian 6.12.118-1, no root): arm64 prints "Call trace:", no "?"
    # guesses, and the frame after vpanic is "trace_suspend_resume+0x0/0x70", the symbol that
    # follows vpanic in the image (a noreturn call's return address), not a caller.
    lines = (DATA / "panic-6.12-arm64-no-root.log").read_text().splitlines()
    assert crash_fingerprint(lines) == \
        "mount_root_generic|mount_root|prepare_namespace|kernel_init_freeable"
    assert {f.kind for f in HealthRules().check_lines(lines)} == {"Call Trace", "panic"}


def test_an_arm64_sysrq_crash_has_the_fingerprint_of_the_amd64_one():
    # A real arm64 console from tests/test_arm64_vm.py (Debian 6.12.118-1): the same crash gets
    # the frames x86 gives it, so one known_crashes entry names it on both architectures.
    lines = (DATA / "panic-6.12-arm64-sysrq.log").read_text().splitlines()
    assert crash_fingerprint(lines) == \
        "sysrq_handle_crash|__handle_sysrq|write_sysrq_trigger|proc_reg_write"


def test_known_crashes_are_data_with_reasons_matched_by_their_first_frames(tmp_path):
    from harness.judging.health import KnownCrashes
    path = tmp_path / "known.toml"
    path.write_text('[[crash]]\nfingerprint = "a|b"\nreason = "why"\nlink = "https://x"\n')
    known = KnownCrashes(path)
    assert str(known.match("a|b|c|d")) == "known crash: why (https://x)"
    assert known.match("a|bc|d") is None and known.match("b|a") is None
    assert known.match(None) is None
    path.write_text('[[crash]]\nfingerprint = "a|b"\n')
    with pytest.raises(ValueError, match="needs a fingerprint and a reason"):
        KnownCrashes(path)


def test_a_crash_on_a_saved_log_is_known_by_an_entry_with_fewer_frames(tmp_path):
    from harness.judging.health import KnownCrashes
    fingerprint = crash_fingerprint((DATA / "panic-6.1-sysrq.log").read_text().splitlines())
    path = tmp_path / "known.toml"
    path.write_text('[[crash]]\nfingerprint = "sysrq_handle_crash|__handle_sysrq"\n'
                    'reason = "echo c > /proc/sysrq-trigger"\n')
    assert str(KnownCrashes(path).match(fingerprint)) == "known crash: echo c > /proc/sysrq-trigger"


def test_the_shipped_list_loads_and_its_example_is_a_valid_entry(tmp_path):
    from harness.judging.health import DEFAULT_KNOWN_CRASHES, KnownCrashes
    shipped = DEFAULT_KNOWN_CRASHES.read_text()
    # The commented example is what a user copies: uncommented, it is one entry that matches.
    example = "\n".join(line[2:] for line in shipped.splitlines()
                        if line.startswith("# ") and (line.startswith("# [[") or " = " in line))
    path = tmp_path / "known.toml"
    path.write_text(example + "\n")
    known = KnownCrashes(path)
    entry, = known.entries
    assert known.match(entry.fingerprint + "|do_syscall_64") is entry
    assert entry.reason and entry.link.startswith("https://")
    # Whatever the shipped list holds loads, and each entry's frames are function names.
    for shipped_entry in KnownCrashes().entries:
        frames = shipped_entry.fingerprint.split("|")
        assert all(re.fullmatch(r"[A-Za-z_]\w*", frame) for frame in frames), shipped_entry
