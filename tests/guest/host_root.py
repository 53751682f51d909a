"""Guest side of tests/test_readonly_root_vm.py: everything a root guest can try to write a file
of the host through the root it was given."""
import errno
import os
import subprocess

BIND = "/run/kconform-host-root"  # /run is the guest's own tmpfs


def _mount_of(path):
    """(mount point, fstype, options) of the mount holding path, from /proc/self/mountinfo."""
    best = ("", "", "")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            fstype = fields[fields.index("-") + 1]
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, fstype, fields[5])
    return best


def _write(path, content):
    try:
        with open(path, "w") as f:
            f.write(content)
        return "written"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _run(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    return {"status": proc.returncode, "stderr": proc.stderr.strip()[-300:]}


def write_through_root(path, content, control=None):
    """Remount / read-write, then write path as it is seen (maybe under one of virtme-ng's
    overlays) and through a plain bind of / (no overlays: the host's share itself), and create a
    file beside it. control: a file on a share the guest may write, to show writes are seen."""
    seen = {"remount": _run("mount", "-o", "remount,rw", "/")}
    os.makedirs(BIND, exist_ok=True)
    seen["bind"] = _run("mount", "--bind", "/", BIND)
    if seen["bind"]["status"] == 0:
        _run("mount", "-o", "remount,bind,rw", BIND)
    through_bind = BIND + path
    seen["share"] = dict(zip(("mount", "fstype", "options"), _mount_of(through_bind), strict=True))
    seen["write"] = _write(through_bind, content)
    seen["create"] = _write(through_bind + ".new", content)
    seen["write_as_seen"] = _write(path, content)
    if control is not None:
        seen["control"] = _write(control, content)
    _run("umount", BIND)
    return seen
