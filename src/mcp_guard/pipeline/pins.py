"""The pin-check stage: a tool whose definition changed since it was approved is not called.

Under ``pinning = "enforce"`` (the default) such a call is denied with ``tool_changed`` until an operator
approves the new definition; the store is re-read first, so an approval made while the proxy runs takes
effect on the next call. Under ``"warn"`` the call goes on (the change was recorded when it was first
seen, and the policy input says ``pinned: false``).

The agent is told that the tool changed and awaits operator review — not how to approve it: that advice
(``mcp-guard tools pins`` / ``mcp-guard tools approve …``) is for operators and goes to the log.

It runs before the policy: the deny reason is then exactly ``tool_changed``, whatever the policy would
have said about an unpinned tool.
"""

from __future__ import annotations

import structlog

from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.types import Decision, ReasonCode
from mcp_guard.upstream.registry import Registry

__all__ = ["PinCheck"]

log = structlog.get_logger("mcp_guard.pins")


class PinCheck:
    """Inside ``call_next``: authorize, obligations, ``RecordDecision``, redact and the upstream — reached
    unless the targeted tool's definition changed since its approval (under ``pinning = "enforce"``)."""

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
                return await call_next(evolve(ctx, tool_info=entry.tool_info()))
        sha = (info.definition_sha256 or "")[:12]
        entry = self._registry.find_tool(ctx.exposed)
        what = (
            f"{ctx.exposed!r} appeared after start-up and has not been approved (definition {sha})"
            if entry is not None and entry.new
            else f"the definition of {ctx.exposed!r} changed since it was approved (now {sha})"
        )
        log.warning(
            "pin.call_denied",
            upstream=ctx.server,
            tool=ctx.target,
            sha256=sha,
            call_id=ctx.call_id,
            hint=f"review with `mcp-guard tools pins`, then `mcp-guard tools approve {ctx.exposed}`",
        )
        return Outcome(
            decision=Decision.deny(
                ReasonCode.TOOL_CHANGED,
                f"{what}; calls to it are refused until an operator has reviewed it",
            )
        )
