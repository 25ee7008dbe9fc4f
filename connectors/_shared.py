"""Small helpers shared by the first-party connectors: schemas, results, argument checks, stdio serving,
data paths and atomic creation of their SQLite files.

The connectors validate their own arguments (the low-level SDK server does not check ``inputSchema``),
so a bad argument becomes a tool result with ``isError=true`` naming the argument, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server

__all__ = [
    "ToolError",
    "arg_enum",
    "arg_int",
    "arg_str",
    "check_no_extra",
    "create_sqlite_atomically",
    "data_path",
    "obj_schema",
    "serve_stdio",
    "setup_logging",
    "structured_result",
    "text_result",
]


class ToolError(Exception):
    """A tool failed in a way the caller should see (becomes a result with ``isError=true``)."""


def obj_schema(props: dict[str, Any], required: Sequence[str] = (), *, additional: bool = False) -> dict[str, Any]:
    """A JSON Schema object with the given properties."""
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": additional}


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=is_error)


def structured_result(data: dict[str, Any], text: str | None = None) -> types.CallToolResult:
    """A result with structuredContent and, for clients without it, the same data as text."""
    body = text if text is not None else json.dumps(data, indent=2, default=str)
    return types.CallToolResult(content=[types.TextContent(text=body)], structured_content=data)


# -- argument checks ------------------------------------------------------------------------------


def arg_str(
    args: Mapping[str, Any],
    key: str,
    *,
    required: bool = True,
    min_len: int = 1,
    max_len: int = 10_000,
) -> str | None:
    """A string argument, stripped of surrounding whitespace; ``None`` when optional and absent."""
    value = args.get(key)
    if value is None:
        if required:
            raise ToolError(f"missing required argument {key!r}")
        return None
    if not isinstance(value, str):
        raise ToolError(f"argument {key!r} must be a string")
    value = value.strip()
    if not min_len <= len(value) <= max_len:
        raise ToolError(f"argument {key!r} must be {min_len} to {max_len} characters long")
    return value


def arg_int(
    args: Mapping[str, Any],
    key: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer argument (a JSON number with no fraction); ``default`` when absent."""
    value = args.get(key)
    if value is None:
        if default is None:
            raise ToolError(f"missing required argument {key!r}")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ToolError(f"argument {key!r} must be an integer")
    if minimum is not None and value < minimum:
        raise ToolError(f"argument {key!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ToolError(f"argument {key!r} must be <= {maximum}")
    return value


def arg_enum(args: Mapping[str, Any], key: str, choices: Sequence[str], *, default: str | None = None) -> str | None:
    """One of ``choices``; ``default`` (possibly ``None``) when absent."""
    value = args.get(key)
    if value is None:
        return default
    if value not in choices:
        raise ToolError(f"argument {key!r} must be one of {', '.join(choices)}")
    return str(value)


def check_no_extra(args: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Reject arguments the tool's input schema does not declare."""
    extra = sorted(set(args) - set(schema.get("properties", {})))
    if extra:
        raise ToolError(f"unknown argument(s): {', '.join(extra)}")


# -- files, logging, serving ----------------------------------------------------------------------


def data_path(env_var: str, filename: str) -> Path:
    """``$env_var`` if set, else ``<tmp>/mcp-guard-connectors/<filename>``."""
    explicit = os.environ.get(env_var)
    if explicit:
        return Path(explicit).expanduser()
    return Path(tempfile.gettempdir()) / "mcp-guard-connectors" / filename


def create_sqlite_atomically(path: Path, build: Callable[[sqlite3.Connection], None]) -> bool:
    """Create the SQLite file at ``path`` with ``build`` unless it exists; True if this call created it.

    The database is built in a temporary file beside ``path`` and then hard-linked into place, which
    fails if another process got there first, so two connectors starting at once never see a half-built
    file and never overwrite each other's.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = sqlite3.connect(tmp)
        try:
            with conn:
                build(conn)
        finally:
            conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A filesystem without hard links: a plain rename (a start racing this one may overwrite).
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def setup_logging(name: str) -> logging.Logger:
    """Log to stderr only: stdout is the stdio transport."""
    level = os.environ.get("CONNECTOR_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(stream=sys.stderr, level=level, format=f"{name}: %(levelname)s %(message)s")
    return logging.getLogger(name)


async def serve_stdio(server: Server[Any], *, tools_changed: bool = False) -> None:
    """Serve on stdin/stdout until the client closes the stream."""
    options = server.create_initialization_options(NotificationOptions(tools_changed=tools_changed))
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, options)
