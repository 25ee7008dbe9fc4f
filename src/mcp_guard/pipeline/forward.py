"""The end of the chain: send the (de-namespaced) request to its upstream and wrap how it ended."""

from __future__ import annotations

import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_guard.errors import UpstreamError, UpstreamTimeout
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.upstream.registry import Registry

__all__ = ["DENIED", "UPSTREAM_TIMEOUT", "UPSTREAM_UNAVAILABLE", "Forward", "is_guard_error"]

# JSON-RPC error codes mcp-guard itself answers with (server-defined range).
UPSTREAM_UNAVAILABLE = -32010  # upstream down, crashed, or closed mid-call
UPSTREAM_TIMEOUT = -32011  # upstream did not answer within its timeout_s
DENIED = -32012  # policy (or a fail-closed stage) denied a resources/read, prompts/get, …


def is_guard_error(error: types.ErrorData) -> bool:
    return error.code in (UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT, DENIED)


class Forward:
    """The terminal (no ``call_next``): one request to the upstream, bounded by ``ctx.timeout_s``
    (else the upstream's own ``timeout_s``)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, ctx: CallContext) -> Outcome:
        conn = self._registry.connection(ctx.server)
        if conn is None:
            return Outcome(error=types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=f"unknown upstream {ctx.server!r}"))
        try:
            with self._registry.in_flight(ctx.server, ctx.downstream):
                result = await conn.request(ctx.request, timeout=ctx.timeout_s, on_progress=ctx.progress)
        except UpstreamTimeout as e:
            return Outcome(error=types.ErrorData(code=UPSTREAM_TIMEOUT, message=str(e)))
        except UpstreamError as e:
            return Outcome(error=types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=str(e)))
        except MCPError as e:
            return Outcome(error=e.error)
        return Outcome(result=result)
