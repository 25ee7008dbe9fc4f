"""The end of the chain: send the (de-namespaced) request to its upstream and wrap how it ended.

Provenance: an error mcp-guard makes (the upstream is down, timed out, answered with something invalid)
is an :meth:`Outcome.guard_error <mcp_guard.pipeline.context.Outcome.guard_error>`; an error the upstream
answered is an upstream error (``ErrorOrigin.UPSTREAM``), whatever its code or text. The front tells them
apart by that marker (:func:`is_guard_error`). An upstream error that uses a code of mcp-guard's own range
(:data:`GUARD_CODES`) is re-coded (``INTERNAL_ERROR``, its message saying which upstream answered which
code), so a client that tells errors apart by code cannot be fooled either; one whose text starts like ours
("mcp-guard: …") is prefixed with the upstream's name; and the ``_meta`` keys mcp-guard
writes (:data:`GUARD_META_PREFIX`) are removed from an upstream's result, so its result cannot carry a
forged decision.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_guard.errors import UpstreamError, UpstreamTimeout
from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, ErrorOrigin, Outcome
from mcp_guard.pipeline.input_rounds import complete_input_rounds, is_input_required
from mcp_guard.pipeline.redecide import current_redecide
from mcp_guard.types import Decision
from mcp_guard.upstream.era import Era
from mcp_guard.upstream.registry import Registry

__all__ = [
    "DENIED",
    "GUARD_CODES",
    "GUARD_META_PREFIX",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNAVAILABLE",
    "Forward",
    "is_guard_error",
    "upstream_error",
    "upstream_result",
]

# JSON-RPC error codes mcp-guard itself answers with (server-defined range).
UPSTREAM_UNAVAILABLE = -32010  # upstream down, crashed, closed mid-call, or answered with something invalid
UPSTREAM_TIMEOUT = -32011  # upstream did not answer within its timeout_s
DENIED = -32012  # policy (or a fail-closed stage) denied a resources/read, prompts/get, …
GUARD_CODES = range(-32019, -32009)
"""-32019 … -32010: mcp-guard's own; never passed on from an upstream."""
GUARD_META_PREFIX = "mcp-guard/"
"""``_meta`` keys mcp-guard writes on its answers (``mcp-guard/decision``…); never passed on from an upstream."""


def is_guard_error(outcome: Outcome) -> bool:
    """Whether ``outcome`` ends in an error mcp-guard made (by its marker, never by its code or text)."""
    return outcome.error is not None and outcome.error_origin is ErrorOrigin.GUARD


def upstream_result(result: dict[str, Any]) -> dict[str, Any]:
    """An upstream's result without ``_meta`` keys of mcp-guard's own (the same dict if it has none)."""
    meta = result.get("_meta")
    if not isinstance(meta, dict) or not any(isinstance(k, str) and k.startswith(GUARD_META_PREFIX) for k in meta):
        return result
    kept = {k: v for k, v in meta.items() if not (isinstance(k, str) and k.startswith(GUARD_META_PREFIX))}
    return {**result, "_meta": kept}


_INVISIBLE_HEAD = re.compile(r"^[\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2060\ufeff]*")


def claims_to_be_ours(message: str) -> bool:
    """Whether a text starts the way mcp-guard's own errors do ("mcp-guard: …", "Denied by mcp-guard: …"),
    after invisible characters and compatibility forms (fullwidth letters) are taken away."""
    head = unicodedata.normalize("NFKC", _INVISIBLE_HEAD.sub("", message[:200])).casefold()
    return head.startswith(("mcp-guard", "mcp guard", "denied by mcp-guard"))


def upstream_error(server: str, error: types.ErrorData) -> types.ErrorData:
    """An error ``server`` answered with, as the client may get it: re-coded if it uses one of our codes,
    and said to be the upstream's if its text reads as one of ours."""
    if error.code not in GUARD_CODES:
        if not claims_to_be_ours(error.message):
            return error
        return types.ErrorData(
            code=error.code, message=f"upstream {server!r} answered: {error.message}", data=error.data
        )
    return types.ErrorData(
        code=types.INTERNAL_ERROR,
        message=f"upstream {server!r} answered with error code {error.code}: {error.message}",
        data=error.data,
    )


class Forward:
    """The terminal (no ``call_next``): one request to the upstream, bounded by ``ctx.timeout_s``
    (else the upstream's own ``timeout_s``)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, ctx: CallContext) -> Outcome:
        reached: list[Era] = []
        outcome = await self._forward(ctx, reached)
        # The era of the connection the call went out on, for its outcome row (details.upstream_protocol).
        return evolve(outcome, upstream_protocol=reached[0]) if reached else outcome

    async def _forward(self, ctx: CallContext, reached: list[Era]) -> Outcome:
        try:
            # The caller's own connection when the upstream runs one per principal (mcp_guard.upstream.pool).
            async with self._registry.lease(ctx.server, ctx.principal.id) as conn:
                if conn is None:
                    return Outcome.guard_error(UPSTREAM_UNAVAILABLE, f"unknown upstream {ctx.server!r}")
                reached.append(conn.era)
                with self._registry.in_flight(ctx.server, ctx.downstream):
                    result = await conn.request(
                        ctx.request,
                        timeout=ctx.timeout_s,
                        on_progress=ctx.progress,
                        bearer=ctx.upstream_token,
                        headers=ctx.param_headers,
                    )
                    if is_input_required(result):  # a 2026-07-28 upstream's questions (mcp_guard.pipeline.input_rounds)

                        async def send(request: types.ClientRequest) -> dict[str, Any]:
                            return await conn.request(
                                request,
                                timeout=ctx.timeout_s,
                                on_progress=ctx.progress,
                                bearer=ctx.upstream_token,
                                headers=ctx.param_headers,
                            )

                        final = await complete_input_rounds(
                            result, ctx.request, send, ctx.downstream, upstream=ctx.server, redecide=current_redecide()
                        )
                        if isinstance(final, types.ErrorData):
                            return Outcome(error=final, error_origin=ErrorOrigin.GUARD)
                        if isinstance(final, Decision):  # the policy refused the answers (Redecide ends the call)
                            return Outcome(decision=final)
                        result = final
        except UpstreamTimeout as e:
            return Outcome.guard_error(UPSTREAM_TIMEOUT, str(e))
        except UpstreamError as e:
            return Outcome.guard_error(UPSTREAM_UNAVAILABLE, str(e))
        except MCPError as e:
            return Outcome(error=upstream_error(ctx.server, e.error), error_origin=ErrorOrigin.UPSTREAM)
        return Outcome(result=upstream_result(result))
