"""Handlers: every client request that reaches an upstream is decided and recorded; the others stay local."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mcp_types as types
import pytest
from mcp.server.lowlevel import Server
from mcp.server.runner import ServerRunner

from guard_harness import client_of, make_settings, read_log, recorder_upstream, running_guard, wait_for
from mcp_guard.frontend import handlers as handlers_module
from mcp_guard.frontend.handlers import Handlers
from mcp_guard.frontend.tasks import TASKS_EXTENSION
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, EventKind, PolicyInput

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

URI = "mcpg://rec/rec://info"


def methods(log: Path) -> list[str]:
    return [e["method"] for e in read_log(log) if "method" in e]


def decided(sink: RecordingSink, action: str) -> list[Any]:
    return [e for e in sink.events if e.kind == EventKind.CALL_DECISION and (e.details or {}).get("action") == action]


async def test_set_level_stays_with_the_session_and_filters_its_log_messages(tmp_path: Path) -> None:
    """logging/setLevel never reaches an upstream (shared by every session); the session's level filters."""
    log = tmp_path / "calls"
    settings = make_settings({"rec": recorder_upstream(log, RECORDER_LOG_METHODS="*")})
    seen: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(params)

    async with running_guard(settings) as guard, client_of(guard, logging_callback=on_log) as client:
        await client.set_logging_level("error")
        await client.call_tool("rec__log", {"level": "info", "message": "quiet"})
        await client.call_tool("rec__log", {"level": "error", "message": "loud"})
        await wait_for(lambda: any("loud" in str(p.data) for p in seen))
    assert [str(p.data) for p in seen] == ["loud"]  # the info message, relayed first, was dropped
    assert "logging/setLevel" not in methods(log)


