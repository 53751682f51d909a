"""Guest side of cases/test_attach.py: attaching programs to maps, and what they do to inserts."""
import contextlib
import os

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.sockets import closing_all, tcp_pair, udp_pair, unix_pair

MAPS = {"sockmap": "sock_map", "sockhash": "sock_hash"}


def attach_each_type(obj, map_type):
    """Each documented attach type on a map, then the same type again (it replaces)."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        obs = {}
        for attach, prog in (("msg_verdict", "prog_msg_pass"), ("stream_parser", "prog_parser"),
                             ("stream_verdict", "prog_verdict_pass")):
            obs[attach] = outcome(bpf.prog_attach, o.prog_fd(prog), fd, attach)
            obs[attach + "_again"] = outcome(bpf.prog_attach, o.prog_fd(prog), fd, attach)
        return obs


def attach_skb_verdict(obj, map_type):
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        return {"skb_verdict": outcome(bpf.prog_attach, o.prog_fd("prog_skb_verdict_pass"), fd,
                                       "skb_verdict")}


def stream_and_skb_verdict_together(obj, map_type, first):
    """The doc's note: stream_verdict and skb_verdict may not both be attached to one map."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        progs = {"stream_verdict": "prog_verdict_pass", "skb_verdict": "prog_skb_verdict_pass"}
        second = "skb_verdict" if first == "stream_verdict" else "stream_verdict"
        return {"first": outcome(bpf.prog_attach, o.prog_fd(progs[first]), fd, first),
                "second": outcome(bpf.prog_attach, o.prog_fd(progs[second]), fd, second)}


def socket_with_programs_into_second_map(obj, map_type, with_programs):
    """A socket that inherited parser+verdict from one map, inserted into another map."""
    with bpf.BpfObject(obj) as o, bpf.created_map(map_type, 4, 8, 4) as second:
        first = o.map_fd(MAPS[map_type])
        for fd in ([first, second] if with_programs else [first]):
            bpf.prog_attach(o.prog_fd("prog_parser"), fd, "stream_parser")
            bpf.prog_attach(o.prog_fd("prog_verdict_pass"), fd, "stream_verdict")
        a, b = tcp_pair()
        with closing_all(a, b):
            return {"first_map": outcome(bpf.map_update, first, bpf.u32(0), bpf.u64(a.fileno())),
                    "second_map": outcome(bpf.map_update, second, bpf.u32(0), bpf.u64(a.fileno()))}


BPF_F_ALLOW_OVERRIDE = 1


def attach_errors(obj, map_type):
    """attach_flags on a map attach; a sockmap attach type on a map that is not a sockmap."""
    with bpf.BpfObject(obj) as o, bpf.created_map("array", 4, 8, 1) as array:
        fd = o.map_fd(MAPS[map_type])
        verdict = o.prog_fd("prog_verdict_pass")
        return {"attach_flags": outcome(bpf.prog_attach, verdict, fd, "stream_verdict",
                                        BPF_F_ALLOW_OVERRIDE),
                "array_map": outcome(bpf.prog_attach, verdict, array, "stream_verdict")}


