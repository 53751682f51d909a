"""Part E of the hardening issue: fuzz the parsers a user can feed (kernel definitions,
expectations files, results files for merge and compare). Whatever the input, the only exception
that may come out is kconform's own (KconformError and its subclasses), which the command line
turns into a usage error; anything else would be a traceback in front of the user.

Each fuzzer runs a few hundred examples in a few seconds, so `./kconform test` runs them all."""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import KconformError
from harness.judging import expectations
from harness.kernels import load_specs, parse_spec
from harness.reports import compare, grid, junit, results
from tests.conftest import REPO

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KERNELS = REPO / "kernels"
EXPECTATIONS = REPO / "cases" / "expectations.toml"
REGRESSION = REPO / "tests" / "data" / "results" / "regression.json"


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="kconform-fuzz-") as directory:
        yield Path(directory)


# ----------------------------------------------------------------------------- TOML text

def toml_string(text: str) -> str:
    """A TOML basic string: json.dumps' escapes are TOML's, but TOML wants astral characters
    and DEL as they are or as \\U/\\u escapes, not as JSON's surrogate pairs."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(key: str) -> str:
    return toml_string(key)  # quoted: any key


def toml_value(value) -> str:
    """A value as TOML text (inline, one line); json.dumps' string escapes are TOML's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(table: dict) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())


scalars = st.one_of(
    st.text(max_size=12), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(),
    st.booleans(), st.dates(), st.datetimes(), st.times())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def mostly(plausible, anything=values):
    """Four draws in five from `plausible` (so the checks past the first are reached too)."""
    return st.one_of(plausible, plausible, plausible, plausible, anything)


def mutated(text: str):
    """A real file with a few characters inserted, deleted or replaced at random places."""
    @st.composite
    def strategy(draw):
        out = text
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(out)))
            kind = draw(st.sampled_from(["insert", "delete", "replace"]))
            piece = draw(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=4)
                         | st.sampled_from(['"', "[", "]", "=", "\n", "{", ",", "'", "\\", "#"]))
            if kind == "insert":
                out = out[:at] + piece + out[at:]
            elif kind == "delete":
                out = out[:at] + out[at + len(piece):]
            else:
                out = out[:at] + piece + out[at + len(piece):]
        return out
    return strategy()


# ----------------------------------------------------------------------------- rootfs recipes

RECIPE_TEXT = (REPO / "images" / "debian-bookworm.toml").read_text()
plausible_recipe_values = {
    "suite": mostly(st.sampled_from(["bookworm", "sid", "--no-check-gpg", "--keyring=/x.gpg",
                                     "a b", "", "-"])),
    "packages": mostly(st.one_of(
        st.lists(st.sampled_from(["python3", "libbpf1", "--no-check-gpg", "a,b", "", "x y",
                                  "-x"]), max_size=3),
        st.sampled_from(["python3", "--include=x"]))),
    "variant": mostly(st.sampled_from(["minbase", "buildd", "--print-debs", "", "Minbase"])),
    "description": mostly(st.text(max_size=20)),
}


@st.composite
def recipe_tables(draw) -> dict:
    table = {}
    for name, strategy in plausible_recipe_values.items():
        if draw(st.integers(0, 5)):
            table[name] = draw(strategy)
    table.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=2)))
    return table


def check_recipe(text: str, name: str = "fuzz") -> None:
    """A recipe is refused with a KconformError, or every value that reaches debootstrap's
    command line is a word of its grammar: none can be read as an option."""
    from harness.kernels.specs import DEBIAN_PACKAGE, DEBIAN_SUITE
    from harness.machines.rootfs import DEBOOTSTRAP_VARIANTS, RootfsSpec
    try:
        spec = RootfsSpec.parse(Path(f"images/{name}.toml"), text)
    except KconformError:
        return
    assert DEBIAN_SUITE.fullmatch(spec.suite) and not spec.suite.startswith("-")
    assert spec.packages and all(DEBIAN_PACKAGE.fullmatch(p) and "," not in p
                                 for p in spec.packages)
    assert spec.variant in DEBOOTSTRAP_VARIANTS and "\n" not in spec.description


@FUZZ
@given(recipe_tables())
def test_fuzz_rootfs_recipes_from_generated_tables(table):
    check_recipe(toml_document(table))


@FUZZ
@given(mutated(RECIPE_TEXT))
def test_fuzz_rootfs_recipes_from_damaged_text(text):
    check_recipe(text)


