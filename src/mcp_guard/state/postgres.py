"""The PostgreSQL :class:`~mcp_guard.state.base.StateStore`: counters and flows every replica shares.

Chosen by :func:`mcp_guard.state.open_state` when ``[audit] backend = "postgres"``; the tables live in the
default schema of ``[audit] dsn``, beside ``audit_events``::

    rate_hits   (key, window_s, ts, hit)                   one row per counted hit (the exact sliding log)
    flows       (id, principal, generation, seen, next_n)  one row per flow; seen = its last recorded call
    flow_labels (flow_id → flows, label, n, origin, latest)  n = recorded calls that added the label
    flow_calls  (flow_id → flows, n, decision_id, call)    the history, at most FlowBounds.history rows

**Atomic across replicas.** Every write is one transaction that first takes transaction-scoped advisory
locks — one per rate-limit bucket, or the flow's and its principal's — always in ascending lock-key order
(so two transactions never wait on each other in a cycle), then reads, decides and writes. A lock key is
64 bits of a hash of the bucket's or flow's name: two names sharing a key only serialise more, never
less. ``pg_advisory_xact_lock`` is released by COMMIT or ROLLBACK, and by the server when a replica's
connection dies, so a SIGKILLed replica holds nothing.

**The database's clock.** "Now" is ``clock_timestamp()`` read inside the transaction *after* the locks
are held, so hit times follow lock order and every replica's counters use one clock, whatever the hosts'
clocks say. Tests inject a clock (its value is sent instead).

**Round trips.** Each operation is pipelined (psycopg pipeline mode): an admission is two round trips
(BEGIN + locks + one statement that prunes the buckets and reads their counts; then the INSERT of the
hits + COMMIT — or COMMIT alone when refused), a flow read is one statement, a recorded call two round
trips. A replica keeps a few connections (:data:`POOL_SIZE`), so concurrent calls do not queue behind
one another's round trips.

**Bounded.** Every operation — waiting for a connection, connecting, the locks and statements — shares
one deadline of ``timeout_s``; the server's ``statement_timeout`` and ``lock_timeout`` match it. Past
it the operation raises :class:`~mcp_guard.errors.StateError` (the caller denies ``state_unavailable``)
and its connection is closed, which rolls back an unfinished transaction. As with the audit backend, a
connection lost after COMMIT was sent leaves the outcome unknown: a call may be denied although its hit
was counted (it then only costs room until it leaves the window), never the other way round.

Expired flows are deleted by later writes (at most every ``PURGE_EVERY_S`` seconds per replica) with
``FOR UPDATE SKIP LOCKED``, so a purge never waits on, or deadlocks with, a replica using the flow.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import psycopg
import structlog

from mcp_guard.audit.postgres import connect_args, redact_dsn
from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    PURGE_EVERY_S,
    Admission,
    Bucket,
    Flow,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    LabelOrigin,
    Limit,
    Ticket,
    buckets_of,
    flow_expired,
    retry_after,
    take_back_label,
    too_many_flows,
    too_many_labels,
)
from mcp_guard.types import new_id

__all__ = ["POOL_SIZE", "PostgresState", "lock_key"]

log = structlog.get_logger("mcp_guard.state")

_T = TypeVar("_T")
Conn = psycopg.AsyncConnection[Any]

POOL_SIZE = 4
"""Connections a replica keeps to the state database: operations beyond it wait (within their deadline)."""
_PURGE_BATCH = 1000  # expired flows deleted per purge
_LOCK_SCHEMA = 0x6D637073  # "mcps": first key of the (session) lock serialising table creation

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rate_hits (
        key TEXT COLLATE "C" NOT NULL, window_s DOUBLE PRECISION NOT NULL, ts DOUBLE PRECISION NOT NULL,
        hit TEXT NOT NULL, PRIMARY KEY (key, window_s, ts, hit))""",
    """CREATE TABLE IF NOT EXISTS flows (
        id TEXT COLLATE "C" PRIMARY KEY, principal TEXT COLLATE "C" NOT NULL, generation TEXT NOT NULL,
        seen DOUBLE PRECISION NOT NULL, next_n BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS flows_by_principal ON flows (principal, seen)",
    "CREATE INDEX IF NOT EXISTS flows_by_seen ON flows (seen)",
    """CREATE TABLE IF NOT EXISTS flow_labels (
        flow_id TEXT COLLATE "C" NOT NULL REFERENCES flows (id) ON DELETE CASCADE, label TEXT NOT NULL,
        n INTEGER NOT NULL, origin TEXT NOT NULL, latest TEXT NOT NULL, PRIMARY KEY (flow_id, label))""",
    """CREATE TABLE IF NOT EXISTS flow_calls (
        flow_id TEXT COLLATE "C" NOT NULL REFERENCES flows (id) ON DELETE CASCADE, n BIGINT NOT NULL,
        decision_id TEXT NOT NULL, call TEXT NOT NULL, PRIMARY KEY (flow_id, n))""",
)

_NOW = "coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"

# Per bucket (arrays of key, window, tightest limit): prune the hits that left the window (a side effect:
# a data-modifying WITH runs to completion), and read the count in the window and — for a full bucket —
# the time of the hit whose leaving makes room. The count's predicate excludes what the DELETE removes,
# so the statement's one snapshot needs no second look.
_ADMIT_READ = f"""
WITH now AS (SELECT {_NOW} AS t),
b AS (SELECT * FROM unnest(%(keys)s::text[], %(windows)s::float8[], %(limits)s::int[]) AS b (key, window_s, lim)),
gone AS (
    DELETE FROM rate_hits h USING b, now
    WHERE h.key = b.key AND h.window_s = b.window_s AND h.ts <= now.t - b.window_s
)
SELECT b.key, b.window_s, now.t, c.n, o.ts
FROM b CROSS JOIN now
CROSS JOIN LATERAL (
    SELECT count(*)::int AS n FROM rate_hits h
    WHERE h.key = b.key AND h.window_s = b.window_s AND h.ts > now.t - b.window_s
) c
LEFT JOIN LATERAL (
    SELECT h.ts FROM rate_hits h
    WHERE h.key = b.key AND h.window_s = b.window_s AND h.ts > now.t - b.window_s
    ORDER BY h.ts OFFSET greatest(c.n - b.lim, 0) LIMIT 1
) o ON true
"""
_ADMIT_WRITE = """
INSERT INTO rate_hits (key, window_s, ts, hit)
SELECT k, w, %(ts)s, %(hit)s FROM unnest(%(keys)s::text[], %(windows)s::float8[]) AS b (k, w)
"""
_RELEASE = """
DELETE FROM rate_hits h USING unnest(%(keys)s::text[], %(windows)s::float8[]) AS b (k, w)
WHERE h.key = b.k AND h.window_s = b.w AND h.ts = %(ts)s AND h.hit = %(hit)s
"""
_USAGE = f"""
WITH now AS (SELECT {_NOW} AS t)
SELECT (SELECT count(*) FROM rate_hits h WHERE h.key = b.k AND h.window_s = b.w AND h.ts > now.t - b.w)::int
FROM unnest(%(keys)s::text[], %(windows)s::float8[]) WITH ORDINALITY AS b (k, w, i) CROSS JOIN now
ORDER BY b.i
"""
_FLOW_READ = f"""
WITH now AS (SELECT {_NOW} AS t)
SELECT f.seen, now.t,
    (SELECT json_agg(json_build_array(l.label, l.origin::json)) FROM flow_labels l WHERE l.flow_id = f.id),
    (SELECT json_agg(c.call::json ORDER BY c.n) FROM flow_calls c WHERE c.flow_id = f.id)
