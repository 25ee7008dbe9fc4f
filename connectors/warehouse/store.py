"""The sales warehouse's data: a deterministic SQLite file and a read-only query engine over it.

Read-only is enforced four times, independently (mcp-guard's policy is a fifth layer in front):

1. the statement must start with SELECT, WITH or EXPLAIN (comments skipped) and be a single statement;
2. an SQLite authorizer allows only reading: SELECT, column reads, functions, recursive CTEs — every
   write, PRAGMA, ATTACH, transaction or schema change is refused by the engine itself;
3. the connection is opened with ``mode=ro`` (the file cannot be written through it) and
   ``PRAGMA query_only``;
4. a progress handler aborts a query that runs past its time budget.
"""

from __future__ import annotations

import base64
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from connectors._shared import ToolError, create_sqlite_atomically

__all__ = ["TABLES", "QueryResult", "Warehouse", "build_database", "first_keyword", "open_readonly"]

TABLES: dict[str, str] = {
    "regions": "Sales regions and their managers.",
    "customers": "Customer accounts: name, contact email (personal data), segment, region, signup date.",
    "products": "Product catalogue: SKU, name, category and list price (USD).",
    "orders": "One row per order line: customer, product, quantity, unit price, discount, date, status.",
}

COLUMN_NOTES: dict[tuple[str, str], str] = {
    ("customers", "email"): "personal data (PII)",
    ("orders", "unit_price"): "USD, price actually charged per unit before discount",
    ("orders", "discount"): "fraction 0..0.3",
    ("orders", "status"): "placed | shipped | delivered | returned | cancelled",
    ("customers", "segment"): "enterprise | mid-market | smb",
}

SCHEMA = """
CREATE TABLE regions (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, country TEXT NOT NULL, manager TEXT NOT NULL
);
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, segment TEXT NOT NULL,
    region_id INTEGER NOT NULL REFERENCES regions(id), signup_date TEXT NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL, category TEXT NOT NULL,
    unit_price REAL NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
    product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL, discount REAL NOT NULL, order_date TEXT NOT NULL, status TEXT NOT NULL
);
CREATE INDEX orders_customer ON orders(customer_id);
CREATE INDEX orders_date ON orders(order_date);
"""

_REGIONS = [
    ("North America East", "US", "Grace Hopper"),
    ("North America West", "US", "Alan Kay"),
    ("Europe North", "SE", "Ada Lindgren"),
    ("Europe South", "ES", "Lucia Moreno"),
    ("Asia Pacific", "SG", "Kenji Tanaka"),
    ("Latin America", "BR", "Rafael Souza"),
]
_FIRST = [
    "Northwind",
    "Blue",
    "Granite",
    "Silver",
    "Apex",
    "Harbor",
    "Cedar",
    "Nimbus",
    "Orbit",
    "Quartz",
    "Summit",
    "Vertex",
    "Willow",
    "Atlas",
    "Beacon",
    "Copper",
    "Delta",
    "Ember",
    "Falcon",
    "Juniper",
]
_SECOND = [
    "Logistics",
    "Analytics",
    "Foods",
    "Health",
    "Robotics",
    "Media",
    "Energy",
    "Retail",
    "Labs",
    "Finance",
    "Textiles",
    "Travel",
]
_SUFFIX = ["Inc", "GmbH", "Ltd", "SA", "Pte", "LLC"]
_CATEGORIES = {
    "Hardware": [
        ("Edge Gateway", 899.0),
        ("Sensor Kit", 149.0),
        ("Rack Server", 4200.0),
        ("Smart Camera", 329.0),
        ("Thermal Printer", 259.0),
        ("Barcode Scanner", 119.0),
    ],
    "Software": [
        ("Analytics Suite", 1200.0),
        ("Backup Pro", 480.0),
        ("Fleet Manager", 2200.0),
        ("Security Agent", 95.0),
        ("Reporting Add-on", 310.0),
        ("API Gateway", 1500.0),
    ],
    "Services": [
        ("Onboarding Package", 2500.0),
        ("Premium Support", 1800.0),
        ("Training Day", 950.0),
        ("Migration Service", 6000.0),
        ("Health Check", 700.0),
    ],
    "Supplies": [
        ("Label Rolls (x12)", 39.0),
        ("Cable Pack", 25.0),
        ("Mounting Kit", 59.0),
        ("Battery Pack", 45.0),
        ("Cleaning Kit", 19.0),
    ],
}
_SEGMENTS = ("enterprise", "mid-market", "smb")
_STATUSES = ("placed", "shipped", "delivered", "returned", "cancelled")

N_CUSTOMERS = 120
N_ORDERS = 480


