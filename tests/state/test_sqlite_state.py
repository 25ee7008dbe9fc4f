"""SQLiteState: one file shared by several processes, and every way the file can fail is a StateError."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from guard_harness import wait_for
from mcp_guard.errors import StateError
from mcp_guard.pins import PinStore
from mcp_guard.settings import parse_settings
from mcp_guard.state import Limit, SQLiteState, open_state
from mcp_guard.state import sqlite as state_sqlite

pytestmark = pytest.mark.anyio

SRC = Path(__file__).resolve().parents[2] / "src"

_WORKER = """
import anyio, json, sys
from mcp_guard.state import Limit, SQLiteState

async def main(path, n):
    store = SQLiteState(path, timeout_s=30.0)
    await store.start()
    admitted = 0
    for _ in range(n):
        admitted += (await store.admit([Limit("shared", 25, 3600.0), Limit("other", 1000, 60.0)])).admitted
    await store.aclose()
    print(json.dumps(admitted))

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def replace_with_directory(path: Path) -> None:
    """Make the state file unusable the way an operator's mistake would: a directory where the file was."""
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    path.mkdir()


def _admitted_by_workers(path: Path, workers: int, attempts: int) -> list[int]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(attempts)],
            stdout=subprocess.PIPE,
            env={"PYTHONPATH": str(SRC)},
        )
        for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers
    return [int(json.loads(o)) for o in outputs]


async def test_several_processes_on_one_file_admit_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    await store.start()  # create the tables once, as the proxy does at start
    admitted = await anyio.to_thread.run_sync(_admitted_by_workers, path, 4, 20)
    assert sum(admitted) == 25  # 80 attempts, 25 slots, no slot given twice
    usage = await store.usage([("shared", 3600.0), ("other", 60.0)])
    assert usage == {("shared", 3600.0): 25, ("other", 60.0): 25}  # all or nothing: the same 25 in both
    await store.aclose()


async def test_it_shares_the_file_with_the_pins(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    pins = PinStore(path)
    store = SQLiteState(path)
    await store.start()
    assert (await store.admit([Limit("k", 1, 60.0)])).admitted
    assert pins.observe("srv", "tool", "a" * 64, {"name": "tool"}).new
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"rate_hits", "rate_counts", "tool_pins", "tool_pending"} <= tables
    pins.close()
    await store.aclose()


async def test_a_file_replaced_by_a_directory_is_a_stated_error_and_repair_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    await store.start()
    assert (await store.admit([Limit("k", 5, 60.0)])).admitted

    replace_with_directory(path)
    with pytest.raises(StateError) as err:
        await store.admit([Limit("k", 5, 60.0)])
    assert "unable to open database file" in err.value.cause and str(path) not in err.value.cause
    assert str(path) in str(err.value)  # the operator's message names the file
    with pytest.raises(StateError):
        await store.usage([("k", 60.0)])

    path.rmdir()  # repaired (an empty file: the counters start again)
    assert (await store.admit([Limit("k", 5, 60.0)])).admitted
    await store.aclose()


async def test_a_locked_file_is_a_timeout_and_counts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path, timeout_s=0.2)
    await store.start()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    started = time.monotonic()
    with pytest.raises(StateError) as err:
        await store.admit([Limit("k", 5, 60.0)])
    assert time.monotonic() - started < 2.0  # bounded by the store's timeout, not SQLite's default
    assert err.value.cause in {"database is locked", "no answer within 200 ms"}
    holder.execute("ROLLBACK")
    holder.close()
    assert await store.usage([("k", 60.0)]) == {("k", 60.0): 0}
    await store.aclose()


async def test_an_uncontended_store_answers_on_the_loop_and_checkpoints_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_sqlite, "CHECKPOINT_EVERY", 10)
    store = SQLiteState(tmp_path / "state.db")
    await store.start()  # opening the file is a thread operation
    assert store.stats["thread"] == 1
    for _ in range(9):
        assert (await store.admit([Limit("k", 100, 60.0)])).admitted
    assert store.stats["inline"] == 9 and store.stats["thread"] == 1 and store.stats["checkpoints"] == 0
    assert await store.usage([("k", 60.0)]) == {("k", 60.0): 9}  # the tenth: checkpoint due, so the thread
    assert store.stats["thread"] == 2 and store.stats["checkpoints"] == 1
    assert (await store.admit([Limit("k", 100, 60.0)])).admitted  # back on the loop
    assert store.stats["inline"] == 10
    await store.aclose()


