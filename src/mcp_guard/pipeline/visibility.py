"""Visibility: an agent does not see what it may never call.

Every tools/list, resources/list, resources/templates/list and prompts/list answer is filtered by
asking the policy, once per item, with the list action (``"tools/list"`` …), the item's upstream and
upstream-local name (or URI) and, for tools, its ``tool_info``. Only items with an explicit allow are
shown; an engine failure hides the item (fail closed). Answers are cached per principal (id and roles),
catalogue version and policy revision, so a listing costs one dict lookup until something changes.

A listing during which the engine *failed* for any item (``engine_error``, ``timeout``, or an exception)
is answered — with those items hidden — but never cached: an OPA that is briefly down would otherwise
hide tools until the catalogue or the policy next changed. A deny the policy made is cached like an allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import structlog

from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.types import Action, Decision, PolicyInput, Principal, ReasonCode, SessionInfo, ToolInfo

__all__ = ["FAILED_EVALUATION", "ListItem", "Visibility"]

log = structlog.get_logger("mcp_guard.visibility")

_CACHE_MAX = 4096
FAILED_EVALUATION = frozenset({ReasonCode.ENGINE_ERROR, ReasonCode.TIMEOUT})
"""Reason codes of a decision the engine did not reach: the same question may be answered otherwise soon."""

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
        failed: list[str] = []

        async def check(i: int, item: ListItem) -> None:
            server, name, info = item
            query = PolicyInput(
                action=action, principal=principal, session=session, server=server, tool=name, tool_info=info
            )
            try:
                d = await self._engine.evaluate(query)
            except Exception as e:  # an engine must answer with a deny; one that raises hides the item too
                d = Decision.deny(ReasonCode.ENGINE_ERROR, f"{type(e).__name__}: {e}")
            if d.allow is True:
                allowed.add(i)
            elif d.code in FAILED_EVALUATION:
                failed.append(d.code)

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(check, i, item)
        result = frozenset(allowed)
        if failed:
            log.warning("visibility.not_cached", action=action, principal=principal.id, failed=len(failed))
            return result
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
