"""A thin ctypes binding over the distribution's libbpf (libbpf.so.1), for guest-side code.

Only what the cases need, each call mapped one to one. Failures raise BpfError carrying the errno
name ("EBUSY"), because an errno is what the documented contract talks about.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, TypedDict, cast

from .timing import timed

if TYPE_CHECKING:
    from _ctypes import _CArgObject, _CData

    # What a pointer parameter takes: a ctypes object (a buffer, a structure), byref() of one, or
    # None for NULL.
    _Pointer = _CData | _CArgObject | bytes | None

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


def errno_name(code: int) -> str:
    return _PREFERRED.get(code) or _errno.errorcode.get(code, f"E{code}")


class BpfError(OSError):
    def __init__(self, code: int, op: str, verifier_log: str | None = None) -> None:
        super().__init__(code, f"{op}: {os.strerror(code)} ({errno_name(code)})")
        self.errno_name = errno_name(code)
        self.verifier_log = verifier_log


def _number(names: dict[str, int], kind: str | int, what: str) -> int:
    """The kernel's number for a type given by name ("sockmap") or already as a number."""
    if isinstance(kind, int):
        return kind
    try:
        return names[kind]
    except KeyError:
        raise KeyError(f"unknown {what} {kind!r}: one of {', '.join(names)}, or a number") \
            from None


# Each function's C signature, as ctypes calls it: (restype, argtypes).
_vp, _int, _u32, _u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
_SIGNATURES: dict[str, tuple[type[_CData] | None, list[type[_CData]]]] = {
    "bpf_map_create": (_int, [_int, ctypes.c_char_p, _u32, _u32, _u32, _vp]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, _u64]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
    "bpf_map_delete_elem": (_int, [_int, _vp]),
    "bpf_map_get_next_key": (_int, [_int, _vp, _vp]),
    "bpf_prog_attach": (_int, [_int, _int, _int, ctypes.c_uint]),
    "bpf_prog_detach2": (_int, [_int, _int, _int]),
    "bpf_prog_query": (_int, [_int, _int, _u32, ctypes.POINTER(_u32), ctypes.POINTER(_u32),
                              ctypes.POINTER(_u32)]),
    "bpf_link_create": (_int, [_int, _int, _int, _vp]),
    "bpf_obj_get_info_by_fd": (_int, [_int, _vp, ctypes.POINTER(_u32)]),
    "bpf_prog_get_fd_by_id": (_int, [_u32]),
    "bpf_object__open_file": (_vp, [ctypes.c_char_p, _vp]),
    "bpf_object__load": (_int, [_vp]),
    "bpf_object__close": (None, [_vp]),
    "bpf_object__next_program": (_vp, [_vp, _vp]),
    "bpf_object__find_program_by_name": (_vp, [_vp, ctypes.c_char_p]),
    "bpf_object__find_map_fd_by_name": (_int, [_vp, ctypes.c_char_p]),
    "bpf_program__fd": (_int, [_vp]),
    "bpf_program__name": (ctypes.c_char_p, [_vp]),
    "bpf_program__set_log_buf": (_int, [_vp, ctypes.c_char_p, ctypes.c_size_t]),
    "bpf_program__set_autoload": (_int, [_vp, ctypes.c_bool]),
    "bpf_prog_test_run_opts": (_int, [_int, _vp]),
    "bpf_link_update": (_int, [_int, _int, _vp]),
    "bpf_link_detach": (_int, [_int]),
    "bpf_iter_create": (_int, [_int]),
    "bpf_object__btf": (_vp, [_vp]),
    "btf__fd": (_int, [_vp]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_vp, ctypes.c_char_p, _u32]),
}


