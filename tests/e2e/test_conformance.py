"""The official MCP conformance suite against the first-party conformance fixture, run directly.

`scripts/conformance.py` installs the pinned suite (tests/conformance, `npm ci`) on first use, starts
tests/conformance/conformance_fixture.py over streamable HTTP, and runs each spec version's requirement set
(`conformance server --requirements <version>`). The fixture is expected to pass every required scenario of
both versions; the lists below are the suite's own (0.2.0-alpha.12), so a suite upgrade that changes them
shows up here instead of silently changing the denominator.

Every check that fails must be listed, with why, in tests/conformance/expected-failures.json (section
``fixture-direct``: the tasks extension scenarios the suite runs but does not score), and every listed one must
still fail: scripts/conformance.py ``--expected-failures`` compares. The score is printed in pytest's terminal
summary (tests/conftest.py). The run is started together with test_conformance_proxy.py's two, for the session
(tests/e2e/conformance_runs.py, fixture ``conformance_runs`` in tests/e2e/conftest.py).

A stdio smoke test covers the fixture's other transport (the one a proxy uses to spawn it as an upstream).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from conformance_runs import BASELINE, Outcome, summary_of
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from scores import SCORE_PROPERTY

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "conformance" / "conformance_fixture.py"

EXPECTED_PASSING: dict[str, list[str]] = {
    "2025-11-25": [
        "server-initialize",
        "logging-set-level",
        "ping",
        "completion-complete",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-audio",
        "tools-call-embedded-resource",
        "tools-call-mixed-content",
        "tools-call-with-logging",
        "tools-call-error",
        "tools-call-with-progress",
        "tools-call-sampling",
        "tools-call-elicitation",
        "elicitation-sep1034-defaults",
        "server-sse-multiple-streams",
        "elicitation-sep1330-enums",
        "resources-list",
        "resources-read-text",
        "resources-read-binary",
        "resources-templates-read",
        "resources-subscribe",
        "resources-unsubscribe",
        "prompts-list",
        "prompts-get-simple",
        "prompts-get-with-args",
        "prompts-get-embedded-resource",
        "prompts-get-with-image",
        "dns-rebinding-protection",
    ],
    "2026-07-28": [
        "server-stateless",
        "completion-complete",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-audio",
        "tools-call-embedded-resource",
        "tools-call-mixed-content",
        "tools-call-error",
        "tools-call-with-progress",
        "server-sse-multiple-streams",
        "resources-list",
        "resources-read-text",
        "resources-read-binary",
        "resources-templates-read",
        "sep-2164-resource-not-found",
        "prompts-list",
        "prompts-get-simple",
        "prompts-get-with-args",
        "prompts-get-embedded-resource",
        "prompts-get-with-image",
        "dns-rebinding-protection",
        "caching",
        "input-required-result-basic-elicitation",
        "input-required-result-basic-sampling",
        "input-required-result-basic-list-roots",
        "input-required-result-request-state",
        "input-required-result-multiple-input-requests",
        "input-required-result-multi-round",
        "input-required-result-missing-input-response",
        "input-required-result-non-tool-request",
        "input-required-result-result-type",
        "input-required-result-unsupported-methods",
        "input-required-result-tampered-state",
        "input-required-result-capability-check",
        "input-required-result-ignore-extra-params",
        "input-required-result-validate-input",
    ],
}

# Run but never scored by the suite. The fixture passes these too; the tasks extension (SEP-2663) it does
# not implement (neither does the SDK it is built on), and tasks-status-notifications is skipped by the suite.
EXPECTED_NOT_SCORED_PASSING: dict[str, list[str]] = {
    "2025-11-25": ["json-schema-2020-12", "server-session-lifecycle", "server-sse-polling"],
    "2026-07-28": ["http-custom-header-server-validation", "http-header-validation", "json-schema-2020-12"],
}


def score_line(summary: dict[str, Any], spec_version: str) -> str:
    """One line for the terminal summary: required scenarios and checks, and how the failures stand."""
    result = summary["versions"][spec_version]
    score, checks = result["score"], result["checks"]
    diff = summary["baseline"][spec_version]
    state = "matches its baseline" if not diff["unexpected"] and not diff["stale"] else "DOES NOT match its baseline"
    return (
        f"MCP conformance {spec_version} {summary['target']['label']}: {score['passed']}/{score['total']} required "
        f"scenarios, {checks['passed']} checks passed, {checks['failed']} failed ({state})"
    )


def assert_matches_baseline(summary: dict[str, Any], spec_version: str) -> None:
    """Every failing check is listed in expected-failures.json with why, and every listed one still fails."""
    result = summary["versions"][spec_version]
    assert sorted(result["required"]) == sorted(EXPECTED_PASSING[spec_version]), "the suite's requirement set changed"
    diff = summary["baseline"][spec_version]
    failures = {
        name: json.dumps(s["failures"])[:600] for name, s in result["scenarios"].items() if s["status"] != "pass"
    }
    assert diff["unexpected"] == [], f"failing, not in {BASELINE.name}: {diff['unexpected']}\n{failures}"
    assert diff["stale"] == [], f"listed in {BASELINE.name} but not failing any more (remove them): {diff['stale']}"


@pytest.fixture(scope="module")
def direct_run(conformance_runs: dict[str, Outcome]) -> dict[str, Any]:
    return summary_of(conformance_runs, "fixture-direct")


@pytest.mark.parametrize("spec_version", sorted(EXPECTED_PASSING))
def test_fixture_passes_every_required_scenario(
    direct_run: dict[str, Any], spec_version: str, record_property: Any
) -> None:
    record_property(SCORE_PROPERTY, score_line(direct_run, spec_version))
    assert_matches_baseline(direct_run, spec_version)
    result = direct_run["versions"][spec_version]
    expected = EXPECTED_PASSING[spec_version]
    assert result["score"] == {"passed": len(expected), "total": len(expected)}
    assert result["checks"]["failed"] == 0
    assert result["checks"]["passed"] >= 2 * len(expected)  # every scenario checked something (+ wire schema)


@pytest.mark.parametrize("spec_version", sorted(EXPECTED_NOT_SCORED_PASSING))
def test_fixture_passes_the_unscored_protocol_scenarios(direct_run: dict[str, Any], spec_version: str) -> None:
    not_scored = direct_run["versions"][spec_version]["not_scored"]
    for name in EXPECTED_NOT_SCORED_PASSING[spec_version]:
        assert not_scored.get(name, {}).get("status") == "pass", (name, not_scored.get(name))


@pytest.mark.anyio
async def test_fixture_over_stdio_serves_the_same_names() -> None:
    params = StdioServerParameters(
        command=sys.executable, args=[str(FIXTURE), "--transport", "stdio"], env={}, cwd=str(REPO)
    )
    with anyio.fail_after(60):
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write, read_timeout_seconds=20) as session,
        ):
            init = await session.initialize()
            assert init.server_info.name == "mcp-guard-conformance-fixture"
            tools = {t.name for t in (await session.list_tools()).tools}
            assert {"test_simple_text", "test_sampling", "test_input_required_result_elicitation"} <= tools
            called = await session.call_tool("test_simple_text", {})
            assert called.content == [
                types.TextContent(type="text", text="This is a simple text response for testing.")
            ]
            read_result = await session.read_resource("test://template/42/data")
            body = read_result.contents[0]
            assert isinstance(body, types.TextResourceContents)
            assert json.loads(body.text)["id"] == "42"
            prompt = await session.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
            assert isinstance(prompt.messages[0].content, types.TextContent)
            assert prompt.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"


class ScriptedClient:
    """Answers the fixture's server→client requests the way a user and a model would, and records them."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.asked.append(f"elicit:{params.message}")
        props = params.requested_schema.get("properties", {})
        answer: dict[str, str | int | float | bool | list[str] | None] = {}
        if "name" in props:
            answer["name"] = "Alice"
        if "color" in props:
            answer["color"] = "green"
        if "ok" in props:
            answer["ok"] = True
        if "context" in props:
            answer["context"] = "the ticket queue"
        return types.ElicitResult(action="accept", content=answer)

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.asked.append("sample")
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="Paris"), model="scripted")

    async def roots(self, context: Any) -> types.ListRootsResult:
        self.asked.append("roots")
        return types.ListRootsResult(roots=[types.Root.model_validate({"uri": "file:///work", "name": "work"})])


