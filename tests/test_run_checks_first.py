"""Review finding 12 (issue 16): every option that can be refused without a machine is refused
before kconform connects to the first SSH target."""
from __future__ import annotations

import socket
import threading

import pytest


@pytest.fixture
def listener():
    """A TCP port standing in for a target's sshd: it counts connections and hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    connections: list[object] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            connections.append(conn)
            conn.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    server.close()


@pytest.mark.parametrize("options, refusal", [
    (["--guest-memory", "1G$(id)"], "--guest-memory '1G$(id)': not a size"),
    (["--target", "ssh://root@lab_1"], "is not a DNS name"),
])
def test_a_bad_option_is_refused_before_any_target_is_connected_to(run_pytest, listener,
                                                                  options, refusal):
    port, connections = listener
    proc = run_pytest("cases", "--collect-only", "--target", f"ssh://root@127.0.0.1:{port}",
                      *options, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output[-2000:]
    assert refusal in output and "Traceback" not in output
    assert not connections, "the target was connected to before the options were checked"