class _Libbpf(Protocol):
    """What Python gets from each function of _SIGNATURES once declared: ctypes hands back an int
    for an int restype, an int or None (NULL) for a void pointer, bytes or None for a char
    pointer. A pointer to a libbpf object (struct bpf_object *, ...) is such an int.
    tests/test_agent_typing.py holds this to _SIGNATURES."""

    def bpf_map_create(self, map_type: int, map_name: bytes | None, key_size: int,
                       value_size: int, max_entries: int, opts: _Pointer) -> int: ...
    def bpf_map_update_elem(self, fd: int, key: _Pointer, value: _Pointer, flags: int) -> int: ...
    def bpf_map_lookup_elem(self, fd: int, key: _Pointer, value: _Pointer) -> int: ...
    def bpf_map_delete_elem(self, fd: int, key: _Pointer) -> int: ...
    def bpf_map_get_next_key(self, fd: int, key: _Pointer, next_key: _Pointer) -> int: ...
    def bpf_prog_attach(self, prog_fd: int, attachable_fd: int, type: int, flags: int) -> int: ...
    def bpf_prog_detach2(self, prog_fd: int, attachable_fd: int, type: int) -> int: ...
    def bpf_prog_query(self, target_fd: int, type: int, query_flags: int, attach_flags: _Pointer,
                       prog_ids: _Pointer, prog_cnt: _Pointer) -> int: ...
    def bpf_link_create(self, prog_fd: int, target_fd: int, attach_type: int,
                        opts: _Pointer) -> int: ...
    def bpf_obj_get_info_by_fd(self, bpf_fd: int, info: _Pointer, info_len: _Pointer) -> int: ...
    def bpf_prog_get_fd_by_id(self, id: int) -> int: ...
    def bpf_object__open_file(self, path: bytes, opts: _Pointer) -> int | None: ...
    def bpf_object__load(self, obj: int) -> int: ...
    def bpf_object__close(self, obj: int) -> None: ...
    def bpf_object__next_program(self, obj: int, prog: int | None) -> int | None: ...
    def bpf_object__find_program_by_name(self, obj: int, name: bytes) -> int | None: ...
    def bpf_object__find_map_fd_by_name(self, obj: int, name: bytes) -> int: ...
    def bpf_program__fd(self, prog: int) -> int: ...
    def bpf_program__name(self, prog: int) -> bytes | None: ...
    def bpf_program__set_log_buf(self, prog: int, log_buf: _Pointer, log_size: int) -> int: ...
    def bpf_program__set_autoload(self, prog: int, autoload: bool) -> int: ...
    def bpf_prog_test_run_opts(self, prog_fd: int, opts: _Pointer) -> int: ...
    def bpf_link_update(self, link_fd: int, new_prog_fd: int, opts: _Pointer) -> int: ...
    def bpf_link_detach(self, link_fd: int) -> int: ...
    def bpf_iter_create(self, link_fd: int) -> int: ...
    def bpf_object__btf(self, obj: int) -> int | None: ...
    def btf__fd(self, btf: int) -> int: ...
    def btf__find_by_name_kind(self, btf: int, type_name: bytes, kind: int) -> int: ...


_lib: _Libbpf | None = None


def lib() -> _Libbpf:
    global _lib
    if _lib is None:
        try:
            library = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise RuntimeError("libbpf.so.1 not found in the guest: install libbpf1 "
                               "(Debian/Ubuntu) on the guest's root filesystem") from exc
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype, function.argtypes = restype, argtypes
        # The cast is what the declarations above make true: ctypes itself types every foreign
        # function as taking and returning anything.
        _lib = cast("_Libbpf", library)
    return _lib


def _check(ret: int, op: str) -> int:
    if ret < 0:
        raise BpfError(-ret, op)
    return ret


class _MapCreateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


def map_create(map_type: str | int, key_size: int, value_size: int, max_entries: int,
               map_flags: int = 0, btf_fd: int = 0, btf_key_type_id: int = 0,
               btf_value_type_id: int = 0, numa_node: int = 0, name: str | None = None) -> int:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), btf_fd=btf_fd,
                          btf_key_type_id=btf_key_type_id, btf_value_type_id=btf_value_type_id,
                          map_flags=map_flags, numa_node=numa_node)
    kind = _number(MAP_TYPES, map_type, "map type")
    return _check(lib().bpf_map_create(kind, name.encode() if name else None, key_size, value_size,
                                       max_entries, ctypes.byref(opts)), "map_create")


