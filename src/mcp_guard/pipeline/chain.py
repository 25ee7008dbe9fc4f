"""Compose interceptors (same ``(ctx, call_next)`` shape as the SDK's ServerMiddleware)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome

__all__ = ["build_chain"]


async def _apply(interceptor: Interceptor, call_next: CallNext, ctx: CallContext) -> Outcome:
    return await interceptor(ctx, call_next)


def build_chain(interceptors: Sequence[Interceptor], terminal: CallNext) -> CallNext:
    """``interceptors`` outermost first; ``terminal`` is the call to the upstream."""
    call = terminal
    for interceptor in reversed(interceptors):
        call = partial(_apply, interceptor, call)
    return call