def detach_errors(obj, map_type):
    """Detaching: a program not attached, one of the wrong type, and the attached one."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        verdict, other = o.prog_fd("prog_verdict_pass"), o.prog_fd("prog_verdict_drop")
        obs = {"not_attached": outcome(bpf.prog_detach, verdict, fd, "stream_verdict")}
        bpf.prog_attach(verdict, fd, "stream_verdict")
        obs["other_program"] = outcome(bpf.prog_detach, other, fd, "stream_verdict")
        obs["wrong_program_type"] = outcome(bpf.prog_detach, o.prog_fd("prog_msg_pass"), fd,
                                            "stream_verdict")
        obs["attached"] = outcome(bpf.prog_detach, verdict, fd, "stream_verdict")
        return obs


def non_tcp_into_map_with_parser(obj, map_type):
    """UDP and AF_UNIX sockets into a map that has a stream parser and verdict (5459cce6bf49)."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        bpf.prog_attach(o.prog_fd("prog_parser"), fd, "stream_parser")
        bpf.prog_attach(o.prog_fd("prog_verdict_pass"), fd, "stream_verdict")
        u1, u2 = udp_pair()
        x1, x2 = unix_pair()
        a, b = tcp_pair()
        with closing_all(u1, u2, x1, x2, a, b):
            return {"tcp": outcome(bpf.map_update, fd, bpf.u32(0), bpf.u64(a.fileno())),
                    "udp": outcome(bpf.map_update, fd, bpf.u32(1), bpf.u64(u1.fileno())),
                    "unix_stream": outcome(bpf.map_update, fd, bpf.u32(2),
                                           bpf.u64(x1.fileno()))}


def query_programs(obj, map_type):
    """BPF_PROG_QUERY on the map fd, before and after attaching a verdict program."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        verdict = o.prog_fd("prog_verdict_pass")
        obs = {}
        try:
            obs["empty_prog_cnt"] = bpf.prog_query(fd, "stream_verdict")["prog_cnt"]
        except bpf.BpfError as exc:
            obs["empty_prog_cnt"] = exc.errno_name
        bpf.prog_attach(verdict, fd, "stream_verdict")
        try:
            q = bpf.prog_query(fd, "stream_verdict")
            obs["prog_cnt"] = q["prog_cnt"]
            obs["prog_id_matches"] = q["prog_ids"] == [bpf.prog_id(verdict)]
        except bpf.BpfError as exc:
            obs["prog_cnt"] = exc.errno_name
        obs["query_flags"] = outcome(bpf.prog_query, fd, "stream_verdict", 1)
        return obs


@contextlib.contextmanager
def _closing_fd(fd):
    try:
        yield fd
    finally:
        os.close(fd)


def link_for_map(obj, map_type):
    """BPF_LINK_CREATE with a sockmap attach type; what the link says about itself."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[map_type])
        verdict = o.prog_fd("prog_verdict_pass")
        try:
            link = bpf.link_create(verdict, fd, "stream_verdict")
        except bpf.BpfError as exc:
            return {"link_create": exc.errno_name}
        with _closing_fd(link):
            info = bpf.link_info(link)
            return {"link_create": "OK", "type": info["type"],
                    "map_id_matches": info["map_id"] == bpf.map_id(fd),
                    "prog_id_matches": info["prog_id"] == bpf.prog_id(verdict),
                    "attach_type": {v: k for k, v in bpf.ATTACH_TYPES.items()}.get(
                        info["attach_type"], info["attach_type"])}


def link_errors(obj, map_type):
    """The errors around sockmap links: flags, wrong map, a held slot, update after detach."""
    with bpf.BpfObject(obj) as o, bpf.created_map("array", 4, 8, 1) as array:
        fd = o.map_fd(MAPS[map_type])
        verdict, drop = o.prog_fd("prog_verdict_pass"), o.prog_fd("prog_verdict_drop")
        obs = {"flags": outcome(bpf.link_create, verdict, fd, "stream_verdict", 1),
               "array_map": outcome(bpf.link_create, verdict, array, "stream_verdict")}
        try:
            link = bpf.link_create(verdict, fd, "stream_verdict")
        except bpf.BpfError as exc:
            obs["link_create"] = exc.errno_name
            return obs
        with _closing_fd(link):
            obs["link_create"] = "OK"
            obs["prog_attach_while_linked"] = outcome(bpf.prog_attach, drop, fd,
                                                      "stream_verdict")
            obs["second_link"] = outcome(bpf.link_create, drop, fd, "stream_verdict")
            obs["update"] = outcome(bpf.link_update, link, drop)
            obs["detach"] = outcome(bpf.link_detach, link)
            obs["update_after_detach"] = outcome(bpf.link_update, link, verdict)
        return obs
