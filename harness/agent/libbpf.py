"""A thin ctypes binding over the distribution's libbpf (libbpf.so.1), for guest-side code.

Only what the cases need, each call mapped one to one. Failures raise BpfError carrying the errno
name ("EBUSY"), because an errno is what the documented contract talks about.
"""
import contextlib
import ctypes
import errno as _errno
import os
import struct

ENOTSUPP = 524  # kernel-internal, leaks to user space from BPF; not in Python's errno table

MAP_TYPES = {"hash": 1, "array": 2, "sockmap": 15, "sockhash": 18}
PROG_TYPES = {"socket_filter": 1, "sock_ops": 13, "sk_skb": 14, "sk_msg": 16}
ATTACH_TYPES = {
    "cgroup_sock_ops": 3,
    "stream_parser": 4,       # BPF_SK_SKB_STREAM_PARSER
    "stream_verdict": 5,      # BPF_SK_SKB_STREAM_VERDICT
    "msg_verdict": 7,         # BPF_SK_MSG_VERDICT
    "trace_iter": 28,
    "skb_verdict": 38,        # BPF_SK_SKB_VERDICT
}
BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK = 0, 1, 2, 4
BPF_F_INGRESS = 1


# Where two names share a number, the one the kernel source and the docs use.
_PREFERRED = {ENOTSUPP: "ENOTSUPP", _errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN",
              _errno.EDEADLK: "EDEADLK"}


def errno_name(code):
    return _PREFERRED.get(code) or _errno.errorcode.get(code, "E%d" % code)


class BpfError(OSError):
    def __init__(self, code, op, verifier_log=None):
        super().__init__(code, "%s: %s (%s)" % (op, os.strerror(code), errno_name(code)))
        self.op = op
        self.errno_name = errno_name(code)
        self.verifier_log = verifier_log


_lib = None


def lib():
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise RuntimeError("libbpf.so.1 not found in the guest: install libbpf1 "
                               "(Debian/Ubuntu) on the guest's root filesystem") from exc
        _declare(_lib)
    return _lib


def _declare(l):
    vp, c_int, u32, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
    sigs = {
        "bpf_map_create": (c_int, [c_int, ctypes.c_char_p, u32, u32, u32, vp]),
        "bpf_map_update_elem": (c_int, [c_int, vp, vp, u64]),
        "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
        "bpf_map_delete_elem": (c_int, [c_int, vp]),
        "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
        "bpf_prog_attach": (c_int, [c_int, c_int, c_int, ctypes.c_uint]),
        "bpf_prog_detach2": (c_int, [c_int, c_int, c_int]),
        "bpf_prog_query": (c_int, [c_int, c_int, u32, ctypes.POINTER(u32),
                                   ctypes.POINTER(u32), ctypes.POINTER(u32)]),
        "bpf_link_create": (c_int, [c_int, c_int, c_int, vp]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, vp, ctypes.POINTER(u32)]),
        "bpf_prog_get_fd_by_id": (c_int, [u32]),
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (c_int, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_map_fd_by_name": (c_int, [vp, ctypes.c_char_p]),
        "bpf_program__fd": (c_int, [vp]),
        "bpf_program__name": (ctypes.c_char_p, [vp]),
        "bpf_program__set_log_buf": (c_int, [vp, ctypes.c_char_p, ctypes.c_size_t]),
        "bpf_program__set_autoload": (c_int, [vp, ctypes.c_bool]),
        "bpf_prog_test_run_opts": (c_int, [c_int, vp]),
        "bpf_link_update": (c_int, [c_int, c_int, vp]),
        "bpf_link_detach": (c_int, [c_int]),
        "bpf_iter_create": (c_int, [c_int]),
        "bpf_object__btf": (vp, [vp]),
        "btf__fd": (c_int, [vp]),
        "btf__find_by_name_kind": (ctypes.c_int32, [vp, ctypes.c_char_p, u32]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(l, name)
        fn.restype, fn.argtypes = res, args


def _check(ret, op):
    if ret < 0:
        raise BpfError(-ret, op)
    return ret


class _MapCreateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


def map_create(map_type, key_size, value_size, max_entries, map_flags=0, btf_fd=0,
               btf_key_type_id=0, btf_value_type_id=0, numa_node=0, name=None):
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), btf_fd=btf_fd,
                          btf_key_type_id=btf_key_type_id, btf_value_type_id=btf_value_type_id,
                          map_flags=map_flags, numa_node=numa_node)
    kind = MAP_TYPES.get(map_type, map_type)
    return _check(lib().bpf_map_create(kind, name.encode() if name else None, key_size, value_size,
                                       max_entries, ctypes.byref(opts)), "map_create")


