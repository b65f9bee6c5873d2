"""The public HTTP cache test suite (http-cache-tests 0.4.5) as a regression gate.

Runs the suite through edgeproxy once per parser backend and fails on any test that
``tests/cachetests/expected.json`` records as passing but fails now (a timing-sensitive test that fails is
rerun by its id and must pass two runs of three), and on a score below the floor (``runner.FLOOR_PASSED``,
``runner.FLOOR_REQUIRED``), which ``--update`` cannot lower either; improvements are printed so the expectations
can be raised with ``scripts/cache-tests --update``. The harness itself is checked twice: its tally must reproduce the
scores published with the package, and with no cache in between it must score like "no cache at all".
Needs node and npm (the package is installed once into the cache directory); about 20 s per run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from tests.cachetests import runner
from tests.cachetests.runner import Case, Comparison

needs_node = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are needed to run http-cache-tests")
needs_proxy = pytest.mark.skipif(importlib.util.find_spec("edgeproxy.__main__") is None,
                                 reason="python -m edgeproxy serve is not available")

UUID = "0badf00d-1234-4abc-8def-0123456789ab"


@pytest.fixture(scope="module")
def package():
    return runner.install()


@pytest.fixture(scope="module")
def catalogue(package):
    return runner.list_tests(package)


@pytest.mark.parametrize("raw, described", [
    (True, True),
    (["Assertion", "Response 2 does not come from cache"], "Assertion: Response 2 does not come from cache"),
    (["Setup", "retry"], "Setup: retry"),
    (["FetchError", f"request to http://127.0.0.1:59289/test/{UUID} failed, reason: socket hang up"],
     "FetchError: request to http://127.0.0.1:<port>/test/<uuid> failed, reason: socket hang up"),
    (["Assertion", 'Response 1 header Expires is "Thu, 01 Jan 2026 00:00:03 GMT", not "x"'],
     'Assertion: Response 1 header Expires is "<date>", not "x"'),
    (False, "False"),
])
def test_describe_makes_failures_stable(raw, described):
    assert runner.describe(raw) == described


def _info(test_id: str, timing: bool) -> Case:
    return Case(test_id, "required", test_id, "suite", (), timing)


TESTS = {"a": _info("a", False), "t": _info("t", True), "u": _info("u", True), "n": _info("n", False)}


# reruns: each test's rerun verdicts in order (a test with none left must not be rerun); then the reruns made.
@pytest.mark.parametrize("expected, actual, reruns, outcome, rerun", [
    ({"a": True}, {"a": True}, {}, Comparison({}, [], []), []),
    ({"a": True}, {"a": "Assertion: x"}, {}, Comparison({"a": "Assertion: x"}, [], []), []),
    # only timing-sensitive tests are rerun; one that passes both reruns (two runs of three) is flaky
    ({"a": True, "t": True}, {"a": "A: x", "t": "A: y"}, {"t": [True, True]}, Comparison({"a": "A: x"}, [], ["t"]),
     ["t", "t"]),
    # one lucky pass is not enough; a failed first rerun settles it (two of three can no longer pass)
    ({"t": True, "u": True}, {"t": "A: y", "u": "A: z"}, {"t": [True, False], "u": [False]},
     Comparison({"t": "A: y", "u": "A: z"}, [], []), ["t", "t", "u"]),
    ({"t": True}, {"t": "A: y"}, {"t": [False]}, Comparison({"t": "A: y"}, [], []), ["t"]),
    ({"a": True}, {}, {}, Comparison({"a": "missing from the client's results"}, [], []), []),
    ({"a": "A: x", "n": "A: y"}, {"a": True, "n": "A: y"}, {}, Comparison({}, ["a"], []), []),
])
def test_compare(expected, actual, reruns, outcome, rerun):
    verdicts = {test_id: iter(runs) for test_id, runs in reruns.items()}
    made: list[str] = []

    def run_again(test_id: str) -> bool:
        made.append(test_id)
        return next(verdicts[test_id])

    assert runner.compare(expected, actual, TESTS, run_again) == outcome
    assert made == rerun


def test_flaky_tests_count_as_passed_only_in_the_settled_results():
    outcome = Comparison({}, [], ["t"])
    assert runner.settled({"t": "A: y", "u": "A: z"}, outcome) == {"t": True, "u": "A: z"}


@needs_node
def test_the_expectations_hold_the_floor(catalogue):
    """expected.json (what --update writes) scores at least the floor; the floor is the published figure."""
    score = runner.score(runner.load_expected(), catalogue)
    assert runner.below_floor(score) is None, score
    assert (runner.FLOOR_PASSED, runner.FLOOR_REQUIRED) >= (305, 156)


@needs_node
@pytest.mark.parametrize("lost, refused", [
    ((), False),
    (("freshness-max-age",), True),  # one required test fewer: 155 required
    (("freshness-max-age-negative", "vary-syntax-empty-star"), True),  # two others: 303 passed
])
def test_update_refuses_to_lower_the_expectations_below_the_floor(catalogue, tmp_path, lost, refused):
    results = {**runner.load_expected(), **dict.fromkeys(lost, "Assertion: lost")}
    path = tmp_path / "expected.json"
    assert all(runner.load_expected().get(i) is True for i in lost)
    why = runner.save_expected(results, catalogue, "h11", path)
    assert (why is not None) == refused, why
    assert path.exists() != refused
    if refused:
        assert "below the floor" in why


# The scores published for this suite version; passed counts results that are true.
@pytest.mark.parametrize("name, passed, required", [
    ("squid", 243, 141), ("apache", 241, 128), ("trafficserver", 217, 123),
    ("varnish", 188, 123), ("nginx", 186, 100), ("fastly", 181, 100),
])
@needs_node
def test_tally_reproduces_published_scores(package, catalogue, name, passed, required):
    published = json.loads((package / "results" / f"{name}.json").read_text())
    score = runner.score({i: runner.describe(r) for i, r in published.items()}, catalogue)
    assert (score.passed, score.by_kind["required"][0]) == (passed, required)


@needs_node
def test_catalogue_matches_the_pinned_version(catalogue):
    kinds = {kind: sum(t.kind == kind for t in catalogue.values()) for kind in runner.KINDS}
    assert kinds == {"required": 165, "optimal": 95, "check": 90}


@pytest.mark.slow
@needs_node
def test_direct_to_origin_scores_like_no_cache(package, catalogue):
    with runner.target(package, None) as base:
        score = runner.score(runner.run_client(package, base), catalogue)
    assert (score.passed, score.by_kind["required"][0]) == (114, 97)


@pytest.mark.slow
@needs_node
@needs_proxy
@pytest.mark.parametrize("parser, workers", [*((p, 1) for p in runner.PARSERS), ("h11", 2)])
def test_no_regressions(package, catalogue, parser, workers, capsys):
    """Each parser with one process, and two workers over the shared cache (the same expectations)."""
    expected = runner.load_expected()
    with runner.target(package, runner.DEFAULT_PROXY_CMD, parser, workers) as base:
        results = runner.run_client(package, base)
        outcome = runner.compare(expected, results, catalogue, lambda i: runner.run_one(package, base, i))
    settled = runner.score(runner.settled(results, outcome), catalogue)
    with capsys.disabled():
        print(f"\nhttp-cache-tests via edgeproxy ({parser}, {workers} workers): {runner.score(results, catalogue)}")
        for test_id in outcome.flaky:
            print(f"  flaky, failed then passed two reruns: {test_id}")
        for test_id in outcome.improvements:
            print(f"  improved (raise expectations with scripts/cache-tests --update): {test_id}")
    regressions = "\n".join(f"{i} ({catalogue[i].kind}): {r}" for i, r in outcome.regressions.items())
    assert not outcome.regressions, f"tests that passed before now fail:\n{regressions}"
    assert runner.below_floor(settled) is None, runner.below_floor(settled)