@settings(max_examples=60, deadline=None, database=None)
@given(st.binary(max_size=200), st.text(max_size=12))
def test_fuzz_rootfs_recipe_files(data, name):
    from harness.machines.rootfs import check_rootfs_name
    if "/" in name or name in ("", ".", "..") or "\x00" in name:
        name = "fuzz"
    with tempfile.TemporaryDirectory() as directory:
        with contextlib.suppress(OSError):  # a name the filesystem refuses
            (Path(directory) / f"{name}.toml").write_bytes(data)
        with contextlib.suppress(KconformError):
            check_rootfs_name(name, Path(directory))


# ----------------------------------------------------------------------------- kernel definitions

SPEC_TEXT = (KERNELS / "debian-7.2.toml").read_text()
plausible_spec_values = {
    "series": mostly(st.sampled_from(["6.1", "5.10", "6", "6.1.2", "", "x.y"])),
    "suites": mostly(st.lists(st.sampled_from(["bookworm", "sid", "trixie-backports", "a b",
                                               ""]), max_size=3)),
    "meta": mostly(st.sampled_from(["linux-image-amd64", "", "-x", "linux image"])),
    "packages": mostly(st.lists(st.sampled_from(["linux-image-{abi}-unsigned", "{abi}",
                                                 "{other}", "x{", "linux-modules-{abi}"]),
                                max_size=3)),
    "description": mostly(st.text(max_size=20)),
}


@st.composite
def spec_tables(draw) -> dict:
    table = {}
    for name, strategy in plausible_spec_values.items():
        if draw(st.integers(0, 5)):  # most fields present, some missing
            table[name] = draw(strategy)
    table.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=2)))
    return table


def check_spec(text: str, name: str = "fuzz") -> None:
    try:
        spec = parse_spec(Path(f"kernels/{name}.toml"), text)
    except KconformError:
        return
    # what the rest of kconform does with a spec it accepted
    assert spec.series_key and spec.suites and spec.packages
    for template in spec.packages:
        template.format(abi="6.1.0-1-amd64")


@FUZZ
@given(spec_tables())
def test_fuzz_kernel_definitions_from_generated_tables(table):
    check_spec(toml_document(table))


@FUZZ
@given(mutated(SPEC_TEXT))
def test_fuzz_kernel_definitions_from_damaged_text(text):
    check_spec(text)


@FUZZ
@given(st.text(max_size=200), st.text(max_size=20))
def test_fuzz_kernel_definitions_from_any_text_and_file_name(text, name):
    if "/" in name or name in ("", ".", "..") or "\x00" in name:
        name = "fuzz"
    check_spec(text, name)


@settings(max_examples=60, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_fuzz_kernel_definitions_directory(data):
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "debian-6.1.toml").write_bytes(data)
        with contextlib.suppress(KconformError):
            load_specs(Path(directory))


# ----------------------------------------------------------------------------- expectations

EXPECTATIONS_TEXT = EXPECTATIONS.read_text()
# the file's first behaviours, cut where a behaviour starts, so the undamaged text is valid
EXPECTATIONS_HEAD = EXPECTATIONS_TEXT[:EXPECTATIONS_TEXT.index("\n[C2]\n")]
bounds = mostly(st.sampled_from(["5.10", "5.15", "6.1.72", "6.7", "7.2", "5.10.223", "5.7", "x",
                                  ""])
                | st.lists(st.sampled_from(["5.10", "6.1.72", "6.7", "5.15.0", "6"]), max_size=3))
observations = st.dictionaries(st.sampled_from(["errno", "update", "sockmap", "sockhash", "guest"]),
                               mostly(st.sampled_from(["OK", "EINVAL", "hang"])), max_size=3)


@st.composite
def outcome_tables(draw) -> dict:
    fields = {"expect": mostly(observations), "source": mostly(st.sampled_from(["doc"] * 5 + [""])),
              "since": bounds, "until": bounds, "reason": mostly(st.sampled_from(["why", ""])),
              "differs_from_doc": mostly(st.booleans()), "regression": mostly(st.booleans())}
    table = {name: draw(strategy) for name, strategy in fields.items()
             if draw(st.integers(0, 3)) if name in ("expect", "source") or draw(st.booleans())}
    if draw(st.integers(0, 19)) == 0:
        table[draw(st.text(max_size=6))] = draw(values)
    return table


@st.composite
def expectation_documents(draw) -> dict:
    document = {}
    for bid in draw(st.lists(st.sampled_from(["X1", "L1", "E1"]) | st.text(max_size=4),
                             min_size=1, max_size=2, unique=True)):
        table = {}
        if draw(st.sampled_from([True] * 9 + [False])):
            table["title"] = draw(mostly(st.sampled_from(["a title"] * 5 + [""])))
        if draw(st.sampled_from([True] * 9 + [False])):
            table["section"] = draw(mostly(st.sampled_from(["User space"] * 5 + [""])))
        table["outcomes"] = draw(mostly(st.lists(outcome_tables(), max_size=3)))
        if draw(st.sampled_from([False] * 29 + [True])):
            table = draw(values)
        document[bid] = table
    return document