@pytest.mark.anyio
async def test_input_required_tools_ask_with_server_requests_in_the_handshake_era() -> None:
    # A proxy that speaks 2025-11-25 to this fixture sees the multi-round-trip tools as ordinary
    # server→client requests mid-call: the dialogue a 2026-07-28 client gets as InputRequiredResult rounds.
    client = ScriptedClient()
    params = StdioServerParameters(
        command=sys.executable, args=[str(FIXTURE), "--transport", "stdio"], env={}, cwd=str(REPO)
    )
    with anyio.fail_after(60):
        async with (
            stdio_client(params) as (read, write),
            ClientSession(
                read,
                write,
                read_timeout_seconds=20,
                sampling_callback=client.sample,
                elicitation_callback=client.elicit,
                list_roots_callback=client.roots,
            ) as session,
        ):
            await session.initialize()

            async def text_of(tool: str) -> str:
                result = await session.call_tool(tool, {})
                assert not result.is_error, result
                block = result.content[0]
                assert isinstance(block, types.TextContent)
                return block.text

            assert await text_of("test_input_required_result_elicitation") == "Hello, Alice!"
            assert await text_of("test_input_required_result_sampling") == "Model said: Paris"
            assert await text_of("test_input_required_result_list_roots") == "Client exposed 1 root(s): file:///work"
            assert (await text_of("test_input_required_result_request_state")).startswith("state-ok")
            assert await text_of("test_input_required_result_multiple_inputs") == "All inputs received."
            client.asked.clear()
            assert await text_of("test_input_required_result_multi_round") == "Alice likes green."
            assert client.asked == ["elicit:Step 1: What is your name?", "elicit:Step 2: What is your favorite color?"]
            prompt = await session.get_prompt("test_input_required_result_prompt", {})
            assert isinstance(prompt.messages[0].content, types.TextContent)
            assert prompt.messages[0].content.text == "Use the following context: the ticket queue"
