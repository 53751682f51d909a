"""Expectations: version bounds, verdicts, and the suite's own data file."""
import ast
import re
from pathlib import Path

import pytest

from harness.judging import expectations as ex
from harness.kernels.specs import load_specs
from harness.versions import has_change, upstream_version

CASES = Path(__file__).resolve().parent.parent / "cases"


@pytest.mark.parametrize("version, bounds, expected", [
    ((6, 7, 0), ["6.7"], True),
    ((6, 6, 99), ["6.7"], False),
    ((6, 1, 72), ["6.7", "6.1.72"], True),
    ((6, 1, 71), ["6.7", "6.1.72"], False),
    ((6, 6, 1), ["6.7", "6.1.72"], False),   # a 6.1 backport says nothing about 6.6
    ((7, 2, 13), ["6.7", "6.1.72"], True),
])
def test_a_change_is_present_from_mainline_or_its_stable_backport(version, bounds, expected):
    assert has_change(version, [upstream_version(b) for b in bounds]) is expected


def _behaviour(*outcomes):
    return ex.Behaviour("X1", "title", "section", tuple(outcomes))


OLD = ex.Outcome({"errno": "EOPNOTSUPP"}, "old source", until=((5, 15, 0),),
                 reason="unix added 5.15")
NEW = ex.Outcome({"errno": "OK"}, "new source", since=((5, 15, 0),))


def test_newer_kernel_gets_the_documented_outcome():
    verdict = ex.judge(_behaviour(OLD, NEW), (6, 1, 0), {"errno": "OK"})
    assert verdict.verdict == ex.Verdict.PASS


def test_older_behaviour_is_asserted_as_an_expected_difference():
    verdict = ex.judge(_behaviour(OLD, NEW), (5, 10, 0), {"errno": "EOPNOTSUPP"})
    assert verdict.verdict == ex.Verdict.EXPECTED_DIFFERENCE and verdict.outcome.reason


def test_unexpected_pass_on_an_old_kernel_is_a_failure():
    verdict = ex.judge(_behaviour(OLD, NEW), (5, 10, 0), {"errno": "OK"})
    assert verdict.verdict == ex.Verdict.FAIL
    assert "expected 'EOPNOTSUPP', observed 'OK'" in verdict.message("k", "5.10.1")


def test_overlapping_or_missing_bounds_are_rejected():
    with pytest.raises(ValueError, match="2 outcomes apply"):
        ex.judge(_behaviour(NEW, ex.Outcome({}, "s")), (6, 1, 0), {})
    with pytest.raises(ValueError, match="0 outcomes apply"):
        ex.judge(_behaviour(NEW), (5, 10, 0), {})


def test_variant_tables_pick_the_map_type():
    both = ex.Outcome({"sockmap": {"e": "EINVAL"}, "sockhash": {"e": "ENOENT"}}, "s")
    observed = {"e": "ENOENT"}
    assert ex.judge(_behaviour(both), (6, 1, 0), observed, "sockhash").verdict == ex.Verdict.PASS
    assert ex.judge(_behaviour(both), (6, 1, 0), observed, "sockmap").verdict == ex.Verdict.FAIL


def test_suite_data_covers_every_kernel_series_the_suite_defines():
    # load() checks the bounds only from each behaviour's oldest outcome on; a kernel older
    # than that is judged by nothing, which only the kernels the suite runs can tell.
    behaviours = ex.load()
    uncovered = []
    for name, spec in load_specs().items():
        for behaviour in behaviours.values():
            variants = [c.variant for c in behaviour.matrix.combinations()] \
                if behaviour.matrix else [None]
            try:
                for variant in variants:
                    behaviour.outcome_for((*spec.series_key, 0), variant)
            except ex.ExpectationsError as exc:
                uncovered.append(f"{name}: {exc}")
    assert not uncovered, "\n".join(uncovered)


