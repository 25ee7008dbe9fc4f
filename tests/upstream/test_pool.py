"""UpstreamPool: one child per principal holding only its own credential; bounds, idle stop, audit events.

The children are real processes (tests/fixtures/credential_reporter.py, which reports a hash of its token);
the pool's clock is the test's, so idleness is decided by the test, not by waiting.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from mcp_guard.channel import Ask, Notice
from mcp_guard.errors import SecretError, UpstreamError
from mcp_guard.pins import PinStore
from mcp_guard.settings import UpstreamSettings, parse_settings
from mcp_guard.types import EventKind
from mcp_guard.upstream.connection import Injections
from mcp_guard.upstream.pool import UpstreamPool, _ChildTail
from mcp_guard.upstream.registry import Registry
from mcp_guard.upstream.stdio import StderrTail

pytestmark = pytest.mark.anyio

REPORTER = Path(__file__).resolve().parents[1] / "fixtures" / "credential_reporter.py"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}
DEADLINE_S = 30.0


class Hooks:
    """A PoolHooks that records what the pool reports."""

    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self.catalogs = 0

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        self.catalogs += 1

    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        self.events.append((kind, details))

    async def to_client_of(
        self, upstream: str, principal: str, message: Ask | Notice
    ) -> dict[str, Any] | types.ErrorData | None:
        return None

    def of(self, kind: EventKind) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _injections(principal: str) -> Injections:
    token = TOKENS.get(principal)
    if token is None:
        raise SecretError(f"secret 'tok': environment variable TOK_{principal} is not set", secret="tok")
    return Injections(env={"UPSTREAM_TOKEN": token})


def _pool(hooks: Hooks, clock: Clock, **pool: Any) -> UpstreamPool:
    settings = UpstreamSettings(
        command=sys.executable, args=[str(REPORTER)], pool=pool or {"max": 4, "idle_s": 60}, restart=False
    )  # type: ignore[arg-type]
    return UpstreamPool("rep", settings, hooks, injections=_injections, clock=clock)


async def _whoami(pool: UpstreamPool, principal: str) -> dict[str, Any]:
    async with pool.lease(principal) as conn:
        result = await conn.request(types.CallToolRequest(params=types.CallToolRequestParams(name="whoami")))
    report: dict[str, Any] = result["structuredContent"]
    return report


async def test_each_principal_has_its_own_child_with_its_own_token() -> None:
    hooks, clock = Hooks(), Clock()
    async with anyio.create_task_group() as tg:
        pool = _pool(hooks, clock)
        pool.start(tg)
        alice = await _whoami(pool, "alice")
        bob = await _whoami(pool, "bob")
        assert alice["sha256"] == hashlib.sha256(TOKENS["alice"].encode()).hexdigest()
        assert bob["sha256"] == hashlib.sha256(TOKENS["bob"].encode()).hexdigest()
        assert alice["pid"] != bob["pid"]
        assert (await _whoami(pool, "alice"))["pid"] == alice["pid"]
        assert [d["principal"] for d in hooks.of(EventKind.UPSTREAM_POOL_START)] == ["alice", "bob"]
        assert pool.state == "ready" and [t.name for t in pool.catalog.tools] == ["whoami", "leak"]
        # The children's own life-cycle events name their principal.
        assert {d["principal"] for d in hooks.of(EventKind.UPSTREAM_START)} == {"alice", "bob"}
        assert not any(t in repr(hooks.events) for t in TOKENS.values())
        pool.stop()
        tg.cancel_scope.cancel()


async def test_a_principal_without_a_credential_gets_no_child() -> None:
    hooks, clock = Hooks(), Clock()
    async with anyio.create_task_group() as tg:
        pool = _pool(hooks, clock)
        pool.start(tg)
        problem = await pool.credential_problem("carol")
        assert problem is not None and "TOK_carol is not set" in problem
        assert await pool.credential_problem("alice") is None
        assert pool.principals == ()
        tg.cancel_scope.cancel()


async def test_a_full_pool_evicts_the_least_recently_used_idle_child() -> None:
    hooks, clock = Hooks(), Clock()
    async with anyio.create_task_group() as tg:
        pool = _pool(hooks, clock, max=1, idle_s=60)
        pool.start(tg)
        await _whoami(pool, "alice")
        clock.now += 1
        await _whoami(pool, "bob")
        assert pool.principals == ("bob",)
        assert hooks.of(EventKind.UPSTREAM_POOL_STOP) == [{"principal": "alice", "reason": "evicted", "children": 0}]
        pool.stop()
        tg.cancel_scope.cancel()


async def test_a_full_pool_of_busy_children_refuses_rather_than_queue() -> None:
    hooks, clock = Hooks(), Clock()
    async with anyio.create_task_group() as tg:
        pool = _pool(hooks, clock, max=1, idle_s=60)
        pool.start(tg)
        async with pool.lease("alice"):
            with pytest.raises(UpstreamError, match="busy"):
                async with pool.lease("bob"):
                    pass
        assert pool.principals == ("alice",)
        pool.stop()
        tg.cancel_scope.cancel()


async def test_an_idle_child_is_stopped_and_a_busy_one_is_not() -> None:
    hooks, clock = Hooks(), Clock()
    async with anyio.create_task_group() as tg:
        pool = _pool(hooks, clock, max=4, idle_s=0.2)  # the reaper looks every 0.05 s; the clock decides
        pool.start(tg)
        await _whoami(pool, "bob")
        async with pool.lease("alice"):
            clock.now += 10
            with anyio.fail_after(DEADLINE_S):
                while pool.principals != ("alice",):  # noqa: ASYNC110 - the reaper runs in its own task
                    await anyio.sleep(0.02)
        assert hooks.of(EventKind.UPSTREAM_POOL_STOP) == [{"principal": "bob", "reason": "idle", "children": 1}]
        clock.now += 10
        with anyio.fail_after(DEADLINE_S):
            while pool.principals:  # noqa: ASYNC110 - the reaper runs in its own task
                await anyio.sleep(0.02)
        assert [d["principal"] for d in hooks.of(EventKind.UPSTREAM_POOL_STOP)] == ["bob", "alice"]
        tg.cancel_scope.cancel()


class Channel:
    """A client channel of one principal that records the requests reaching it."""

    def __init__(self, channel_id: str, principal_id: str) -> None:
        self.channel_id = channel_id
        self.principal_id = principal_id
        self.parked = False
        self.requests: list[Any] = []

    async def request(
        self, method: Any, params: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | types.ErrorData:
        self.requests.append((method, params))
        return {"action": "decline"}


class Listener:
    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        pass

    async def upstream_event(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        pass

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        pass

    async def resource_updated(self, upstream: str, uri: str) -> None:
        pass


def _registry() -> Registry:
    settings = parse_settings(
        {
            "secrets": {"tok": {"provider": "env", "name": "TOK_{principal}"}},
            "upstreams": {"rep": {"command": sys.executable, "inject_env": {"UPSTREAM_TOKEN": "tok"}}},
        }
    )

    async def injections(upstream: str, principal: str) -> Injections:
        return await _injections(principal)

    return Registry(settings, Listener(), pooled={"rep"}, principal_injections=injections)


async def test_a_childs_request_goes_only_to_its_own_principals_session() -> None:
    """Bob's session is the only one with a call in flight: alice's child still may not ask it anything."""
    registry = _registry()
    assert registry.connection("rep") is None and "rep" in registry.pools
    bob = Channel("s-bob", "bob")
    ask = Ask("elicitation/create", {"mode": "form", "message": "?", "requestedSchema": {"type": "object"}})
    with registry.in_flight("rep", bob):  # type: ignore[arg-type]
        refused = await registry.to_client_of("rep", "alice", ask)
        answered = await registry.to_client_of("rep", "bob", ask)
    assert isinstance(refused, types.ErrorData) and answered == {"action": "decline"}
    assert len(bob.requests) == 1


async def test_the_registry_answers_credential_problems_of_pooled_upstreams_only() -> None:
    registry = _registry()
    problem = await registry.credential_problem("rep", "carol")
    assert problem is not None and "TOK_carol" in problem
    assert await registry.credential_problem("rep", "alice") is None
    assert await registry.credential_problem("other", "carol") is None


class PinListener(Listener):
    def __init__(self) -> None:
        self.pin_events: list[tuple[EventKind, str, dict[str, Any]]] = []

    async def pin_event(self, upstream: str, kind: EventKind, tool: str, details: dict[str, Any]) -> None:
        self.pin_events.append((kind, tool, details))


async def test_every_childs_tools_are_checked_against_the_same_pins(tmp_path: Path) -> None:
    """Mallory's child lists another definition of ``whoami``: flagged, and hidden under enforce."""
    settings = parse_settings(
        {
            "secrets": {"tok": {"provider": "env", "name": "TOK_{principal}"}},
            "upstreams": {
                "rep": {
                    "command": sys.executable,
                    "args": [str(REPORTER)],
                    "inject_env": {"UPSTREAM_TOKEN": "tok"},
                    "restart": False,
                }
            },
        }
    )
    tokens = {**TOKENS, "mallory": "rogue-mallory-token-0123"}

    async def injections(upstream: str, principal: str) -> Injections:
        return Injections(env={"UPSTREAM_TOKEN": tokens[principal]})

    listener = PinListener()
    pins = PinStore(tmp_path / "pins.db")
    registry = Registry(settings, listener, pooled={"rep"}, principal_injections=injections, pins=pins)
    try:
        async with anyio.create_task_group() as tg:
            registry.start(tg)
            await registry.prepare_listing("alice")
            first = registry.find_tool("rep__whoami")
            assert first is not None and first.pinned and not first.hidden
            await registry.prepare_listing("mallory")
            changed = registry.find_tool("rep__whoami")
            assert changed is not None and changed.changed and changed.hidden
            registry.stop()
            tg.cancel_scope.cancel()
    finally:
        pins.close()
    kinds = [(kind, tool) for kind, tool, _ in listener.pin_events]
    assert (EventKind.TOOL_PINNED, "whoami") in kinds and (EventKind.TOOL_PIN_CHANGED, "whoami") in kinds


