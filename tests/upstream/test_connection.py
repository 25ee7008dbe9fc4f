"""The connection's half of the client channel: what its SDK callbacks hand the registry, and back.

The callbacks are called as the upstream ``ClientSession`` would call them; no upstream process runs.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest

from guard_harness import make_settings, recorder_upstream
from mcp_guard.channel import ClientMethod
from mcp_guard.types import EventKind
from mcp_guard.upstream.connection import UpstreamConnection

pytestmark = pytest.mark.anyio

SAMPLE = types.CreateMessageRequestParams(
    messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text="Hi"))], max_tokens=5
)


class Hooks:
    """UpstreamHooks that answer every client request with ``answer`` and record what they were handed."""

    def __init__(self, answer: dict[str, Any] | types.ErrorData) -> None:
        self.answer = answer
        self.requests: list[tuple[str, ClientMethod, dict[str, Any]]] = []
        self.logs: list[tuple[str, types.LoggingMessageNotificationParams]] = []

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None: ...
    async def resource_updated(self, upstream: str, uri: str) -> None: ...

    async def client_request(
        self, upstream: str, method: ClientMethod, params: dict[str, Any]
    ) -> dict[str, Any] | types.ErrorData:
        self.requests.append((upstream, method, params))
        return self.answer

    async def client_log(self, upstream: str, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append((upstream, params))


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


async def test_log_messages_go_to_the_one_log_hook() -> None:
    hooks = Hooks({})
    params = types.LoggingMessageNotificationParams(level="info", data="x")
    await _connection(hooks)._on_log(params)
    assert hooks.logs == [("up", params)]


async def test_progress_messages_are_scrubbed_on_their_way_to_the_client() -> None:
    got: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        got.append((progress, total, message))

    conn = _connection(Hooks({}), scrub=lambda s: s.replace("s3cret", "[REDACTED:token]"))
    relay = conn._scrubbed_progress(on_progress)
    await relay(1, 2, "using s3cret")
    await relay(2, 2, None)
    assert got == [(1, 2, "using [REDACTED:token]"), (2, 2, None)]
