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
        for ref in REFS:
            want = await truth.flow(ref.id)
            for cached in (a, b):
                got = await cached.flow(ref.id)
                assert (got.id, dict(got.labels), got.history) == (want.id, dict(want.labels), want.history), (i, ref)
                compared += 1
    assert a.stats["flow_hits"] > 1000 and b.stats["flow_hits"] > 100  # the cache was used, not bypassed
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