# What a source may cite: the kernel doc, the behaviour catalogue, a commit, or the kernel
# source of a named release ("5.10.223 sock_map.c").
CITATION = re.compile(r"map_sockmap\.rst|behaviours\.md|\b[0-9a-f]{12}\b|\b\d+\.\d+\.\d+\b")


def test_every_outcome_cites_the_doc_a_commit_or_a_kernel_source():
    uncited = [f"{behaviour.id}: {outcome.source!r}" for behaviour in ex.load().values()
               for outcome in behaviour.outcomes if not CITATION.search(outcome.source)]
    assert not uncited, uncited


def test_every_behaviour_a_case_names_is_in_the_data():
    behaviours = ex.load()
    used = set()
    for module in CASES.glob("test_*.py"):
        used |= set(re.findall(r'expect\(\s*"([A-Z]\d+)"', module.read_text()))
    assert used, "no case calls expect()"
    assert used <= set(behaviours), used - set(behaviours)


def test_every_guest_function_a_case_calls_exists():
    for module in CASES.glob("test_*.py"):
        called = set(re.findall(r'guest\.call\(\s*"(\w+)"', module.read_text()))
        guest_side = CASES / "guest" / (module.stem[len("test_"):] + ".py")
        defined = {n.name for n in ast.parse(guest_side.read_text()).body
                   if isinstance(n, ast.FunctionDef)} if guest_side.exists() else set()
        assert called <= defined, (module.name, called - defined)


def test_an_older_outcome_that_says_what_the_doc_says_is_a_pass():
    # U10's shape: refused on 5.10, accepted 5.15..7.2, refused again since the fix.
    first = ex.Outcome({"unbound": "EOPNOTSUPP"}, "s", until=((5, 15, 0),), reason="old check")
    middle = ex.Outcome({"unbound": "OK"}, "s", since=((5, 15, 0),), until=((7, 2, 0),),
                        reason="check dropped")
    last = ex.Outcome({"unbound": "EOPNOTSUPP"}, "s", since=((7, 2, 0),))
    behaviour = _behaviour(first, middle, last)
    assert ex.judge(behaviour, (5, 10, 223), {"unbound": "EOPNOTSUPP"}).verdict == ex.Verdict.PASS
    assert ex.judge(behaviour, (6, 1, 176), {"unbound": "OK"}).verdict == \
        ex.Verdict.EXPECTED_DIFFERENCE


def test_an_outcome_marked_as_differing_from_the_doc_is_never_a_plain_pass():
    copied = ex.Outcome({"seen": 100}, "s", since=((6, 5, 0),), differs_from_doc=True,
                        reason="data copied since 6.5")
    verdict = ex.judge(_behaviour(copied), (7, 2, 13), {"seen": 100})
    assert verdict.verdict == ex.Verdict.EXPECTED_DIFFERENCE


def test_a_regression_window_overrides_the_other_outcomes_only_inside_it():
    normal = ex.Outcome({"echo": True}, "doc")
    window = ex.Outcome({"guest": "hang"}, "bug", since=((5, 10, 223), (6, 1, 91)),
                        until=((5, 10, 233), (6, 1, 120)), regression=True, reason="deadlock")
    behaviour = _behaviour(normal, window)
    assert behaviour.outcome_for((5, 10, 223)) is window
    assert behaviour.outcome_for((6, 1, 100)) is window
    for outside in [(5, 10, 222), (5, 10, 233), (6, 1, 120), (6, 6, 10), (7, 3, 4)]:
        assert behaviour.outcome_for(outside) is normal
    assert ex.judge(behaviour, (5, 10, 223), {"guest": "hang"}).verdict == \
        ex.Verdict.EXPECTED_DIFFERENCE


def test_behaviours_a_kernel_may_hang_on_are_known_before_any_boot():
    data = ex.load()
    assert {b for b, behaviour in data.items() if behaviour.may_lose_the_guest} == {"E1", "E3"}
