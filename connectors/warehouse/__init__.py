"""Warehouse: a read-only sales data warehouse as an MCP server (stdio), over a SQLite file.

Run: ``python -m connectors.warehouse [--db PATH] [--init]``

Environment
    WAREHOUSE_DB               database path (default ``<tmp>/mcp-guard-connectors/warehouse.db``); created
                               with deterministic sample data when missing (6 regions, 22 products,
                               120 customers, 480 orders) — the only time the file is written.
    WAREHOUSE_QUERY_TIMEOUT_S  time budget of one query (default 5)
    WAREHOUSE_MAX_ROWS         upper bound for ``limit`` (default 1000)
    CONNECTOR_LOG_LEVEL        stderr log level (default WARNING)

Tools (all readOnlyHint, idempotentHint): list_tables(), describe_table(table), query(sql, limit=100).
Resource: ``warehouse://schema``. The connector is read-only on its own (see
:mod:`connectors.warehouse.store`), whatever policy sits in front of it.
"""

from connectors.warehouse.server import WarehouseServer, build_server
from connectors.warehouse.store import Warehouse, open_readonly

__all__ = ["Warehouse", "WarehouseServer", "build_server", "open_readonly"]
