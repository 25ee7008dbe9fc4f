"""The connection's half of the client channel: what its SDK callbacks hand the registry, and back.

The callbacks are called as the upstream ``ClientSession`` would call them; no upstream process runs.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
import structlog
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from guard_harness import make_settings, recorder_upstream
from mcp_guard.channel import Ask, ClientMethod, LogMessage, Notice, Progress, ResourceUpdated
from mcp_guard.errors import UpstreamError
from mcp_guard.types import EventKind
from mcp_guard.upstream.connection import UpstreamConnection, _describe

pytestmark = pytest.mark.anyio

SAMPLE = types.CreateMessageRequestParams(
    messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text="Hi"))], max_tokens=5
)


class Hooks:
    """UpstreamHooks that answer every client request with ``answer`` and record what they were handed."""

    def __init__(self, answer: dict[str, Any] | types.ErrorData) -> None:
        self.answer = answer
        self.requests: list[tuple[str, ClientMethod, dict[str, Any]]] = []
        self.notices: list[tuple[str, Notice]] = []

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None: ...

    async def to_client(self, upstream: str, message: Ask | Notice) -> Any:
        if isinstance(message, Ask):
            self.requests.append((upstream, message.method, message.params))
            return self.answer
        self.notices.append((upstream, message))
        return None


def _connection(hooks: Hooks, scrub: Any = lambda s: s) -> UpstreamConnection:
    settings = make_settings({"up": recorder_upstream()})
    return UpstreamConnection("up", settings.upstreams["up"], hooks, scrub=scrub)


async def test_an_upstream_request_goes_out_as_method_and_wire_params_and_its_answer_comes_back_typed() -> None:
    hooks = Hooks({"role": "assistant", "content": {"type": "text", "text": "Hello"}, "model": "m"})
    answer = await _connection(hooks)._on_sampling(None, SAMPLE)  # type: ignore[arg-type]
    assert isinstance(answer, types.CreateMessageResult) and answer.model == "m"
    assert hooks.requests == [
        (
            "up",
            ClientMethod.SAMPLING,
            {"messages": [{"role": "user", "content": {"type": "text", "text": "Hi"}}], "maxTokens": 5},
        )
    ]
    roots = await _connection(Hooks({"roots": []}))._on_list_roots(None)  # type: ignore[arg-type]
    assert roots == types.ListRootsResult(roots=[])


async def test_an_invalid_client_answer_reaches_the_upstream_as_an_internal_error() -> None:
    answer = await _connection(Hooks({"action": "maybe"}))._on_elicitation(
        None,  # type: ignore[arg-type]
        types.ElicitRequestFormParams(message="?", requested_schema={"type": "object", "properties": {}}),
    )
    assert isinstance(answer, types.ErrorData) and answer.code == types.INTERNAL_ERROR
    assert answer.message.startswith("client sent an invalid elicit result: ")


async def test_log_messages_go_to_the_one_hook() -> None:
    hooks = Hooks({})
    params = types.LoggingMessageNotificationParams(level="info", data="x")
    await _connection(hooks)._on_log(params)
    assert hooks.notices == [("up", LogMessage(params))]


async def test_progress_goes_to_the_one_hook_with_the_calls_relay() -> None:
    """Progress is not scrubbed here but where all upstream→client traffic is (Registry.to_client)."""

    async def on_progress(progress: float, total: float | None, message: str | None) -> None: ...

    hooks = Hooks({})
    relay = _connection(hooks)._progress_relay(on_progress)
    await relay(1, 2, "half")
    await relay(2, 2, None)
    assert hooks.notices == [("up", Progress(1, 2, "half", on_progress)), ("up", Progress(2, 2, None, on_progress))]


async def test_resource_updates_go_to_the_one_hook() -> None:
    hooks = Hooks({})
    note = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri="mem://1"))
    await _connection(hooks)._on_message(note)
    assert hooks.notices == [("up", ResourceUpdated("mem://1"))]


# ---------------------------------------------------------------------------------------------------- invalid answers
TOKEN = "tk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"


class FailingSession:
    """A ClientSession whose requests fail the way the SDK fails them."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def send_request(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def _ready(error: BaseException) -> UpstreamConnection:
    conn = _connection(Hooks({}))
    conn.state = "ready"
    conn._session = FailingSession(error)  # type: ignore[assignment]
    return conn


