"""Reading a PostgreSQL audit log: the same rows, tail, verify and export as SQLite (parametrised over
both backends), tail -f woken by NOTIFY, tampering named, and the CLI on a DSN."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from anyio.abc import Process
from audit_testkit import PYTHON, child_env, event
from psycopg import conninfo

from mcp_guard.audit import AuditReader, AuditWriter, ChainHead, Filters, open_sqlite_sink
from mcp_guard.audit.export import export
from mcp_guard.audit.postgres import open_postgres, open_postgres_reader
from mcp_guard.audit.reader import WakingReader
from mcp_guard.audit.sqlite import open_sqlite_reader
from mcp_guard.audit.tail import tail
from mcp_guard.audit.verify import verify_chain
from mcp_guard.cli import main
from mcp_guard.errors import AuditError
from mcp_guard.types import AuditEvent

pytestmark = pytest.mark.anyio

OLD = "2020-01-01T00:00:00.000000Z"

Opener = Callable[[], AbstractContextManager[AuditReader]]  # opens a reader of one log


def dataset() -> list[AuditEvent]:
    """The events test_tail_export.py reads, with fixed ids and times so both backends store the same bytes."""
    events = [
        AuditEvent(
            kind="session.start",
            session_id="s1",
            principal="alice",
            ts=OLD,
            details={"client": {"name": "claude", "version": "1.0"}},
        ),
        event(1),
        event(2, principal="bob", decision="deny", reasons=("destructive", "weekend")),
        event(3, server="files", tool="delete", decision="deny", reasons=("no",)),
        AuditEvent(
            kind="call.result",
            principal="alice",
            server="tickets",
            tool="create_ticket",
            result={"is_error": False, "bytes": 42, "sha256": "ab"},
        ),
        AuditEvent(kind="upstream.crash", server="files", details={"error": "exit 1"}),
    ]
    return [
        replace(e, event_id=f"ev-{i}", ts=e.ts if e.ts == OLD else f"2026-11-25T06:31:0{i}.000000Z")
        for i, e in enumerate(events)
    ]


@asynccontextmanager
async def pg_writer(dsn: str, **kwargs: Any) -> AsyncIterator[AuditWriter]:
    async with open_postgres(dsn) as backend, AuditWriter.running(backend, **kwargs) as store:
        yield store


@pytest.fixture(params=["sqlite", "postgres"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """The dataset written through one backend; calling it opens a reader of that log."""
    if request.param == "sqlite":
        path = tmp_path / "audit.db"
        async with open_sqlite_sink(path) as lite:
            for e in dataset():
                await lite.record(e)
        return lambda: open_sqlite_reader(path)
    dsn = request.getfixturevalue("pg_dsn")
    async with pg_writer(dsn) as store:
        for e in dataset():
            await store.record(e)
    return lambda: open_postgres_reader(dsn)


def run_tail(open_log: Opener, filters: Filters, last: int | None) -> list[int]:
    out = io.StringIO()
    with open_log() as reader:
        tail(reader, filters, out, last=last, follow=False, as_json=True, colour=False)
    return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("filters", "last", "expected"),
    [
        (Filters(), None, [1, 2, 3, 4, 5, 6]),
        (Filters(principal="bob"), None, [3]),
        (Filters(server="files"), None, [4, 6]),
        (Filters(tool="create_ticket"), None, [2, 3, 5]),
        (Filters(decision="deny"), None, [3, 4]),
        (Filters(decision="allow", principal="alice"), None, [2]),
        (Filters(kinds=("call.result",)), None, [5]),
        (Filters(kinds=("call.*",)), None, [2, 3, 4, 5]),
        (Filters(kinds=("session.start", "upstream.crash")), None, [1, 6]),
        (Filters(since="2021-01-01T00:00:00.000000Z"), None, [2, 3, 4, 5, 6]),
        (Filters(), 2, [5, 6]),
        (Filters(decision="deny"), 1, [4]),
        (Filters(), 0, []),
    ],
)
async def test_tail_filters_are_the_same_on_both_backends(
    log: Opener, filters: Filters, last: int | None, expected: list[int]
) -> None:
    assert run_tail(log, filters, last) == expected


@pytest.mark.parametrize(
    ("filters", "last", "expected"),
    [
        (Filters(after_seq=2, until_seq=5), None, [3, 4, 5]),
        (Filters(kinds=("call.*",), principal="alice"), 1, [5]),
        (Filters(since="2026-11-25T06:31:04.000000Z"), None, [5, 6]),
    ],
)
async def test_reader_rows_are_the_same_on_both_backends(
    log: Opener, filters: Filters, last: int | None, expected: list[int]
) -> None:
    with log() as reader:
        assert [r[0] for r in reader.rows(filters, last=last)] == expected


async def test_verify_and_export_are_the_same_on_both_backends(pg_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    async with open_sqlite_sink(path) as lite, pg_writer(pg_dsn) as store:
        for e in dataset():
            assert await lite.record(e) == await store.record(e)
    exports: list[str] = []
    results = []
    for opener in (lambda: open_sqlite_reader(path), lambda: open_postgres_reader(pg_dsn)):
        with opener() as reader:
            out = io.StringIO()
            assert export(reader, out) == 6
            exports.append(out.getvalue())
            results.append(verify_chain(reader))
    assert exports[0] == exports[1]  # byte for byte: same values, same seq, same hashes
    assert results[0] == results[1] and results[0].ok and results[0].head_seq == 6


async def test_reader_head_rows_and_location(pg_dsn: str) -> None:
    async with pg_writer(pg_dsn) as store:
        for e in dataset():
            await store.record(e)
    with open_postgres_reader(conninfo.make_conninfo(pg_dsn, password="s3cr3t")) as reader:
        assert "s3cr3t" not in reader.location and reader.location.startswith("postgresql://")
        rows = list(reader.rows())
        assert reader.head() == ChainHead(6, rows[-1][-1])
        assert rows[1][10] == '["support may create tickets"]'  # JSON columns as stored text
        assert reader.schema_warnings() == ()


async def test_reader_snapshot_holds_still_while_the_proxy_writes(pg_dsn: str) -> None:
    async with pg_writer(pg_dsn) as store:
        await store.record(event(1))
        with open_postgres_reader(pg_dsn) as reader:
            with reader.snapshot():
                before = reader.head()
                await store.record(event(2))  # committed: a fresh read outside the snapshot sees it
                assert reader.head() == before
                assert len(list(reader.rows())) == 1
            head = reader.head()
            assert head is not None and head.seq == 2


async def test_rows_stream_a_log_larger_than_one_fetch(pg_dsn: str) -> None:
    async with pg_writer(pg_dsn) as store:
        for i in range(4500):
            store.record_nowait(event(i))
        await store.record(event(4500))
    with open_postgres_reader(pg_dsn) as reader:
        assert [r[0] for r in reader.rows()] == list(range(1, 4502))
        result = verify_chain(reader)
    assert result.ok and result.rows == 4501


async def test_reader_of_an_empty_log_and_of_no_log(pg_dsn: str) -> None:
    with pytest.raises(AuditError, match="no mcp-guard audit log"), open_postgres_reader(pg_dsn):
        pass
    async with pg_writer(pg_dsn):
        pass
    with open_postgres_reader(pg_dsn) as reader:
        assert reader.head() is None
        assert list(reader.rows()) == []
        assert verify_chain(reader).ok


def test_reader_waits_for_the_log_to_appear(pg_dsn: str) -> None:
    slept: list[float] = []

    def create_on_first_sleep(seconds: float) -> None:
        if not slept:  # the proxy starts while the reader waits
            anyio.run(_create, pg_dsn)
        slept.append(seconds)

    with open_postgres_reader(pg_dsn, wait=True, sleep=create_on_first_sleep) as reader:
        assert reader.head() is not None
    assert slept


async def _create(dsn: str) -> None:
    async with pg_writer(dsn) as store:
        await store.record(event(0))


# ---------------------------------------------------------------------------------------------- tampering


async def test_tampering_past_the_trigger_is_named_by_verify(
    pg_dsn: str, pg_admin: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    async with pg_writer(pg_dsn) as store:
        for e in dataset():
            await store.record(e)
    pg_admin.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    pg_admin.execute("UPDATE audit_events SET principal = 'mallory' WHERE seq = 3")
    with open_postgres_reader(pg_dsn) as reader:
        assert any("disabled" in w for w in reader.schema_warnings())
        result = verify_chain(reader)
    assert not result.ok and result.bad_seq == 3 and "altered" in (result.problem or "")
    assert main(["audit", "verify", "--dsn", pg_dsn]) == 1
    captured = capsys.readouterr()
    assert "chain broken at seq 3" in captured.out and "disabled" in captured.err

    pg_admin.execute("DROP TRIGGER audit_events_append_only ON audit_events")
    pg_admin.execute("UPDATE audit_events SET principal = 'bob' WHERE seq = 3")  # put back
    pg_admin.execute("DELETE FROM audit_events WHERE seq = 5")
    with open_postgres_reader(pg_dsn) as reader:
        assert any("missing" in w for w in reader.schema_warnings())
        result = verify_chain(reader)
    assert not result.ok and result.bad_seq == 5 and "deleted" in (result.problem or "")


# ---------------------------------------------------------------------------------------------- tail -f via NOTIFY


async def test_wait_for_rows_wakes_on_a_commit_and_not_for_another_schema(
    pg_dsn: str, pg_admin: psycopg.Connection[Any]
) -> None:
    pg_admin.execute("CREATE SCHEMA other")
    other = conninfo.make_conninfo(pg_dsn, options="-csearch_path=other")
    async with pg_writer(pg_dsn) as store, pg_writer(other) as elsewhere:
        await store.record(event(0))
        with open_postgres_reader(pg_dsn) as reader:
            assert isinstance(reader, WakingReader)
            with anyio.fail_after(10):  # the first call starts listening and returns at once
                await anyio.to_thread.run_sync(reader.wait_for_rows, 60.0)

            started = time.monotonic()
            await anyio.to_thread.run_sync(reader.wait_for_rows, 0.3)  # nothing committed: the timeout
            assert time.monotonic() - started >= 0.3

            await elsewhere.record(event(1))  # another schema's commit does not wake us
            started = time.monotonic()
            await anyio.to_thread.run_sync(reader.wait_for_rows, 1.0)
            assert time.monotonic() - started >= 1.0

            await store.record(event(1))  # ours does, long before the timeout
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(reader.wait_for_rows, 60.0)


async def _read_json_lines(process: Process, want: int, buffer: bytearray) -> list[dict[str, Any]]:
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []
    while len(lines) < want:
        while b"\n" not in buffer:
            buffer.extend(await process.stdout.receive())
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        lines.append(json.loads(line))
    return lines


async def test_tail_follow_is_woken_by_notify_not_by_polling(pg_dsn: str) -> None:
    async with pg_writer(pg_dsn) as store:
        for i in range(3):
            await store.record(event(i))
        # The safety-net poll is 60 s: rows that arrive within seconds came through NOTIFY.
        argv = ["-m", "mcp_guard", "audit", "tail", "-f", "--json", "-n", "2", "--interval", "60"]
        process = await anyio.open_process([PYTHON, *argv, "--kind", "call.*", "--dsn", pg_dsn], env=child_env())
        buffer = bytearray()
        try:
            with anyio.fail_after(30):
                backlog = await _read_json_lines(process, 2, buffer)
                assert [e["seq"] for e in backlog] == [2, 3]
            for i in range(3, 8):
                await store.record(event(i))
                store.record_nowait(AuditEvent(kind="tools.list", principal="alice"))  # filtered out
                with anyio.fail_after(10):
                    (line,) = await _read_json_lines(process, 1, buffer)
                assert line["decision_id"] == f"dec-{i}"
        finally:
            process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def test_tail_follow_waits_for_the_log_to_be_created(pg_dsn: str) -> None:
    process = await anyio.open_process(
        [PYTHON, "-m", "mcp_guard", "audit", "tail", "-f", "--json", "--dsn", pg_dsn], env=child_env()
    )
    buffer = bytearray()
    try:
        with anyio.fail_after(30):
            async with pg_writer(pg_dsn) as store:
                await store.record(event(1))
                first = await _read_json_lines(process, 1, buffer)
        assert first[0]["decision_id"] == "dec-1"
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


# ---------------------------------------------------------------------------------------------- the CLI on a DSN


async def test_cli_reads_the_dsn_from_the_config_or_the_command_line(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with pg_writer(pg_dsn) as store:
        for e in dataset():
            await store.record(e)
    config = tmp_path / "mcp-guard.toml"
    config.write_text(f'[audit]\nbackend = "postgres"\ndsn = "{pg_dsn}"\n')
    assert main(["audit", "verify", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "6 rows, chain intact" in out and "ok: postgresql://postgres@" in out
    assert main(["audit", "verify", "--dsn", pg_dsn, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["head"]["seq"] == 6
    assert main(["audit", "tail", "--config", str(config), "--decision", "deny", "--json"]) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [3, 4]
    target = tmp_path / "out.jsonl"
    assert main(["audit", "export", "--dsn", pg_dsn, "--after-seq", "4", "-o", str(target)]) == 0
    assert [json.loads(x)["seq"] for x in target.read_text().splitlines()] == [5, 6]


def test_cli_dsn_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["audit", "verify", "--dsn", "host=h password=s3cr3t port"]) == 2
    err = capsys.readouterr().err
    assert "--dsn: not a PostgreSQL connection string" in err and "s3cr3t" not in err
    with pytest.raises(SystemExit) as usage:
        main(["audit", "verify", "--dsn", "postgresql://h/db", "--db", str(tmp_path / "a.db")])
    assert usage.value.code == 2
    capsys.readouterr()
    assert main(["audit", "verify", "--dsn", "postgresql://u:s3cr3t@127.0.0.1:1/db"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mcp-guard: error: postgresql://u@127.0.0.1:1/db: cannot connect")
    assert len(err.strip().splitlines()) == 1 and "s3cr3t" not in err
