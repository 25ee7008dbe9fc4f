"""Listings come out in a fixed order, whatever order the upstreams answered in, with private cache hints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import mcp_types as types
import pytest

from mcp_guard.frontend.listing import CACHE_HINTS, PROMPTS, RESOURCES, visible
from mcp_guard.types import Principal, SessionInfo

pytestmark = pytest.mark.anyio


class AllowAll:
    """A visibility filter that keeps everything, in the order it was given."""

    async def filter(
        self,
        action: str,
        principal: Principal,
        session: SessionInfo,
        entries: Sequence[Any],
        item: Callable[[Any], Any],
        version: int,
    ) -> list[Any]:
        return list(entries)


async def _no_pooled_connections(principal: str) -> None:
    """The registry hook for per-user upstream connections; these fixtures have none."""


def _registry(**catalog: Any) -> Any:
    return SimpleNamespace(
        catalog=SimpleNamespace(version=1, **catalog),
        route_uri=lambda uri: None,
        prepare_listing=_no_pooled_connections,
    )


async def test_prompts_and_resources_are_sorted_by_exposed_name_and_uri() -> None:
    prompts = {
        n: SimpleNamespace(upstream="u", local=None, exposed=types.Prompt(name=n)) for n in ("b__x", "a__y", "b__a")
    }
    resources = [("u", types.Resource(uri=u, name=u)) for u in ("z://1", "a://2", "m://3")]
    registry = _registry(prompts=prompts, resources=resources)
    who, session = Principal("alice"), SessionInfo(id="s", transport="http")
    shown = await visible(PROMPTS, registry, AllowAll(), who, session)  # type: ignore[arg-type]
    assert [p.name for p in shown] == ["a__y", "b__a", "b__x"]
    shown = await visible(RESOURCES, registry, AllowAll(), who, session)  # type: ignore[arg-type]
    assert [str(r.uri) for r in shown] == ["a://2", "m://3", "z://1"]


def test_every_listing_is_private_and_stale_at_once() -> None:
    assert sorted(CACHE_HINTS) == ["prompts/list", "resources/list", "resources/templates/list", "tools/list"]
    assert {(h.scope, h.ttl_ms) for h in CACHE_HINTS.values()} == {("private", 0)}
