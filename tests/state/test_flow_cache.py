"""The SQLite store's in-memory flow cache (state/sqlite._FlowCache) never answers what the file does not hold.

A differential test: two stores with the cache on one file (two processes, as far as SQLite can tell) and a
third with it off make thousands of random flow operations — records (allowed and denied, with and without
labels), take-backs, idle expiry, bounds refusals, writes from a foreign connection — and after each one
every flow read through a cached store must equal the uncached read, field by field."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from mcp_guard.state import FlowBounds, FlowCall, FlowRef, FlowTicket, SQLiteState

pytestmark = pytest.mark.anyio

BOUNDS = FlowBounds(idle_s=50.0, history=4, labels=3, per_principal=3)
REFS = [FlowRef(f"f-{i}", "alice" if i < 4 else "bob") for i in range(6)]
LABELS = ("private", "untrusted", "egress", "pii")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _call(rng: random.Random, i: int) -> FlowCall:
    allowed = rng.random() < 0.8
    labels = tuple(rng.sample(LABELS, rng.randint(0, 2))) if allowed else ()
    return FlowCall(f"d{i}", "tools/call", "tickets", f"t{i % 3}", "allow" if allowed else "deny", labels, f"T{i}")


async def test_cached_reads_equal_uncached_reads_over_random_operations(tmp_path: Path) -> None:
    path, clock, rng = tmp_path / "state.db", Clock(), random.Random(19)
    a = SQLiteState(path, clock=clock, flows=BOUNDS)
    b = SQLiteState(path, clock=clock, flows=BOUNDS)
    truth = SQLiteState(path, clock=clock, flows=BOUNDS, flow_cache=0)
    for s in (a, b, truth):
        await s.start()
    foreign = sqlite3.connect(path, isolation_level=None)
    tickets: list[FlowTicket] = []
    compared = 0
    for i in range(3000):
        store = a if rng.random() < 0.7 else b
        roll = rng.random()
        if roll < 0.6:
            recorded = await store.record_call(rng.choice(REFS), _call(rng, i))
            if isinstance(recorded, FlowTicket):
                tickets.append(recorded)
        elif roll < 0.7 and tickets:
            await store.unrecord_call(tickets.pop(rng.randrange(len(tickets))))
        elif roll < 0.8:
            clock.now += rng.choice((1.0, 10.0, 49.0, 50.0, 75.0))  # some flows expire, some just stay
        elif roll < 0.83:
            foreign.execute("DELETE FROM flow_labels WHERE flow_id=? AND label=?", (rng.choice(REFS).id, "private"))
        elif roll < 0.85:  # changes that keep every count: only the flow's version (the file's triggers) tells
            foreign.execute("UPDATE flow_labels SET origin = latest WHERE flow_id=?", (rng.choice(REFS).id,))
        elif roll < 0.87:
            foreign.execute(
                "UPDATE flow_calls SET call = replace(call, 'tickets', 'other') WHERE flow_id=?", (rng.choice(REFS).id,)
            )
        for ref in REFS:
            want = await truth.flow(ref.id)
            for cached in (a, b):
                got = await cached.flow(ref.id)
                assert (got.id, dict(got.labels), got.history) == (want.id, dict(want.labels), want.history), (i, ref)
                compared += 1
    assert a.stats["flow_hits"] > 1000 and b.stats["flow_hits"] > 100  # the cache was used, not bypassed
    assert a._flows.kept > 100 and b._flows.kept > 100  # entries kept across the other store's commits, each checked
    assert compared == 3000 * len(REFS) * 2
    foreign.close()
    for s in (a, b, truth):
        await s.aclose()


async def test_a_write_by_another_connection_is_seen_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    await store.start()
    ref = FlowRef("f-x", "alice")
    first = FlowCall("d1", "tools/call", "s", "t", "allow", ("private",), "T")
    assert isinstance(await store.record_call(ref, first), FlowTicket)
    assert set((await store.flow(ref.id)).labels) == {"private"}
    hits = store.stats["flow_hits"]
    assert set((await store.flow(ref.id)).labels) == {"private"} and store.stats["flow_hits"] == hits + 1
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("DELETE FROM flow_labels WHERE flow_id=?", (ref.id,))
    other.close()
    assert dict((await store.flow(ref.id)).labels) == {}
    await store.aclose()


async def test_another_process_writing_other_flows_leaves_this_flows_entry_in_use(tmp_path: Path) -> None:
    """Two workers on one file, each with its own flows: the other's commits do not cost this one its cache."""
    path = tmp_path / "state.db"
    mine, theirs = SQLiteState(path), SQLiteState(path)
    for s in (mine, theirs):
        await s.start()
    ref, other = FlowRef("f-mine", "alice"), FlowRef("f-theirs", "bob")
    assert isinstance(
        await mine.record_call(ref, FlowCall("d0", "tools/call", "s", "t", "allow", ("x",), "T")), FlowTicket
    )
    for i in range(1, 20):
        await theirs.record_call(other, FlowCall(f"o{i}", "tools/call", "s", "t", "allow", (), "T"))
        hits = mine.stats["flow_hits"]
        flow = await mine.flow(ref.id)
        assert mine.stats["flow_hits"] == hits + 1 and [c.decision_id for c in flow.history][-1] == f"d{i - 1}"
        assert isinstance(
            await mine.record_call(ref, FlowCall(f"d{i}", "tools/call", "s", "t", "allow", (), "T")), FlowTicket
        )
    assert mine._flows.kept >= 19
    # and a change to this flow by the other one is seen at once
    await theirs.record_call(ref, FlowCall("t1", "tools/call", "s", "t", "allow", ("y",), "T"))
    flow = await mine.flow(ref.id)
    assert flow.history[-1].decision_id == "t1" and set(flow.labels) == {"x", "y"}
    for s in (mine, theirs):
        await s.aclose()


async def test_a_file_made_before_flow_versions_gets_them_and_the_cache_stays_exact(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    old.execute(  # the flows table as earlier versions made it: no version column, no triggers
        "CREATE TABLE flows (id TEXT NOT NULL PRIMARY KEY, principal TEXT NOT NULL, generation TEXT NOT NULL, "
        "seen REAL NOT NULL, next_n INTEGER NOT NULL) WITHOUT ROWID"
    )
    old.execute("INSERT INTO flows VALUES ('f-old', 'alice', 'g1', 9e12, 0)")
    store = SQLiteState(path)
    await store.start()
    columns = [r[1] for r in old.execute("PRAGMA table_info(flows)")]
    triggers = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert columns[-1] == "version" and len(triggers) == 6
    assert old.execute("SELECT version FROM flows WHERE id='f-old'").fetchone() == (0,)
    ref = FlowRef("f-1", "alice")
    await store.record_call(ref, FlowCall("d1", "tools/call", "s", "t", "allow", ("x",), "T"))
    assert set((await store.flow(ref.id)).labels) == {"x"}
    old.execute("DELETE FROM flow_labels WHERE flow_id='f-1'")  # a foreign write the triggers count
    assert dict((await store.flow(ref.id)).labels) == {}
    again = SQLiteState(path)  # opening the file again changes nothing
    await again.start()
    assert await again.flow(ref.id) == await store.flow(ref.id)
    old.close()
    for s in (store, again):
        await s.aclose()
