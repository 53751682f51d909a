"""Guest side of the injected faults in tests/faultcases: each breaks the guest in one way."""
import os
import time


def healthy():
    return {"pid": os.getpid()}


def panic():
    """Crash the kernel on purpose (needs CONFIG_MAGIC_SYSRQ, on in Debian kernels)."""
    with open("/proc/sys/kernel/sysrq", "w") as f:
        f.write("1")
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c")
    time.sleep(60)


def hang(seconds):
    time.sleep(seconds)
    return "woke up"


def fake_warning():
    """A WARNING splat in the kernel log, written from user space through /dev/kmsg."""
    with open("/dev/kmsg", "w") as f:
        f.write(f"WARNING: CPU: 0 PID: {os.getpid()} at net/core/sock_map.c:1 "
                "kconform_injected+0x0/0x10\n")
    return "written"


def kill_agent():
    os._exit(3)


def drop_connection():
    """Kill the SSH server process that carries this agent's session: the host loses the
    connection in the middle of a call, as when a lab machine's network goes away."""
    import signal
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)


def load_rejected(obj):
    """Load an object whose program the verifier refuses: the error carries the verifier log."""
    from harness.agent import libbpf
    with libbpf.BpfObject(obj):
        return "loaded"
