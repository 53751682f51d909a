"""Guest side of cases/test_attach.py: attaching programs to maps, and what they do to inserts."""
from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.sockets import closing_all, tcp_pair

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