def build_database(conn: sqlite3.Connection) -> None:
    """Create the schema and fill it with deterministic rows (same seed, same data, every time)."""
    conn.executescript(SCHEMA)
    rng = random.Random(424242)
    conn.executemany(
        "INSERT INTO regions (id, name, country, manager) VALUES (?, ?, ?, ?)",
        [(i + 1, *r) for i, r in enumerate(_REGIONS)],
    )
    products: list[tuple[int, str, str, str, float]] = []
    for category, items in _CATEGORIES.items():
        for name, price in items:
            products.append(
                (len(products) + 1, f"{category[:3].upper()}-{len(products) + 1001}", name, category, price)
            )
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)", products)
    customers: list[tuple[int, str, str, str, int, str]] = []
    used: set[str] = set()
    start = date(2023, 1, 1)
    while len(customers) < N_CUSTOMERS:
        base = f"{rng.choice(_FIRST)} {rng.choice(_SECOND)}"
        if base in used:
            continue
        used.add(base)
        slug = base.lower().replace(" ", "")
        contact = rng.choice(["ops", "finance", "it", "purchasing", "jane.doe", "sam.lee", "a.kumar"])
        customers.append(
            (
                len(customers) + 1,
                f"{base} {rng.choice(_SUFFIX)}",
                f"{contact}@{slug}.example",
                rng.choices(_SEGMENTS, weights=(2, 3, 5))[0],
                rng.randint(1, len(_REGIONS)),
                (start + timedelta(days=rng.randint(0, 900))).isoformat(),
            )
        )
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", customers)
    orders = []
    for i in range(N_ORDERS):
        cust = rng.choice(customers)
        prod = rng.choice(products)
        signup = date.fromisoformat(cust[5])
        day = signup + timedelta(days=rng.randint(0, max(1, (date(2026, 10, 31) - signup).days)))
        qty = rng.choice([1, 1, 1, 2, 2, 3, 5, 10, 20]) if prod[3] != "Services" else 1
        price = round(prod[4] * rng.uniform(0.9, 1.05), 2)
        discount = rng.choice([0.0, 0.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3]) if cust[3] != "smb" else 0.0
        status = rng.choices(_STATUSES, weights=(1, 2, 12, 1, 1))[0]
        orders.append((i + 1, cust[0], prod[0], qty, price, discount, day.isoformat(), status))
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", orders)


# -- read-only access -----------------------------------------------------------------------------

_ALLOWED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    }
)
# Functions that touch files or extensions (most are absent from Python's sqlite3 build; refuse anyway).
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write the file (``mode=ro``) and refuses writes (``query_only``)."""
    uri = path.resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


_COMMENT = re.compile(r"\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$)", re.DOTALL)


def first_keyword(sql: str) -> str:
    """The statement's first keyword, upper-cased, after whitespace and comments ('' if none)."""
    pos = 0
    while True:
        m = _COMMENT.match(sql, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
    word = re.match(r"[A-Za-z]+", sql[pos:])
    return word.group(0).upper() if word else ""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float


def _cell(v: Any) -> Any:
    if isinstance(v, bytes):
        return "base64:" + base64.b64encode(v).decode("ascii")
    return v


class Warehouse:
    """The warehouse file, opened read-only for every operation."""

    def __init__(self, path: Path, *, timeout_s: float = 5.0, max_rows: int = 1000) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.max_rows = max_rows

    def ensure(self) -> bool:
        """Create the file with sample data if it is missing (the only time it is ever written)."""
        return create_sqlite_atomically(self.path, build_database)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = open_readonly(self.path)
        try:
            yield conn
        finally:
            conn.close()

    def tables(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return [
                {
                    "name": name,
                    "description": desc,
                    "row_count": conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0],
                }
                for name, desc in TABLES.items()
            ]

    def describe(self, table: str) -> dict[str, Any]:
        if table not in TABLES:
            raise ToolError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        with self._connect() as conn:
            cols = [
                {
                    "name": r[1],
                    "type": r[2],
                    "nullable": not (r[3] or r[5]),
                    "primary_key": bool(r[5]),
                    "note": COLUMN_NOTES.get((table, r[1])),
                }
                for r in conn.execute(f'PRAGMA table_info("{table}")')
            ]
            count = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
            cur = conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid LIMIT 3')
            sample = [[_cell(v) for v in row] for row in cur]
        return {
            "table": table,
            "description": TABLES[table],
            "row_count": count,
            "columns": cols,
            "sample_rows": sample,
        }

    def ddl(self) -> list[dict[str, str]]:
        with self._connect() as conn:
            rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            return [{"name": n, "description": TABLES.get(n, ""), "sql": s} for n, s in rows if n in TABLES]

    def _refusal(self, e: sqlite3.Error) -> ToolError:
        msg = str(e)
        if "one statement" in msg:
            return ToolError("read-only warehouse: send exactly one statement per query")
        if "interrupted" in msg:
            return ToolError(f"query cancelled: it ran longer than {self.timeout_s:g}s")
        if "not authorized" in msg or "readonly" in msg or "query_only" in msg:
            return ToolError(
                "read-only warehouse: statement not authorized (only reads are allowed; no writes, "
                "PRAGMA, ATTACH or schema changes)"
            )
        return ToolError(f"query failed: {msg}")

    def query(self, sql: str, *, limit: int) -> QueryResult:
        """Run one read-only statement; :class:`ToolError` explains any refusal."""
        keyword = first_keyword(sql)
        if keyword not in ("SELECT", "WITH", "EXPLAIN"):
            raise ToolError(
                "read-only warehouse: only SELECT queries (or WITH ... SELECT, EXPLAIN) are allowed "
                f"(got {keyword or 'no statement'})"
            )
        limit = max(1, min(limit, self.max_rows))
        started = time.monotonic()
        deadline = started + self.timeout_s
        with self._connect() as conn:
            conn.set_authorizer(_authorizer)
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            try:
                cur = conn.execute(sql)
                rows = cur.fetchmany(limit + 1)
            except sqlite3.Error as e:
                raise self._refusal(e) from None
            columns = [d[0] for d in cur.description or ()]
        return QueryResult(
            columns=columns,
            rows=[[_cell(v) for v in r] for r in rows[:limit]],
            truncated=len(rows) > limit,
            elapsed_ms=round((time.monotonic() - started) * 1000, 2),
        )