@contextlib.contextmanager
def created_map(map_type, key_size, value_size, max_entries, **kwargs):
    """A map fd closed when the block ends, even when a step inside fails: the agent lives on."""
    fd = map_create(map_type, key_size, value_size, max_entries, **kwargs)
    try:
        yield fd
    finally:
        os.close(fd)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def _buf(data):
    return ctypes.create_string_buffer(bytes(data), len(data))


def map_update(fd, key, value, flags=BPF_ANY):
    """key and value are bytes (see u32/u64); a socket value is its fd as u32 or u64."""
    _check(lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags), "map_update")


def map_lookup(fd, key, value_size):
    out = ctypes.create_string_buffer(value_size)
    _check(lib().bpf_map_lookup_elem(fd, _buf(key), out), "map_lookup")
    return out.raw


def map_delete(fd, key):
    _check(lib().bpf_map_delete_elem(fd, _buf(key)), "map_delete")


def map_get_next_key(fd, key, key_size):
    out = ctypes.create_string_buffer(key_size)
    _check(lib().bpf_map_get_next_key(fd, _buf(key) if key is not None else None, out),
           "map_get_next_key")
    return out.raw


def prog_attach(prog_fd, target_fd, attach_type, flags=0):
    _check(lib().bpf_prog_attach(prog_fd, target_fd, ATTACH_TYPES.get(attach_type, attach_type),
                                 flags), "prog_attach")


def prog_detach(prog_fd, target_fd, attach_type):
    _check(lib().bpf_prog_detach2(prog_fd, target_fd, ATTACH_TYPES.get(attach_type, attach_type)),
           "prog_detach")


def prog_query(target_fd, attach_type, query_flags=0, max_ids=8):
    attach_flags = ctypes.c_uint32(0)
    ids = (ctypes.c_uint32 * max_ids)()
    count = ctypes.c_uint32(max_ids)
    _check(lib().bpf_prog_query(target_fd, ATTACH_TYPES.get(attach_type, attach_type), query_flags,
                                ctypes.byref(attach_flags), ids, ctypes.byref(count)), "prog_query")
    return {"attach_flags": attach_flags.value, "prog_ids": list(ids[:count.value]),
            "prog_cnt": count.value}


def prog_get_fd_by_id(prog_id):
    """An fd of a loaded program, found by its id (as prog_query lists them)."""
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), "prog_get_fd_by_id")


class _LinkCreateOpts(ctypes.Structure):
    # The leading fields of libbpf's struct bpf_link_create_opts; `sz` tells libbpf where we stop.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32),
                ("iter_info", ctypes.c_void_p), ("iter_info_len", ctypes.c_uint32)]


def link_create(prog_fd, target_fd, attach_type, flags=0, iter_map_fd=None):
    info = ctypes.c_uint32(iter_map_fd) if iter_map_fd is not None else None
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags,
                           iter_info=ctypes.cast(ctypes.byref(info), ctypes.c_void_p)
                           if info is not None else None,
                           iter_info_len=ctypes.sizeof(info) if info is not None else 0)
    return _check(lib().bpf_link_create(prog_fd, target_fd,
                                        ATTACH_TYPES.get(attach_type, attach_type),
                                        ctypes.byref(opts)), "link_create")


def link_update(link_fd, new_prog_fd):
    _check(lib().bpf_link_update(link_fd, new_prog_fd, None), "link_update")