async def test_operations_meeting_one_in_the_thread_wait_for_it_and_answer_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under concurrent load the operation that runs in the thread (every CHECKPOINT_EVERY, with the checkpoint)
    must not drag the ones arriving meanwhile into the thread after it: they wait on the loop, then run inline."""
    monkeypatch.setattr(state_sqlite, "CHECKPOINT_EVERY", 10)
    loop_thread = threading.current_thread()
    entered, gate = threading.Event(), threading.Event()

    def clock() -> float:  # read under the write lock: the thread's operation holds the connection here
        if threading.current_thread() is not loop_thread:
            entered.set()
            gate.wait(10)
        return time.time()

    store = SQLiteState(tmp_path / "state.db", clock=clock, timeout_s=10.0)
    await store.start()  # a thread operation that reads no clock
    for _ in range(9):
        assert (await store.admit([Limit("k", 100, 60.0)])).admitted
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.admit, [Limit("k", 100, 60.0)])  # the tenth: the thread's, and it holds on
        await anyio.to_thread.run_sync(entered.wait, 10)
        for _ in range(5):  # started in one turn: the first runs alone, the other four as one group (apply)
            tg.start_soon(store.admit, [Limit("k", 100, 60.0)])
        await wait_for(lambda: store.stats["waited"] >= 2)
        gate.set()
    assert store.stats["thread"] == 2 and store.stats["checkpoints"] == 1  # the start and the tenth, no more
    assert store.stats["inline"] == 9 + 2
    assert await store.usage([("k", 60.0)]) == {("k", 60.0): 15}
    await store.aclose()


async def test_a_busy_inline_attempt_changes_nothing_and_the_thread_retries_it(tmp_path: Path) -> None:
    """SQLITE_BUSY inside the inline transaction (after BEGIN IMMEDIATE, before the count): rolled back, and the
    same admission runs in the thread once — counted exactly once."""
    calls = 0

    def busy_once() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = 5  # SQLITE_BUSY
            raise busy
        return time.time()

    store = SQLiteState(tmp_path / "state.db", clock=busy_once)
    await store.start()
    admission = await store.admit([Limit("k", 5, 60.0), Limit("j", 5, 60.0)])
    assert admission.admitted and admission.usage == {("k", 60.0): 1, ("j", 60.0): 1}
    assert store.stats["busy"] == 1 and store.stats["thread"] == 2 and store.stats["inline"] == 0
    assert await store.usage([("k", 60.0), ("j", 60.0)]) == {("k", 60.0): 1, ("j", 60.0): 1}
    await store.aclose()


async def test_any_other_error_inline_is_the_answer_not_a_retry(tmp_path: Path) -> None:
    """Fail closed on the inline path too: an error that is not contention is a StateError at once."""
    calls = 0

    def broken_disk() -> float:
        nonlocal calls
        calls += 1
        error = sqlite3.OperationalError("disk I/O error")
        error.sqlite_errorcode = 10  # SQLITE_IOERR
        raise error

    store = SQLiteState(tmp_path / "state.db", clock=broken_disk)
    await store.start()
    with pytest.raises(StateError) as err:
        await store.admit([Limit("k", 5, 60.0)])
    assert err.value.cause == "disk I/O error" and calls == 1 and store.stats["thread"] == 1
    await store.aclose()


async def test_a_lock_held_by_another_process_moves_the_call_to_the_thread_which_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path, timeout_s=30.0)
    await store.start()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release_when_busy() -> None:
        deadline = time.monotonic() + 30
        while store.stats["busy"] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # polling another thread's progress under a deadline, not a fixed wait
        holder.execute("ROLLBACK")
        released.set()

    releaser = threading.Thread(target=release_when_busy)
    releaser.start()
    admission = await store.admit([Limit("k", 5, 60.0)])
    releaser.join()
    holder.close()
    assert released.is_set() and admission.admitted and store.stats["busy"] == 1
    assert await store.usage([("k", 60.0)]) == {("k", 60.0): 1}
    await store.aclose()


async def test_past_the_deadline_the_worker_rolls_back_instead_of_counting(tmp_path: Path) -> None:
    """The await gives up at the timeout; the worker thread, still inside the transaction, must not commit.

    The store is warmed first (connection open, worker thread started) and the timeout is a full second, so
    the worker reaches the clock inside the transaction well before the await gives up even on a loaded
    machine (CI once took over 200 ms to get a cold worker that far)."""
    release = threading.Event()
    entered = threading.Event()
    block = threading.Event()

    def slow_clock() -> float:
        if block.is_set() and not release.is_set():
            entered.set()
            release.wait(30)
        return time.time()

    store = SQLiteState(tmp_path / "state.db", timeout_s=30.0, clock=slow_clock, inline=False)
    await store.start()
    assert (await store.admit([Limit("warm", 5, 60.0)])).admitted
    store.timeout_s = 1.0
    block.set()
    release_after_timeout = anyio.Event()

    async def let_go() -> None:
        await release_after_timeout.wait()
        release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(let_go)
        with pytest.raises(StateError) as err:
            await store.admit([Limit("k", 5, 60.0)])
        assert entered.is_set() and err.value.cause == "no answer within 1000 ms"
        release_after_timeout.set()
    # usage waits for the abandoned worker (one connection, one lock), then sees nothing counted
    store.timeout_s = 30.0
    assert await store.usage([("k", 60.0)]) == {("k", 60.0): 0}
    await store.aclose()


async def test_open_state_uses_the_state_path_and_timeout(tmp_path: Path) -> None:
    settings = parse_settings({"audit": {"state_path": "s/state.db", "state_timeout_ms": 250}}, base_dir=str(tmp_path))
    async with open_state(settings) as state:
        assert isinstance(state, SQLiteState)
        assert state.path == tmp_path / "s" / "state.db" and state.timeout_s == 0.25
        assert (await state.admit([Limit("k", 1, 1.0)])).admitted
    assert (tmp_path / "s" / "state.db").exists()


async def test_open_state_on_an_unusable_path_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    settings = parse_settings({"audit": {"state_path": "state.db"}}, base_dir=str(tmp_path))
    with pytest.raises(StateError, match=r"state\.db"):
        async with open_state(settings):
            pass


async def test_the_stored_counts_stay_the_number_of_stored_hits(tmp_path: Path) -> None:
    """``rate_counts.n`` is the bucket's number of ``rate_hits`` rows (live or expired and not yet pruned) after
    every admission, refusal and release — one count write per admission, none left out when hits expire."""
    import random

    now = [1_000.0]
    store = SQLiteState(tmp_path / "state.db", clock=lambda: now[0])
    await store.start()
    rng = random.Random(7)
    limits = [Limit("a", 3, 10.0), Limit("b", 5, 30.0)]
    tickets = []
    try:
        for _ in range(600):
            roll = rng.random()
            if roll < 0.6:
                admission = await store.admit(rng.sample(limits, rng.randint(1, 2)))
                if admission.admitted and admission.ticket is not None:
                    tickets.append(admission.ticket)
            elif roll < 0.75 and tickets:
                await store.release(tickets.pop(rng.randrange(len(tickets))))
            else:
                now[0] += rng.choice((0.5, 3.0, 11.0))
            db = sqlite3.connect(tmp_path / "state.db")
            try:
                stored = dict(db.execute("SELECT key, n FROM rate_counts").fetchall())
                hits = dict(db.execute("SELECT key, count(*) FROM rate_hits GROUP BY key").fetchall())
            finally:
                db.close()
            assert {k: n for k, n in stored.items() if n} == hits
    finally:
        await store.aclose()
