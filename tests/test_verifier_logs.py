"""BpfObject's verifier logs: the buffers are made once per agent and shared by every load, so a
failed load must report its own program's log, never one a failed load before it left behind."""
from __future__ import annotations

import errno

import pytest

from harness.agent import libbpf


class FailingLibbpf:
    """A libbpf whose objects hold the named programs; loading writes `log` into the failing
    program's buffer (as libbpf's retry with log_level 1 does) and fails with EACCES."""

    def __init__(self) -> None:
        self.programs: list[str] = []
        self.failing: str | None = None
        self.log = b""
        self.buffers: dict[int, object] = {}

    def bpf_object__open_file(self, path, opts):
        return 1

    def bpf_object__next_program(self, obj, prog):
        index = 0 if prog is None else prog
        return index + 1 if index < len(self.programs) else None

    def bpf_program__name(self, prog):
        return self.programs[prog - 1].encode()

    def bpf_program__set_log_buf(self, prog, buf, size):
        self.buffers[prog] = buf
        return 0

    def bpf_program__set_autoload(self, prog, autoload):
        return 0

    def bpf_object__load(self, obj):
        if self.failing is None:
            return 0
        self.buffers[self.programs.index(self.failing) + 1].value = self.log
        return -errno.EACCES

    def bpf_object__close(self, obj):
        pass


def load(fake: FailingLibbpf, programs: list[str], failing: str | None, log: bytes = b"") -> None:
    fake.programs, fake.failing, fake.log, fake.buffers = programs, failing, log, {}
    libbpf.BpfObject("/objects/prog.bpf.o")


def test_a_failed_load_reports_its_own_programs_log_only(monkeypatch):
    fake = FailingLibbpf()
    monkeypatch.setattr(libbpf, "_lib", fake)
    with pytest.raises(libbpf.BpfError):
        load(fake, ["first", "second"], "first", b"R1 invalid mem access")
    load(fake, ["first", "second"], None)  # buffers reused, nothing written
    with pytest.raises(libbpf.BpfError) as failed:
        load(fake, ["other", "second"], "second", b"unreachable insn 7")
    assert failed.value.errno_name == "EACCES"
    # buffer 0 still held the first load's log: it is this load's "other", which wrote nothing
    assert failed.value.verifier_log == "--- second\nunreachable insn 7"


def test_the_buffers_are_made_once_and_shared_by_position(monkeypatch):
    fake = FailingLibbpf()
    monkeypatch.setattr(libbpf, "_lib", fake)
    load(fake, ["a", "b", "c"], None)
    first = dict(fake.buffers)
    load(fake, ["x", "y"], None)
    assert fake.buffers[1] is first[1] and fake.buffers[2] is first[2]
    assert len(libbpf._log_buffers) >= 3