FROM flows f CROSS JOIN now WHERE f.id = %(id)s
"""
# The flow as record_call needs it, under its locks: now, the flow row, its labels, and — only when the
# flow is absent or expired, i.e. a new flow would start — how many live flows its principal has.
_RECORD_READ = f"""
WITH now AS (SELECT {_NOW} AS t)
SELECT now.t, f.generation, f.seen, f.next_n,
    CASE WHEN f.id IS NULL OR f.seen <= now.t - %(idle)s THEN
        (SELECT count(*) FROM flows p WHERE p.principal = %(principal)s AND p.seen > now.t - %(idle)s)
    END,
    ARRAY(SELECT l.label FROM flow_labels l WHERE l.flow_id = %(id)s)
FROM now LEFT JOIN flows f ON f.id = %(id)s
"""
_UPSERT_FLOW = """
INSERT INTO flows (id, principal, generation, seen, next_n)
VALUES (%(id)s, %(principal)s, %(generation)s, %(now)s, %(next)s)
ON CONFLICT (id) DO UPDATE SET seen = excluded.seen, next_n = excluded.next_n
"""
_ADD_LABELS = """
INSERT INTO flow_labels (flow_id, label, n, origin, latest)
SELECT %(id)s, l, 1, %(origin)s, %(origin)s FROM unnest(%(labels)s::text[]) AS l
ON CONFLICT (flow_id, label) DO UPDATE SET n = flow_labels.n + 1, latest = excluded.latest
"""
_PURGE = """
DELETE FROM flows WHERE id IN (
    SELECT id FROM flows WHERE seen <= %(before)s ORDER BY seen LIMIT %(batch)s FOR UPDATE SKIP LOCKED
)
"""


def lock_key(kind: str, *parts: object) -> int:
    """The 64-bit advisory-lock key of a named thing (a bucket, a flow, a principal), as a signed bigint."""
    name = "\0".join([kind, *(repr(p) if isinstance(p, float) else str(p) for p in parts)])
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresState:
    """The state store in a PostgreSQL database. ``clock`` (wall-clock seconds) replaces the database's clock
    in tests; ``None`` (the default) uses the server's ``clock_timestamp()``."""

    def __init__(
        self,
        dsn: str,
        *,
        timeout_s: float = 1.0,
        clock: Callable[[], float] | None = None,
        flows: FlowBounds | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._dsn = dsn
        self.timeout_s = timeout_s
        self._clock = clock
        self.bounds = flows or FlowBounds()
        self.location = redact_dsn(dsn)
        self._idle: list[Conn] = []
        self._slots = anyio.Semaphore(pool_size)
        self._purged = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect and create the tables (once, whichever replica comes first); StateError if it cannot."""
        await self._run(self._create_tables, "open", timeout_s=max(self.timeout_s, 10.0))

    async def _create_tables(self, conn: Conn) -> None:
        key = f"{_LOCK_SCHEMA}, (SELECT oid FROM pg_namespace WHERE nspname = current_schema())::int4"
        await conn.execute(f"SELECT pg_advisory_lock({key})")  # concurrent CREATE IF NOT EXISTS can collide
        try:
            async with conn.transaction():
                for statement in _SCHEMA:
                    await conn.execute(statement)
        finally:
            await conn.execute(f"SELECT pg_advisory_unlock({key})")

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)

    # ------------------------------------------------------------------ running one operation
    async def _run(self, op: Callable[[Conn], Awaitable[_T]], what: str, *, timeout_s: float | None = None) -> _T:
        """``op`` on a pooled connection, within the store's deadline; StateError when it cannot answer."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        conn: Conn | None = None
        try:
            with anyio.fail_after(budget):
                async with self._slots:
                    conn = self._idle.pop() if self._idle else await self._connect(budget)
                    result = await op(conn)
            self._idle.append(conn)
            return result
        except (psycopg.Error, TimeoutError, OSError) as e:
            if conn is not None:
                await _close(conn)  # its state is unknown; closing rolls back what did not commit
            cause = f"no answer within {budget * 1000:.0f} ms" if isinstance(e, TimeoutError) else _brief(e)
            raise StateError(f"the state store {self.location} cannot {what}: {cause}", cause=cause) from None
        except BaseException:
            if conn is not None:
                await _close(conn)
            raise

    async def _connect(self, timeout_s: float) -> Conn:
        return await psycopg.AsyncConnection.connect(**connect_args(self._dsn, timeout_s))

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    # ------------------------------------------------------------------ counters
    async def admit(self, limits: Sequence[Limit]) -> Admission:
        tightest = buckets_of(limits)
        buckets = list(tightest)
        params = {
            "now": self._now(),
            "keys": [k for k, _ in buckets],
            "windows": [w for _, w in buckets],
            "limits": list(tightest.values()),
        }

        async def op(conn: Conn) -> Admission:
            async with conn.pipeline(), conn.transaction():
                await _lock(conn, (lock_key("rate", *b) for b in buckets))
                rows = await (await conn.execute(_ADMIT_READ, params)).fetchall()
                found = {(str(r[0]), float(r[1])): r for r in rows}
                counts = {b: int(found[b][3]) for b in buckets}
                now = float(rows[0][2]) if rows else time.time()
                full = tuple(lim for lim in limits if counts[lim.bucket] >= lim.limit)
                if full:
                    wait = max(retry_after(float(found[f.bucket][4] or 0.0), f.window_s, now) for f in full)
                    return Admission(False, counts, full, wait)
                hit = new_id()
                await conn.execute(_ADMIT_WRITE, {**params, "ts": now, "hit": hit})
            return Admission(True, {b: n + 1 for b, n in counts.items()}, ticket=Ticket(hit, now, tuple(buckets)))

        if not buckets:
            return Admission(True, {}, ticket=Ticket(new_id(), 0.0, ()))
        return await self._run(op, "count this call")

    async def release(self, ticket: Ticket) -> None:
        params = {
            "keys": [k for k, _ in ticket.buckets],
            "windows": [w for _, w in ticket.buckets],
            "ts": ticket.ts,
            "hit": ticket.hit,
        }

        async def op(conn: Conn) -> None:
            await conn.execute(_RELEASE, params)  # one statement: atomic by itself

        if ticket.buckets:
            await self._run(op, "take back a counted call")

    async def usage(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        params = {"now": self._now(), "keys": [k for k, _ in buckets], "windows": [w for _, w in buckets]}

        async def op(conn: Conn) -> dict[Bucket, int]:
            rows = await (await conn.execute(_USAGE, params)).fetchall()  # one statement: one snapshot
            return {b: int(r[0]) for b, r in zip(buckets, rows, strict=True)}

        if not buckets:
            return {}
        return await self._run(op, "read usage")

    # ------------------------------------------------------------------ flows
    async def flow(self, flow_id: str) -> Flow:
        params = {"now": self._now(), "id": flow_id}

        async def op(conn: Conn) -> Flow:
            row = await (await conn.execute(_FLOW_READ, params)).fetchone()
            if row is None or flow_expired(float(row[0]), float(row[1]), self.bounds):
                return Flow(flow_id)
            labels = {str(label): LabelOrigin.from_json(origin) for label, origin in row[2] or ()}
            return Flow(flow_id, labels, tuple(FlowCall.from_json(c) for c in row[3] or ()))

        return await self._run(op, "read the flow")

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        bounds = self.bounds
        labels = list(dict.fromkeys(call.labels))
        params: dict[str, Any] = {"now": self._now(), "id": ref.id, "principal": ref.principal, "idle": bounds.idle_s}

        async def op(conn: Conn) -> FlowTicket | FlowFull:
            async with conn.pipeline(), conn.transaction():
                await _lock(conn, [lock_key("principal", ref.principal), lock_key("flow", ref.id)])
                row = await (await conn.execute(_RECORD_READ, params)).fetchone()
                assert row is not None  # the LEFT JOIN from `now` always yields one row
                now = float(row[0])
                fresh = row[1] is None or flow_expired(float(row[2]), now, bounds)
                if fresh:
                    full = too_many_flows(ref.principal, int(row[4] or 0), bounds)
                    if full is not None:
                        return full
                    generation, n, present = new_id(), 0, set[str]()
                else:
                    generation, n, present = str(row[1]), int(row[3]), {str(x) for x in row[5]}
                full = too_many_labels(len(present), len(set(labels) - present), bounds)
                if full is not None:
                    return full
                purge = await self._write_call(
                    conn, ref, call, labels, now=now, generation=generation, n=n, fresh=fresh
                )
            if purge is not None and purge.rowcount >= _PURGE_BATCH:
                self._purged = 0.0  # a backlog: purge again at the next write, so it drains faster than it grows
            return FlowTicket(ref.id, generation, call)

        return await self._run(op, "record the call in its flow")

    async def _write_call(
        self,
        conn: Conn,
        ref: FlowRef,
        call: FlowCall,
        labels: list[str],
        *,
        now: float,
        generation: str,
        n: int,
        fresh: bool,
    ) -> psycopg.AsyncCursor[Any] | None:
        """The writes of a recorded call (queued in the pipeline; the transaction's COMMIT sends them), and the
        purge of expired flows when one is due (its cursor: how many it deleted is known after the COMMIT)."""
        if fresh:  # an expired flow's rows go (cascading to its labels and calls); a fresh one starts
            await conn.execute("DELETE FROM flows WHERE id = %s", (ref.id,))
        await conn.execute(
            _UPSERT_FLOW,
            {"id": ref.id, "principal": ref.principal, "generation": generation, "now": now, "next": n + 1},
        )
        await conn.execute(
            "INSERT INTO flow_calls (flow_id, n, decision_id, call) VALUES (%s, %s, %s, %s)",
            (ref.id, n, call.decision_id, json.dumps(call.to_json())),
        )
        await conn.execute("DELETE FROM flow_calls WHERE flow_id = %s AND n <= %s", (ref.id, n - self.bounds.history))
        if labels:
            origin = json.dumps(LabelOrigin.of(call).to_policy())
            await conn.execute(_ADD_LABELS, {"id": ref.id, "origin": origin, "labels": labels})
        if now - self._purged < PURGE_EVERY_S:
            return None
        self._purged = now
        return await conn.execute(_PURGE, {"before": now - self.bounds.idle_s, "batch": _PURGE_BATCH})

    async def unrecord_call(self, ticket: FlowTicket) -> None:
        gone = ticket.call.decision_id
        labels = list(dict.fromkeys(ticket.call.labels))

        async def op(conn: Conn) -> None:
            async with conn.pipeline(), conn.transaction():
                await _lock(conn, [lock_key("flow", ticket.flow_id)])
                gen = await conn.execute("SELECT generation FROM flows WHERE id = %s", (ticket.flow_id,))
                have = await conn.execute(
                    "SELECT label, n, origin, latest FROM flow_labels WHERE flow_id = %s AND label = ANY(%s)",
                    (ticket.flow_id, labels),
                )
                hist = await conn.execute(
                    "SELECT call FROM flow_calls WHERE flow_id = %s AND decision_id <> %s ORDER BY n",
                    (ticket.flow_id, gone),
                )
                row = await gen.fetchone()
                if row is None or row[0] != ticket.generation:
                    return
                history = [FlowCall.from_json(json.loads(r[0])) for r in await hist.fetchall()]
                await conn.execute(
                    "DELETE FROM flow_calls WHERE flow_id = %s AND decision_id = %s", (ticket.flow_id, gone)
                )
                for label, n, origin, latest in await have.fetchall():
                    await _take_back(conn, ticket.flow_id, str(label), int(n), origin, latest, gone, history)

        await self._run(op, "take a call back from its flow")


async def _take_back(
    conn: Conn, flow_id: str, label: str, n: int, origin: str, latest: str, gone: str, history: list[FlowCall]
) -> None:
    """One count of ``label`` taken back (the row deleted at zero), origin and latest re-credited."""
    if n <= 1:
        await conn.execute("DELETE FROM flow_labels WHERE flow_id = %s AND label = %s", (flow_id, label))
        return
    n, first, last = take_back_label(
        n, LabelOrigin.from_json(json.loads(origin)), LabelOrigin.from_json(json.loads(latest)), gone, history, label
    )
    await conn.execute(
        "UPDATE flow_labels SET n = %s, origin = %s, latest = %s WHERE flow_id = %s AND label = %s",
        (n, json.dumps(first.to_policy()), json.dumps(last.to_policy()), flow_id, label),
    )


async def _lock(conn: Conn, keys: Iterable[int]) -> None:
    """Take the transaction's advisory locks in ascending key order (no two transactions can wait in a cycle)."""
    for key in sorted(set(keys)):
        await conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (key,))


async def _close(conn: Conn) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
        await conn.close()


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
