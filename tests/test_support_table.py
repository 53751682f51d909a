"""The redirect support table: its rules, the outcomes they give, and its bad inputs."""
import json
import re
from pathlib import Path

import pytest

from harness.judging import expectations as ex
from harness.judging import support_table as st
from harness.judging.verdicts import Verdict
from harness.versions import upstream_version

SUITE_TABLE = ex.DEFAULT_FILE.with_name("redirect_support.toml")
OBSERVED = Path(__file__).parent / "data" / "matrix-observed"
# the builds the observations were saved from (./kconform suite -k test_redirect_matrix)
SAVED = {"debian-5.10": "5.10.262-1", "debian-6.1": "6.1.192-3", "debian-6.12": "6.12.118-1",
         "debian-7.2": "7.2.13-1", "debian-7.3": "7.3.4-1~bpo13+1"}
CITATION = re.compile(r"map_sockmap\.rst|behaviours\.md|\b[0-9a-f]{12}\b|\b\d+\.\d+\.\d+\b")


@pytest.fixture(scope="module")
def behaviours():
    return ex.load()


def test_the_matrix_has_every_upstream_combination(behaviours):
    # sockmap_redir.c: 2 map types x 4 redirects x (9 sources x 8 targets) = 576
    matrices = [b.matrix for b in behaviours.values() if b.matrix is not None]
    assert {(m.program, m.direction) for m in matrices} == {
        (p, d) for p in st.PROGRAMS for d in st.DIRECTIONS}
    combos = {(c.map, c.program, c.direction, c.source, c.target)
              for m in matrices for c in m.combinations()}
    assert len(combos) == 576
    assert ("sockhash", "sk_skb", "ingress", "unix_stream_oob", "vsock_seqpacket") in combos


def test_every_rule_cites_a_kernel_source_or_the_doc():
    table = st.load(SUITE_TABLE)
    uncited = [r.id for r in table.rules if not CITATION.search(r.source)] + \
        [o.program for o in table.oob_rules if not CITATION.search(o.source)]
    assert not uncited


def _judge(behaviours, bid, version, variant, observed):
    return ex.judge(behaviours[bid], upstream_version(version), observed, variant)


def test_only_a_delivery_is_what_the_doc_promises(behaviours):
    delivered = behaviours["R8"].outcome_for(upstream_version("7.3.4"), "sockmap-udp4-tcp6")
    dropped = behaviours["R7"].outcome_for(upstream_version("7.3.4"),
                                           "sockmap-tcp4-vsock_stream")
    assert delivered.documented and delivered.expect["received_by"] == ["target_peer"]
    assert not dropped.documented and "9c5bd93edf7b" in dropped.source
    observed = dict(dropped.expect)
    verdict = _judge(behaviours, "R7", "7.3.4", "sockmap-tcp4-vsock_stream", observed)
    assert verdict.verdict == Verdict.EXPECTED_DIFFERENCE
    observed["received_by"] = ["target"]  # a kernel that started delivering it
    verdict = _judge(behaviours, "R7", "7.3.4", "sockmap-tcp4-vsock_stream", observed)
    assert verdict.verdict == Verdict.FAIL and "received_by" in verdict.mismatches


def test_a_refusal_names_the_end_the_kernel_refuses(behaviours):
    # 5.10 takes TCP and UDP only: a unix source next to a TCP target fails the source's insert
    outcome = behaviours["R9"].outcome_for(upstream_version("5.10.262"),
                                           "sockhash-unix_dgram-tcp4")
    assert outcome.expect == {"source_insert": "EOPNOTSUPP", "target_insert": "OK"}
    outcome = behaviours["R9"].outcome_for(upstream_version("6.1.192"),
                                           "sockhash-vsock_stream-vsock_seqpacket")
    assert outcome.expect == {"source_insert": "EOPNOTSUPP", "target_insert": "EOPNOTSUPP"}


def test_the_oob_byte_has_its_own_expectation(behaviours):
    skb = behaviours["R7"].outcome_for(upstream_version("6.12.118"),
                                       "sockmap-unix_stream_oob-tcp4")
    msg = behaviours["R9"].outcome_for(upstream_version("6.12.118"),
                                       "sockmap-unix_stream_oob-tcp4")
    assert skb.expect["oob"] is None and msg.expect["oob"] == "source_peer"
    assert "unix_stream_read_skb" in skb.source


