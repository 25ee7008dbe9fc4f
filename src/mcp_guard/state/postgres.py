"""The PostgreSQL :class:`~mcp_guard.state.base.StateStore`: counters and flows every replica shares.

Chosen by :func:`mcp_guard.state.open_state` when ``[audit] backend = "postgres"``; the tables live in the
default schema of ``[audit] dsn``, beside ``audit_events``::

    rate_hits   (key, window_s, ts, hit)                   one row per counted hit (the exact sliding log)
    rate_counts (key, window_s, n)                         n = the bucket's rows in rate_hits (same transactions)
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

**Round trips.** An admission is **one** round trip: one call of the server-side function
``mcp_guard_admit`` (created with the tables) that takes the locks and runs one query — prune, count, and
only if every bucket has room insert the hits — as its own transaction; being a function, its plan is
cached by the server, which matters: planning a statement of that size costs more than running it. A
recorded or taken-back call is two round trips (read under the locks, decide in Python, write + COMMIT;
each sent as one simple-protocol query, parameters bound client-side by psycopg's own quoting); a read
(``usage``, ``flow``) is one statement. Counts are kept per bucket (``rate_counts``, updated in the same
transactions), so an admission costs the same whatever the limit. A replica keeps a few connections
(:data:`POOL_SIZE`), so concurrent calls do not queue behind one another's round trips.

**Durability.** Counter transactions commit with ``synchronous_commit = off`` (no wait for the WAL flush):
a crash of the *database server* may forget the last fraction of a second of counted hits — a few calls
more may then be admitted, never a call twice — the same trade as the SQLite store's ``synchronous =
NORMAL``. Flows commit synchronously: a label lost in a crash could let a call through that the policy
would deny.

**Bounded.** Every operation — waiting for a connection, connecting, the locks and statements — shares
one deadline of ``timeout_s``; the server's ``statement_timeout`` and ``lock_timeout`` match it. Past
it the operation raises :class:`~mcp_guard.errors.StateError` (the caller denies ``state_unavailable``)
and its connection is closed, which rolls back an unfinished transaction. As with the audit backend, a
connection lost after COMMIT was sent (for an admission: once its one statement is on the wire) leaves
the outcome unknown: a call may be denied although its hit was counted (it then only costs room until it
leaves the window), never the other way round.

Expired flows are deleted by later writes (at most every ``PURGE_EVERY_S`` seconds per replica) with
``FOR UPDATE SKIP LOCKED``, so a purge never waits on, or deadlocks with, a replica using the flow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import psycopg
import structlog

from mcp_guard.audit.postgres import connect_args, redact_dsn
from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    PURGE_EVERY_S,
    Admission,
    Admit,
    Applied,
    Bucket,
    Flow,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    LabelOrigin,
    Limit,
    OpResult,
    Record,
    Release,
    StateOp,
    Ticket,
    Unrecord,
    apply_in_turn,
    buckets_of,
    flow_expired,
    is_refusal,
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
    """CREATE TABLE IF NOT EXISTS rate_counts (
        key TEXT COLLATE "C" NOT NULL, window_s DOUBLE PRECISION NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (key, window_s))""",
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

_Statement = tuple[str, "dict[str, Any] | None"]
_BEGIN_ASYNC_COMMIT = "BEGIN; SET LOCAL synchronous_commit = off"

_NOW = "coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"

# Per bucket (arrays of key, window, tightest limit), in one statement under the buckets' locks: prune the
# hits that left the window; the count in the window is the bucket's kept count less what was pruned (O(1)
# whatever the limit — no scan of the window's hits); only if no bucket is full, insert this call's hit in
# every bucket; store the new counts; and for a refused call find the time of the hit whose leaving makes
# room. Data-modifying WITHs run to completion whether read or not, and all parts see the snapshot from
# before the statement, hence the `ts > now - window` filter of the last scan.
# The admission, as a function so that it is one statement — its own transaction, one round trip, its plan
# cached by the server (a statement this size costs milliseconds to plan). Under the buckets' locks (taken in
# the order given: ascending), in one query: prune the hits that left the window; the count in the window is
# the bucket's kept count less what was pruned (O(1) whatever the limit — no scan of the window's hits); only
# if no bucket is full, insert this call's hit in every bucket; store the new counts; for a refused call, find
# the time of the hit whose leaving makes room. Data-modifying WITHs run to completion whether read or not, and
# every part sees the snapshot from before the query, hence the `ts > now - window` filter of the last scan.
# "now" is a scalar subquery so that the prune's ts bound is an index condition. The counters commit
# asynchronously (set_config(..., true) lasts until the statement's transaction commits).
_ADMIT_FUNCTION = """
CREATE OR REPLACE FUNCTION mcp_guard_admit(
    p_locks bigint[], p_keys text[], p_windows float8[], p_limits int[], p_hit text, p_now float8
) RETURNS TABLE (r_key text, r_window_s float8, r_t float8, r_n int, r_oldest float8, r_admitted boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan  -- index lookups by key whatever the values: plan once per session
AS $fn$
DECLARE
    lock_id bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOREACH lock_id IN ARRAY p_locks LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
    RETURN QUERY
    WITH now AS (SELECT coalesce(p_now, extract(epoch FROM clock_timestamp())::float8) AS t),
    b AS (SELECT * FROM unnest(p_keys, p_windows, p_limits) AS b (key, window_s, lim)),
    gone AS (
        DELETE FROM rate_hits h USING b  -- `now` as a scalar subquery: the ts bound is then an index condition
        WHERE h.key = b.key AND h.window_s = b.window_s AND h.ts <= (SELECT t FROM now) - b.window_s
        RETURNING h.key, h.window_s
    ),
    c AS (
        SELECT b.key, b.window_s, b.lim, now.t, greatest(coalesce(rc.n, 0)
            - (SELECT count(*) FROM gone g WHERE g.key = b.key AND g.window_s = b.window_s), 0)::int AS n
        FROM b CROSS JOIN now LEFT JOIN rate_counts rc ON rc.key = b.key AND rc.window_s = b.window_s
    ),
    ok AS (SELECT NOT EXISTS (SELECT 1 FROM c WHERE c.n >= c.lim) AS admitted),
    ins AS (
        INSERT INTO rate_hits (key, window_s, ts, hit)
        SELECT c.key, c.window_s, c.t, p_hit FROM c CROSS JOIN ok WHERE ok.admitted
    ),
    counted AS (
        INSERT INTO rate_counts (key, window_s, n)
        SELECT c.key, c.window_s, c.n + ok.admitted::int FROM c CROSS JOIN ok
        ON CONFLICT (key, window_s) DO UPDATE SET n = excluded.n
    )
    SELECT c.key, c.window_s, c.t, c.n, o.ts, ok.admitted
    FROM c CROSS JOIN ok
    LEFT JOIN LATERAL (
        SELECT h.ts FROM rate_hits h
        WHERE NOT ok.admitted AND h.key = c.key AND h.window_s = c.window_s AND h.ts > c.t - c.window_s
        ORDER BY h.ts OFFSET greatest(c.n - c.lim, 0) LIMIT 1
    ) o ON true
    ;
END
$fn$
"""
_ADMIT = """
SELECT * FROM mcp_guard_admit(
    %(locks)s::bigint[], %(keys)s::text[], %(windows)s::float8[], %(limits)s::int[], %(hit)s::text, %(now)s::float8
)
"""
_RELEASE = """
WITH d AS (
    DELETE FROM rate_hits h USING unnest(%(keys)s::text[], %(windows)s::float8[]) AS b (k, w)
    WHERE h.key = b.k AND h.window_s = b.w AND h.ts = %(ts)s AND h.hit = %(hit)s
    RETURNING h.key, h.window_s
)
UPDATE rate_counts rc SET n = greatest(rc.n - 1, 0) FROM d WHERE rc.key = d.key AND rc.window_s = d.window_s
"""
# The kept count less the hits that left the window but are not pruned yet (one statement: one snapshot).
_USAGE = f"""
WITH now AS (SELECT {_NOW} AS t)
SELECT greatest(coalesce(rc.n, 0) - (
    SELECT count(*) FROM rate_hits h WHERE h.key = b.k AND h.window_s = b.w AND h.ts <= now.t - b.w
), 0)::int
FROM unnest(%(keys)s::text[], %(windows)s::float8[]) WITH ORDINALITY AS b (k, w, i) CROSS JOIN now
LEFT JOIN rate_counts rc ON rc.key = b.k AND rc.window_s = b.w
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
) RETURNING id
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
                for statement in (*_SCHEMA, _ADMIT_FUNCTION):
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
        params, buckets, hit = self._admit_params(limits, locks=True)

        async def op(conn: Conn) -> Admission:
            rows = await (await conn.execute(_ADMIT, params)).fetchall()  # one statement: one round trip
            return _admission(rows, limits, buckets, hit)

        if not buckets:
            return Admission(True, {}, ticket=Ticket(new_id(), 0.0, ()))
        return await self._run(op, "count this call")

    def _admit_params(self, limits: Sequence[Limit], *, locks: bool) -> tuple[dict[str, Any], list[Bucket], str]:
        """The parameters of ``mcp_guard_admit`` (``locks``: let it take the buckets' locks — not in a batch, which
        holds them already), the buckets in their order, and the new hit's id."""
        tightest = buckets_of(limits)
        buckets = list(tightest)
        hit = new_id()
        params = {
            "locks": sorted({lock_key("rate", *b) for b in buckets}) if locks else [],  # ascending: no lock cycles
            "keys": [k for k, _ in buckets],
            "windows": [w for _, w in buckets],
            "limits": list(tightest.values()),
            "hit": hit,
            "now": self._now(),
        }
        return params, buckets, hit

    async def release(self, ticket: Ticket) -> None:
        async def op(conn: Conn) -> None:
            # Under the buckets' locks: an admission computing a count must not overwrite this decrement.
            locks = _locks(lock_key("rate", *b) for b in ticket.buckets)
            await _script(conn, [(_BEGIN_ASYNC_COMMIT, None), *locks, *_release(Release(ticket)), ("COMMIT", None)])

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
        async def op(conn: Conn) -> FlowTicket | FlowFull:
            locks = _locks([lock_key("principal", ref.principal), lock_key("flow", ref.id)])
            [*_, rows] = await _script(conn, [("BEGIN", None), *locks, self._record_read(ref)])  # round trip 1
            result, writes = self._record_decide(ref, call, rows)
            if isinstance(result, FlowFull):
                await conn.execute("COMMIT")
                return result
            purge = self._purge_due(float(rows[0][0]))
            results = await _script(conn, [*writes, *purge, ("COMMIT", None)])  # round trip 2
            if purge:
                self._purged_batch(results[-2])
            return result

        return await self._run(op, "record the call in its flow")

    def _record_read(self, ref: FlowRef) -> _Statement:
        params = {"now": self._now(), "id": ref.id, "principal": ref.principal, "idle": self.bounds.idle_s}
        return (_RECORD_READ, params)

    def _record_decide(
        self, ref: FlowRef, call: FlowCall, rows: list[tuple[Any, ...]]
    ) -> tuple[FlowTicket | FlowFull, list[_Statement]]:
        """From the rows of :data:`_RECORD_READ` (read under the flow's and principal's locks): the ticket and the
        writes recording ``call``, or why the flow cannot take it."""
        bounds = self.bounds
        labels = list(dict.fromkeys(call.labels))
        row = rows[0]  # the LEFT JOIN from `now` always yields one row
        now = float(row[0])
        fresh = row[1] is None or flow_expired(float(row[2]), now, bounds)
        if fresh:
            generation, n, present = new_id(), 0, set[str]()
            full = too_many_flows(ref.principal, int(row[4] or 0), bounds)
        else:
            generation, n, present = str(row[1]), int(row[3]), {str(x) for x in row[5]}
            full = None
        full = full or too_many_labels(len(present), len(set(labels) - present), bounds)
        if full is not None:
            return full, []
        writes = self._call_writes(ref, call, labels, now=now, generation=generation, n=n, fresh=fresh)
        return FlowTicket(ref.id, generation, call), writes

    def _purge_due(self, now: float) -> list[_Statement]:
        """The purge of expired flows, when one is due (at most every PURGE_EVERY_S seconds per replica)."""
        if now - self._purged < PURGE_EVERY_S:
            return []
        self._purged = now
        return [(_PURGE, {"before": now - self.bounds.idle_s, "batch": _PURGE_BATCH})]

    def _purged_batch(self, deleted: list[tuple[Any, ...]]) -> None:
        if len(deleted) >= _PURGE_BATCH:
            self._purged = 0.0  # a backlog: purge again at the next write, so it drains faster than it grows

    def _call_writes(
        self, ref: FlowRef, call: FlowCall, labels: list[str], *, now: float, generation: str, n: int, fresh: bool
    ) -> list[_Statement]:
        """The writes of a recorded call."""
        writes: list[_Statement] = []
        if fresh:  # an expired flow's rows go (cascading to its labels and calls); a fresh one starts
            writes.append(("DELETE FROM flows WHERE id = %(id)s", {"id": ref.id}))
        writes += [
            (
                _UPSERT_FLOW,
                {"id": ref.id, "principal": ref.principal, "generation": generation, "now": now, "next": n + 1},
            ),
            (
                "INSERT INTO flow_calls (flow_id, n, decision_id, call) VALUES (%(id)s, %(n)s, %(did)s, %(call)s)",
                {"id": ref.id, "n": n, "did": call.decision_id, "call": json.dumps(call.to_json())},
            ),
            (
                "DELETE FROM flow_calls WHERE flow_id = %(id)s AND n <= %(n)s",
                {"id": ref.id, "n": n - self.bounds.history},
            ),
        ]
        if labels:
            origin = json.dumps(LabelOrigin.of(call).to_policy())
            writes.append((_ADD_LABELS, {"id": ref.id, "origin": origin, "labels": labels}))
        return writes

    async def unrecord_call(self, ticket: FlowTicket) -> None:
        async def op(conn: Conn) -> None:
            locks = _locks([lock_key("flow", ticket.flow_id)])
            *_, gen, have, hist = await _script(conn, [("BEGIN", None), *locks, *_unrecord_reads(ticket)])  # trip 1
            await _script(conn, [*_unrecord_writes(ticket, gen, have, hist), ("COMMIT", None)])  # round trip 2

        await self._run(op, "take a call back from its flow")

    # ------------------------------------------------------------------ batches
    async def apply(self, ops: Sequence[StateOp]) -> Applied:
        """``ops`` as one transaction: round trip 1 begins it, takes every op's advisory locks together (ascending,
        so batches and single ops never wait in a cycle) and runs every op's reads — the admission runs whole,
        its hits inserted; round trip 2 sends every op's writes and COMMIT, or ROLLBACK at the first refusal.
        The transaction commits synchronously when it records a flow (flows are never committed
        asynchronously), else asynchronously like the counters.

        One op is its single-op method (one transaction already). Ops that touch the same flow or bucket (no
        pipeline batch does) cannot be read all first: they run in turn (:func:`apply_in_turn`)."""
        if len(ops) <= 1 or _overlapping(ops):
            return await apply_in_turn(self, ops)
        return await self._run(partial(self._batch, ops), _what(ops))

    async def _batch(self, ops: Sequence[StateOp], conn: Conn) -> Applied:
        plan = [self._plan(op) for op in ops]
        flows = any(isinstance(op, Record | Unrecord) for op in ops)
        reads: list[_Statement] = [("BEGIN", None), *_locks(k for p in plan for k in p.locks)]
        if not flows:
            reads.append(("SET LOCAL synchronous_commit = off", None))  # counters only: their durability trade
        starts = []
        for p in plan:
            starts.append(len(reads))
            reads += p.reads
        if flows:  # after mcp_guard_admit, which turns it off for its transaction: flows commit synchronously
            reads.append(("SET LOCAL synchronous_commit = on", None))
        got = await _script(conn, reads)  # round trip 1
        results: list[OpResult] = []
        writes: list[_Statement] = []
        now: float | None = None
        for p, at in zip(plan, starts, strict=True):
            rows = got[at : at + len(p.reads)]
            result, own = p.decide(rows)
            results.append(result)
            if is_refusal(result):
                await conn.execute("ROLLBACK")  # round trip 2: nothing of the batch is kept
                return Applied(tuple(results))
            writes += own
            if p.clocked and now is None:
                now = float(rows[0][0][0])
        purge = self._purge_due(now) if now is not None else []
        done = await _script(conn, [*writes, *purge, ("COMMIT", None)])  # round trip 2
        if purge:
            self._purged_batch(done[-2])
        return Applied(tuple(results))

    def _plan(self, op: StateOp) -> _Plan:
        """An op's locks, its reads (round trip 1), and how its result and writes follow from what they returned."""
        if isinstance(op, Admit):
            params, buckets, hit = self._admit_params(op.limits, locks=False)
            if not buckets:
                return _Plan((), (), lambda _rows: (Admission(True, {}, ticket=Ticket(new_id(), 0.0, ())), []))
            return _Plan(
                tuple(lock_key("rate", *b) for b in buckets),
                ((_ADMIT, params),),
                lambda rows: (_admission(rows[0], op.limits, buckets, hit), []),
            )
        if isinstance(op, Release):
            return _Plan(tuple(lock_key("rate", *b) for b in op.ticket.buckets), (), lambda _r: (None, _release(op)))
        if isinstance(op, Record):
            ref, call = op.ref, op.call
            return _Plan(
                (lock_key("principal", ref.principal), lock_key("flow", ref.id)),
                (self._record_read(ref),),
                lambda rows: self._record_decide(ref, call, rows[0]),
                clocked=True,
            )
        ticket = op.ticket
        return _Plan(
            (lock_key("flow", ticket.flow_id),),
            _unrecord_reads(ticket),
            lambda rows: (None, _unrecord_writes(ticket, *rows)),
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """One op of a batch: its lock keys, its reads, and ``decide(rows of each read) → (result, writes)``.
    ``clocked``: its first read's first column is the database's now (a record's)."""

    locks: tuple[int, ...]
    reads: tuple[_Statement, ...]
    decide: Callable[[list[list[tuple[Any, ...]]]], tuple[OpResult, list[_Statement]]]
    clocked: bool = False


def _overlapping(ops: Sequence[StateOp]) -> bool:
    """Whether two ops touch the same flow or bucket (then one's reads would miss the other's writes)."""
    seen: set[object] = set()
    for op in ops:
        if isinstance(op, Admit):
            touched: set[object] = {("rate", b) for b in buckets_of(op.limits)}
        elif isinstance(op, Release):
            touched = {("rate", b) for b in op.ticket.buckets}
        else:
            touched = {("flow", op.ref.id if isinstance(op, Record) else op.ticket.flow_id)}
        if touched & seen:
            return True
        seen |= touched
    return False


def _what(ops: Sequence[StateOp]) -> str:
    names = {Admit: "count this call", Release: "take back a counted call", Record: "record the call in its flow"}
    return " and ".join(dict.fromkeys(names.get(type(op), "take a call back from its flow") for op in ops))


def _admission(rows: list[tuple[Any, ...]], limits: Sequence[Limit], buckets: list[Bucket], hit: str) -> Admission:
    """The answer of ``mcp_guard_admit`` (one row per bucket) as an :class:`Admission`."""
    found = {(str(r[0]), float(r[1])): r for r in rows}
    now = float(rows[0][2])
    if rows[0][5]:  # counted in every bucket
        usage = {b: int(found[b][3]) + 1 for b in buckets}
        return Admission(True, usage, ticket=Ticket(hit, now, tuple(buckets)))
    counts = {b: int(found[b][3]) for b in buckets}
    full = tuple(lim for lim in limits if counts[lim.bucket] >= lim.limit)
    wait = max(retry_after(float(found[f.bucket][4] or 0.0), f.window_s, now) for f in full)
    return Admission(False, counts, full, wait)


def _release(op: Release) -> list[_Statement]:
    t = op.ticket
    if not t.buckets:
        return []
    params = {"keys": [k for k, _ in t.buckets], "windows": [w for _, w in t.buckets], "ts": t.ts, "hit": t.hit}
    return [(_RELEASE, params)]


def _unrecord_reads(ticket: FlowTicket) -> tuple[_Statement, ...]:
    """Under the flow's lock: its generation, the call's labels as stored, the rest of its history."""
    key = {"id": ticket.flow_id, "gone": ticket.call.decision_id, "labels": list(dict.fromkeys(ticket.call.labels))}
    return (
        ("SELECT generation FROM flows WHERE id = %(id)s", key),
        (
            "SELECT label, n, origin, latest FROM flow_labels"
            " WHERE flow_id = %(id)s AND label = ANY(%(labels)s::text[])",
            key,
        ),
        ("SELECT call FROM flow_calls WHERE flow_id = %(id)s AND decision_id <> %(gone)s ORDER BY n", key),
    )


def _unrecord_writes(
    ticket: FlowTicket, gen: list[tuple[Any, ...]], have: list[tuple[Any, ...]], hist: list[tuple[Any, ...]]
) -> list[_Statement]:
    """The writes taking the call back (none when the flow has since expired and started again)."""
    if not gen or gen[0][0] != ticket.generation:
        return []
    gone = ticket.call.decision_id
    history = [FlowCall.from_json(json.loads(r[0])) for r in hist]
    key = {"id": ticket.flow_id, "gone": gone}
    writes: list[_Statement] = [("DELETE FROM flow_calls WHERE flow_id = %(id)s AND decision_id = %(gone)s", key)]
    for label, n, origin, latest in have:
        writes.append(_take_back(ticket.flow_id, str(label), int(n), origin, latest, gone, history))
    return writes


def _take_back(
    flow_id: str, label: str, n: int, origin: str, latest: str, gone: str, history: list[FlowCall]
) -> _Statement:
    """The statement taking one count of ``label`` back (the row deleted at zero), origin and latest re-credited."""
    key: dict[str, Any] = {"id": flow_id, "label": label}
    if n <= 1:
        return ("DELETE FROM flow_labels WHERE flow_id = %(id)s AND label = %(label)s", key)
    n, first, last = take_back_label(
        n, LabelOrigin.from_json(json.loads(origin)), LabelOrigin.from_json(json.loads(latest)), gone, history, label
    )
    return (
        "UPDATE flow_labels SET n = %(n)s, origin = %(origin)s, latest = %(latest)s"
        " WHERE flow_id = %(id)s AND label = %(label)s",
        key | {"n": n, "origin": json.dumps(first.to_policy()), "latest": json.dumps(last.to_policy())},
    )


def _locks(keys: Iterable[int]) -> list[_Statement]:
    """The transaction's advisory locks, in ascending key order (no two transactions can wait in a cycle)."""
    return [(f"SELECT pg_advisory_xact_lock({key})", None) for key in sorted(set(keys))]


async def _script(conn: Conn, statements: Sequence[_Statement]) -> list[list[tuple[Any, ...]]]:
    """``statements`` sent as one simple-protocol query — one round trip — and the rows each returned.

    Parameters are bound client-side (``ClientCursor.mogrify``: psycopg's quoting, never string pasting),
    because the simple protocol that carries several statements takes no parameters."""
    binder = psycopg.AsyncClientCursor(conn)
    sql = "; ".join(binder.mogrify(q, p) if p is not None else q for q, p in statements)
    cur = conn.cursor()
    await cur.execute(sql, prepare=False)
    results: list[list[tuple[Any, ...]]] = []
    while True:
        results.append(await cur.fetchall() if cur.description is not None else [])
        if not cur.nextset():
            return results


async def _close(conn: Conn) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
        await conn.close()


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
