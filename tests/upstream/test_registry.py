"""The registry's half of the client channel (attribution, scrubbing) and what it tells its listener.

``Registry.to_client`` is the one way upstream→client traffic leaves the registry: each kind of message
is shown here to arrive scrubbed, and life-cycle details to reach the listener (the audit) scrubbed.

No upstream process runs here: in-flight calls are marked with fake client channels, and a catalogue is
set on a connection by hand, as the connection would after listing its upstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientSession

from guard_harness import client_of, make_settings, recorder_upstream, running_guard, wait_for
from mcp_guard.channel import Ask, ClientMethod, LogMessage, Progress, ResourceUpdated
from mcp_guard.pins import PinStore
from mcp_guard.secrets.redact import Scrubber, marker
from mcp_guard.testing import RecordingSink
from mcp_guard.types import EventKind
from mcp_guard.upstream.connection import Catalog
from mcp_guard.upstream.registry import Registry

pytestmark = pytest.mark.anyio

SECRET = "s3cret-value-0123456789"
ELICIT = {"mode": "form", "message": f"Token is {SECRET}?", "requestedSchema": {"type": "object", "properties": {}}}
LOG = types.LoggingMessageNotificationParams(level="warning", logger="up", data=f"using {SECRET}")


class FakeChannel:
    """A client channel that records what reaches it."""

    def __init__(self, channel_id: str, principal_id: str = "alice", *, parked: bool = False) -> None:
        self.channel_id = channel_id
        self.principal_id = principal_id
        self.parked = parked
        self.requests: list[tuple[ClientMethod, dict[str, Any]]] = []
        self.logs: list[types.LoggingMessageNotificationParams] = []

    async def request(
        self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | types.ErrorData:
        self.requests.append((method, params))
        return {"action": "decline"}

    async def notify_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        raise AssertionError("progress goes to the relay of the call that asked for it")


class Listener:
    """A RegistryListener that records every call."""

    def __init__(self) -> None:
        self.upstream_events: list[tuple[str, EventKind, dict[str, Any]]] = []
        self.pin_events: list[tuple[str, EventKind, str, dict[str, Any]]] = []
        self.catalogs: list[tuple[str, frozenset[str]]] = []
        self.updated: list[tuple[str, str]] = []

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        self.catalogs.append((upstream, kinds))

    async def upstream_event(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        self.upstream_events.append((upstream, kind, details))

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        self.pin_events.append((upstream, kind, tool, details))

    async def resource_updated(self, upstream: str, uri: str) -> None:
        self.updated.append((upstream, uri))


def _registry(listener: Listener | None = None, **upstreams: dict[str, Any]) -> Registry:
    return Registry(
        make_settings(upstreams),
        listener or Listener(),
        scrub_obj=Scrubber([("token", SECRET)]).scrub_obj,
    )


# ---------------------------------------------------------------------------------------------------- requests
async def test_a_request_goes_to_the_one_call_in_flight_scrubbed() -> None:
    registry = _registry()
    alice = FakeChannel("s1")
    with registry.in_flight("up", alice), registry.in_flight("other", FakeChannel("s2", "bob")):
        answer = await registry.to_client("up", Ask(ClientMethod.ELICITATION, ELICIT))
    assert answer == {"action": "decline"}
    assert alice.requests == [(ClientMethod.ELICITATION, {**ELICIT, "message": f"Token is {marker('token')}?"})]


async def test_a_request_with_no_call_in_flight_is_refused() -> None:
    answer = await _registry().to_client("up", Ask(ClientMethod.SAMPLING, {}))
    assert isinstance(answer, types.ErrorData) and answer.code == types.INVALID_REQUEST
    assert "sampling/createMessage from upstream 'up' arrived while no client call to it is in flight" in answer.message


async def test_a_request_is_never_guessed_between_two_sessions() -> None:
    registry = _registry()
    one, two = FakeChannel("s1", "alice"), FakeChannel("s2", "alice")
    with registry.in_flight("up", one), registry.in_flight("up", two):
        answer = await registry.to_client("up", Ask(ClientMethod.ROOTS, {}))
    assert isinstance(answer, types.ErrorData) and answer.code == types.INVALID_REQUEST
    assert "cannot be attributed to one client: calls from 2 sessions are in flight" in answer.message
    assert one.requests == two.requests == []


async def test_a_call_that_raises_is_no_longer_in_flight() -> None:
    registry = _registry()
    channel = FakeChannel("s1")
    with pytest.raises(RuntimeError), registry.in_flight("up", channel):
        assert registry._inflight["up"]["s1"].count == 1
        raise RuntimeError("the call failed")
    assert registry._inflight["up"] == {}
    with registry.in_flight("up", None):  # a call with no client channel is not counted
        assert registry._inflight["up"] == {}


async def test_calls_of_one_session_count_once_and_the_latest_stream_is_used() -> None:
    registry = _registry()
    first, latest = FakeChannel("s1"), FakeChannel("s1")
    with registry.in_flight("up", first), registry.in_flight("up", latest):
        await registry.to_client("up", Ask(ClientMethod.ROOTS, {}))
        with registry.in_flight("up", FakeChannel("s2")):
            pass  # another session's call that has ended does not make later requests ambiguous
        await registry.to_client("up", Ask(ClientMethod.ROOTS, {}))
    assert first.requests == [] and len(latest.requests) == 2
    assert isinstance(await registry.to_client("up", Ask(ClientMethod.ROOTS, {})), types.ErrorData), "all ended"


@pytest.mark.parametrize(("parked_principal", "routed"), [("alice", True), ("bob", False)])
async def test_a_parked_call_yields_only_to_its_own_principal(parked_principal: str, routed: bool) -> None:
    registry = _registry()
    parked = FakeChannel("call-1", parked_principal, parked=True)
    served = FakeChannel("s1", "alice")
    with registry.in_flight("up", parked), registry.in_flight("up", served):
        answer = await registry.to_client("up", Ask(ClientMethod.ELICITATION, ELICIT))
    assert parked.requests == []
    assert (served.requests != []) is routed
    assert isinstance(answer, types.ErrorData) is not routed


async def test_only_parked_calls_are_still_candidates() -> None:
    registry = _registry()
    parked = FakeChannel("call-1", parked=True)
    with registry.in_flight("up", parked):
        await registry.to_client("up", Ask(ClientMethod.ELICITATION, ELICIT))
    assert len(parked.requests) == 1, "a parked call alone is the one the upstream is asking for"


# ---------------------------------------------------------------------------------------------------- log
async def test_a_log_message_goes_to_the_one_call_in_flight_scrubbed() -> None:
    registry = _registry()
    alice = FakeChannel("s1")
    with registry.in_flight("up", alice):
        await registry.to_client("up", LogMessage(LOG))
    assert [m.data for m in alice.logs] == [f"using {marker('token')}"]


async def test_an_unattributable_log_message_stays_in_our_log() -> None:
    registry = _registry()
    one, two = FakeChannel("s1"), FakeChannel("s2")
    with registry.in_flight("up", one), registry.in_flight("up", two):
        await registry.to_client("up", LogMessage(LOG))
    assert one.logs == two.logs == []


# ---------------------------------------------------------------------------------------------------- listener
async def test_upstream_life_cycle_events_reach_the_listener_typed() -> None:
    listener = Listener()
    registry = _registry(listener, up=recorder_upstream())
    await registry.state_changed("up", EventKind.UPSTREAM_CRASH, {"reason": "exit 1"})
    assert listener.upstream_events == [("up", EventKind.UPSTREAM_CRASH, {"reason": "exit 1"})]
    assert listener.catalogs == [("up", frozenset({"tools", "resources", "prompts"}))]


async def test_pin_events_name_their_tool(tmp_path: Path) -> None:
    listener = Listener()
    registry = _registry(listener, up=recorder_upstream())
    pins = registry.pins = PinStore(tmp_path / "state.db")
    conn = registry.connections["up"]
    conn.state = "ready"
    schema = {"type": "object", "properties": {}}
    try:
        conn.catalog = Catalog(tools=[types.Tool(name="t", description="v1", input_schema=schema)])
        await registry.catalog_changed("up", frozenset({"tools"}))
        conn.catalog = Catalog(tools=[types.Tool(name="t", description="v2", input_schema=schema)])
        await registry.catalog_changed("up", frozenset({"tools"}))
        changed_tool = registry.find_tool("up__t")
        assert changed_tool is not None and changed_tool.hidden  # enforce: hidden until approved
        pins.approve("up", "t")
        assert await registry.recheck_pins()
    finally:
        pins.close()
    kinds = [(kind, tool) for _, kind, tool, _ in listener.pin_events]
    assert kinds == [
        (EventKind.TOOL_PINNED, "t"),
        (EventKind.TOOL_PIN_CHANGED, "t"),
        (EventKind.TOOL_PIN_APPROVED, "t"),
    ]
    changed = listener.pin_events[1][3]
    assert changed["old_sha256"] != changed["new_sha256"] and changed["mode"] == "enforce"


# ---------------------------------------------------------------------------------------------------- scrubbing
# One test per kind of upstream→client traffic: the secret (and a fragment of it) never reaches the client.
FRAGMENT = SECRET[-12:]


async def test_sampling_request_arrives_scrubbed() -> None:
    registry = _registry()
    alice = FakeChannel("s1")
    params = {"messages": [{"role": "user", "content": {"type": "text", "text": f"key {SECRET}"}}], "maxTokens": 5}
    with registry.in_flight("up", alice):
        await registry.to_client("up", Ask(ClientMethod.SAMPLING, {**params, "systemPrompt": f"..{FRAGMENT}"}))
    sent = alice.requests[0][1]
    assert sent["messages"][0]["content"]["text"] == f"key {marker('token')}"
    assert sent["systemPrompt"] == f"..{marker('token')}"


async def test_roots_request_arrives_scrubbed() -> None:
    registry = _registry()
    alice = FakeChannel("s1")
    with registry.in_flight("up", alice):
        await registry.to_client("up", Ask(ClientMethod.ROOTS, {"_meta": {"note": SECRET}}))
    assert alice.requests == [(ClientMethod.ROOTS, {"_meta": {"note": marker("token")}})]


async def test_elicitation_request_arrives_scrubbed_keys_included() -> None:
    registry = _registry()
    alice = FakeChannel("s1")
    schema = {"type": "object", "properties": {SECRET: {"type": "string", "description": FRAGMENT}}}
    with registry.in_flight("up", alice):
        await registry.to_client("up", Ask(ClientMethod.ELICITATION, {**ELICIT, "requestedSchema": schema}))
    assert SECRET not in str(alice.requests) and FRAGMENT not in str(alice.requests)


async def test_log_message_arrives_scrubbed_logger_and_structured_data_included() -> None:
    registry = _registry()
    alice = FakeChannel("s1")
    params = types.LoggingMessageNotificationParams(level="error", logger=f"db:{SECRET}", data={"dsn": f"..{FRAGMENT}"})
    with registry.in_flight("up", alice):
        await registry.to_client("up", LogMessage(params))
    assert alice.logs[0].logger == f"db:{marker('token')}" and alice.logs[0].data == {"dsn": f"..{marker('token')}"}


async def test_an_unattributable_log_message_is_scrubbed_for_our_own_log(monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[types.LoggingMessageNotificationParams] = []
    monkeypatch.setattr("mcp_guard.upstream.registry.log_locally", lambda params, **_: kept.append(params))
    await _registry().to_client("up", LogMessage(LOG))
    assert kept[0].data == f"using {marker('token')}"


async def test_progress_arrives_scrubbed_at_the_calls_relay() -> None:
    got: list[tuple[float, float | None, str | None]] = []

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        got.append((progress, total, message))

    registry = _registry()
    await registry.to_client("up", Progress(1, 3, f"copying with {SECRET}", relay=relay))
    await registry.to_client("up", Progress(2, 3, f"...{FRAGMENT}", relay=relay))
    await registry.to_client("up", Progress(3, 3, None, relay=relay))
    assert got == [(1, 3, f"copying with {marker('token')}"), (2, 3, f"...{marker('token')}"), (3, 3, None)]


async def test_resource_update_reaches_the_listener_scrubbed() -> None:
    listener = Listener()
    await _registry(listener).to_client("up", ResourceUpdated(f"file:///tmp/{SECRET}.txt"))
    assert listener.updated == [("up", f"file:///tmp/{marker('token')}.txt")]


async def test_a_catalogue_refreshed_after_list_changed_is_scrubbed() -> None:
    """list_changed carries nothing to the client but the fact; what it makes the registry fetch is merged
    scrubbed."""
    registry = _registry(up=recorder_upstream())
    conn = registry.connections["up"]
    conn.state = "ready"
    schema = {"type": "object", "properties": {"q": {"type": "string", "default": SECRET}}}
    conn.catalog = Catalog(
        tools=[types.Tool(name="t", description=f"uses {FRAGMENT}", input_schema=schema)],
        prompts=[types.Prompt(name="p", description=SECRET)],
        resources=[types.Resource(uri=f"mem://{SECRET}", name="r")],
    )
    await registry.catalog_changed("up", frozenset({"tools", "prompts", "resources"}))
    merged = str(registry.catalog)
    assert SECRET not in merged and FRAGMENT not in merged and marker("token") in merged


# ---------------------------------------------------------------------------------------------------- life cycle
async def test_handshake_data_reaches_the_audit_listener_scrubbed() -> None:
    listener = Listener()
    registry = _registry(listener, up=recorder_upstream())
    details = {"server_info": {"name": "up", "version": SECRET}, "protocol_version": "2025-11-25", "tools": 1}
    await registry.state_changed("up", EventKind.UPSTREAM_START, details)
    scrubbed = {**details, "server_info": {"name": "up", "version": marker("token")}}
    assert listener.upstream_events == [("up", EventKind.UPSTREAM_START, scrubbed)]


async def test_a_start_up_error_reaches_the_audit_listener_and_the_cli_scrubbed() -> None:
    listener = Listener()
    registry = _registry(listener, up=recorder_upstream())
    reason = f"upstream error -32603: bad credentials ...{FRAGMENT}"
    await registry.state_changed("up", EventKind.UPSTREAM_START_FAILED, {"reason": reason, "attempt": 1})
    said = f"upstream error -32603: bad credentials ...{marker('token')}"
    assert listener.upstream_events[0][2] == {"reason": said, "attempt": 1}
    conn = registry.connections["up"]
    conn.state, conn.last_error = "down", reason
    conn._settled.set()
    assert await registry.wait_ready(1) == {"up": said}


async def test_an_auto_upstream_is_probed_once_not_on_every_restart_and_again_after_a_reload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The recorder speaks the handshake era and refuses server/discover: each probe is a declined discover.
    # Probes are counted at the SDK call itself (a log capture would depend on the log level an earlier test left).
    sent: list[str] = []
    discover = ClientSession.discover

    async def counted(self: ClientSession, *args: Any, **kwargs: Any) -> Any:
        sent.append("server/discover")
        return await discover(self, *args, **kwargs)

    monkeypatch.setattr(ClientSession, "discover", counted)
    sink = RecordingSink()
    settings = make_settings({"a": recorder_upstream()})
    async with running_guard(settings, sink=sink) as guard, client_of(guard) as client:

        async def crash_and_wait(restarts: int) -> None:
            await client.call_tool("a__crash", {"code": 3})
            await wait_for(lambda: len(sink.of_kind(EventKind.UPSTREAM_RESTART)) == restarts, within=15)
            assert guard.registry.connections["a"].protocol_version == "2025-11-25"

        assert len(sent) == 1
        await crash_and_wait(1)
        assert len(sent) == 1, "the restart remembered the era"
        await guard.registry.reconfigure(settings, stop=[], start=[])  # a config reload forgets
        await crash_and_wait(2)
        assert len(sent) == 2
