"""``python -m connectors.warehouse``: serve the warehouse connector on stdio (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio

from connectors._shared import data_path, serve_stdio, setup_logging
from connectors.warehouse.server import WarehouseServer, build_server
from connectors.warehouse.store import Warehouse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.warehouse", description="Read-only sales warehouse MCP server (stdio)."
    )
    parser.add_argument("--db", type=Path, help="database path (default: $WAREHOUSE_DB or a temp-dir file)")
    parser.add_argument("--init", action="store_true", help="create the database if missing, then exit")
    ns = parser.parse_args(argv)
    log = setup_logging("warehouse")
    try:
        timeout_s = float(os.environ.get("WAREHOUSE_QUERY_TIMEOUT_S", "5"))
        max_rows = int(os.environ.get("WAREHOUSE_MAX_ROWS", "1000"))
    except ValueError as e:
        print(f"warehouse: bad WAREHOUSE_QUERY_TIMEOUT_S or WAREHOUSE_MAX_ROWS: {e}", file=sys.stderr)
        return 2
    path = ns.db or data_path("WAREHOUSE_DB", "warehouse.db")
    warehouse = Warehouse(path, timeout_s=timeout_s, max_rows=max_rows)
    if warehouse.ensure():
        log.info("created %s with sample data", path)
    if ns.init:
        return 0
    anyio.run(serve_stdio, build_server(WarehouseServer(warehouse)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
