"""Per-principal fan-out of upstream changes into ``subscriptions/listen`` streams.

The streams are served by :class:`Subscriptions.listen` on a fake request context that records what it sends; the
catalogue and the policy are fakes too (alice sees everything, bob no tool named ``secret*``, nobody sees nothing).
The wire side (a real proxy, raw HTTP) is tests/e2e/test_conformance_subscriptions.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from mcp_guard.frontend.subscriptions import Subscriptions
from mcp_guard.types import Principal, SessionInfo

pytestmark = pytest.mark.anyio


class Catalogue:
    """A registry's catalogue of one upstream, ``up``, that tests grow and re-announce."""

    def __init__(self, *tools: str) -> None:
        self.catalog = SimpleNamespace(tools={}, prompts={}, resources=[], templates=[], version=0)
        for name in tools:
            self.add(name)
        self.catalog.resources = [("up", types.Resource(uri="up://status", name="status"))]

    def add(self, name: str, description: str = "") -> None:
        tool = types.Tool(name=name, description=description, input_schema={"type": "object"})
        entry = SimpleNamespace(upstream="up", local=tool, exposed=tool, hidden=False, tool_info=lambda: None)
        self.catalog.tools[name] = entry
        self.catalog.version += 1

    def route_uri(self, uri: str) -> tuple[str, str]:
        return ("up", uri)


class Policy:
    async def filter(
        self,
        action: str,
        principal: Principal,
        session: SessionInfo,
        entries: Sequence[Any],
        item: Callable[[Any], Any],
        version: int,
    ) -> list[Any]:
        if principal.id == "nobody":
            return []
        return [e for e in entries if principal.id == "alice" or not str(item(e)[1]).startswith("secret")]


class Stream:
    """The client end of one listen stream: every notification sent on it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.sent: list[types.ServerNotification] = []
        self.arrived = anyio.Event()
        self.session = self  # the handler sends through ctx.session

    async def send_notification(self, notification: types.ServerNotification, related_request_id: Any = None) -> None:
        assert related_request_id == self.request_id
        self.sent.append(notification)
        self.arrived.set()

    @property
    def methods(self) -> list[str]:
        return [n.method for n in self.sent]

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.sent) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()


@asynccontextmanager
async def listening(subs: Subscriptions, *who: str, uris: Sequence[str] = ()) -> AsyncIterator[dict[str, Stream]]:
    streams = {w: Stream(f"{w}-sub") for w in who}
    params = types.SubscriptionsListenRequestParams(
        notifications=types.SubscriptionFilter(tools_list_changed=True, resource_subscriptions=list(uris) or None)
    )
    async with anyio.create_task_group() as tg:
        for w, stream in streams.items():
            info = SessionInfo(id=w, transport="http")
            tg.start_soon(subs.listen, stream, params, Principal(w), info)  # type: ignore[arg-type]
        for stream in streams.values():
            await stream.wait_for(1)  # the acknowledgement
        yield streams
        subs.close()


async def test_a_tool_only_some_may_see_is_announced_only_to_them() -> None:
    cat = Catalogue("public")
    subs = Subscriptions(cat, Policy())  # type: ignore[arg-type]
    async with listening(subs, "alice", "bob") as s:
        cat.add("secret_plan")
        await subs.catalog_changed("up", frozenset({"tools"}))
        await s["alice"].wait_for(2)
        cat.add("shared")
        await subs.catalog_changed("up", frozenset({"tools"}))
        await s["alice"].wait_for(3)
        await s["bob"].wait_for(2)
    ack, changed = "notifications/subscriptions/acknowledged", "notifications/tools/list_changed"
    assert s["alice"].methods == [ack, changed, changed]
    assert s["bob"].methods == [ack, changed]  # the shared tool, never the secret one
    meta = s["bob"].sent[1].params.meta  # type: ignore[union-attr]
    assert meta == {"io.modelcontextprotocol/subscriptionId": "bob-sub"}


async def test_a_changed_definition_counts_and_a_bare_announcement_reaches_those_who_see_the_upstream() -> None:
    cat = Catalogue("public")
    subs = Subscriptions(cat, Policy())  # type: ignore[arg-type]
    async with listening(subs, "bob", "nobody") as s:
        cat.add("public", description="new words")  # same name, new definition
        await subs.catalog_changed("up", frozenset({"tools"}))
        await s["bob"].wait_for(2)
        await subs.catalog_changed("up", frozenset({"tools"}))  # announced, nothing changed in the catalogue
        await s["bob"].wait_for(3)
        await subs.catalog_changed("up", frozenset({"prompts"}))  # not subscribed to
    assert s["bob"].methods[1:] == ["notifications/tools/list_changed"] * 2
    assert s["nobody"].methods == ["notifications/subscriptions/acknowledged"]


async def test_a_resource_update_reaches_streams_that_named_it_and_may_list_it() -> None:
    cat = Catalogue("public")
    subs = Subscriptions(cat, Policy())  # type: ignore[arg-type]
    async with listening(subs, "bob", "nobody", uris=["up://status"]) as s:
        await subs.resource_updated("up://status")
        await subs.resource_updated("up://other")
        await s["bob"].wait_for(2)
    assert s["bob"].methods[1:] == ["notifications/resources/updated"]
    assert s["nobody"].methods == ["notifications/subscriptions/acknowledged"]
    assert subs.open_streams == 0  # closed: every stream ended


async def test_one_principal_cannot_take_every_subscription_slot() -> None:
    subs = Subscriptions(Catalogue("public"), Policy(), max_per_principal=1)  # type: ignore[arg-type]
    params = types.SubscriptionsListenRequestParams(notifications=types.SubscriptionFilter(tools_list_changed=True))
    async with listening(subs, "bob"):
        with pytest.raises(MCPError, match="'bob' has too many open subscriptions"):
            await subs.listen(Stream("again"), params, Principal("bob"), SessionInfo(id="b2", transport="http"))  # type: ignore[arg-type]
        async with listening(subs, "alice") as s:  # another principal still gets one
            assert s["alice"].methods == ["notifications/subscriptions/acknowledged"]
