"""The 2026-07-28 HTTP transport's routing headers, checked before anything of mcp-guard's runs.

A stateless (2026-07-28) request mirrors parts of its JSON-RPC body into HTTP headers so intermediaries can
route without parsing it: ``MCP-Protocol-Version`` (= ``_meta`` protocol version), ``Mcp-Method`` (= ``method``),
``Mcp-Name`` (= ``params.name`` / ``params.uri``) and, for a ``tools/call``, one ``Mcp-Param-<token>`` per
argument the tool's input schema annotates with ``x-mcp-header``. A request whose headers disagree with its body
is refused with HTTP 400 and JSON-RPC ``-32020`` (``HEADER_MISMATCH``) before it is dispatched (after the HTTP
front's authentication), so before policy and audit see it: a policy never decides on a request whose headers an
intermediary in front of mcp-guard may have routed differently from its body.

The SDK's stateless transport does the comparison (``mcp.shared.inbound``); for ``Mcp-Param-*`` it needs the
called tool's input schema. Left to itself it would list tools through mcp-guard's own ``tools/list`` handler
for every call — a policy run and an audited listing per call, before the call's own. :func:`tool_input_schema`
answers from the merged catalogue instead: no policy, no audit, no upstream round trip. Tools hidden by pinning
are not answered (the call is then refused by the pipeline as usual); ``Mcp-Param-*`` headers no schema declares
are not checked (the spec leaves them to the receiver) and are passed on to a 2026-07-28 HTTP upstream with their
call (:mod:`mcp_guard.upstream.param_headers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mcp.shared.inbound import x_mcp_header_map

from mcp_guard.memo import ByIdentity
from mcp_guard.upstream.registry import Registry

__all__ = ["tool_input_schema"]


def tool_input_schema(registry: Registry) -> Callable[[str], Mapping[str, Any] | None]:
    """The input schema of the tool a client calls by its exposed name, for the SDK's ``Mcp-Param-*`` check (None:
    nothing to check — no such listed tool, or a schema that annotates no property with ``x-mcp-header``).

    Read from the live catalogue at call time, so a reload or an upstream's ``list_changed`` is seen at once.
    The exposed copy's schema is the upstream's (namespacing renames the tool, never its arguments).

    A schema with no annotated property is answered None: the SDK's check compares a header with its argument
    only at annotated positions, so it cannot refuse such a call whatever its headers and arguments (held to that
    in tests/frontend/test_headers.py) — and it walks the whole schema twice per call to find that out (~700
    bytecodes). Whether a schema annotates anything is remembered by the schema object.
    """

    def lookup(name: str) -> Mapping[str, Any] | None:
        entry = registry.find_tool(name)
        if entry is None or entry.hidden:
            return None
        schema = entry.exposed.input_schema
        return schema if _annotates(schema) else None

    return lookup


_ANNOTATES: ByIdentity[bool] = ByIdentity(4096)


def _annotates(schema: Mapping[str, Any]) -> bool:
    """Whether ``schema`` declares an ``Mcp-Param-*`` header (an ``x-mcp-header`` the SDK's check would look at)."""
    known = _ANNOTATES.get(schema)
    if known is None:
        known = _ANNOTATES.put(bool(x_mcp_header_map(schema)), schema)
    return known