@contextlib.contextmanager
def created_map(map_type: str | int, key_size: int, value_size: int, max_entries: int,
                map_flags: int = 0, btf_fd: int = 0, btf_key_type_id: int = 0,
                btf_value_type_id: int = 0, numa_node: int = 0,
                name: str | None = None) -> Iterator[int]:
    """A map fd closed when the block ends, even when a step inside fails: the agent lives on."""
    fd = map_create(map_type, key_size, value_size, max_entries, map_flags=map_flags,
                    btf_fd=btf_fd, btf_key_type_id=btf_key_type_id,
                    btf_value_type_id=btf_value_type_id, numa_node=numa_node, name=name)
    try:
        yield fd
    finally:
        os.close(fd)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _buf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A C copy of `data`, for a pointer the kernel may write through or a struct keeps."""
    return ctypes.create_string_buffer(bytes(data), len(data))


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """key and value are bytes (see u32/u64); a socket value is its fd as u32 or u64."""
    # The kernel only reads a key or a value given to it: ctypes passes a bytes object's own
    # memory for a void pointer, where a C copy of each (_buf) costs a buffer per call.
    _check(lib().bpf_map_update_elem(fd, bytes(key), bytes(value), flags), "map_update")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes:
    out = ctypes.create_string_buffer(value_size)
    _check(lib().bpf_map_lookup_elem(fd, bytes(key), out), "map_lookup")
    return out.raw


def map_delete(fd: int, key: bytes) -> None:
    _check(lib().bpf_map_delete_elem(fd, bytes(key)), "map_delete")


def map_get_next_key(fd: int, key: bytes | None, key_size: int) -> bytes:
    out = ctypes.create_string_buffer(key_size)
    _check(lib().bpf_map_get_next_key(fd, bytes(key) if key is not None else None, out),
           "map_get_next_key")
    return out.raw


def prog_attach(prog_fd: int, target_fd: int, attach_type: str | int, flags: int = 0) -> None:
    _check(lib().bpf_prog_attach(prog_fd, target_fd,
                                 _number(ATTACH_TYPES, attach_type, "attach type"), flags),
           "prog_attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: str | int) -> None:
    _check(lib().bpf_prog_detach2(prog_fd, target_fd,
                                  _number(ATTACH_TYPES, attach_type, "attach type")),
           "prog_detach")


class ProgQuery(TypedDict):
    attach_flags: int
    prog_ids: list[int]
    prog_cnt: int


def prog_query(target_fd: int, attach_type: str | int, query_flags: int = 0,
               max_ids: int = 8) -> ProgQuery:
    attach_flags = ctypes.c_uint32(0)
    ids = (ctypes.c_uint32 * max_ids)()
    count = ctypes.c_uint32(max_ids)
    _check(lib().bpf_prog_query(target_fd, _number(ATTACH_TYPES, attach_type, "attach type"),
                                query_flags, ctypes.byref(attach_flags), ids,
                                ctypes.byref(count)), "prog_query")
    return {"attach_flags": attach_flags.value, "prog_ids": list(ids[:count.value]),
            "prog_cnt": count.value}


def prog_get_fd_by_id(prog_id: int) -> int:
    """An fd of a loaded program, found by its id (as prog_query lists them)."""
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), "prog_get_fd_by_id")


class _LinkCreateOpts(ctypes.Structure):
    # The leading fields of libbpf's struct bpf_link_create_opts; `sz` tells libbpf where we stop.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32),
                ("iter_info", ctypes.c_void_p), ("iter_info_len", ctypes.c_uint32)]


def link_create(prog_fd: int, target_fd: int, attach_type: str | int, flags: int = 0,
                iter_map_fd: int | None = None) -> int:
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    if iter_map_fd is not None:
        # union bpf_iter_link_info is {map: {map_fd}} for a map iterator; `info` lives to the call
        info = ctypes.c_uint32(iter_map_fd)
        opts.iter_info = ctypes.cast(ctypes.byref(info), ctypes.c_void_p).value
        opts.iter_info_len = ctypes.sizeof(info)
    return _check(lib().bpf_link_create(prog_fd, target_fd,
                                        _number(ATTACH_TYPES, attach_type, "attach type"),
                                        ctypes.byref(opts)), "link_create")


def link_update(link_fd: int, new_prog_fd: int) -> None:
    _check(lib().bpf_link_update(link_fd, new_prog_fd, None), "link_update")


def link_detach(link_fd: int) -> None:
    _check(lib().bpf_link_detach(link_fd), "link_detach")


LINK_TYPES = {14: "sockmap", 4: "iter"}


class LinkInfo(TypedDict):
    type: str | int  # a name of LINK_TYPES, or the number of one it does not name
    id: int
    prog_id: int
    map_id: int
    attach_type: int


def _object_info(fd: int) -> bytes:
    """The kernel's struct bpf_{prog,map,link}_info of a BPF object fd, as bytes."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "obj_get_info")
    return info.raw


