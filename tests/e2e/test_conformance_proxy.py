"""The official MCP conformance suite through mcp-guard: the proxy fronting the conformance fixture.

mcp-guard runs as a real process (`python -m mcp_guard run --transport http`) with an allow-all policy bundle,
no auth, and one upstream, the first-party fixture (tests/conformance/conformance_fixture.py), with
``namespace = false`` so the suite's exact names reach it — once spawned over stdio, once over streamable HTTP
(scripts/conformance.py ``--with-fixture`` starts it and substitutes its URL into the config). Both spec
versions' requirement sets run against the proxy's URL.

Every check that fails through the proxy is listed with why in tests/conformance/expected-failures.json
(sections ``proxy-stdio`` and ``proxy-http``) and every listed one must still fail, so the baseline cannot go
stale in either direction. The fixture answers ``server/discover``, so mcp-guard speaks 2026-07-28 to it (over
stdio and over HTTP: the second run is the e2e of an HTTP upstream in the 2026 era) and 2025-11-25 clients are
served through it (mcp_guard.upstream.era, mcp_guard.pipeline.input_rounds; tests/conformance/README.md). A
2026-07-28 Tool declares no task support, so the config's ``task_tools`` (the fixture's own handshake-era
declarations) says which tools mcp-guard serves as tasks for the suite's ``tasks-*`` scenarios. The score
of each run is printed in pytest's terminal summary beside the direct one (tests/e2e/test_conformance.py).
The proxy's config and the script's arguments are in tests/e2e/conformance_runs.py, which starts both runs
together with the direct one.
"""

from __future__ import annotations

from typing import Any

import pytest
from conformance_runs import Outcome, summary_of
from test_conformance import EXPECTED_PASSING, assert_matches_baseline, score_line

from scores import SCORE_PROPERTY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["stdio", "http"])
def proxy_run(request: pytest.FixtureRequest, conformance_runs: dict[str, Outcome]) -> dict[str, Any]:
    return summary_of(conformance_runs, f"proxy-{request.param}")


@pytest.mark.parametrize("spec_version", sorted(EXPECTED_PASSING))
def test_proxy_fails_only_its_baseline(proxy_run: dict[str, Any], spec_version: str, record_property: Any) -> None:
    record_property(SCORE_PROPERTY, score_line(proxy_run, spec_version))
    assert_matches_baseline(proxy_run, spec_version)
