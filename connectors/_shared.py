"""Small helpers shared by the first-party connectors (schemas, results, stdio serving, data paths)."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

__all__ = ["data_path", "obj_schema", "serve_stdio", "setup_logging", "structured_result", "text_result"]


def obj_schema(
    props: dict[str, Any], required: Sequence[str] = (), *, additional: bool = False
) -> dict[str, Any]:
    """A JSON Schema object with the given properties."""
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": additional}


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=is_error)


def structured_result(data: dict[str, Any], text: str | None = None) -> types.CallToolResult:
    """A result with structuredContent and, for clients without it, the same data as text."""
    body = text if text is not None else json.dumps(data, indent=2, default=str)
    return types.CallToolResult(content=[types.TextContent(text=body)], structured_content=data)


def data_path(env_var: str, filename: str) -> Path:
    """``$env_var`` if set, else ``<tmp>/mcp-guard-connectors/<filename>``."""
    explicit = os.environ.get(env_var)
    if explicit:
        return Path(explicit).expanduser()
    return Path(tempfile.gettempdir()) / "mcp-guard-connectors" / filename


def setup_logging(name: str) -> logging.Logger:
    """Log to stderr only: stdout is the stdio transport."""
    level = os.environ.get("CONNECTOR_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(stream=sys.stderr, level=level, format=f"{name}: %(levelname)s %(message)s")
    return logging.getLogger(name)


async def serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