REAL_BEHAVIOURS = tomllib.loads(EXPECTATIONS_TEXT)


@st.composite
def perturbed_behaviours(draw) -> dict:
    """Real behaviours of the suite with one field of one of them replaced or removed: mostly
    accepted, so what runs on an accepted file (bounds, judging) is fuzzed too."""
    ids = draw(st.lists(st.sampled_from(sorted(REAL_BEHAVIOURS)), min_size=1, max_size=3,
                        unique=True))
    document = json.loads(json.dumps({bid: REAL_BEHAVIOURS[bid] for bid in ids}))
    table = document[draw(st.sampled_from(ids))]
    if "outcomes" in table and draw(st.booleans()):  # a support-table behaviour has none
        table = draw(st.sampled_from(table["outcomes"]))
    field = draw(st.sampled_from([*sorted(table), "since", "until", "regression"]))
    if draw(st.sampled_from([True, False, False])):
        table.pop(field, None)
    else:
        table[field] = draw(bounds if field in ("since", "until") else mostly(
            observations if field == "expect" else st.text(max_size=8)))
    return document


def check_expectations(path: Path) -> None:
    try:
        behaviours = expectations.load(path)
    except KconformError:
        return
    # an accepted file is judged without surprises on every kernel the suite knows
    for behaviour in behaviours.values():
        assert isinstance(behaviour.may_lose_the_guest, bool)
        for version in [(5, 10, 223), (6, 1, 176), (6, 12, 57), (7, 2, 13), (4, 19, 0)]:
            try:
                verdict = expectations.judge(behaviour, version, {"errno": "OK"}, "sockmap")
            except KconformError:
                continue  # a kernel older than any outcome covers
            verdict.message("k", "1.2.3")
            json.dumps(verdict.expected, sort_keys=True)  # the expect fixture records it


@settings(FUZZ, max_examples=150)
@given(expectation_documents())
def test_fuzz_expectations_from_generated_tables(scratch, document):
    path = scratch / "generated.toml"
    path.write_text(toml_document(document))
    check_expectations(path)


@FUZZ
@given(perturbed_behaviours())
def test_fuzz_expectations_from_perturbed_real_behaviours(scratch, document):
    path = scratch / "perturbed.toml"
    path.write_text(toml_document(document))
    check_expectations(path)


@FUZZ
@given(mutated(EXPECTATIONS_HEAD))
def test_fuzz_expectations_from_damaged_text(scratch, text):
    path = scratch / "damaged.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_expectations(path)


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_fuzz_expectations_from_any_bytes(scratch, data):
    path = scratch / "bytes.toml"
    path.write_bytes(data)
    check_expectations(path)


# ----------------------------------------------------------------------------- results files

RESULTS_DOC = json.loads(REGRESSION.read_text())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3), max_leaves=6)


@st.composite
def damaged_results(draw) -> object:
    """The saved regression run with one to three of its fields removed or replaced."""
    document = json.loads(json.dumps(RESULTS_DOC))
    for _ in range(draw(st.integers(1, 3))):
        parent, key = None, None
        node = document
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            if draw(st.integers(0, 20)) == 0:
                return draw(json_values)
            continue
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(json_values | st.sampled_from(list(results.VERDICTS)))
    return document


def check_results_file(path: Path) -> None:
    """What merge and compare do with a file: no exception but kconform's own."""
    try:
        loaded = results.load(path)
        merged = results.merge([(str(path), loaded)])
        grid.markdown(merged), grid.html_page(merged), junit.junit_text(merged)
        json.dumps(merged.to_json())
    except KconformError:
        pass
    for base, new in [(None, None), ("debian-5.10", "debian-7.2"), ("debian-7.2", None)]:
        try:
            sides = compare.sides([str(path)], base, new)
            compare.render(compare.compare(*sides))
        except KconformError:
            pass


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(damaged_results())
def test_fuzz_results_files_for_merge_and_compare(scratch, document):
    path = scratch / "report.json"
    path.write_text(json.dumps(document))
    check_results_file(path)


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_fuzz_results_files_from_any_bytes(scratch, data):
    path = scratch / "bytes.json"
    path.write_bytes(data)
    check_results_file(path)


def test_the_saved_results_pass_the_checks_and_compare_as_before():
    """The fuzzers' starting point is a valid file: a check that refused it would hide bugs."""
    loaded = results.load(REGRESSION)
    comparison = compare.compare(*compare.sides([str(REGRESSION)], "debian-5.10", "debian-7.2"))
    assert len(loaded.cases) == 14 and comparison.regressions
