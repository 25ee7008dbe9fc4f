"""The warehouse connector, driven over real stdio with the SDK client, plus its read-only layers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from connector_harness import REPO, connect, module_params
from mcp.shared.exceptions import MCPError

# The repo root is not on sys.path under pytest (only src/ is installed), and tests/connectors would
# otherwise be found as a namespace package called "connectors".
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from connectors.warehouse.store import _authorizer, first_keyword, open_readonly

pytestmark = pytest.mark.anyio


def warehouse(db: Path, **extra: str) -> Any:
    return module_params("connectors.warehouse", env={"WAREHOUSE_DB": str(db), **extra})


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


def init_db(db: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "connectors.warehouse", "--init"],
        cwd=REPO,
        env={"WAREHOUSE_DB": str(db)},
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_listing(tmp_path: Path) -> None:
    async with connect(warehouse(tmp_path / "w.db")) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == {"list_tables", "describe_table", "query"}
        for t in tools.values():
            assert t.annotations is not None and t.annotations.read_only_hint is True, t.name
            assert t.output_schema is not None
        resources = (await s.list_resources()).resources
        assert [r.uri for r in resources] == ["warehouse://schema"]
        schema = await s.read_resource("warehouse://schema")
        block = schema.contents[0]
        assert isinstance(block, types.TextResourceContents)
        tables = json.loads(block.text)["tables"]
        assert sorted(t["name"] for t in tables) == ["customers", "orders", "products", "regions"]
        assert all(t["sql"].startswith("CREATE TABLE") for t in tables)
        with pytest.raises(MCPError):
            await s.read_resource("warehouse://secrets")


async def test_tables_and_queries_match_the_file(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    async with connect(warehouse(db)) as s:
        listed = (await s.call_tool("list_tables", {})).structured_content
        assert listed is not None
        counts = {t["name"]: t["row_count"] for t in listed["tables"]}
        # Compare with what the file really holds (read independently of the connector).
        with sqlite3.connect(db) as direct:
            for name, n in counts.items():
                assert direct.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0] == n
            assert sum(counts.values()) >= 300
            revenue = direct.execute(
                "SELECT r.name, ROUND(SUM(o.quantity * o.unit_price * (1 - o.discount)), 2) AS revenue"
                " FROM orders o JOIN customers c ON c.id = o.customer_id JOIN regions r ON r.id = c.region_id"
                " WHERE o.status != 'cancelled' GROUP BY r.name ORDER BY revenue DESC"
            ).fetchall()
        direct.close()

        described = (await s.call_tool("describe_table", {"table": "customers"})).structured_content
        assert described is not None
        cols = {c["name"]: c for c in described["columns"]}
        assert {"id", "name", "email", "segment", "region_id", "signup_date"} == set(cols)
        assert cols["id"]["primary_key"] is True and cols["email"]["note"] == "personal data (PII)"
        assert len(described["sample_rows"]) == 3
        bad = await s.call_tool("describe_table", {"table": "sqlite_master"})
        assert bad.is_error and "unknown table" in text_of(bad)

        result = await s.call_tool(
            "query",
            {
                "sql": "-- revenue by region\n"
                "SELECT r.name, ROUND(SUM(o.quantity * o.unit_price * (1 - o.discount)), 2) AS revenue"
                " FROM orders o JOIN customers c ON c.id = o.customer_id JOIN regions r ON r.id = c.region_id"
                " WHERE o.status != 'cancelled' GROUP BY r.name ORDER BY revenue DESC",
            },
        )
        assert not result.is_error, text_of(result)
        data = result.structured_content
        assert data is not None
        assert data["columns"] == ["name", "revenue"]
        assert [tuple(r) for r in data["rows"]] == revenue
        assert data["truncated"] is False and data["row_count"] == len(revenue)
        assert revenue[0][0] in text_of(result)

        limited = (await s.call_tool("query", {"sql": "SELECT * FROM orders", "limit": 5})).structured_content
        assert limited is not None and limited["row_count"] == 5 and limited["truncated"] is True
        cte = await s.call_tool(
            "query", {"sql": "WITH big AS (SELECT * FROM orders WHERE quantity >= 10) SELECT COUNT(*) FROM big"}
        )
        assert not cte.is_error
        explained = await s.call_tool("query", {"sql": "EXPLAIN QUERY PLAN SELECT * FROM orders WHERE id = 1"})
        assert not explained.is_error, text_of(explained)


REFUSED = [
    ("INSERT INTO regions VALUES (99, 'x', 'y', 'z')", "only SELECT"),
    ("  /* sneaky */ -- comment\n delete from orders", "only SELECT"),
    ("UPDATE products SET unit_price = 0", "only SELECT"),
    ("DROP TABLE orders", "only SELECT"),
    ("PRAGMA writable_schema = ON", "only SELECT"),
    ("ATTACH DATABASE '/tmp/other.db' AS other", "only SELECT"),
    # These start like a read and are stopped by the engine-level authorizer:
    ("WITH x AS (SELECT 1) INSERT INTO regions SELECT 99, 'a', 'b', 'c' FROM x", "not authorized"),
    ("WITH x AS (SELECT 1) DELETE FROM orders", "not authorized"),
    ("SELECT * FROM pragma_table_info('orders')", "not authorized"),
    ("SELECT load_extension('/tmp/evil.so')", "not authorized"),
    ("EXPLAIN DELETE FROM orders", "not authorized"),
    # Two statements in one:
    ("SELECT 1; DROP TABLE orders", "exactly one statement"),
    ("", "missing"),
]


async def test_writes_are_refused_by_the_connector_itself(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    init_db(db)
    before = digest(db)
    async with connect(warehouse(db)) as s:
        for sql, needle in REFUSED:
            result = await s.call_tool("query", {"sql": sql} if sql else {})
            assert result.is_error, sql
            assert needle in text_of(result), (sql, text_of(result))
        # Still serving, and the data is intact.
        ok = (await s.call_tool("query", {"sql": "SELECT COUNT(*) AS n FROM orders"})).structured_content
        assert ok is not None and ok["rows"][0][0] > 0
    assert digest(db) == before


async def test_runaway_query_is_cancelled(tmp_path: Path) -> None:
    async with connect(warehouse(tmp_path / "w.db", WAREHOUSE_QUERY_TIMEOUT_S="0.5")) as s:
        result = await s.call_tool(
            "query",
            {"sql": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT COUNT(*) FROM n"},
        )
        assert result.is_error and "ran longer than 0.5s" in text_of(result)
        assert not (await s.call_tool("list_tables", {})).is_error


def test_readonly_layers_hold_independently(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    init_db(db)
    before = digest(db)
    # Layer: the file is opened mode=ro + query_only, so even without the authorizer a write fails.
    conn = open_readonly(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|query_only"):
            conn.execute("INSERT INTO regions VALUES (98, 'x', 'y', 'z')")
    finally:
        conn.close()
    # Layer: the authorizer alone refuses writes even on a writable connection.
    rw = sqlite3.connect(tmp_path / "scratch.db")
    try:
        rw.execute("CREATE TABLE t (x)")
        rw.set_authorizer(_authorizer)
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            rw.execute("INSERT INTO t VALUES (1)")
        assert rw.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    finally:
        rw.close()
    assert digest(db) == before


def test_first_keyword() -> None:
    assert first_keyword("  select 1") == "SELECT"
    assert first_keyword("-- a\n/* b */ WITH x AS (SELECT 1) SELECT * FROM x") == "WITH"
    assert first_keyword("/* unterminated") == ""
    assert first_keyword("") == ""


def test_sample_data_is_deterministic(tmp_path: Path) -> None:
    dumps = []
    for name in ("a.db", "b.db"):
        init_db(tmp_path / name)
        with sqlite3.connect(tmp_path / name) as conn:
            dumps.append(list(conn.iterdump()))
        conn.close()
    assert dumps[0] == dumps[1]
    assert sum(1 for line in dumps[0] if line.startswith('INSERT INTO "orders"')) >= 300
