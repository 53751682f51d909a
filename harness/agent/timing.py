"""Where one guest call's time goes, by kind: what ./kconform bench's work row splits the cases'
guest time into (issue #17, point 4: measure before cutting).

Guest side only, standard library only: it runs in the agent on every guest and SSH target, so
its syntax stays what the agent's oldest Python takes (no `X | Y` outside annotations).

While the agent has a call measured (start() ... stop(), around each call in agent.handle):
  bpf_load  time inside libbpf.BpfObject's open and load (the verifier's work among it)
  sockets   time inside sockets.tcp_pair, udp_pair, unix_pair and tcp_listener: making the
            sockets and their handshakes
  waiting   time blocked until the kernel has something: inside select.select, a poll object's
            poll() and time.sleep, and the part of a socket's connect() or accept() spent off
            the CPU (a vsock handshake runs in a work queue, so the caller sleeps; a TCP
            loopback handshake runs on the caller's CPU inside connect(), and stays sockets')
Every span counts its own time only: the time of a span inside it (a connect() inside tcp_pair)
is the inner span's kind, so the kinds add up to at most the call's time, and the host takes the
rest as "other" (Python itself, map operations, what a case does between waits).

The waits are measured by wrapping the module functions (select.select, select.poll,
time.sleep, socket.socket's connect and accept) for the duration of a call only, so no case has
to know: a case written tomorrow that waits in select is counted too, as long as it calls
through the module (`select.select(...)`, not a `from select import select` made at import,
which would keep the function unwrapped: tests/test_call_timing.py checks the guest side for
that). Outside a call nothing is wrapped: the agent's own reads of its channel are not a call's,
and a host process importing the guest modules (kconform's own tests) runs them as they are.
"""
from __future__ import annotations

import functools
import select
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

KINDS = ("bpf_load", "waiting", "sockets")

_F = TypeVar("_F", bound="Callable[..., Any]")  # a string: 3.8 cannot subscript abc.Callable
_clock = time.monotonic
_cpu_clock = time.thread_time  # the agent runs each call on its one thread


class CallTiming:
    """One call's seconds by kind; spans nest, each counting only its own time."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(KINDS, 0.0)
        # per open span (the call itself at the bottom): the time already given to spans in it
        self._inner = [0.0]

    def begin(self) -> None:
        self._inner.append(0.0)

    def end(self, kind: str, spent: float) -> None:
        """A span that began with begin() took `spent` seconds: its own are the kind's."""
        inner = self._inner.pop() if len(self._inner) > 1 else 0.0
        self.seconds[kind] += max(0.0, spent - inner)
        self._inner[-1] += max(spent, inner)

    def leaf(self, kind: str, counted: float) -> None:
        """A span with nothing inside it (a wait is one system call) counting `counted` s."""
        self.seconds[kind] += counted
        self._inner[-1] += counted


_current: CallTiming | None = None


def timed(kind: str) -> Callable[[_F], _F]:
    """A function whose time, while a call is measured, is `kind`'s (less any span inside it)."""
    def wrap(function: _F) -> _F:
        @functools.wraps(function)
        def measured(*args: Any, **kwargs: Any) -> Any:
            timing = _current
            if timing is None:
                return function(*args, **kwargs)
            timing.begin()
            started = _clock()
            try:
                return function(*args, **kwargs)
            finally:
                timing.end(kind, _clock() - started)
        return cast(_F, measured)
    return wrap


def _waiting(function: Callable[..., Any]) -> Callable[..., Any]:
    """select.select or time.sleep, its whole time counted as waiting."""
    def measured(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            return function(*args, **kwargs)
        finally:
            if _current is not None:
                _current.leaf("waiting", _clock() - started)
    return measured


class _MeasuredPoll:
    """A select.poll() object whose poll() is waiting; the rest is the object's own."""

    def __init__(self, poll: Any) -> None:
        self._poll = poll
        self.poll = _waiting(poll.poll)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poll, name)


def _polls(factory: Callable[[], Any]) -> Callable[[], _MeasuredPoll]:
    def measured() -> _MeasuredPoll:
        return _MeasuredPoll(factory())
    return measured


def _off_cpu(method: Callable[..., Any]) -> Callable[..., Any]:
    """A socket method whose time off the CPU is waiting (see the module's docstring)."""
    def measured(self: socket.socket, *args: Any) -> Any:
        started, cpu = _clock(), _cpu_clock()
        try:
            return method(self, *args)
        finally:
            if _current is not None:
                spent = _clock() - started
                _current.leaf("waiting", min(spent, max(0.0, spent - (_cpu_clock() - cpu))))
    return measured


_ABSENT = object()
# (owner, attribute, what it is outside a call, what it is during one); the originals are taken
# once, at import, so a stop() interrupted half way can never make a wrapper pass for one.
_WRAPPED: list[tuple[Any, str, object, object]] = [
    (select, "select", select.select, _waiting(select.select)),
    (time, "sleep", time.sleep, _waiting(time.sleep)),
    *([(select, "poll", select.poll, _polls(select.poll))] if hasattr(select, "poll") else []),
    # connect is _socket.socket's, inherited: the class's own attribute is absent outside a call
    *[(socket.socket, name, vars(socket.socket).get(name, _ABSENT),
       _off_cpu(getattr(socket.socket, name))) for name in ("connect", "accept")],
]


def start() -> CallTiming:
    """Measure a call from now on: the waits are wrapped until stop()."""
    global _current
    timing = CallTiming()
    for owner, name, _, during in _WRAPPED:
        setattr(owner, name, during)
    _current = timing
    return timing


def stop() -> None:
    """The call is over: everything start() wrapped is as it was (again, if it already was)."""
    global _current
    _current = None
    for owner, name, outside, _ in _WRAPPED:
        if outside is _ABSENT:
            if name in vars(owner):
                delattr(owner, name)
        else:
            setattr(owner, name, outside)
