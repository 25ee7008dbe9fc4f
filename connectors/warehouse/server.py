"""The warehouse MCP server: read-only tools and a schema resource over :class:`Warehouse`."""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from connectors._shared import ToolError, arg_int, arg_str, check_no_extra, obj_schema, structured_result
from connectors.warehouse.store import TABLES, Warehouse

__all__ = ["WarehouseServer", "build_server"]

Ctx = ServerRequestContext[Any]

READ = types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
_STR = {"type": "string"}

TOOLS = [
    types.Tool(
        name="list_tables",
        title="List tables",
        description="The warehouse tables with a description and row count.",
        input_schema=obj_schema({}),
        output_schema=obj_schema(
            {
                "tables": {
                    "type": "array",
                    "items": obj_schema(
                        {"name": _STR, "description": _STR, "row_count": {"type": "integer"}},
                        ["name", "description", "row_count"],
                    ),
                }
            },
            ["tables"],
        ),
        annotations=READ,
    ),
    types.Tool(
        name="describe_table",
        title="Describe a table",
        description="Columns (name, type, nullability, key, notes such as personal data) and three sample rows.",
        input_schema=obj_schema({"table": {"type": "string", "enum": list(TABLES)}}, ["table"]),
        output_schema=obj_schema(
            {
                "table": _STR,
                "description": _STR,
                "row_count": {"type": "integer"},
                "columns": {"type": "array", "items": {"type": "object"}},
                "sample_rows": {"type": "array", "items": {"type": "array"}},
            },
            ["table", "description", "row_count", "columns", "sample_rows"],
        ),
        annotations=READ,
    ),
    types.Tool(
        name="query",
        title="Run a SQL query",
        description="Run one read-only SQL statement (SQLite dialect; SELECT or WITH … SELECT) and return "
        "up to `limit` rows. Writes, PRAGMA and ATTACH are refused.",
        input_schema=obj_schema(
            {
                "sql": {"type": "string", "minLength": 1, "maxLength": 20000},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
            ["sql"],
        ),
        output_schema=obj_schema(
            {
                "columns": {"type": "array", "items": _STR},
                "rows": {"type": "array", "items": {"type": "array"}},
                "row_count": {"type": "integer"},
                "truncated": {"type": "boolean"},
                "elapsed_ms": {"type": "number"},
            },
            ["columns", "rows", "row_count", "truncated"],
        ),
        annotations=READ,
    ),
]


class WarehouseServer:
    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.tools = {t.name: t for t in TOOLS}

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(self.tools.values()))

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = self.tools.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        args = dict(params.arguments or {})
        try:
            check_no_extra(args, tool.input_schema)
            return await anyio.to_thread.run_sync(self._run, params.name, args)
        except ToolError as e:
            return types.CallToolResult(content=[types.TextContent(text=f"{params.name}: {e}")], is_error=True)

    def _run(self, name: str, args: dict[str, Any]) -> types.CallToolResult:
        if name == "list_tables":
            tables = self.warehouse.tables()
            text = "\n".join(f"{t['name']:<10} {t['row_count']:>5} rows  {t['description']}" for t in tables)
            return structured_result({"tables": tables}, text)
        if name == "describe_table":
            table = arg_str(args, "table", max_len=64)
            assert table is not None
            return structured_result(self.warehouse.describe(table))
        sql = arg_str(args, "sql", max_len=20_000)
        assert sql is not None
        res = self.warehouse.query(sql, limit=arg_int(args, "limit", default=100, minimum=1, maximum=1000))
        data = {
            "columns": res.columns,
            "rows": res.rows,
            "row_count": len(res.rows),
            "truncated": res.truncated,
            "elapsed_ms": res.elapsed_ms,
        }
        return structured_result(data, _format(res.columns, res.rows, res.truncated))

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri="warehouse://schema",
                    name="schema",
                    title="Warehouse schema",
                    description="Every table's description and CREATE statement, as JSON.",
                    mime_type="application/json",
                )
            ]
        )

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri != "warehouse://schema":
            raise MCPError(-32002, f"unknown resource {uri}", {"uri": uri})
        tables = await anyio.to_thread.run_sync(self.warehouse.ddl)
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=uri, mime_type="application/json", text=json.dumps({"tables": tables}, indent=2)
                )
            ]
        )


def _format(columns: list[str], rows: list[list[Any]], truncated: bool) -> str:
    lines = ["\t".join(columns)] + ["\t".join("" if v is None else str(v) for v in r) for r in rows]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{', truncated' if truncated else ''})")
    return "\n".join(lines)


def build_server(warehouse: WarehouseServer) -> Server[Any]:
    return Server(
        "warehouse",
        version="1.0.0",
        title="Sales warehouse",
        instructions=(
            "A read-only sales data warehouse (SQLite). Start with list_tables and describe_table, or read "
            "warehouse://schema; then query with one SELECT statement. customers.email is personal data."
        ),
        on_list_tools=warehouse.list_tools,
        on_call_tool=warehouse.call_tool,
        on_list_resources=warehouse.list_resources,
        on_read_resource=warehouse.read_resource,
    )
