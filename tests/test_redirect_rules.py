"""WIP #12: the support-table rules predict every saved matrix observation of the five kernels."""
import json
from pathlib import Path

import pytest

from cases.redirect_rules import expected, load_rules, observed_class
from harness.versions import upstream_version

DATA = Path(__file__).parent / "data" / "matrix"
VERSIONS = {"debian-5.10": "5.10.262-1", "debian-6.1": "6.1.192-3", "debian-6.12": "6.12.118-1",
            "debian-7.2": "7.2.13-1", "debian-7.3": "7.3.4-1~bpo13+1"}


@pytest.mark.parametrize("named", sorted(VERSIONS))
def test_the_rules_predict_every_observed_combination(named):
    rules = load_rules()
    version = upstream_version(VERSIONS[named])
    observed = json.loads((DATA / f"matrix-{named}.json").read_text())
    wrong = []
    for key, targets in observed.items():
        _map, program, direction, source = key.split("-", 3)
        for target, obs in targets.items():
            rule = expected(rules, program, direction, source, target, version)
            got = observed_class(obs, direction)
            if got != rule.outcome:
                wrong.append(f"{key}->{target}: {rule.id} says {rule.outcome}, observed {got}")
    assert not wrong, "\n".join(wrong[:20])