async def test_unsubscribe_without_a_subscription_never_reaches_the_upstream(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    sink = RecordingSink()
    settings = make_settings({"rec": recorder_upstream(log, RECORDER_LOG_METHODS="*")})
    async with running_guard(settings, sink=sink) as guard, client_of(guard) as client:
        await client.unsubscribe_resource(URI)
        await client.call_tool("rec__echo", {"text": "after"})  # the upstream's log is ordered: this comes after
    await wait_for(lambda: "tools/call" in methods(log))
    assert "resources/unsubscribe" not in methods(log)
    assert not decided(sink, "resources/unsubscribe")


async def test_unsubscribe_reaches_the_upstream_only_through_the_pipeline(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    sink = RecordingSink()
    settings = make_settings({"rec": recorder_upstream(log, RECORDER_LOG_METHODS="*")})
    async with running_guard(settings, sink=sink) as guard, client_of(guard) as client:
        await client.subscribe_resource(URI)
        await client.unsubscribe_resource(URI)
    assert methods(log).count("resources/unsubscribe") == 1
    [row] = decided(sink, "resources/unsubscribe")
    assert row.decision == "allow" and row.tool == "rec://info"


async def test_a_denied_unsubscribe_is_recorded_and_not_forwarded(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    sink = RecordingSink()

    def decide(i: PolicyInput) -> Decision:
        return Decision(allow=i.action != "resources/unsubscribe", reasons=("test",), revision="t")

    settings = make_settings({"rec": recorder_upstream(log, RECORDER_LOG_METHODS="*")})
    async with (
        running_guard(settings, sink=sink, engine=FunctionEngine(decide)) as guard,
        client_of(guard) as client,
    ):
        await client.subscribe_resource(URI)
        await client.unsubscribe_resource(URI)  # the session's own subscription ends whatever the policy says
        await client.call_tool("rec__echo", {"text": "after"})
    await wait_for(lambda: "tools/call" in methods(log))
    assert "resources/subscribe" in methods(log) and "resources/unsubscribe" not in methods(log)
    [row] = decided(sink, "resources/unsubscribe")
    assert row.decision == "deny"


def test_the_capabilities_forwarded_upstream_never_declare_the_tasks_extension() -> None:
    """mcp-guard serves tasks itself: an upstream told the client takes tasks could answer with its own handle."""
    handlers = Handlers(
        settings=make_settings({}),
        registry=None,  # type: ignore[arg-type]
        chain=None,  # type: ignore[arg-type]
        visibility=None,  # type: ignore[arg-type]
        sink=RecordingSink(),
        sessions=None,  # type: ignore[arg-type]
        transport="http",
        principal_of=None,  # type: ignore[arg-type]
    )
    caps = types.ClientCapabilities.model_validate(
        {"elicitation": {}, "extensions": {TASKS_EXTENSION: {}, "example.org/other": {}}}
    )
    ctx: Any = SimpleNamespace(protocol_version="2026-07-28", session=SimpleNamespace(client_capabilities=caps))
    meta = handlers._forward_meta(None, ctx)
    assert meta is not None
    forwarded = dict(meta)[types.CLIENT_CAPABILITIES_META_KEY]
    assert forwarded["extensions"] == {"example.org/other": {}}, "other extensions pass, the tasks one does not"
    assert "elicitation" in forwarded


def test_a_sessions_capabilities_are_dumped_once_and_another_objects_again() -> None:
    """The dump is remembered by the capabilities object (a handshake session's is one object): the same object
    gives the same dump without dumping again; a different object — another session, or a 2026-07-28 request's
    own — gets its own, so nothing of one client's capabilities reaches another's upstream requests."""
    first = types.ClientCapabilities.model_validate({"elicitation": {}, "extensions": {TASKS_EXTENSION: {}}})
    second = types.ClientCapabilities.model_validate({"sampling": {}})
    dumped = handlers_module._caps_for_upstream(first)
    assert dumped == {"elicitation": {}} and handlers_module._caps_for_upstream(first) is dumped
    assert handlers_module._caps_for_upstream(second) == {"sampling": {}}
    assert handlers_module._caps_for_upstream(None) == {}


STAMP_RESULTS: list[dict[str, Any]] = [
    {"content": []},
    {"content": [], "_meta": None},
    {"content": [], "_meta": {"mcp-guard/error": {"code": 1}}},
    {"content": [], "_meta": {types.SERVER_INFO_META_KEY: None, "x": 1}},
    {"content": [], "_meta": {types.SERVER_INFO_META_KEY: {"name": "upstream's own"}}},
    {"content": [], "_meta": "not an object"},
    {"content": [], "_meta": ["a", "list"]},
]


@pytest.mark.parametrize("result", STAMP_RESULTS)
def test_a_2026_result_is_stamped_with_server_info_as_the_sdks_runner_stamps_it(result: dict[str, Any]) -> None:
    """The handlers stamp a 2026-07-28 result so the runner does not (it deep-copies its dump per answer); held to
    the runner's own stamping, which then leaves the result as it is."""
    server: Server[Any] = Server("guard", version="9.9")
    stamp = handlers_module.flat_stamp(server.server_info_stamp)
    assert stamp == {"name": "guard", "version": "9.9"}
    runner: Any = SimpleNamespace(server=server)  # what _stamp_server_info reads
    ours, theirs = deepcopy(result), deepcopy(result)
    handlers_module._stamped(ours, stamp)
    expected = ServerRunner._stamp_server_info(runner, "2026-07-28", theirs)
    assert ours == expected
    assert ServerRunner._stamp_server_info(runner, "2026-07-28", deepcopy(ours)) == ours  # the runner adds nothing
    if isinstance(ours.get("_meta"), dict) and ours["_meta"].get(types.SERVER_INFO_META_KEY) == stamp:
        assert ours["_meta"][types.SERVER_INFO_META_KEY] is not stamp  # each answer owns its copy


def test_a_stamp_with_nested_values_is_left_to_the_sdk() -> None:
    assert handlers_module.flat_stamp({"name": "g", "version": "1", "icons": [{"src": "x"}]}) is None
    assert handlers_module.flat_stamp({"name": "g", "version": "1", "title": None}) is not None