def link_detach(link_fd):
    _check(lib().bpf_link_detach(link_fd), "link_detach")


LINK_TYPES = {14: "sockmap", 4: "iter"}


def link_info(link_fd):
    """struct bpf_link_info: type, id, prog_id, then (8-aligned) the sockmap {map_id, attach_type}."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(link_fd, info, ctypes.byref(size)), "obj_get_info")
    kind, link_id, prog, map_id, attach = struct.unpack_from("<III4xII", info.raw)
    return {"type": LINK_TYPES.get(kind, kind), "id": link_id, "prog_id": prog,
            "map_id": map_id, "attach_type": attach}


def map_id(map_fd):
    """struct bpf_map_info: type, id, ..."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(map_fd, info, ctypes.byref(size)), "obj_get_info")
    return struct.unpack_from("<II", info.raw)[1]


def iter_read(prog_fd, map_fd):
    """Attach an iter/sockmap program to a map, read the iterator to its end, return the bytes."""
    link = link_create(prog_fd, 0, "trace_iter", iter_map_fd=map_fd)
    try:
        fd = _check(lib().bpf_iter_create(link), "iter_create")
        try:
            out = b""
            while True:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return out
                out += chunk
        finally:
            os.close(fd)
    finally:
        os.close(link)


class _TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32)]


def prog_test_run(prog_fd, data):
    """BPF_PROG_TEST_RUN once on `data` (a packet); returns the program's return value."""
    buf = _buf(data)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts),
                        data_in=ctypes.cast(buf, ctypes.c_void_p), data_size_in=len(data),
                        repeat=1)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "prog_test_run")
    return opts.retval


def prog_id(prog_fd):
    """The kernel's id of a loaded program (struct bpf_prog_info: type, id, ...)."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(size)), "obj_get_info")
    return struct.unpack_from("<II", info.raw)[1]


class BpfObject:
    """A compiled BPF object file, opened and loaded with libbpf; programs and maps by name."""

    LOG_SIZE = 1 << 20

    def __init__(self, path, only=None):
        self.path = path
        self.obj = lib().bpf_object__open_file(path.encode(), None)
        if not self.obj:
            raise BpfError(ctypes.get_errno() or _errno.EINVAL, "open %s" % path)
        self._logs = {}
        prog = lib().bpf_object__next_program(self.obj, None)
        while prog:
            name = lib().bpf_program__name(prog).decode()
            if only is not None and name not in only:
                lib().bpf_program__set_autoload(prog, False)
            else:
                buf = ctypes.create_string_buffer(self.LOG_SIZE)
                self._logs[name] = buf
                # With a buffer and level 0, libbpf reloads with the verifier log on failure.
                lib().bpf_program__set_log_buf(prog, buf, self.LOG_SIZE)
            prog = lib().bpf_object__next_program(self.obj, prog)
        ret = lib().bpf_object__load(self.obj)
        if ret < 0:
            log = "\n".join("--- %s\n%s" % (n, b.value.decode(errors="replace").strip())
                            for n, b in self._logs.items() if b.value)
            self.close()
            raise BpfError(-ret, "load %s" % os.path.basename(path), verifier_log=log or None)

    def prog_fd(self, name):
        prog = lib().bpf_object__find_program_by_name(self.obj, name.encode())
        if not prog:
            raise KeyError("no program %r in %s" % (name, self.path))
        return lib().bpf_program__fd(prog)

    def btf_type_id(self, name, kind):
        """(btf fd, type id) of a named type in the object's own BTF; kind 8 = typedef."""
        btf = lib().bpf_object__btf(self.obj)
        if not btf:
            raise KeyError("%s has no BTF" % self.path)
        type_id = lib().btf__find_by_name_kind(btf, name.encode(), kind)
        if type_id < 0:
            raise KeyError("no BTF type %r in %s" % (name, self.path))
        return lib().btf__fd(btf), type_id

    def map_fd(self, name):
        return _check(lib().bpf_object__find_map_fd_by_name(self.obj, name.encode()),
                      "map %s" % name)

    def close(self):
        if self.obj:
            lib().bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
