"""The JSON-RPC error answered for a line the stdio front cannot decode, so the client never waits forever.

The SDK's dispatcher drops a message the transport could not parse (it has no id to answer). A client that
sent a request in that line would then wait for its answer until it gives up, so the stdio transport
answers every undecodable line itself: ``-32700`` (not JSON, nested deeper than the parser allows, larger
than the line limit) or ``-32600`` (JSON, but not a JSON-RPC message). The answer carries the request's id
when one can be read from the line's top level — a client matches answers by id — and ``null`` otherwise,
as JSON-RPC prescribes for an unreadable request. The text never quotes the input.
"""

from __future__ import annotations

import json

import mcp_types as types

from mcp_guard.lineid import ID_SCAN_CHARS, top_level_id

__all__ = ["ID_SCAN_CHARS", "answer_for", "oversized_answer", "top_level_id"]


def answer_for(line: bytes, error: Exception) -> types.JSONRPCError:
    """The answer to one line that did not decode as a JSON-RPC message."""
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        code, message = types.PARSE_ERROR, "Parse error: the message is not JSON mcp-guard can read"
        if "recursion limit" in str(error):
            message = "Parse error: the message nests deeper than mcp-guard reads"
    else:
        code, message = types.INVALID_REQUEST, "Invalid request: the message is JSON but not a JSON-RPC message"
    return types.JSONRPCError(
        jsonrpc="2.0", id=top_level_id(line), error=types.ErrorData(code=code, message=f"mcp-guard: {message}")
    )


def oversized_answer(head: bytes, limit: int) -> types.JSONRPCError:
    """The answer to a line longer than the transport's limit (read no further than ``head``)."""
    return types.JSONRPCError(
        jsonrpc="2.0",
        id=top_level_id(head),
        error=types.ErrorData(
            code=types.PARSE_ERROR, message=f"mcp-guard: Parse error: the message is larger than {limit} bytes"
        ),
    )
