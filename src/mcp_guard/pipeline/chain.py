"""Compose interceptors (same ``(ctx, call_next)`` shape as the SDK's ServerMiddleware)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome

__all__ = ["build_chain"]


def _bind(interceptor: Interceptor, call_next: CallNext) -> CallNext:
    """``interceptor`` with its ``call_next`` fixed.

    A plain function that hands back the interceptor's own awaitable, not a coroutine awaiting it: a call
    crosses every stage, and a wrapping coroutine per stage would add a frame (and its creation) each time.
    """

    def call(ctx: CallContext) -> Awaitable[Outcome]:
        return interceptor(ctx, call_next)

    return call


def build_chain(interceptors: Sequence[Interceptor], terminal: CallNext) -> CallNext:
    """``interceptors`` outermost first; ``terminal`` is the call to the upstream."""
    call = terminal
    for interceptor in reversed(interceptors):
        call = _bind(interceptor, call)
    return call
