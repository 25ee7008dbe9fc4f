"""Visibility: an agent does not see what it may never call.

Every tools/list, resources/list, resources/templates/list and prompts/list answer is filtered by
asking the policy, once per item, with the list action (``"tools/list"`` …), the item's upstream and
upstream-local name (or URI) and, for tools, its ``tool_info``. Only items with an explicit allow are
shown; an engine failure hides the item (fail closed). Answers are cached per principal (id and roles),
catalogue version and policy revision, so a listing costs one dict lookup until something changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio

from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.types import Action, PolicyInput, Principal, SessionInfo, ToolInfo

__all__ = ["ListItem", "Visibility"]

_CACHE_MAX = 4096

# (upstream, upstream-local name or URI, tool info or None)
ListItem = tuple[str, str, ToolInfo | None]
_E = TypeVar("_E")


class Visibility:
    def __init__(self, engine: Evaluator) -> None:
        self._engine = engine
        self._cache: dict[tuple[Any, ...], frozenset[int]] = {}

    async def visible(
        self,
        action: Action,
        principal: Principal,
        session: SessionInfo,
        items: Sequence[ListItem],
        catalog_version: int,
    ) -> frozenset[int]:
        """Indexes of ``items`` the principal may see."""
        key = (action, principal.id, principal.roles, catalog_version, getattr(self._engine, "revision", None))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        allowed: set[int] = set()

        async def check(i: int, item: ListItem) -> None:
            server, name, info = item
            d = await self._engine.evaluate(
                PolicyInput(
                    action=action,
                    principal=principal,
                    session=session,
                    server=server,
                    tool=name,
                    tool_info=info,
                )
            )
            if d.allow is True:
                allowed.add(i)

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(check, i, item)
        result = frozenset(allowed)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = result
        return result

    async def filter(
        self,
        action: Action,
        principal: Principal,
        session: SessionInfo,
        entries: Sequence[_E],
        item: Callable[[_E], ListItem],
        catalog_version: int,
    ) -> list[_E]:
        """The ``entries`` the principal may see, in order; ``item`` says what the policy is asked about each."""
        ok = await self.visible(action, principal, session, [item(e) for e in entries], catalog_version)
        return [e for i, e in enumerate(entries) if i in ok]