def link_info(link_fd: int) -> LinkInfo:
    """struct bpf_link_info: type, id, prog_id, then (8-aligned) the sockmap
    {map_id, attach_type}."""
    kind, link_id, prog, map_id, attach = struct.unpack_from("<III4xII", _object_info(link_fd))
    return {"type": LINK_TYPES.get(kind, kind), "id": link_id, "prog_id": prog,
            "map_id": map_id, "attach_type": attach}


def map_id(map_fd: int) -> int:
    """struct bpf_map_info: type, id, ..."""
    return int(struct.unpack_from("<II", _object_info(map_fd))[1])


def iter_read(prog_fd: int, map_fd: int) -> bytes:
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


def prog_test_run(prog_fd: int, data: bytes) -> int:
    """BPF_PROG_TEST_RUN once on `data` (a packet); returns the program's return value."""
    buf = _buf(data)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts),
                        data_in=ctypes.cast(buf, ctypes.c_void_p), data_size_in=len(data),
                        repeat=1)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "prog_test_run")
    return int(opts.retval)


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (struct bpf_prog_info: type, id, ...)."""
    return int(struct.unpack_from("<II", _object_info(prog_fd))[1])


LOG_SIZE = 1 << 20
# The verifier log buffers, the k-th program of any object's load using the k-th: made once
# per agent, because making one zero-fills its MiB (0.14 ms natively, ~20 times that under TCG,
# for each program of each load), while libbpf writes one only when a load fails (below).
_log_buffers: list[ctypes.Array[ctypes.c_char]] = []


def _log_buffer(index: int) -> ctypes.Array[ctypes.c_char]:
    while len(_log_buffers) <= index:
        _log_buffers.append(ctypes.create_string_buffer(LOG_SIZE))
    buf = _log_buffers[index]
    buf[0] = b"\0"  # empty: a failed load before this one may have left its log
    return buf


class BpfObject:
    """A compiled BPF object file, opened and loaded with libbpf; programs and maps by name."""

    @timed("bpf_load")  # open and load, the verifier among it: the work row's bpf_load
    def __init__(self, path: str, only: list[str] | set[str] | None = None) -> None:
        self.path = path
        obj = lib().bpf_object__open_file(path.encode(), None)
        if not obj:
            raise BpfError(ctypes.get_errno() or _errno.EINVAL, f"open {path}")
        self.obj: int | None = obj
        # Read only when this load fails: libbpf keeps the pointers, but writes through them only
        # inside bpf_object__load, so the next object may reuse the buffers once this one loaded.
        self._logs: dict[str, ctypes.Array[ctypes.c_char]] = {}
        prog = lib().bpf_object__next_program(obj, None)
        while prog:
            name = (lib().bpf_program__name(prog) or b"").decode()
            if only is not None and name not in only:
                lib().bpf_program__set_autoload(prog, False)
            else:
                buf = _log_buffer(len(self._logs))
                self._logs[name] = buf
                # With a buffer and level 0, libbpf reloads with the verifier log on failure.
                lib().bpf_program__set_log_buf(prog, buf, LOG_SIZE)
            prog = lib().bpf_object__next_program(obj, prog)
        ret = lib().bpf_object__load(obj)
        if ret < 0:
            log = "\n".join("--- {}\n{}".format(n, b.value.decode(errors="replace").strip())
                            for n, b in self._logs.items() if b.value)
            self.close()
            raise BpfError(-ret, f"load {os.path.basename(path)}", verifier_log=log or None)

    def _opened(self) -> int:
        if not self.obj:
            raise ValueError(f"{self.path} is closed")
        return self.obj

    def prog_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._opened(), name.encode())
        if not prog:
            raise KeyError(f"no program {name!r} in {self.path}")
        return lib().bpf_program__fd(prog)

    def btf_type_id(self, name: str, kind: int) -> tuple[int, int]:
        """(btf fd, type id) of a named type in the object's own BTF; kind 8 = typedef."""
        btf = lib().bpf_object__btf(self._opened())
        if not btf:
            raise KeyError(f"{self.path} has no BTF")
        type_id = lib().btf__find_by_name_kind(btf, name.encode(), kind)
        if type_id < 0:
            raise KeyError(f"no BTF type {name!r} in {self.path}")
        return lib().btf__fd(btf), type_id

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_object__find_map_fd_by_name(self._opened(), name.encode()),
                      f"map {name}")

    def close(self) -> None:
        if self.obj:
            lib().bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
