"""A QMP client, just what saving a guest needs (machines/snapshot.py): stop it, migrate its
state into a file, let it run on.

QMP is QEMU's JSON protocol on a socket: a greeting, then qmp_capabilities, then one command at a
time, each answered by {"return": ...} or {"error": ...}, with events ({"event": ...}) in between
(docs/interop/qmp-spec in QEMU's tree).
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from ..errors import KconformError

SNAPSHOT_FD = "kconform-snapshot"  # the name getfd gives the file a save is written into


class QmpError(KconformError):
    pass


class QmpClient:
    def __init__(self, path: Path, deadline: float):
        """Connect to QEMU's -qmp unix socket at `path`, trying until `deadline` (monotonic):
        QEMU makes the socket as it starts."""
        self.deadline = deadline
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError as exc:
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise QmpError(f"cannot connect to QEMU's QMP socket {path} ({exc})") from None
                time.sleep(0.05)
        self._buffer = b""
        try:
            self._read()  # the greeting
            self.execute("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self) -> dict[str, object]:
        while b"\n" not in self._buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError("QEMU's QMP socket did not answer in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise QmpError(f"QEMU's QMP socket failed ({exc})") from None
            if not chunk:
                raise QmpError("QEMU closed its QMP socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            value = json.loads(line)
        except ValueError:
            raise QmpError(f"QEMU sent {line[:200]!r} on its QMP socket, not JSON") from None
        if not isinstance(value, dict):
            raise QmpError(f"QEMU sent {line[:200]!r} on its QMP socket, not an object")
        return value

    def execute(self, command: str, *, fd: int | None = None, **arguments: object) -> object:
        """Run one command; its "return" value. QmpError on its "error". fd: a file descriptor
        sent with it (SCM_RIGHTS), as getfd takes one."""
        request: dict[str, object] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        try:
            if fd is None:
                self.sock.sendall(data)
            else:
                socket.send_fds(self.sock, [data], [fd])
        except OSError as exc:
            raise QmpError(f"QEMU's QMP socket failed ({exc})") from None
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpError(f"QEMU refused {command}: {reply['error']}")
            return reply.get("return")

    def close(self) -> None:
        self.sock.close()


def save_state(qmp: QmpClient, fd: int) -> None:
    """Migrate the guest's whole state into the open file `fd`, waiting until QEMU says it
    completed; QEMU then holds the guest paused, and the caller continues it. The file goes to
    QEMU as a descriptor (getfd, then migrate to fd:), not as a path on an exec: command line: no
    shell is in between, and QEMU's writes are all in the file once it says completed (an exec:
    child may still be writing then, and QEMU's close sends it SIGTERM).

    It is migrated running, not stopped first: the state records whether the guest ran, and
    QEMU starts a restored guest only if it did. An idle guest (its agent waiting for a line)
    dirties next to nothing, so the copy converges at once."""
    # QEMU throttles a migration to 32 MiB/s by default (a live one must leave the guest some
    # bandwidth); an idle guest to a local file has nothing to leave room for.
    qmp.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    qmp.execute("getfd", fd=fd, fdname=SNAPSHOT_FD)
    qmp.execute("migrate", uri=f"fd:{SNAPSHOT_FD}")
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = info.get("error-desc", status) if isinstance(info, dict) else status
            raise QmpError(f"QEMU could not save the guest: {detail}")
        if time.monotonic() >= qmp.deadline:
            raise QmpError("saving the guest did not complete in time")
        time.sleep(0.02)
