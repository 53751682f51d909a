"""WIP (branch wip/redirect-matrix, issue #12): observe the redirect matrix, no expectations yet.

Each (map, program, direction, source) is one guest call covering every target kind; the
observations are written to <results>/matrix-<kernel>.json for the support-table data. Not to be
merged as is: a case without expect() cannot fail.
"""
import json
from pathlib import Path

import pytest

KINDS = ["tcp4", "tcp6", "udp4", "udp6", "unix_stream", "unix_dgram", "vsock_stream",
         "vsock_seqpacket"]
SOURCES = [*KINDS, "unix_stream_oob"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("direction", ["egress", "ingress"])
@pytest.mark.parametrize("program", ["sk_skb", "sk_msg"])
@pytest.mark.parametrize("map_name", ["sockmap", "sockhash"])
def test_redirect_matrix_observe(guest, bpf_object, request, kernel, map_name, program,
                                 direction, source):
    oob = source.endswith("_oob")
    observed = guest.call("redirect_matrix", obj=bpf_object("sockmap_progs"), map_name=map_name,
                          program=program, direction=direction,
                          source=source.removesuffix("_oob"), targets=KINDS, oob=oob,
                          timeout=60)
    out = Path(request.config.option.results_dir) / f"matrix-{kernel}.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data[f"{map_name}-{program}-{direction}-{source}"] = observed
    out.write_text(json.dumps(data, indent=1, sort_keys=True))
