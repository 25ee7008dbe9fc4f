"""A client's ``Mcp-Param-*`` headers, passed on to a 2026-07-28 HTTP upstream with its call and no other.

The 2026-07-28 HTTP transport mirrors a ``tools/call``'s arguments into ``Mcp-Param-<token>`` headers for
intermediaries. mcp-guard, an intermediary, validates the ones the tool's schema declares against the body
before anything runs (:mod:`mcp_guard.frontend.headers`) and its SDK client writes those again for the
upstream from the arguments; the transport's rule for the rest is that an intermediary passes unknown
``Mcp-Param-*`` headers on. So the client's headers travel with its call (``CallContext.param_headers``) and
are added to that call's HTTP request(s) to the upstream — the first attempt and its input-round retries —
where the SDK has not set the same header itself (a declared header is the SDK's, from the same arguments).

Per request, never across requests or principals: the headers ride a context variable set around the one
upstream request (:func:`call_headers`, in ``UpstreamConnection.request``), read by an ``httpx2`` request hook
(:func:`add_call_headers`) on the connection's client. The SDK's streamable-HTTP transport sends each
message's POST in a copy of the sender's context (as for the exchanged token of
:mod:`mcp_guard.upstream.token_exchange`), so a concurrent call sees only its own, and the transport's own
traffic (listings, the listen stream) none. A handshake-era (2025-11-25) upstream gets none: the headers are
the 2026-07-28 transport's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar

import httpx2

__all__ = ["MAX_PARAM_HEADERS", "PARAM_PREFIX", "add_call_headers", "call_headers", "param_headers_of"]

PARAM_PREFIX = "mcp-param-"
_PREFIX = PARAM_PREFIX.encode("ascii")
MAX_PARAM_HEADERS = 64
"""At most this many are passed on per call (a schema declares a handful; the HTTP server bounds their size)."""

_CALL_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar("mcp_guard_upstream_param_headers", default=None)


def param_headers_of(raw: Iterable[tuple[bytes, bytes]] | None) -> dict[str, str] | None:
    """The ``Mcp-Param-*`` headers of a client's HTTP request, from its ASGI header list (names lower-case, as
    ASGI servers give them and Starlette's lookups assume); None if it has none.

    Only the matching headers are decoded: a request carries a dozen others, and every 2026-07-28 ``tools/call``
    asks."""
    if raw is None:
        return None
    found = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw if k.startswith(_PREFIX)}
    if not found:
        return None
    return dict(sorted(found.items())[:MAX_PARAM_HEADERS])


@contextlib.contextmanager
def call_headers(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Within this block, HTTP requests sent by this task carry ``headers`` (see the module docstring)."""
    reset = _CALL_HEADERS.set(headers)
    try:
        yield
    finally:
        _CALL_HEADERS.reset(reset)


async def add_call_headers(request: httpx2.Request) -> None:
    """The ``httpx2`` request hook: the current call's headers, where the request does not set them already."""
    headers = _CALL_HEADERS.get()
    if not headers:
        return
    for name, value in headers.items():
        if name not in request.headers:
            request.headers[name] = value
