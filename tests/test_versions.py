"""Versions: dpkg's order of package versions (held against the real dpkg), and release
candidates judged as the release they precede, before it."""
import functools
import shutil
import subprocess
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.judging import expectations
from harness.kernels.trees import KernelTree
from harness.versions import (
    RELEASE,
    bound_version,
    compare_debian,
    debian_version_key,
    dotted,
    sort_key,
    upstream_version,
)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")

# Each pair in dpkg's order, older first.
OLDER_NEWER = [
    ("6.1.192-2", "6.1.192-3"),
    ("6.1.176-1", "6.1.187-1"),
    ("6.1.9-1", "6.1.10-1"),                # digit runs are numbers
    ("7.3~rc7-1~exp1", "7.3-1"),            # ~ before everything, even the end
    ("7.3-1", "7.3.4-1~bpo13+1"),
    ("7.3.4-1~bpo13+1", "7.3.4-1"),
    ("6.12.115+deb13", "6.12.115+deb13.1"),
    ("6.12.115", "6.12.115+deb13"),
    ("1.0a", "1.0+"),                       # letters before non-letters
    ("1.0", "1.0a"),
    ("1.0~", "1.0"),
    ("1.0~~", "1.0~"),
    ("9.9", "1:0.1"),                       # the epoch first
    ("1.0-0~1", "1.0"),                     # a revision of '0~1' is older than none
]


@pytest.mark.parametrize("older, newer", OLDER_NEWER)
def test_package_versions_are_ordered_as_dpkg_orders_them(older, newer):
    assert debian_version_key(older) < debian_version_key(newer)
    assert compare_debian(older, newer) == -1 and compare_debian(newer, older) == 1


@pytest.mark.parametrize("one, same", [("1.0", "1.0-0"), ("0:1.0", "1.0"), ("1.01", "1.1"),
                                       ("1.0-00", "1.0")])
def test_versions_dpkg_holds_equal_get_equal_keys(one, same):
    assert debian_version_key(one) == debian_version_key(same)
    assert compare_debian(one, same) == 0


@pytest.mark.parametrize("text", ["", "a1.0", "1.0-", "x:1.0", ":1.0", "1.0_1", "1 0",
                                  "2147483648:1", "1.0-a:b", "-1"])
def test_a_string_that_is_not_a_debian_version_is_refused_by_name(text):
    with pytest.raises(ValueError, match="is not a Debian package version"):
        debian_version_key(text)


@functools.cache
def _dpkg_valid(text: str) -> bool:
    return subprocess.run(["dpkg", "--validate-version", "--", text],
                          capture_output=True).returncode == 0


def _dpkg_order(a: str, b: str) -> int:
    def holds(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0
    return -1 if holds("lt") else 1 if holds("gt") else 0


# Versions built from the pieces that matter to the order: digits, letters, and . + ~ - :
_PIECE = st.one_of(st.integers(0, 12).map(str), st.sampled_from(["a", "b", "Z", "rc", "~",
                                                                  ".", "+", "-", "~~", "0"]))
_PART = st.lists(_PIECE, min_size=1, max_size=6).map("".join)
_VERSIONS = st.builds(
    lambda epoch, upstream, revision: epoch + upstream + revision,
    st.sampled_from(["", "", "1:", "0:"]),
    st.builds(lambda digit, rest: digit + rest, st.integers(0, 9).map(str), _PART),
    st.one_of(st.just(""), _PART.map(lambda r: "-" + r)))


@needs_dpkg
@settings(max_examples=300, deadline=None)
@given(_VERSIONS, _VERSIONS)
def test_generated_versions_compare_as_the_real_dpkg_compares_them(a, b):
    valid = [_dpkg_valid(a), _dpkg_valid(b)]
    for text, ok in zip((a, b), valid, strict=True):
        if not ok:
            with pytest.raises(ValueError):
                debian_version_key(text)
    if all(valid):
        assert compare_debian(a, b) == _dpkg_order(a, b), (a, b)


@needs_dpkg
@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("0123456789az.+~-:_ "), min_size=1, max_size=8))
def test_any_string_is_a_version_exactly_when_dpkg_says_so(text):
    try:
        debian_version_key(text)
        ours = True
    except ValueError:
        ours = False
    # dpkg skips blanks around a version it reads, and reads an epoch with strtol (so '-0:1'
    # passes); Policy's versions have neither, nor does a version kconform is handed.
    strict = text == text.strip() and not (":" in text and text.startswith(("-", "+")))
    assert ours == (_dpkg_valid(text) and strict), text