async def test_concurrent_first_calls_of_one_principal_start_one_child() -> None:
    hooks, clock = Hooks(), Clock()
    reports: list[dict[str, Any]] = []

    async def call() -> None:
        reports.append(await _whoami(pool, "alice"))

    async with anyio.create_task_group() as tg:
        pool = _pool(hooks, clock)
        pool.start(tg)
        async with anyio.create_task_group() as calls:
            for _ in range(5):
                calls.start_soon(call)
        assert len({r["pid"] for r in reports}) == 1 and len(reports) == 5
        assert [d["principal"] for d in hooks.of(EventKind.UPSTREAM_POOL_START)] == ["alice"]
        pool.stop()
        tg.cancel_scope.cancel()


def test_a_childs_stderr_lines_also_feed_the_pools_ring_labelled_with_its_principal() -> None:
    ring = StderrTail(maxlen=3)
    alice, bob = _ChildTail(ring, "alice"), _ChildTail(ring, "bob")
    for tail, line in ((alice, "a1"), (bob, "b1"), (alice, "a2"), (bob, "b2")):
        tail.append(line)
    assert list(alice) == ["a1", "a2"] and list(bob) == ["b1", "b2"]
    assert list(ring) == ["[bob] b1", "[alice] a2", "[bob] b2"], "one bounded ring, newest kept"
