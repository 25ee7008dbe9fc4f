"""The pin-check stage: a tool whose definition changed since it was approved is not called.

Under ``pinning = "enforce"`` (the default) such a call is denied with ``tool_changed`` until an operator
approves the new definition (``mcp-guard tools approve <server><sep><tool>``); the store is re-read first,
so an approval made while the proxy runs takes effect on the next call. Under ``"warn"`` the call goes on
(the change was recorded when it was first seen, and the policy input says ``pinned: false``).

It runs before the policy: the deny reason is then exactly ``tool_changed``, whatever the policy would
have said about an unpinned tool.
"""

from __future__ import annotations

from dataclasses import replace

from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.types import Decision, ReasonCode
from mcp_guard.upstream.registry import Registry

__all__ = ["PinCheck"]


class PinCheck:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        info = ctx.tool_info
        if info is None or not info.changed or ctx.action != "tools/call":
            return await call_next(ctx)
        if self._registry.settings.upstreams[ctx.server].pinning != "enforce":
            return await call_next(ctx)
        if await self._registry.recheck_pins():
            entry = self._registry.find_tool(ctx.exposed)
            if entry is not None and not entry.hidden:
                return await call_next(replace(ctx, tool_info=entry.tool_info()))
        return Outcome(
            decision=Decision.deny(
                ReasonCode.TOOL_CHANGED,
                f"the definition of {ctx.exposed!r} changed since it was approved (now "
                f"{(info.definition_sha256 or '')[:12]}); an operator must review it (`mcp-guard tools pins`) and "
                f"approve it (`mcp-guard tools approve {ctx.exposed}`)",
            )
        )
