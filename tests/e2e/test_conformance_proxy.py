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
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from test_conformance import EXPECTED_PASSING, assert_matches_baseline, run_suite, score_line

from scores import SCORE_PROPERTY

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "conformance" / "conformance_fixture.py"
URL_MARK = "@FIXTURE_URL@"  # replaced by the fixture's URL when the proxy starts (HTTP upstream)

ALLOW_ALL = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["conformance: allow all"], "obligations": {}}
"""


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _task_tools() -> str:
    """``task_tools`` as the fixture's own (handshake-era) definitions declare them: mcp-guard speaks 2026-07-28
    to the fixture, whose tools then carry no ``execution.taskSupport``, so the operator's config says it."""
    spec = importlib.util.spec_from_file_location("conformance_fixture", FIXTURE)
    assert spec is not None and spec.loader is not None
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    table: dict[str, str] = fixture.TASK_SUPPORT
    assert table, "the fixture declares no task-supporting tool"
    return "task_tools = { " + ", ".join(f"{name} = {_toml(mode)}" for name, mode in sorted(table.items())) + " }\n"


def _upstream(transport: str) -> str:
    common = f"namespace = false\nforward_roots = true\n{_task_tools()}"
    if transport == "stdio":
        return (
            f"[upstreams.conf]\ncommand = {_toml(sys.executable)}\n"
            f'args = [{_toml(str(FIXTURE))}, "--transport", "stdio"]\n{common}'
        )
    return f'[upstreams.conf]\ntransport = "http"\nurl = "{URL_MARK}"\n{common}'


def _proxy_command(transport: str, config: Path) -> tuple[str, ...]:
    """scripts/conformance.py arguments that start mcp-guard (and, for an HTTP upstream, the fixture first)."""
    run = shlex.join([sys.executable, "-m", "mcp_guard", "run", "--transport", "http", "--config", str(config)])
    if transport == "stdio":
        return ("--command", run + " --port {port}")
    live = config.with_name("proxy-live.toml")
    fill = f"sed 's#{URL_MARK}#{{fixture_url}}#' {shlex.quote(str(config))} > {shlex.quote(str(live))}"
    run = shlex.join([sys.executable, "-m", "mcp_guard", "run", "--transport", "http", "--config", str(live)])
    return ("--with-fixture", "--command", shlex.join(["sh", "-c", f"{fill} && exec {run} --port {{port}}"]))


@pytest.fixture(scope="module", params=["stdio", "http"])
def proxy_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    transport: str = request.param
    tmp = tmp_path_factory.mktemp(f"conformance-proxy-{transport}")
    (tmp / "policy").mkdir()
    (tmp / "policy" / "allow.rego").write_text(ALLOW_ALL, encoding="utf-8")
    config = tmp / "proxy.toml"
    config.write_text(
        '[server]\ntransport = "http"\nrequire_auth = false\n\n'
        f"[policy]\nbundle = {_toml(str(tmp / 'policy'))}\n\n"
        f"[audit]\npath = {_toml(str(tmp / 'audit.db'))}\n\n" + _upstream(transport),
        encoding="utf-8",
    )
    return run_suite(tmp / "proxy.json", f"proxy-{transport}", *_proxy_command(transport, config))


@pytest.mark.parametrize("spec_version", sorted(EXPECTED_PASSING))
def test_proxy_fails_only_its_baseline(proxy_run: dict[str, Any], spec_version: str, record_property: Any) -> None:
    record_property(SCORE_PROPERTY, score_line(proxy_run, spec_version))
    assert_matches_baseline(proxy_run, spec_version)