# --------------------------------------------------------------------- release candidates

@pytest.mark.parametrize("text", ["7.3~rc7-1~exp1", "7.3-rc7-amd64", "7.3.0-rc7-amd64",
                                  "7.3-rc7"])
def test_an_rc_is_read_from_its_package_version_and_from_uname(text):
    assert upstream_version(text) == (7, 3, 0, 7)


def test_an_rc_comes_after_the_series_before_it_and_before_its_release():
    rc = upstream_version("7.3~rc7-1~exp1")
    assert upstream_version("7.2.99-1") < upstream_version("7.3~rc1-1~exp1") < rc
    assert rc < upstream_version("7.3-1") == upstream_version("7.3.0-1-amd64") == \
        (7, 3, 0, RELEASE)
    assert sort_key("7.2.13") < sort_key("7.3-rc7") < sort_key("7.3") < sort_key(None)


def test_a_release_is_not_taken_for_an_rc():
    assert upstream_version("6.1.0-50-amd64") == (6, 1, 0, RELEASE)
    assert upstream_version("6.1.176-1") == (6, 1, 176, RELEASE)


def test_dotted_names_an_rc_as_mainline_does_and_a_release_as_before():
    assert dotted(upstream_version("7.3~rc7-1~exp1")) == "7.3-rc7"
    assert dotted(upstream_version("6.1.176-1")) == "6.1.176"
    assert dotted(upstream_version("6.7")) == "6.7.0"
    assert dotted((6, 1, 72)) == "6.1.72"


def test_a_bound_may_name_an_rc():
    assert bound_version("7.3-rc7") == (7, 3, 0, 7)
    assert bound_version("7.3") == (7, 3, 0, RELEASE)
    for bad in ["7.3~rc7", "7.3-rc", "7.3-rc0", "7.3-1"]:
        with pytest.raises(ValueError, match="7.3-rc7"):
            bound_version(bad)


RC_DATA = textwrap.dedent("""\
    [X3]
    title = "a change of 7.3"
    section = "User space"
    [[X3.outcomes]]
    until = "SINCE"
    expect = { errno = "EOPNOTSUPP" }
    source = "before the change"
    reason = "the change landed in 7.3"
    [[X3.outcomes]]
    since = "SINCE"
    expect = { errno = "OK" }
    source = "commit abc"
    """)


def _rc_kernel_version() -> tuple[int, ...]:
    return KernelTree(name="debian-rc", vmlinuz=None, release="7.3.0-rc7-amd64",
                      package_version="7.3~rc7-1~exp1").version


def test_an_rc_is_judged_before_its_release(tmp_path):
    path = tmp_path / "expectations.toml"
    path.write_text(RC_DATA.replace("SINCE", "7.3"))
    behaviour = expectations.load(path)["X3"]
    judged = expectations.judge(behaviour, _rc_kernel_version(), {"errno": "EOPNOTSUPP"})
    assert judged.outcome.source == "before the change"
    assert judged.verdict == expectations.Verdict.EXPECTED_DIFFERENCE
    release = expectations.judge(behaviour, upstream_version("7.3-1"), {"errno": "OK"})
    assert release.verdict == expectations.Verdict.PASS


def test_an_expectation_that_names_the_rc_applies_to_it(tmp_path):
    path = tmp_path / "expectations.toml"
    path.write_text(RC_DATA.replace("SINCE", "7.3-rc7"))
    behaviour = expectations.load(path)["X3"]
    assert expectations.judge(behaviour, _rc_kernel_version(), {"errno": "OK"}).verdict == \
        expectations.Verdict.PASS
    older_rc = upstream_version("7.3-rc6-amd64")
    assert behaviour.outcome_for(older_rc).source == "before the change"


def test_an_rc_no_outcome_covers_is_named_as_an_rc(tmp_path):
    path = tmp_path / "expectations.toml"
    path.write_text(RC_DATA.replace("SINCE", "7.3").split("[[X3.outcomes]]\nsince")[0]
                    .replace('until = "7.3"', 'since = "7.3"'))
    behaviour = expectations.load(path)["X3"]
    with pytest.raises(expectations.ExpectationsError, match="0 outcomes apply to 7.3-rc7: "
                                                             "the expectations start at 7.3.0"):
        behaviour.outcome_for(_rc_kernel_version())
