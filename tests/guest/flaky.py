"""Guest side of tests/faultcases/flaky.py: which boot of the kernel a call ran on."""


def boot_id():
    """The kernel's random boot id (Documentation/admin-guide/sysctl/kernel.rst, "random"): a
    new one for every boot, so two calls that return the same ran on one guest."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
