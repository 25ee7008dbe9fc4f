"""``subscriptions/listen`` for stateless (2026-07-28) clients: upstream changes, one stream per subscription,
filtered per principal.

A 2026-07-28 client has no standing stream: it opens one by sending ``subscriptions/listen`` with a filter
(tools / prompts / resources list changes, resource URIs), gets an acknowledgement first, then one notification
per event, each stamped with the subscription id, until it hangs up. The SDK's own handler
(``mcp.server.subscriptions.ListenHandler``) fans every event out to every stream; a governed proxy must not: a
principal may only hear of what it may see. So each stream is kept with the principal that opened it, and an
upstream's change reaches a stream only when it concerns that principal:

* a list change of one upstream (``tools``, ``prompts``, ``resources``) is delivered when what the principal may
  list *of that upstream* differs from what it could list before (the policy's visibility decides, as for a
  ``*/list``; definitions are compared, so a changed description counts), or when the upstream announced a
  change that altered nothing in mcp-guard's catalogue and the principal sees some of that upstream's entries
  (an upstream may announce a change mcp-guard cannot see, e.g. a server-side cache; a principal that uses the
  upstream hears of it, one that sees none of it does not). A tool appearing that the principal may not list
  changes nothing it can list: it hears nothing.
* a resource update is delivered when the URI is in the stream's filter and in the principal's resource listing.

The registry re-pins a changed tool list before it tells anyone (``Registry.catalog_changed`` rebuilds first), so
a stream's refetch sees the re-pinned catalogue. Events are level triggers: a stream's backlog is bounded and a
stream whose client stops reading is ended (the client re-listens and refetches, as the spec allows).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_to_notification,
)

from mcp_guard.frontend.listing import PROMPTS, RESOURCES, TOOLS, Listing
from mcp_guard.pipeline.visibility import Visibility
from mcp_guard.types import Principal, SessionInfo
from mcp_guard.upstream.registry import Registry

__all__ = ["Subscriptions"]

log = structlog.get_logger("mcp_guard.frontend")

# catalogue kind (as the registry names it) → how it is listed, and the event a stream gets
_KINDS: dict[str, tuple[Listing[Any], ServerEvent]] = {
    "tools": (TOOLS, ToolsListChanged()),
    "prompts": (PROMPTS, PromptsListChanged()),
    "resources": (RESOURCES, ResourcesListChanged()),
}
_Seen = dict[tuple[str, str], frozenset[str]]  # (kind, upstream) → digests of the definitions the principal sees


@dataclass(eq=False)
class _Stream:
    """One open subscription: who opened it, what it asked for, what it has seen, and its backlog."""

    principal: Principal
    session: SessionInfo
    kinds: frozenset[str]  # catalogue kinds whose list changes it wants
    uris: frozenset[str]  # exposed resource URIs whose updates it wants
    send: MemoryObjectSendStream[ServerEvent]
    seen: _Seen = field(default_factory=dict)


def _digest(obj: Any) -> str:
    raw = obj.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(obj, "model_dump") else obj
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


class Subscriptions:
    """The open ``subscriptions/listen`` streams and the per-principal fan-out of upstream changes into them."""

    def __init__(
        self,
        registry: Registry,
        visibility: Visibility,
        *,
        max_streams: int = 1024,
        max_per_principal: int = 32,
        max_backlog: int = 64,
    ) -> None:
        self._registry = registry
        self._visibility = visibility
        self._max_streams = max_streams
        self._max_per_principal = max_per_principal  # one principal cannot take every slot
        self._max_backlog = max_backlog
        self._streams: set[_Stream] = set()
        self._catalog: dict[tuple[str, str], str] = {}  # (kind, upstream) → digest of all its entries

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------ the handler
    async def listen(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.SubscriptionsListenRequestParams,
        principal: Principal,
        session: SessionInfo,
    ) -> types.SubscriptionsListenResult:
        """Serve one stream: acknowledge the honoured filter, then deliver until the client hangs up."""
        if ctx.request_id is None:
            raise MCPError(types.INVALID_REQUEST, "subscriptions/listen requires a request id")
        if len(self._streams) >= self._max_streams:
            raise MCPError(types.INTERNAL_ERROR, "mcp-guard: too many open subscriptions")
        if sum(1 for s in self._streams if s.principal.id == principal.id) >= self._max_per_principal:
            raise MCPError(types.INTERNAL_ERROR, f"mcp-guard: {principal.id!r} has too many open subscriptions")
        wanted = params.notifications
        kinds = frozenset(
            kind
            for kind, flag in (
                ("tools", wanted.tools_list_changed),
                ("prompts", wanted.prompts_list_changed),
                ("resources", wanted.resources_list_changed),
            )
            if flag
        )
        uris = frozenset(wanted.resource_subscriptions or ())
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        send, recv = anyio.create_memory_object_stream[ServerEvent](self._max_backlog)
        stream = _Stream(principal=principal, session=session, kinds=kinds, uris=uris, send=send)
        self._streams.add(stream)  # the slot is taken before the first await (the limits above hold)
        honoured = types.SubscriptionFilter(
            tools_list_changed=True if "tools" in kinds else None,
            prompts_list_changed=True if "prompts" in kinds else None,
            resources_list_changed=True if "resources" in kinds else None,
            resource_subscriptions=sorted(uris) or None,
        )
        try:
            self._remember_catalog()
            for kind in kinds:  # what it may see now: the baseline a later change is compared with
                stream.seen.update(await self._visible(kind, principal, session, None))
            await ctx.session.send_notification(  # the first frame: an event meanwhile waits in the backlog
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(notifications=honoured, _meta=meta)
                ),
                related_request_id=ctx.request_id,
            )
            async for event in recv:
                await ctx.session.send_notification(
                    event_to_notification(event, meta), related_request_id=ctx.request_id
                )
        finally:
            self._streams.discard(stream)
            send.close()
            recv.close()
        return types.SubscriptionsListenResult(_meta=meta)

    def close(self) -> None:
        """End every stream gracefully (each sends its final result): shutdown."""
        for stream in list(self._streams):
            stream.send.close()

    # ------------------------------------------------------------------ what the registry tells us
    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        """An upstream's lists changed (the registry has rebuilt and re-pinned): tell the streams it concerns."""
        for kind in sorted(kinds & _KINDS.keys()):
            key = (kind, upstream)
            before = self._catalog.get(key)
            after = self._catalog_digest(kind, upstream)
            self._catalog[key] = after
            announced_only = before == after
            for stream in [s for s in self._streams if kind in s.kinds]:
                now = (await self._visible(kind, stream.principal, stream.session, upstream)).get(key, frozenset())
                was = stream.seen.get(key, frozenset())
                stream.seen[key] = now
                if now != was or (announced_only and now):
                    self._deliver(stream, _KINDS[kind][1])

    async def resource_updated(self, exposed_uri: str) -> None:
        """An upstream resource changed: streams that asked for it and whose principal may list it hear of it."""
        for stream in [s for s in self._streams if exposed_uri in s.uris]:
            listed = await self._listed_uris(stream.principal, stream.session)
            if exposed_uri in listed:
                self._deliver(stream, ResourceUpdated(uri=exposed_uri))

    # ------------------------------------------------------------------ helpers
    def _deliver(self, stream: _Stream, event: ServerEvent) -> None:
        try:
            stream.send.send_nowait(event)
        except anyio.WouldBlock:
            log.warning("subscription.backlog_full", principal=stream.principal.id)
            self._streams.discard(stream)
            stream.send.close()  # the client stopped reading: end its stream; it re-listens and refetches
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._streams.discard(stream)

    async def _visible(self, kind: str, principal: Principal, session: SessionInfo, upstream: str | None) -> _Seen:
        """Digests of the entries of ``kind`` the principal may list, per upstream (all upstreams, or one).

        The whole listing is asked, as a ``*/list`` asks it (the visibility cache is keyed by the listing, not by
        which entries were passed), and grouped by upstream afterwards.
        """
        listing = _KINDS[kind][0]
        cat = self._registry.catalog
        shown = await self._visibility.filter(
            listing.action,
            principal,
            session,
            listing.entries(cat),
            lambda e: listing.item(self._registry, e),
            cat.version,
        )
        seen: dict[tuple[str, str], set[str]] = {}
        if upstream is not None:
            seen[(kind, upstream)] = set()
        for e in shown:
            owner = listing.item(self._registry, e)[0]
            if upstream is None or owner == upstream:
                seen.setdefault((kind, owner), set()).add(_digest(listing.exposed(e)))
        return {key: frozenset(v) for key, v in seen.items()}

    async def _listed_uris(self, principal: Principal, session: SessionInfo) -> set[str]:
        cat = self._registry.catalog
        shown = await self._visibility.filter(
            RESOURCES.action,
            principal,
            session,
            RESOURCES.entries(cat),
            lambda e: RESOURCES.item(self._registry, e),
            cat.version,
        )
        return {str(RESOURCES.exposed(e).uri) for e in shown}

    def _catalog_digest(self, kind: str, upstream: str) -> str:
        """One digest of everything mcp-guard lists of ``kind`` from ``upstream`` (for anyone)."""
        listing = _KINDS[kind][0]
        digests = sorted(
            _digest(listing.exposed(e))
            for e in listing.entries(self._registry.catalog)
            if listing.item(self._registry, e)[0] == upstream
        )
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()

    def _remember_catalog(self) -> None:
        """Record the catalogue as it is now, so a later announcement can tell 'changed' from 'announced only'."""
        for kind, (listing, _) in _KINDS.items():
            upstreams = {listing.item(self._registry, e)[0] for e in listing.entries(self._registry.catalog)}
            for upstream in upstreams - {u for k, u in self._catalog if k == kind}:
                self._catalog[(kind, upstream)] = self._catalog_digest(kind, upstream)