def _invalid_result() -> ValidationError:
    try:
        types.CallToolResult.model_validate({"content": [{"type": "text", "text": 12}], "note": "x" * 60 + TOKEN})
    except ValidationError as e:
        return e
    raise AssertionError("valid")


REQUEST = types.CallToolRequest(params=types.CallToolRequestParams(name="t", arguments={}))


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (_invalid_result(), "sent an invalid result (12 validation error(s): content.0.TextContent.text: string_type"),
        (
            MCPError(code=types.PARSE_ERROR, message=f"Failed to parse JSON response: input_value='...{TOKEN[-20:]}'"),
            "sent an answer that is not valid JSON-RPC (its text is withheld)",
        ),
        (
            MCPError(code=types.PARSE_ERROR, message=f"Failed to parse SSE message: ...{TOKEN[-20:]}"),
            "sent an answer that is not valid JSON-RPC (its text is withheld)",
        ),
    ],
    ids=["invalid-result", "invalid-json-response", "invalid-sse-message"],
)
async def test_an_answer_the_sdk_cannot_parse_is_described_in_our_own_words(error: BaseException, says: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        await _ready(error).request(REQUEST)
    message = str(raised.value)
    assert message.startswith(f"upstream 'up' {says}"), message
    assert TOKEN[-8:] not in message and raised.value.__cause__ is None and raised.value.__suppress_context__


async def test_an_error_the_upstream_answered_itself_passes_through() -> None:
    own = MCPError(code=-32001, message="no such ticket")
    with pytest.raises(MCPError) as raised:
        await _ready(own).request(REQUEST)
    assert raised.value is own


async def test_an_unparseable_line_is_logged_without_its_text() -> None:
    conn = _connection(Hooks({}))
    try:
        types.jsonrpc_message_adapter.validate_json('{"jsonrpc":"2.0","method":"x","params":"' + TOKEN)
    except ValidationError as e:
        error = e
    with structlog.testing.capture_logs() as logs:
        await conn._on_message(error)
    assert logs[0]["event"] == "upstream.transport_error" and TOKEN[-8:] not in str(logs)


def test_life_cycle_reasons_are_bounded_and_do_not_quote_parse_errors() -> None:
    assert TOKEN[-8:] not in _describe(_invalid_result())
    assert _describe(_invalid_result()).startswith("invalid answer during start-up (12 validation error(s)")
    long = MCPError(code=-32603, message="x" * 10_000)
    assert len(_describe(long)) < 600
    sdk = MCPError(code=types.PARSE_ERROR, message=f"Failed to parse JSON response: {TOKEN}")
    assert TOKEN not in _describe(sdk)


def _call(meta: Any) -> types.CallToolRequest:
    return types.CallToolRequest(params=types.CallToolRequestParams(name="echo", arguments={"text": "é"}, _meta=meta))


CAPS_KEY = types.CLIENT_CAPABILITIES_META_KEY
LANE_METAS: list[Any] = [
    None,
    {},
    {"progressToken": 7},
    {CAPS_KEY: {"sampling": {}}},  # reserved keys only: the lane sends no _meta at all
    {CAPS_KEY: {"sampling": {}}, types.LOG_LEVEL_META_KEY: "debug", "trace": "t-1", "progressToken": "p"},
    {"io.modelcontextprotocol/other": 1, "x": {"nested": [1, None]}},
    {CAPS_KEY: {}, "foo": None},  # a null the dump leaves out
    {CAPS_KEY: {}, "foo": None, "bar": 1},
    {"foo": None},
    types.RequestParamsMeta(progressToken=3),
]


@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("meta", LANE_METAS, ids=range(len(LANE_METAS)))
def test_the_lanes_params_are_what_the_enveloped_request_dumps_to(meta: Any, era: str) -> None:
    """The lane takes the envelope off the dumped params; the session path off copies of the models: the same
    params either way, for every shape of ``_meta`` (none, empty, reserved keys only, mixed, a model)."""
    conn = _connection(Hooks({}))
    conn.protocol_version = era
    request = _call(meta)
    enveloped, _ = conn._enveloped(request)
    assert enveloped.params is not None
    assert conn._lane_params(request) == enveloped.params.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert conn._lane_params(types.PingRequest()) is None
