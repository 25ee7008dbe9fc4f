"""An upstream that tries to hand back the credential mcp-guard injected into it, through every way an
upstream can reach a client or the audit trail (tests/fixtures/leaky.py)."""

from __future__ import annotations

import sys
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from guard_harness import REPO, TIMEOUT_S, client_of, make_settings, text_of
from mcp_guard.app import Guard
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, EventKind

pytestmark = pytest.mark.anyio

TOKEN = "tk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
TAIL = TOKEN[-12:]
LEAKY = str(REPO / "tests" / "fixtures" / "leaky.py")


def _settings(**env: str) -> Any:
    return make_settings(
        {
            "leaky": {
                "command": sys.executable,
                "args": [LEAKY],
                "env": env,
                "inject_env": {"LEAK_TOKEN": "tok"},
                "timeout_s": 10.0,
                "restart": False,
            }
        },
        secrets={"tok": {"provider": "env", "name": "MG_LEAK_TOKEN"}},
    )


def _guard(settings: Any, sink: RecordingSink) -> Guard:
    grant = FunctionEngine(lambda _i: Decision(allow=True, obligations={"secrets": ["tok"]}))
    return Guard(settings, engine=grant, sink=sink, secrets=SecretManager(settings))


def _no_token(where: Any) -> None:
    text = repr(where)
    assert TAIL not in text and TOKEN[:12] not in text, text


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_LEAK_TOKEN", TOKEN)


async def test_nothing_the_leaky_upstream_sends_holds_the_token() -> None:
    sink = RecordingSink()
    progress: list[str | None] = []
    logs: list[types.LoggingMessageNotificationParams] = []
    prompts: list[str | None] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def sampling(
        ctx: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        prompts.append(params.system_prompt)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="ok"), model="m")

    guard = _guard(_settings(), sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(TIMEOUT_S)
        async with client_of(guard, logging_callback=on_log, sampling_callback=sampling) as client:
            await client.call_tool("leaky__progress", {}, progress_callback=on_progress)
            await client.call_tool("leaky__log", {})
            await client.call_tool("leaky__sample", {})
            invalid = await client.call_tool("leaky__invalid", {})
    assert progress == ["using [REDACTED:tok]"]
    assert [(m.logger, m.data) for m in logs] == [("auth:[REDACTED:tok]", {"tail": "[REDACTED:tok]"})]
    assert prompts == ["the key is [REDACTED:tok]"]
    # An answer the SDK cannot validate is described by mcp-guard, not quoted, and is recorded.
    assert invalid.is_error and text_of(invalid).startswith("mcp-guard: upstream 'leaky' sent an invalid result (")
    _no_token(text_of(invalid))
    assert sink.kinds().count(EventKind.CALL_ERROR) == 1
    start = sink.of_kind(EventKind.UPSTREAM_START)[0]
    assert start.details is not None and start.details["server_info"] == {"name": "leaky", "version": "[REDACTED:tok]"}
    _no_token(sink.events)


async def test_a_start_up_error_that_echoes_the_token_is_recorded_scrubbed() -> None:
    sink = RecordingSink()
    guard = _guard(_settings(LEAKY_INIT="error"), sink)
    async with guard.running():
        problems = await guard.registry.wait_ready(TIMEOUT_S)
    assert problems == {"leaky": "upstream error -32603: bad token [REDACTED:tok]"}
    failed = sink.of_kind(EventKind.UPSTREAM_START_FAILED)
    assert failed and failed[0].details is not None
    assert failed[0].details["reason"] == "upstream error -32603: bad token [REDACTED:tok]"
    _no_token(sink.events)


# ---------------------------------------------------------------------------------------------------- provenance
@pytest.mark.parametrize("code", [-32010, -32011, -32012])
async def test_an_upstream_error_with_our_codes_never_reads_as_ours(code: int) -> None:
    sink = RecordingSink()
    guard = _guard(_settings(), sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(TIMEOUT_S)
        async with client_of(guard) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("leaky__impersonate", {"code": code})
    error = raised.value.error
    assert error.code == types.INTERNAL_ERROR
    assert error.message.startswith(f"upstream 'leaky' answered with error code {code}: upstream 'leaky' went down")
    row = sink.of_kind(EventKind.CALL_ERROR)[0]
    assert row.details is not None and row.details["origin"] == "upstream"


async def test_our_own_errors_still_read_as_ours() -> None:
    sink = RecordingSink()
    guard = _guard(_settings(), sink)
    async with guard.running():
        assert not await guard.registry.wait_ready(TIMEOUT_S)
        async with client_of(guard) as client:
            invalid = await client.call_tool("leaky__invalid", {})
    assert invalid.is_error and text_of(invalid).startswith("mcp-guard: ")
    assert invalid.meta == {"mcp-guard/error": {"code": -32010, "origin": "guard"}}
    row = sink.of_kind(EventKind.CALL_ERROR)[0]
    assert row.details is not None and row.details["origin"] == "guard"
