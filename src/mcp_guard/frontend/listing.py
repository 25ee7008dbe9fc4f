"""What a principal may see: one listing path for tools, resources, resource templates and prompts.

Every ``*/list`` answer is the same three steps — take the merged catalogue's entries of one kind, keep
those the policy lets the principal see (:class:`~mcp_guard.pipeline.visibility.Visibility`), expose the
namespaced copies — so they are written once here, driven by a :class:`Listing` row per kind. The
handlers page and answer them; ``mcp-guard tools`` and ``Guard.visible`` call the same function, so the
CLI can never show a principal something its client would not see (or the reverse).

Listings are in a fixed order — by exposed name (tools, prompts) or URI (resources, templates) — whatever
order the upstreams connected or answered in, so two replicas, a restart or a reload list the same catalogue
the same way and a cursor (an offset) means the same page. Their 2026-07-28 cache hints
(:data:`CACHE_HINTS`) say ``private``: a listing is filtered for one principal and must never be shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import mcp_types as types
from mcp.server.caching import CacheableMethod, CacheHint

from mcp_guard.pipeline.visibility import ListItem, Visibility
from mcp_guard.types import Action, EventKind, Principal, SessionInfo
from mcp_guard.upstream.registry import ExposedPrompt, ExposedTool, MergedCatalog, Registry

__all__ = ["CACHE_HINTS", "LISTINGS", "PROMPTS", "RESOURCES", "TEMPLATES", "TOOLS", "Listing", "visible"]

_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class Listing(Generic[_E]):
    """How one kind of catalogue entry is listed.

    ``entries`` picks the kind's entries from the merged catalogue (hidden ones left out), ``item`` says
    what the policy is asked about one entry (upstream, upstream-local name or URI, tool info), and
    ``exposed`` is the namespaced protocol object the client gets. ``event`` is the audit kind recorded
    for a first page, if this kind's listings are audited; ``pins`` re-reads pins awaiting approval first,
    so an approval made while the proxy runs shows up on the next listing.
    """

    action: Action
    entries: Callable[[MergedCatalog], Sequence[_E]]
    item: Callable[[Registry, _E], ListItem]
    exposed: Callable[[_E], Any]
    event: EventKind | None = None
    pins: bool = False
    order: Callable[[Any], str] = lambda exposed: str(exposed.name)  # sort key of an exposed entry


def _local_uri(registry: Registry, exposed: str) -> str:
    routed = registry.route_uri(exposed)
    return routed[1] if routed else exposed


TOOLS: Listing[ExposedTool] = Listing(
    action="tools/list",
    entries=lambda cat: [e for e in cat.tools.values() if not e.hidden],
    item=lambda _reg, e: (e.upstream, e.local.name, e.tool_info()),
    exposed=lambda e: e.exposed,
    event=EventKind.TOOLS_LIST,
    pins=True,
)
RESOURCES: Listing[tuple[str, types.Resource]] = Listing(
    action="resources/list",
    entries=lambda cat: cat.resources,
    item=lambda reg, e: (e[0], _local_uri(reg, str(e[1].uri)), None),
    exposed=lambda e: e[1],
    order=lambda exposed: str(exposed.uri),
)
TEMPLATES: Listing[tuple[str, types.ResourceTemplate]] = Listing(
    action="resources/templates/list",
    entries=lambda cat: cat.templates,
    item=lambda reg, e: (e[0], _local_uri(reg, e[1].uri_template), None),
    exposed=lambda e: e[1],
    order=lambda exposed: str(exposed.uri_template),
)
PROMPTS: Listing[ExposedPrompt] = Listing(
    action="prompts/list",
    entries=lambda cat: list(cat.prompts.values()),
    item=lambda _reg, e: (e.upstream, e.local.name, None),
    exposed=lambda e: e.exposed,
)
LISTINGS: tuple[Listing[Any], ...] = (TOOLS, RESOURCES, TEMPLATES, PROMPTS)

# 2026-07-28 cache hints of every listing (the SDK fills them on results that do not set their own): private,
# because each is filtered for one principal; stale at once, because a reload or an upstream's list_changed
# can change it any moment and a stateless client has no other way to learn of that.
_LIST_METHODS: tuple[CacheableMethod, ...] = (
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
)
CACHE_HINTS: dict[CacheableMethod, CacheHint] = {
    method: CacheHint(ttl_ms=0, scope="private") for method in _LIST_METHODS
}


async def visible(
    listing: Listing[_E], registry: Registry, visibility: Visibility, principal: Principal, session: SessionInfo
) -> list[Any]:
    """The exposed entries of one kind that ``principal`` may see, sorted (:attr:`Listing.order`)."""
    await registry.prepare_listing(principal.id)  # the caller's own connections of pooled upstreams
    if listing.pins:
        await registry.recheck_pins()
    cat = registry.catalog
    shown = await visibility.filter(
        listing.action,
        principal,
        session,
        listing.entries(cat),
        lambda e: listing.item(registry, e),
        cat.version,
    )
    return sorted((listing.exposed(e) for e in shown), key=listing.order)
