"""Schemathesis on /classify and /explain of the live registry-mode server: valid and invalid bodies drawn from
its OpenAPI schema; every one must get 200 or a 4xx, never a 5xx.

Not `schemathesis.pytest.from_fixture(...).parametrize()`: with pytest 9.2 it fails at run time
(it sets `request.node._nodeid`, which pytest 9 removed), and a module-level `from_url` would need
the server at collection time. The operation's Hypothesis strategies do the same generation.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode

# Hypothesis caches data under ./.hypothesis from collection on, even with no example database:
# keep it out of the repository, in one folder that runs reuse.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "textops-hypothesis")

pytestmark = pytest.mark.fuzz
ANSWERS = {200, 400, 413, 415}
SEEN: Counter = Counter()  # status codes over all examples, for the check after the fuzzing


@pytest.fixture(scope="module")
def schema(registry_server):
    return schemathesis.openapi.from_url(f"{registry_server.url}/docs.json", timeout=10)


def cases(schema, path: str):
    operation = schema[path]["POST"]
    return st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))


@pytest.fixture(scope="module")
def classify_cases(schema):
    return cases(schema, "/classify")


@pytest.fixture(scope="module")
def explain_cases(schema):
    return cases(schema, "/explain")


def call_and_check(case, url: str, seen: Counter, timeout: float) -> None:
    """One generated request: 200 or a 4xx, never a 5xx; a 200's probabilities sum to 1."""
    response = case.call(base_url=url, timeout=timeout)
    seen[response.status_code] += 1
    assert response.status_code in ANSWERS, f"{case.as_curl_command()}\n-> {response.status_code} {response.text[:300]}"
    if response.status_code == 200:
        for row in response.json():
            assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


# 150 requests take 2-5 s here; the module-scoped fixtures are the same for every example.
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_classify_never_answers_5xx(registry_server, classify_cases, data):
    call_and_check(data.draw(classify_cases), registry_server.url, SEEN, timeout=30)


EXPLAIN_SEEN: Counter = Counter()


# /explain costs one model call per word: fewer examples.
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_explain_never_answers_5xx(registry_server, explain_cases, data):
    call_and_check(data.draw(explain_cases), registry_server.url, EXPLAIN_SEEN, timeout=60)


def test_explain_fuzzing_reached_the_model_and_the_validation():
    assert sum(EXPLAIN_SEEN.values()) >= 40, EXPLAIN_SEEN
    assert EXPLAIN_SEEN[200] >= 5 and EXPLAIN_SEEN[400] >= 5, EXPLAIN_SEEN


def test_fuzzing_reached_the_model_and_the_validation():
    # Runs after the fuzzing (file order): a run that only produced rejected bodies, or only
    # valid ones, would pass above while testing half of the service.
    assert sum(SEEN.values()) >= 100, SEEN
    print(f"\nstatus codes: {dict(SEEN)}")
    assert SEEN[200] >= 20 and SEEN[400] >= 20, SEEN