@pytest.mark.parametrize("named", sorted(SAVED))
def test_the_table_predicts_every_saved_observation(behaviours, named):
    """Observations of real guests (tests/data/matrix-observed), judged as the suite judges."""
    observed = json.loads((OBSERVED / f"{named}.json").read_text())
    version = upstream_version(SAVED[named])
    assert len(observed) == 576
    wrong = []
    for key, obs in observed.items():
        bid, variant = key.split(" ")
        verdict = ex.judge(behaviours[bid], version, obs, variant)
        if verdict.verdict == Verdict.FAIL:
            wrong.append(f"{bid} {variant}: {verdict.mismatches}")
        # and the reports' table shows the outcome the rule names
        cell = behaviours[bid].matrix.cell(version, variant, obs)
        if cell["outcome"] != cell["expected"]:
            wrong.append(f"{bid} {variant}: shown as {cell['outcome']}, rule {cell['rule']} "
                         f"says {cell['expected']}")
    assert not wrong, "\n".join(wrong[:10])


@pytest.mark.parametrize("change, problem", [
    ("kinds = []", "needs kinds"),
    ('oob_sources = ["tcp4"]', "oob_sources names 'tcp4'"),
    ('program = "sk_skb"', "the last rule (delivered) must match every combination"),
    ('outcome = "sideways"', "outcome = 'sideways' is not one of"),
    ('outcome = "dropped"', "say why in reason"),
    ('target_kinds = ["sctp"]', "names 'sctp', not one of the table's kinds"),
    ('until = 5.10', "is not a version"),
    ('colour = "blue"', "unknown field 'colour'"),
])
def test_a_bad_support_table_is_an_error_naming_the_problem(tmp_path, change, problem):
    text = SUITE_TABLE.read_text()
    name = change.partition(" = ")[0]
    if name in ("kinds", "oob_sources"):
        text = re.sub(rf"^{name} = \[[^\]]*\]", change, text, flags=re.M)
    elif name == "outcome":
        head, sep, last = text.rpartition('[[rule]]\nid = "delivered"\noutcome = "delivered"')
        text = head + sep.replace('outcome = "delivered"', change) + last
    else:  # added to the last rule
        text = text.replace('id = "delivered"\n', f'id = "delivered"\n{change}\n')
    path = tmp_path / "table.toml"
    path.write_text(text)
    with pytest.raises(st.SupportTableError) as raised:
        st.load(path)
    assert problem in str(raised.value)


TOY = """
kinds = ["tcp4", "udp4", "unix_stream"]
[[rule]]
id = "msg-refuses-udp"
program = "sk_msg"
source_kinds = ["udp4"]
outcome = "refused"
errno = "EOPNOTSUPP"
reason = "a toy rule"
source = "toy"
[[rule]]
id = "unix-ends-refused"
kinds = ["unix_stream"]
outcome = "refused"
errno = "EINVAL"
reason = "a toy rule"
source = "toy"
[[rule]]
id = "tcp-source-to-unix"
source_kinds = ["tcp4"]
kinds = ["unix_stream"]
outcome = "dropped"
reason = "a toy rule"
source = "toy"
[[rule]]
id = "rest"
outcome = "delivered"
source = "toy"
"""


def _toy(tmp_path, text=TOY):
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return st.load(path)


def test_an_end_is_refused_only_by_rules_of_its_program_and_with_their_errno(tmp_path):
    table = _toy(tmp_path)
    combo = st.Combination("sockmap", "sk_skb", "ingress", "udp4", "unix_stream")
    expected = table.expected(combo, (6, 1, 0))
    assert expected.rule.id == "unix-ends-refused"
    # the sk_msg rule about udp4 says nothing of sk_skb's source
    assert expected.observations == {"source_insert": "OK", "target_insert": "EINVAL"}
    msg = st.Combination("sockmap", "sk_msg", "ingress", "udp4", "unix_stream")
    assert table.expected(msg, (6, 1, 0)).observations == {
        "source_insert": "EOPNOTSUPP", "target_insert": "EINVAL"}


def test_every_list_of_kinds_a_rule_gives_must_hold(tmp_path):
    table = _toy(tmp_path, TOY.replace('kinds = ["unix_stream"]\noutcome = "refused"',
                                       'kinds = ["tcp4"]\nprogram = "sk_msg"\n'
                                       'outcome = "refused"'))
    # source tcp4 but neither end unix_stream: not the tcp-source-to-unix rule
    combo = st.Combination("sockmap", "sk_skb", "egress", "tcp4", "udp4")
    assert table.rule_for(combo, (6, 1, 0)).id == "rest"


def test_a_rule_naming_an_oob_source_is_refused(tmp_path):
    text = TOY.replace('kinds = ["tcp4", "udp4", "unix_stream"]',
                       'kinds = ["tcp4", "udp4", "unix_stream"]\noob_sources = ["unix_stream_oob"]'
                       ).replace('source_kinds = ["udp4"]', 'source_kinds = ["unix_stream_oob"]')
    with pytest.raises(st.SupportTableError, match="a rule about an OOB source names its kind"):
        _toy(tmp_path, text)
