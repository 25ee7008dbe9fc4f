"""StateStore.apply: a call's writes as one batch, against every backend — all or nothing, in op order, the first
refusal rolling back what came before it; on SQLite one ``BEGIN IMMEDIATE`` per batch, and exact beside another
connection writing the same file; on PostgreSQL exact across two replicas racing for the last slot."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_guard.errors import StateError
from mcp_guard.state import (
    Admission,
    Admit,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    LabelOrigin,
    Limit,
    MemoryState,
    Record,
    Release,
    SQLiteState,
    StateStore,
)
from mcp_guard.state import sqlite as state_sqlite
from mcp_guard.state.base import OpFailed, apply_in_turn, undo_ops
from mcp_guard.state.postgres import PostgresState

pytestmark = pytest.mark.anyio

BOUNDS = FlowBounds(idle_s=100.0, history=3, labels=2, per_principal=5)
F1 = FlowRef("f-1", "alice")
ONE = Limit("k", 1, 60.0)
BUCKET = ONE.bucket


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryState(clock=clock, flows=BOUNDS)
        return
    if request.param == "postgres":  # a real server (tests/pg_support.py), a fresh database per test
        pg = PostgresState(request.getfixturevalue("pg_dsn"), timeout_s=5.0, clock=clock, flows=BOUNDS)
        await pg.start()
        yield pg
        await pg.aclose()
        return
    sqlite = SQLiteState(tmp_path / "state.db", timeout_s=5.0, clock=clock, flows=BOUNDS)
    await sqlite.start()
    yield sqlite
    await sqlite.aclose()


def call(did: str, *labels: str) -> FlowCall:
    return FlowCall(did, "tools/call", "tickets", "get_ticket", "allow", labels, "2026-01-01T00:00:00Z")


async def _dids(store: StateStore, ref: FlowRef = F1) -> list[str]:
    return [c.decision_id for c in (await store.flow(ref.id)).history]


async def test_a_batch_that_fits_records_and_counts(store: StateStore) -> None:
    applied = await store.apply([Record(F1, call("d1", "private")), Admit((ONE,))])
    assert applied.committed
    ticket, admission = applied.results
    assert isinstance(ticket, FlowTicket) and isinstance(admission, Admission) and admission.admitted
    assert await _dids(store) == ["d1"] and set((await store.flow(F1.id)).labels) == {"private"}
    assert await store.usage([BUCKET]) == {BUCKET: 1}


async def test_a_refused_admission_leaves_the_record_before_it_unmade(store: StateStore) -> None:
    assert (await store.apply([Record(F1, call("d1")), Admit((ONE,))])).committed
    applied = await store.apply([Record(F1, call("d2", "private")), Admit((ONE,))])
    assert not applied.committed
    assert isinstance(applied.results[0], FlowTicket)  # it ran, and was rolled back with the batch
    refused = applied.results[1]
    assert isinstance(refused, Admission) and not refused.admitted and refused.full == (ONE,)
    assert await _dids(store) == ["d1"] and (await store.flow(F1.id)).labels == {}
    assert await store.usage([BUCKET]) == {BUCKET: 1}


async def test_a_full_flow_ends_the_batch_before_the_admission(store: StateStore) -> None:
    applied = await store.apply([Record(F1, call("d1", "a", "b", "c")), Admit((ONE,))])  # 3 labels, at most 2
    assert not applied.committed and len(applied.results) == 1 and isinstance(applied.results[0], FlowFull)
    assert await store.usage([BUCKET]) == {BUCKET: 0}  # the admission never ran: nothing counted
    assert await _dids(store) == []


async def test_a_committed_batch_is_taken_back_as_one_batch(store: StateStore) -> None:
    assert (await store.apply([Record(F1, call("d0", "private")), Admit((Limit("k", 5, 60.0),))])).committed
    applied = await store.apply([Record(F1, call("d1", "private")), Admit((Limit("k", 5, 60.0),))])
    undo = undo_ops(applied.results)
    assert [type(op) for op in undo] == [Release, type(undo[1])] and len(undo) == 2  # newest first
    assert (await store.apply(undo)).committed
    assert await _dids(store) == ["d0"] and set((await store.flow(F1.id)).labels) == {"private"}  # d0's stays
    assert await store.usage([BUCKET]) == {BUCKET: 1}


async def test_an_empty_batch_changes_nothing(store: StateStore) -> None:
    applied = await store.apply([])
    assert applied.committed and applied.results == ()


async def test_ops_on_two_flows_and_two_buckets_in_one_batch(store: StateStore) -> None:
    f2 = FlowRef("f-2", "alice")
    applied = await store.apply(
        [Record(F1, call("d1")), Record(f2, call("d2")), Admit((ONE,)), Admit((Limit("other", 1, 60.0),))]
    )
    assert applied.committed and len(applied.results) == 4
    assert await _dids(store) == ["d1"] and await _dids(store, f2) == ["d2"]
    assert await store.usage([BUCKET, ("other", 60.0)]) == {BUCKET: 1, ("other", 60.0): 1}


async def test_the_history_bound_holds_through_batches(store: StateStore) -> None:
    for i in range(7):
        assert (await store.apply([Record(F1, call(f"d{i}", "x")), Admit((Limit("k", 100, 60.0),))])).committed
    assert await _dids(store) == ["d4", "d5", "d6"]


# --------------------------------------------------------------------------- SQLite specifics
def _traced(store: SQLiteState) -> list[str]:
    seen: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(seen.append)
    return seen


async def test_sqlite_a_batch_is_one_write_transaction(tmp_path: Path) -> None:
    store = SQLiteState(tmp_path / "s.db", flows=BOUNDS)
    await store.start()
    try:
        await store.flow(F1.id)
        seen = _traced(store)
        assert (await store.apply([Record(F1, call("d1", "private")), Admit((ONE,))])).committed
        assert [s for s in seen if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == ["BEGIN IMMEDIATE", "COMMIT"]
        seen.clear()
        assert not (await store.apply([Record(F1, call("d2")), Admit((ONE,))])).committed
        assert [s for s in seen if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == ["BEGIN IMMEDIATE", "ROLLBACK"]
    finally:
        await store.aclose()


async def test_sqlite_a_cached_flow_is_recorded_without_reading_it(tmp_path: Path) -> None:
    store = SQLiteState(tmp_path / "s.db", flows=BOUNDS)
    await store.start()
    try:
        await store.record_call(F1, call("d0", "private"))
        await store.flow(F1.id)  # the cache holds it
        seen = _traced(store)
        await store.record_call(F1, call("d1", "private"))
        assert not [s for s in seen if s.startswith("SELECT")]
        assert [c.decision_id for c in (await store.flow(F1.id)).history] == ["d0", "d1"]
    finally:
        await store.aclose()


async def test_sqlite_a_rolled_back_batch_leaves_the_flow_cache_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteState(path, flows=BOUNDS)
    await store.start()
    try:
        assert (await store.apply([Record(F1, call("d1")), Admit((ONE,))])).committed
        assert not (await store.apply([Record(F1, call("d2", "private")), Admit((ONE,))])).committed
        assert [c.decision_id for c in (await store.flow(F1.id)).history] == ["d1"]  # from the cache
        fresh = SQLiteState(path, flows=BOUNDS)
        await fresh.start()
        assert await fresh.flow(F1.id) == await store.flow(F1.id)  # the file agrees
        await fresh.aclose()
    finally:
        await store.aclose()


async def test_sqlite_another_connection_writing_the_flow_is_seen_by_the_next_batch(tmp_path: Path) -> None:
    """The cache is trusted only while ``data_version`` (read under the write lock) says no one else committed."""
    path = tmp_path / "s.db"
    a, b = SQLiteState(path, flows=BOUNDS), SQLiteState(path, flows=BOUNDS)
    await a.start()
    await b.start()
    try:
        await a.record_call(F1, call("a1", "x"))
        await a.flow(F1.id)
        await b.record_call(F1, call("b1", "y"))  # another process, as far as a's connection can tell
        assert (await a.apply([Record(F1, call("a2", "x")), Admit((ONE,))])).committed
        flow = await b.flow(F1.id)
        assert [c.decision_id for c in flow.history] == ["a1", "b1", "a2"] and set(flow.labels) == {"x", "y"}
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT n FROM flow_labels WHERE flow_id=? AND label='x'", (F1.id,)).fetchone() == (2,)
    finally:
        await a.aclose()
        await b.aclose()


async def test_sqlite_the_history_rows_are_trimmed_when_the_cache_skips_the_read(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteState(path, flows=BOUNDS)
    await store.start()
    try:
        for i in range(6):
            await store.record_call(F1, call(f"d{i}"))
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM flow_calls WHERE flow_id=?", (F1.id,)).fetchone() == (3,)
    finally:
        await store.aclose()


async def test_sqlite_a_full_cached_flow_turns_its_oldest_call_row_into_the_new_one(tmp_path: Path) -> None:
    """The steady state of a long flow: exactly its oldest call leaves the history, so that row is rewritten as the
    new call (no INSERT and DELETE); the flow's and the bucket's rows, known to exist, are updated (no upsert).
    The file ends as it did before: what a fresh store reads equals what the cache answers."""
    path, lim = tmp_path / "s.db", Limit("k", 100, 60.0)
    store = SQLiteState(path, flows=BOUNDS)
    await store.start()
    try:
        for i in range(4):
            assert (await store.apply([Record(F1, call(f"d{i}", "x")), Admit((lim,))])).committed
        await store.flow(F1.id)
        seen = _traced(store)
        assert (await store.apply([Record(F1, call("d4", "x")), Admit((lim,))])).committed
        assert not [s for s in seen if s.startswith("DELETE") or "ON CONFLICT" in s], seen
        # (the trace repeats a statement whose triggers run — the flow's version bump — so repeats are folded)
        assert [table for table, _ in itertools.groupby(s.split()[1] for s in seen if s.startswith("UPDATE"))] == [
            "flow_calls",
            "flow_labels",
            "flows",  # last: the version it returns counts the call's own changes
            "rate_counts",
        ]
        fresh = SQLiteState(path, flows=BOUNDS)
        await fresh.start()
        assert await fresh.flow(F1.id) == await store.flow(F1.id)
        assert [c.decision_id for c in (await fresh.flow(F1.id)).history] == ["d2", "d3", "d4"]
        assert (await fresh.usage([lim.bucket]))[lim.bucket] == 5
        await fresh.aclose()
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT n FROM flow_calls WHERE flow_id=? ORDER BY n", (F1.id,)).fetchall() == [
                (2,),
                (3,),
                (4,),
            ]
    finally:
        await store.aclose()


async def test_sqlite_a_cached_flow_keeping_no_history_leaves_no_call_rows(tmp_path: Path) -> None:
    """``history=0``: the cache says the history is empty, and so must the file (the cached path used to insert
    each call and never delete it, so a second process read calls the first one's cache did not have)."""
    path = tmp_path / "s.db"
    bounds = FlowBounds(idle_s=100.0, history=0, labels=2, per_principal=5)
    store = SQLiteState(path, flows=bounds)
    await store.start()
    try:
        for i in range(3):
            await store.record_call(F1, call(f"d{i}", "x"))
        fresh = SQLiteState(path, flows=bounds)
        await fresh.start()
        assert (await fresh.flow(F1.id)).history == () == (await store.flow(F1.id)).history
        await fresh.aclose()
    finally:
        await store.aclose()


async def test_sqlite_the_stored_call_and_origin_text_is_json_dumps(tmp_path: Path) -> None:
    """The rows' JSON is written without json.dumps (state/sqlite._call_json); it must be the very text json.dumps
    gives, whatever the strings hold (quotes, backslashes, control characters, non-ASCII, astral characters)."""
    path = tmp_path / "s.db"
    odd = 'a"b\\c\n\t\x00\x1f\u00e9\u2028\U0001f600/'
    awkward = FlowCall(f"d{odd}", f"tools/{odd}", f"s{odd}", f"t{odd}", "allow", (odd, ""), f"T{odd}")
    store = SQLiteState(path, flows=BOUNDS)
    await store.start()
    try:
        await store.record_call(F1, awkward)
        await store.record_call(F1, call("plain"))  # no labels: an empty list
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db:
        rows = [r[0] for r in db.execute("SELECT call FROM flow_calls ORDER BY n")]
        origins = {r[0] for r in db.execute("SELECT origin FROM flow_labels")}
    assert rows == [json.dumps(awkward.to_json()), json.dumps(call("plain").to_json())]
    assert origins == {json.dumps(LabelOrigin.of(awkward).to_policy())}


async def test_sqlite_a_one_bucket_usage_read_is_one_statement(tmp_path: Path) -> None:
    """One bucket: one SELECT, its own snapshot (no BEGIN … COMMIT around it); several: one snapshot for all."""
    store = SQLiteState(tmp_path / "s.db")
    await store.start()
    try:
        await store.admit([Limit("k", 10, 60.0), Limit("j", 10, 60.0)])
        seen = _traced(store)
        assert await store.usage([("k", 60.0)]) == {("k", 60.0): 1}
        assert [s.split()[0] for s in seen] == ["SELECT"]
        seen.clear()
        assert await store.usage([("k", 60.0), ("j", 60.0)]) == {("k", 60.0): 1, ("j", 60.0): 1}
        assert [s.split()[0] for s in seen] == ["BEGIN", "SELECT", "SELECT", "COMMIT"]
    finally:
        await store.aclose()


async def test_sqlite_no_operation_leaves_a_read_snapshot_open(tmp_path: Path) -> None:
    """Every statement runs on one cursor (state/sqlite: SQLiteState._connection), so each must be read to its end:
    a statement left stepping would hold its snapshot past the operation — stale reads, and a WAL that no
    checkpoint can reset. After each kind of operation another connection's TRUNCATE checkpoint must find no
    reader (busy 0)."""
    path = tmp_path / "s.db"
    store = SQLiteState(path, flows=BOUNDS)
    await store.start()
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("CREATE TABLE scratch (x)")

    def no_reader() -> None:
        other.execute("INSERT INTO scratch VALUES (1)")  # a frame no snapshot of the store's can have seen
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0

    try:
        no_reader()
        ticket = await store.record_call(F1, call("d0", "x"))  # a fresh flow: read, then written
        no_reader()
        await store.flow(FlowRef("f-2", "alice").id)  # not in the cache: read from the file
        no_reader()
        await store.flow(F1.id)  # the foreign write emptied the cache: read, cached again
        hits = store.stats["flow_hits"]
        await store.flow(F1.id)  # from the cache, after data_version
        assert store.stats["flow_hits"] == hits + 1
        no_reader()
        admitted = await store.admit([ONE])
        no_reader()
        assert not (await store.apply([Record(F1, call("d1")), Admit((ONE,))])).committed  # refused: ROLLBACK
        no_reader()
        assert await store.usage([BUCKET]) == {BUCKET: 1}
        no_reader()
        assert await store.usage([BUCKET, ("j", 60.0)]) == {BUCKET: 1, ("j", 60.0): 0}
        no_reader()
        assert isinstance(ticket, FlowTicket) and admitted.ticket is not None
        await store.apply([Release(admitted.ticket)])
        no_reader()
        await store.unrecord_call(ticket)
        no_reader()
    finally:
        other.close()
        await store.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_two_stores_racing_batches_never_pass_the_limit(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two stores (two connections, or two replicas' pools) racing 30 batches for 7 slots: exactly 7 commit, and
    the flow holds exactly their records — a refused admission rolled its record back."""

    async def opened() -> StateStore:
        bounds = FlowBounds(history=64, labels=4)
        if backend == "postgres":
            pg = PostgresState(request.getfixturevalue("pg_dsn"), timeout_s=30.0, flows=bounds)
            await pg.start()
            return pg
        lite = SQLiteState(tmp_path / "s.db", timeout_s=30.0, flows=bounds)
        await lite.start()
        return lite

    stores = [await opened(), await opened()]
    committed: list[str] = []

    async def one(i: int) -> None:
        applied = await stores[i % 2].apply([Record(F1, call(f"d{i}", "x")), Admit((Limit("race", 7, 3600.0),))])
        if applied.committed:
            committed.append(f"d{i}")

    try:
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        assert len(committed) == 7
        assert sorted(await _dids(stores[0])) == sorted(committed)
        assert await stores[1].usage([("race", 3600.0)]) == {("race", 3600.0): 7}
    finally:
        for s in stores:
            await s.aclose()


# --------------------------------------------------------------------------- the op-by-op path
class _FailsToCount(MemoryState):
    async def admit(self, limits: object) -> Admission:
        from mcp_guard.errors import StateError

        raise StateError("the store cannot count", cause="disk I/O error")


async def test_in_turn_a_failing_op_takes_back_the_ops_before_it_and_names_itself() -> None:
    store = _FailsToCount(flows=BOUNDS)
    with pytest.raises(OpFailed) as failed:
        await apply_in_turn(store, [Record(F1, call("d1", "private")), Admit((ONE,))])
    assert failed.value.at == 1 and failed.value.cause == "disk I/O error"
    assert await _dids(store) == [] and (await store.flow(F1.id)).labels == {}


# ---------------------------------------------------------------------- SQLite group commit (concurrent batches)
async def _concurrently(store: SQLiteState, batches: list[list[object]]) -> list[object]:
    """``batches`` applied by as many tasks, all started in one turn of the event loop (as concurrent calls are);
    each task's Applied, or the exception it raised."""
    out: list[object] = [None] * len(batches)

    async def one(i: int) -> None:
        try:
            out[i] = await store.apply(batches[i])  # type: ignore[arg-type]
        except Exception as e:
            out[i] = e

    async with anyio.create_task_group() as tg:
        for i in range(len(batches)):
            tg.start_soon(one, i)
    return out


async def test_sqlite_concurrent_batches_share_one_transaction_and_stay_exact(tmp_path: Path) -> None:
    """Eight calls' batches in one turn: the first alone, the other seven in one group transaction — each in its own
    savepoint, every one applied (the same flow's history numbered in order, every hit counted), and what the cache
    says is what a fresh connection reads."""
    store = SQLiteState(tmp_path / "s.db", flows=FlowBounds(idle_s=100.0, history=32, labels=4, per_principal=5))
    await store.start()
    try:
        await store.flow(F1.id)
        seen = _traced(store)
        many = Limit("k", 100, 60.0)
        results = await _concurrently(store, [[Record(F1, call(f"d{i}")), Admit((many,))] for i in range(8)])
        assert all(getattr(r, "committed", False) for r in results), results
        assert [s for s in seen if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"] * 2  # one alone, one group
        assert sum(1 for s in seen if s.startswith("SAVEPOINT")) == 7
        cached = await store.flow(F1.id)
        assert sorted(c.decision_id for c in cached.history) == [f"d{i}" for i in range(8)]
        assert await store.usage([many.bucket]) == {many.bucket: 8}
    finally:
        await store.aclose()
    fresh = SQLiteState(tmp_path / "s.db", flows=FlowBounds(idle_s=100.0, history=32, labels=4, per_principal=5))
    await fresh.start()
    try:
        assert (await fresh.flow(F1.id)).history == cached.history
    finally:
        await fresh.aclose()


async def test_sqlite_a_refused_batch_in_a_group_is_rolled_back_alone(tmp_path: Path) -> None:
    """A limit of three, five concurrent batches (record, then admit): three are applied and two refused — a refused
    batch's record rolled back with it (its savepoint), the others' kept."""
    store = SQLiteState(tmp_path / "s.db", flows=FlowBounds(idle_s=100.0, history=32, labels=4, per_principal=5))
    await store.start()
    try:
        three = Limit("k", 3, 60.0)
        results = await _concurrently(store, [[Record(F1, call(f"d{i}")), Admit((three,))] for i in range(5)])
        kept = [i for i, r in enumerate(results) if getattr(r, "committed", False)]
        refused = [r for i, r in enumerate(results) if i not in kept]
        assert len(kept) == 3 and all(getattr(r, "committed", None) is False for r in refused), results
        assert sorted(c.decision_id for c in (await store.flow(F1.id)).history) == [f"d{i}" for i in kept]
        assert await store.usage([three.bucket]) == {three.bucket: 3}
    finally:
        await store.aclose()


async def test_sqlite_a_group_that_cannot_commit_fails_every_batch_and_keeps_the_cache_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's transaction reaches its deadline before COMMIT (injected into the first transaction that used a
    savepoint: rolled back, as ``_immediate`` does past the deadline): every batch of the group gets the StateError,
    nothing of it is in the file, and the flow cache — which followed each batch as its savepoint was released — is
    emptied, so the next read is the file's. The batch that ran alone is kept."""
    store = SQLiteState(tmp_path / "s.db", flows=FlowBounds(idle_s=100.0, history=32, labels=4, per_principal=5))
    await store.start()
    seen = _traced(store)
    exit_transaction = state_sqlite._immediate.__exit__
    armed = [True]

    def failing_commit(self: Any, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and armed[0] and any(sql.startswith("SAVEPOINT") for sql in seen):
            armed[0] = False
            self._db.execute("ROLLBACK")
            raise state_sqlite._Expired
        exit_transaction(self, exc_type, exc, tb)

    monkeypatch.setattr(state_sqlite._immediate, "__exit__", failing_commit)
    try:
        await store.record_call(F1, call("d-before"))
        await store.flow(F1.id)  # cached
        many = Limit("k", 100, 60.0)
        results = await _concurrently(store, [[Record(F1, call(f"d{i}")), Admit((many,))] for i in range(4)])
        assert getattr(results[0], "committed", False)  # alone, before the group
        assert all(isinstance(r, StateError) for r in results[1:]), results
        assert [c.decision_id for c in (await store.flow(F1.id)).history] == ["d-before", "d0"]
        assert await store.usage([many.bucket]) == {many.bucket: 1}
    finally:
        await store.aclose()
