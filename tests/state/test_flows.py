"""The flow part of the StateStore contract, run against every backend (in-memory, SQLite and PostgreSQL) with an
injected clock: labels counted per adder, a bounded history, the idle TTL, the bounds, taking a call back."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mcp_guard.errors import StateError
from mcp_guard.state import (
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    MemoryState,
    SQLiteState,
    StateStore,
)
from mcp_guard.state import sqlite as sqlite_state
from mcp_guard.state.base import PURGE_EVERY_S
from mcp_guard.state.postgres import PostgresState

pytestmark = pytest.mark.anyio

IDLE_S = 100.0
BOUNDS = FlowBounds(idle_s=IDLE_S, history=3, labels=4, per_principal=2)
F1 = FlowRef("f-1", "alice")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


Factory = Callable[[], StateStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[StateStore]:
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


def call(did: str, *labels: str, decision: str = "allow", tool: str = "get_ticket") -> FlowCall:
    return FlowCall(
        decision_id=did,
        action="tools/call",
        server="tickets",
        tool=tool,
        decision="allow" if decision == "allow" else "deny",
        labels=labels,
        time=f"2026-01-01T00:00:0{len(did) % 10}Z",
    )


async def record(store: StateStore, c: FlowCall, ref: FlowRef = F1) -> FlowTicket:
    t = await store.record_call(ref, c)
    assert isinstance(t, FlowTicket), t
    return t


async def test_an_unknown_flow_is_empty(store: StateStore) -> None:
    f = await store.flow("f-nobody")
    assert (f.id, dict(f.labels), f.history) == ("f-nobody", {}, ())
    assert f.to_policy() == {"id": "f-nobody", "labels": [], "labeled_by": {}, "history": []}


async def test_a_recorded_call_adds_its_labels_and_a_history_entry(store: StateStore) -> None:
    await record(store, call("d1", "private"))
    await record(store, call("d2", "untrusted", "private", tool="fetch"))
    await record(store, call("d3", decision="deny", tool="post"))
    doc = (await store.flow("f-1")).to_policy()
    assert doc["labels"] == ["private", "untrusted"]
    assert doc["labeled_by"]["private"]["decision_id"] == "d1"  # the first adder, not the latest
    assert doc["labeled_by"]["untrusted"] == {
        "decision_id": "d2",
        "server": "tickets",
        "tool": "fetch",
        "time": call("d2").time,
    }
    assert [(h["decision_id"], h["decision"], h["labels"]) for h in doc["history"]] == [
        ("d1", "allow", ["private"]),
        ("d2", "allow", ["untrusted", "private"]),
        ("d3", "deny", []),
    ]


async def test_the_history_keeps_the_most_recent_calls_and_labels_outlive_it(store: StateStore) -> None:
    await record(store, call("d1", "private"))
    for i in range(2, 7):
        await record(store, call(f"d{i}"))
    f = await store.flow("f-1")
    assert [c.decision_id for c in f.history] == ["d4", "d5", "d6"]  # BOUNDS.history == 3, oldest first
    assert f.labels["private"].decision_id == "d1"


async def test_taking_a_call_back_removes_its_entry_and_labels(store: StateStore) -> None:
    await record(store, call("d1"))
    t = await record(store, call("d2", "private"))
    await store.unrecord_call(t)
    f = await store.flow("f-1")
    assert dict(f.labels) == {} and [c.decision_id for c in f.history] == ["d1"]
    await store.unrecord_call(t)  # twice: nothing more to take
    assert dict((await store.flow("f-1")).labels) == {}


async def test_a_label_another_call_also_added_survives_taking_one_back(store: StateStore) -> None:
    """Two calls in flight both add "private"; the first is not forwarded after all (its undo runs after the
    second was recorded). The label must stay, now credited to the call that was forwarded."""
    first = await record(store, call("d1", "private"))
    await record(store, call("d2", "private"))
    await store.unrecord_call(first)
    f = await store.flow("f-1")
    assert set(f.labels) == {"private"} and f.labels["private"].decision_id == "d2"
    # Even when the other adder has left the bounded history, the count keeps the label.
    a = await record(store, call("d3", "untrusted"))
    await record(store, call("d4", "untrusted"))
    for i in range(5, 9):
        await record(store, call(f"d{i}"))
    await store.unrecord_call(a)
    assert set((await store.flow("f-1")).labels) == {"private", "untrusted"}


async def test_a_flow_idle_past_its_ttl_is_gone_and_starts_again_empty(store: StateStore, clock: Clock) -> None:
    start = clock.now
    await record(store, call("d1", "private"))
    clock.now = start + IDLE_S - 1
    assert set((await store.flow("f-1")).labels) == {"private"}
    await record(store, call("d2"))  # a call restarts the idle time
    clock.now = start + 2 * IDLE_S - 2
    assert set((await store.flow("f-1")).labels) == {"private"}
    clock.now = start + 2 * IDLE_S - 1  # exactly IDLE_S after the last call
    assert (await store.flow("f-1")).to_policy()["labels"] == []
    t = await record(store, call("d3", "untrusted"))
    f = await store.flow("f-1")
    assert set(f.labels) == {"untrusted"} and [c.decision_id for c in f.history] == ["d3"]
    assert t.call.decision_id == "d3"


async def test_a_ticket_from_an_expired_flow_changes_nothing(store: StateStore, clock: Clock) -> None:
    old = await record(store, call("d1", "private"))
    clock.now += IDLE_S
    await record(store, call("d2", "private"))
    await store.unrecord_call(old)
    assert set((await store.flow("f-1")).labels) == {"private"}


async def test_live_flows_per_principal_are_bounded_and_refused_not_evicted(store: StateStore, clock: Clock) -> None:
    await record(store, call("a1", "private"), FlowRef("f-a", "alice"))
    await record(store, call("b1"), FlowRef("f-b", "alice"))
    full = await store.record_call(FlowRef("f-c", "alice"), call("c1"))
    assert isinstance(full, FlowFull) and "'alice' already has 2 live flows (at most 2)" in full.reason
    assert (await store.flow("f-c")).history == ()
    assert set((await store.flow("f-a")).labels) == {"private"}  # nobody's labels were washed away
    await record(store, call("x1"), FlowRef("f-a", "alice"))  # an existing flow still takes calls
    await record(store, call("o1"), FlowRef("f-other", "bob"))  # other principals are not affected
    clock.now += IDLE_S  # every flow of alice expires: room again
    await record(store, call("c2"), FlowRef("f-c", "alice"))


async def test_distinct_labels_per_flow_are_bounded(store: StateStore) -> None:
    await record(store, call("d1", "a", "b", "c"))
    full = await store.record_call(F1, call("d2", "c", "d", "e"))
    assert isinstance(full, FlowFull) and "5 distinct labels (at most 4)" in full.reason
    f = await store.flow("f-1")
    assert set(f.labels) == {"a", "b", "c"} and [c.decision_id for c in f.history] == ["d1"]
    await record(store, call("d3", "a", "d"))  # up to the bound is fine


async def test_flows_are_separate(store: StateStore) -> None:
    await record(store, call("d1", "private"), FlowRef("f-1", "alice"))
    await record(store, call("d2", "untrusted"), FlowRef("f-2", "alice"))
    assert set((await store.flow("f-1")).labels) == {"private"}
    assert set((await store.flow("f-2")).labels) == {"untrusted"}


# ---------------------------------------------------------------------- backend specifics
async def test_expired_flows_are_purged_by_later_writes(tmp_path: Path, clock: Clock) -> None:
    sqlite = SQLiteState(tmp_path / "state.db", timeout_s=5.0, clock=clock, flows=BOUNDS)
    memory = MemoryState(clock=clock, flows=BOUNDS)
    await sqlite.start()
    try:
        for s in (sqlite, memory):
            await record(s, call("d1", "private"), FlowRef("f-old", "alice"))
        clock.now += max(IDLE_S, PURGE_EVERY_S) + 1
        for s in (sqlite, memory):
            await record(s, call("d2"), FlowRef("f-new", "bob"))
        assert memory.flow_count == 1
    finally:
        await sqlite.aclose()
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("flows", "flow_labels", "flow_calls")]
    finally:
        db.close()
    assert counts == [1, 0, 1]  # only f-new's row and its one call


async def test_a_backlog_of_expired_flows_drains_faster_than_flows_are_made(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_state, "_PURGE_BATCH", 2)
    many = FlowBounds(idle_s=IDLE_S, per_principal=100)
    store = SQLiteState(tmp_path / "state.db", timeout_s=5.0, clock=clock, flows=many)
    await store.start()
    try:
        for i in range(5):
            await record(store, call(f"d{i}"), FlowRef(f"f-old-{i}", "alice"))
        clock.now += max(IDLE_S, PURGE_EVERY_S) + 1
        left = []
        for i in range(4):  # each write makes one flow; while batches come back full, each write purges again
            await record(store, call(f"n{i}"), FlowRef(f"f-new-{i}", "bob"))
            left.append(_rows(tmp_path / "state.db", "SELECT count(*) FROM flows WHERE id LIKE 'f-old-%'"))
    finally:
        await store.aclose()
    assert left == [3, 1, 0, 0]


def _rows(path: Path, sql: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


async def test_two_stores_on_one_file_share_flows(tmp_path: Path, clock: Clock) -> None:
    """Every mcp-guard process on the host (and, later, every replica) sees the same flow."""
    a = SQLiteState(tmp_path / "state.db", clock=clock, flows=BOUNDS)
    b = SQLiteState(tmp_path / "state.db", clock=clock, flows=BOUNDS)
    await a.start()
    await b.start()
    try:
        t = await record(a, call("d1", "private"))
        await record(b, call("d2", "untrusted"))
        assert set((await a.flow("f-1")).labels) == {"private", "untrusted"}
        await b.unrecord_call(t)
        assert set((await a.flow("f-1")).labels) == {"untrusted"}
    finally:
        await a.aclose()
        await b.aclose()


def _unusable(path: Path) -> None:
    """The state file made unusable: a directory where it was."""
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    path.mkdir()


async def test_an_unusable_file_is_a_state_error_for_every_flow_method(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    sqlite = SQLiteState(path, timeout_s=1.0, flows=BOUNDS)
    await sqlite.start()
    t = await record(sqlite, call("d1", "private"))
    _unusable(path)
    try:
        with pytest.raises(StateError):
            await sqlite.flow("f-1")
        with pytest.raises(StateError):
            await sqlite.record_call(F1, call("d2"))
        with pytest.raises(StateError):
            await sqlite.unrecord_call(t)
    finally:
        await sqlite.aclose()


async def test_labels_and_ids_with_quotes_braces_and_unicode_round_trip(store: StateStore) -> None:
    """Names are data, never syntax: the PostgreSQL store binds them client-side into one script."""
    odd = ['a,b"}{\\', "it's\u200b%(id)s", "{}", "NULL"]  # BOUNDS.labels == 4
    ref = FlowRef("f-'\"; DROP TABLE flows; --", "o'brien")
    t = await record(store, call("d'1", *odd[:2]), ref)
    await record(store, call("d2", *odd[2:]), ref)
    f = await store.flow(ref.id)
    assert set(f.labels) == set(odd)
    assert [c.decision_id for c in f.history] == ["d'1", "d2"]
    await store.unrecord_call(t)
    assert set((await store.flow(ref.id)).labels) == set(odd[2:])
