"""The StateStore contract, run against every backend (in-memory, SQLite and PostgreSQL) with an injected clock.

Sliding-window edges are checked at exact instants: a hit at ``t`` counts in ``[t, t + window_s)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_guard.state import Limit, MemoryState, SQLiteState, StateStore
from mcp_guard.state.postgres import PostgresState

pytestmark = pytest.mark.anyio


class Clock:
    """Wall-clock seconds that only move when a test moves them."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryState(clock=clock)
        return
    if request.param == "postgres":  # a real server (tests/pg_support.py), a fresh database per test
        pg = PostgresState(request.getfixturevalue("pg_dsn"), timeout_s=5.0, clock=clock)
        await pg.start()
        yield pg
        await pg.aclose()
        return
    sqlite = SQLiteState(tmp_path / "state.db", timeout_s=5.0, clock=clock)
    await sqlite.start()
    yield sqlite
    await sqlite.aclose()


A5 = Limit("a", 5, 10.0)


async def _fill(store: StateStore, clock: Clock, limit: Limit, times: list[float]) -> None:
    start = clock.now
    for t in times:
        clock.now = start + t
        assert (await store.admit([limit])).admitted


async def test_admits_up_to_the_limit_then_refuses_without_counting(store: StateStore, clock: Clock) -> None:
    for i in range(5):
        a = await store.admit([A5])
        assert a.admitted and a.usage == {("a", 10.0): i + 1} and a.ticket is not None
    for _ in range(3):
        refused = await store.admit([A5])
        assert not refused.admitted and refused.full == (A5,) and refused.ticket is None
        assert refused.usage == {("a", 10.0): 5}
    assert await store.usage([("a", 10.0)]) == {("a", 10.0): 5}  # refused calls were not counted


async def test_the_window_slides_hit_by_hit(store: StateStore, clock: Clock) -> None:
    start = clock.now
    await _fill(store, clock, A5, [0.0, 1.0, 2.0, 3.0, 4.0])

    clock.now = start + 9.75
    refused = await store.admit([A5])
    assert not refused.admitted and refused.retry_after_s == pytest.approx(0.25)  # the hit at 0 leaves at 10

    clock.now = start + 10.0  # exactly one window after the first hit: it no longer counts
    assert await store.usage([("a", 10.0)]) == {("a", 10.0): 4}
    assert (await store.admit([A5])).admitted

    clock.now = start + 10.5  # the hit at 1 still counts until 11
    refused = await store.admit([A5])
    assert not refused.admitted and refused.retry_after_s == pytest.approx(0.5)

    clock.now = start + 30.0  # everything left the window
    assert await store.usage([("a", 10.0)]) == {("a", 10.0): 0}
    for _ in range(5):
        assert (await store.admit([A5])).admitted


async def test_several_limits_are_all_or_nothing(store: StateStore, clock: Clock) -> None:
    tight, loose = Limit("tight", 1, 60.0), Limit("loose", 100, 60.0)
    assert (await store.admit([tight, loose])).admitted
    refused = await store.admit([loose, tight])
    assert not refused.admitted and refused.full == (tight,)
    # the loose limit had room, but nothing was counted in it
    assert await store.usage([tight.bucket, loose.bucket]) == {tight.bucket: 1, loose.bucket: 1}


async def test_retry_after_is_when_every_full_limit_has_room(store: StateStore, clock: Clock) -> None:
    start = clock.now
    short, long = Limit("s", 1, 5.0), Limit("l", 1, 50.0)
    assert (await store.admit([short, long])).admitted
    clock.now = start + 1.0
    refused = await store.admit([short, long])
    assert set(refused.full) == {short, long}
    assert refused.retry_after_s == pytest.approx(49.0)


async def test_the_same_bucket_twice_counts_once_against_the_tightest_limit(store: StateStore) -> None:
    a = await store.admit([Limit("k", 3, 60.0), Limit("k", 2, 60.0)])
    assert a.admitted and a.usage == {("k", 60.0): 1}
    assert (await store.admit([Limit("k", 3, 60.0), Limit("k", 2, 60.0)])).admitted
    refused = await store.admit([Limit("k", 3, 60.0), Limit("k", 2, 60.0)])
    assert not refused.admitted and refused.full == (Limit("k", 2, 60.0),)
    assert (await store.admit([Limit("k", 3, 60.0)])).admitted  # the looser limit alone still has room


async def test_one_key_with_two_windows_is_two_counters(store: StateStore) -> None:
    minute, hour = Limit("k", 1, 60.0), Limit("k", 10, 3600.0)
    assert (await store.admit([hour])).admitted
    assert (await store.admit([minute])).admitted
    assert await store.usage([minute.bucket, hour.bucket]) == {minute.bucket: 1, hour.bucket: 1}


async def test_release_takes_an_admission_back(store: StateStore, clock: Clock) -> None:
    first = await store.admit([A5, Limit("b", 1, 10.0)])
    assert first.ticket is not None
    await store.release(first.ticket)
    assert await store.usage([("a", 10.0), ("b", 10.0)]) == {("a", 10.0): 0, ("b", 10.0): 0}
    assert (await store.admit([Limit("b", 1, 10.0)])).admitted
    await store.release(first.ticket)  # twice: nothing more to take back
    assert await store.usage([("b", 10.0)]) == {("b", 10.0): 1}


async def test_release_after_the_window_changes_nothing(store: StateStore, clock: Clock) -> None:
    start = clock.now
    old = await store.admit([A5])
    assert old.ticket is not None
    clock.now = start + 11.0
    assert (await store.admit([A5])).admitted
    await store.release(old.ticket)
    assert await store.usage([("a", 10.0)]) == {("a", 10.0): 1}


async def test_a_lowered_limit_waits_for_enough_hits_to_leave(store: StateStore, clock: Clock) -> None:
    start = clock.now
    await _fill(store, clock, A5, [0.0, 1.0, 2.0, 3.0, 4.0])
    clock.now = start + 5.0
    refused = await store.admit([Limit("a", 2, 10.0)])  # 5 in the window, room below 2: 0…3 must leave
    assert not refused.admitted and refused.retry_after_s == pytest.approx(8.0)


async def test_unknown_buckets_have_no_usage(store: StateStore) -> None:
    assert await store.usage([("never", 1.0), ("seen", 2.0)]) == {("never", 1.0): 0, ("seen", 2.0): 0}
    assert await store.usage([]) == {}


async def test_keys_with_quotes_braces_and_unicode_are_plain_data(store: StateStore) -> None:
    odd = Limit('tool_calls|o\'brien|"x"|{a,b}|\\|ü|%(hit)s', 1, 60.0)
    first = await store.admit([odd])
    assert first.admitted and first.ticket is not None
    assert not (await store.admit([odd])).admitted
    await store.release(first.ticket)
    assert await store.usage([odd.bucket]) == {odd.bucket: 0}
    assert (await store.admit([odd])).admitted
