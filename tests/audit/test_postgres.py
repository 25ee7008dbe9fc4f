"""The PostgreSQL audit backend against a real server: the writer's guarantees, one chain for many
writers, append-only in the database, schema versions, and bounded failure (down, hung, cut off)."""

from __future__ import annotations

import itertools
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from audit_testkit import PYTHON, child_env, event
from psycopg import conninfo

from mcp_guard.audit import AuditWriter, open_reader, open_sink, schema
from mcp_guard.audit.chain import GENESIS, ChainHead, canonical_json
from mcp_guard.audit.postgres import (
    CHANNEL,
    SCHEMA_VERSION,
    PostgresBackend,
    PostgresReader,
    connect_args,
    open_postgres,
    open_postgres_reader,
    redact_dsn,
)
from mcp_guard.audit.verify import verify_chain
from mcp_guard.errors import AuditError, ConfigError
from mcp_guard.settings import load_settings
from pg_support import PgServer, cut_guard_connections, hanging_proxy, start_cluster

pytestmark = pytest.mark.anyio

CHILD = str(Path(__file__).with_name("pg_writer_child.py"))


def stored(dsn: str, where: str = "") -> list[dict[str, Any]]:
    """Every row of audit_events, read on a fresh connection of our own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(f"SELECT * FROM audit_events {where} ORDER BY seq")
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur]


def verify(dsn: str) -> Any:
    with open_postgres_reader(dsn) as reader:
        return verify_chain(reader)


@dataclass(frozen=True)
class _Body:
    values: tuple[Any, ...]
    body: bytes


def _body(i: int) -> _Body:
    stored = dict.fromkeys(schema.BODY_COLUMNS) | {"event_id": f"e{i}", "ts": "2026-01-01T00:00:00Z", "kind": "x"}
    values = tuple(stored[c] for c in schema.BODY_COLUMNS)
    return _Body(values, canonical_json(values))


# ---------------------------------------------------------------------------------------------- the writer's guarantees


async def test_record_returns_after_the_commit_visible_to_another_connection(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:

        async def one(i: int) -> None:
            seq = await store.record(event(i))
            # Committed before record() returned: a separate connection sees the row right now.
            assert [r["decision_id"] for r in stored(pg_dsn, f"WHERE seq = {seq}")] == [f"dec-{i}"]

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
    assert [r["seq"] for r in stored(pg_dsn)] == list(range(1, 31))
    assert verify(pg_dsn).ok


async def test_group_commit_puts_many_events_in_one_transaction(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend, batch_max=256) as store:
        for i in range(1000):  # queued without yielding: the writer has not run yet
            store.record_nowait(event(i))
        assert await store.record(event(1000)) == 1001
        assert store.stats.batches == 8  # 256 + 256 + 256 + 128 + 64 + 32 + 8 + 1
        assert store.stats.largest_batch == 256
    assert len(stored(pg_dsn)) == 1001
    assert verify(pg_dsn).ok


async def test_rows_hold_exactly_what_sqlite_would_store(pg_dsn: str, tmp_path: Path) -> None:
    from mcp_guard.audit import open_sqlite_sink
    from mcp_guard.audit.sqlite import open_sqlite_reader

    odd = event(
        1,
        tool="bad\udc80name",
        principal="nul\x00byte",  # PostgreSQL text cannot hold NUL: escaped, on both backends alike
        arguments={"x": float("nan"), "y": (1, 2), "z": {3}, "b": b"\xff", 1: "int key", "nul": "a\x00b"},
        duration_ms=float("inf"),
        details={"text": "caf\u00e9 \U0001f600"},
    )
    events = [event(0), odd, event(2, decision="deny", reasons=None, arguments=None, duration_ms=None)]
    async with open_sqlite_sink(tmp_path / "a.db") as lite:
        for e in events:
            await lite.record(e)
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        for e in events:
            await store.record(e)
    with open_sqlite_reader(tmp_path / "a.db") as a, open_postgres_reader(pg_dsn) as b:
        assert list(b.rows()) == list(a.rows())  # every value, seq, prev_hash and hash
    row = stored(pg_dsn, "WHERE seq = 2")[0]
    assert row["principal"] == "nul\\x00byte"
    assert row["tool"] == "bad\\udc80name"
    assert row["duration_ms"] is None
    assert verify(pg_dsn).ok


async def test_record_after_close_raises(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        await store.record(event(0))
    with anyio.fail_after(2), pytest.raises(AuditError, match="closed"):
        await store.record(event(1))


async def test_close_flushes_queued_events(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        for i in range(500):
            store.record_nowait(event(i))
    assert len(stored(pg_dsn)) == 500


# ---------------------------------------------------------------------------------------------- one chain, many writers


async def test_backend_appends_numbered_batches_and_chains_on_after_another_writer(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as a, open_postgres(pg_dsn) as b:
        assert await a.read_head() == GENESIS
        assert await a.append([_body(1), _body(2)]) == 1
        assert await b.append([_body(3)]) == 3  # b reads the head inside its transaction
        assert await a.append([_body(4)]) == 4
        head = await b.read_head()
    rows = stored(pg_dsn)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    assert head == ChainHead(4, rows[-1]["hash"])
    assert verify(pg_dsn).ok


async def test_two_writers_with_interleaved_batches_keep_one_chain(pg_dsn: str) -> None:
    async with (
        open_postgres(pg_dsn) as a,
        open_postgres(pg_dsn) as b,
        AuditWriter.running(a, batch_max=8) as wa,
        AuditWriter.running(b, batch_max=8) as wb,
    ):

        async def burst(store: AuditWriter, who: str) -> None:
            for i in range(300):
                store.record_nowait(event(i, principal=who))
            await store.record(event(300, principal=who))

        async with anyio.create_task_group() as tg:
            tg.start_soon(burst, wa, "writer-a")
            tg.start_soon(burst, wb, "writer-b")
    rows = stored(pg_dsn)
    assert [r["seq"] for r in rows] == list(range(1, 603))
    who = [r["principal"] for r in rows]
    assert who.count("writer-a") == who.count("writer-b") == 301
    switches = sum(1 for x, y in itertools.pairwise(who) if x != y)
    assert switches > 4, "the two writers' batches should interleave"
    result = verify(pg_dsn)
    assert result.ok, result.problem
    assert result.rows == 602


async def test_two_writer_processes_keep_one_chain(pg_dsn: str) -> None:
    async def child(tag: str) -> list[int]:
        done = await anyio.run_process([PYTHON, CHILD, pg_dsn, "20", "400", tag], env=child_env(), check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return [int(line) for line in done.stdout.decode().split()]

    got: dict[str, list[int]] = {}

    async def run(tag: str) -> None:
        got[tag] = await child(tag)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "proc-a")
            tg.start_soon(run, "proc-b")
    assert sorted(got["proc-a"] + got["proc-b"]) == list(range(1, 801))
    rows = stored(pg_dsn)
    assert {r["seq"] for r in rows if r["principal"] == "proc-a"} == set(got["proc-a"])
    result = verify(pg_dsn)
    assert result.ok, result.problem
    assert result.head_seq == 800


async def test_two_schemas_in_one_database_keep_two_chains(pg_dsn: str, pg_admin: psycopg.Connection[Any]) -> None:
    pg_admin.execute("CREATE SCHEMA tenant_a")
    pg_admin.execute("CREATE SCHEMA tenant_b")
    dsn_a = conninfo.make_conninfo(pg_dsn, options="-csearch_path=tenant_a")
    dsn_b = conninfo.make_conninfo(pg_dsn, options="-csearch_path=tenant_b")
    async with open_postgres(dsn_a) as a, open_postgres(dsn_b) as b:
        assert await a.append([_body(1), _body(2)]) == 1
        assert await b.append([_body(3)]) == 1  # its own chain, its own lock
    assert [r[0] for r in pg_admin.execute("SELECT seq FROM tenant_a.audit_events")] == [1, 2]
    assert [r[0] for r in pg_admin.execute("SELECT seq FROM tenant_b.audit_events")] == [1]
    assert pg_admin.execute("SELECT to_regclass('public.audit_events')").fetchone() == (None,)
    assert verify(dsn_a).ok and verify(dsn_b).ok


# ---------------------------------------------------------------------------------------------- the database enforces


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET principal = 'mallory' WHERE seq = 1",
        "UPDATE audit_events SET principal = 'mallory' WHERE seq = -1",  # refused even when nothing matches
        "DELETE FROM audit_events WHERE seq = 2",
        "TRUNCATE audit_events",
    ],
)
async def test_the_database_refuses_update_delete_and_truncate(
    pg_dsn: str, pg_admin: psycopg.Connection[Any], statement: str
) -> None:
    async with open_postgres(pg_dsn) as backend:
        await backend.append([_body(1), _body(2)])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        pg_admin.execute(statement)  # as a superuser, the table's owner: the trigger holds for all
    assert [r["seq"] for r in stored(pg_dsn)] == [1, 2]
    assert verify(pg_dsn).ok


async def test_a_role_granted_insert_and_select_runs_the_proxy_and_cannot_rewrite(
    pg_server: PgServer, pg_dsn: str, pg_admin: psycopg.Connection[Any]
) -> None:
    """The README's least-privilege set-up: the owner creates the schema, mcp-guard's role only appends."""
    async with open_postgres(pg_dsn):
        pass  # the owner (the admin role) creates the schema
    role, password = f"mcpg_writer_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    pg_admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        pg_admin.execute(f"GRANT SELECT, INSERT ON audit_events TO {role}")
        pg_admin.execute(f"GRANT SELECT ON audit_schema_version TO {role}")
        dsn = conninfo.make_conninfo(pg_dsn, user=role, password=password)
        async with open_postgres(dsn) as backend, AuditWriter.running(backend) as store:
            assert password not in backend.location and role in backend.location
            assert await store.record(event(1)) == 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in (
                "UPDATE audit_events SET principal = 'x'",
                "DROP TRIGGER audit_events_append_only ON audit_events",
                "ALTER TABLE audit_events DISABLE TRIGGER ALL",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        assert verify(pg_dsn).ok
    finally:
        pg_admin.execute(f"DROP OWNED BY {role}")
        pg_admin.execute(f"DROP ROLE {role}")


async def test_each_insert_notifies_the_channel_with_its_schema(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as backend:
        with psycopg.connect(pg_dsn, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            await backend.append([_body(1), _body(2)])
            notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [(CHANNEL, "public")]


# ---------------------------------------------------------------------------------------------- schema versions


async def test_schema_version_is_recorded_and_reopening_continues_the_chain(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn) as backend:
        await backend.append([_body(1)])
    async with open_postgres(pg_dsn) as backend:  # the schema is current: nothing to apply
        assert await backend.append([_body(2)]) == 2
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM audit_schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert verify(pg_dsn).ok


async def test_replicas_starting_together_create_the_schema_once(pg_dsn: str) -> None:
    async def open_one() -> None:
        async with open_postgres(pg_dsn) as backend:
            await backend.append([_body(0)])

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    assert [r["seq"] for r in stored(pg_dsn)] == [1, 2, 3, 4]
    assert verify(pg_dsn).ok


async def test_a_newer_schema_is_refused(pg_dsn: str, pg_admin: psycopg.Connection[Any]) -> None:
    async with open_postgres(pg_dsn):
        pass
    pg_admin.execute("INSERT INTO audit_schema_version VALUES (99, 'from the future', 'now')")
    with pytest.raises(AuditError, match="newer than this mcp-guard"):
        async with open_postgres(pg_dsn):
            pass
    with pytest.raises(AuditError, match="newer than this mcp-guard"), open_postgres_reader(pg_dsn):
        pass


async def test_a_foreign_audit_events_table_is_refused(pg_dsn: str, pg_admin: psycopg.Connection[Any]) -> None:
    pg_admin.execute("CREATE TABLE audit_events (id int)")
    with pytest.raises(AuditError, match="did not create"):
        async with open_postgres(pg_dsn):
            pass


# ---------------------------------------------------------------------------------------------- bounded failure


async def test_a_server_that_is_down_fails_open_promptly_without_the_password(pg_dsn: str) -> None:
    with socketless_port() as port:
        dsn = conninfo.make_conninfo(pg_dsn, host="127.0.0.1", hostaddr="127.0.0.1", port=str(port), password="s3cr3t")
        with anyio.fail_after(10), pytest.raises(AuditError, match="cannot open the audit database") as err:
            async with open_postgres(dsn, timeout=2.0):
                pass
    assert "s3cr3t" not in str(err.value)
    assert f":{port}/" in str(err.value)


async def test_a_hung_server_fails_record_within_its_timeout_and_the_writer_recovers(pg_dsn: str) -> None:
    async with (
        hanging_proxy(pg_dsn) as proxy,
        open_postgres(proxy.dsn(pg_dsn), timeout=1.0) as backend,
        AuditWriter.running(backend, record_timeout=0.5) as store,
    ):
        assert await store.record(event(1)) == 1
        proxy.hang()
        with anyio.fail_after(3), pytest.raises(AuditError, match="did not commit within"):
            await store.record(event(2))  # after record_timeout, plus a watchdog tick
        with anyio.fail_after(5):  # the backend gives up on the hung connection after its timeout
            while "no answer" not in (store.problem or ""):  # noqa: ASYNC110 - no event for it
                await anyio.sleep(0.05)
        proxy.recover()
        with anyio.fail_after(10):
            while True:  # the next batches go out on a new connection
                try:
                    seq = await store.record(event(3))
                    break
                except AuditError:
                    await anyio.sleep(0.1)
        assert store.healthy
    result = verify(pg_dsn)
    assert result.ok, result.problem
    assert result.head_seq == seq
    assert {r["decision_id"] for r in stored(pg_dsn)} >= {"dec-1", "dec-3"}


async def test_a_connection_cut_by_the_server_fails_one_batch_then_reconnects(
    pg_dsn: str, pg_admin: psycopg.Connection[Any]
) -> None:
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        assert await store.record(event(1)) == 1
        cut_guard_connections(pg_admin)
        with anyio.fail_after(5), pytest.raises(AuditError, match="audit write failed"):
            await store.record(event(2))
        with anyio.fail_after(5):
            assert await store.record(event(3)) == 2  # the failed batch left no row and no gap
        assert backend.reconnects == 1
    assert verify(pg_dsn).ok


async def test_a_replica_hung_inside_its_transaction_is_cut_off_by_the_server(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn, timeout=0.5) as backend:
        oid = stored_oid(pg_dsn)
        # A replica that took the chain lock and then hung: idle in transaction, holding it.
        hung = psycopg.connect(**connect_args(pg_dsn, 0.5))
        try:
            hung.execute("BEGIN")
            hung.execute(f"SELECT pg_advisory_xact_lock({0x6D637067}, {oid})")
            with anyio.fail_after(10):
                while True:  # our appends time out on the lock until the server ends the hung session
                    try:
                        seq = await backend.append([_body(1)])
                        break
                    except AuditError as e:
                        assert "timeout" in str(e) or "no answer" in str(e)
            assert [r["seq"] for r in stored(pg_dsn)] == list(range(1, seq + 1))
            with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
                hung.execute("SELECT 1")  # the server ended it (idle_in_transaction_session_timeout)
        finally:
            hung.close()
    assert verify(pg_dsn).ok


async def test_the_writer_survives_a_server_restart() -> None:
    server = start_cluster()  # our own server, to restart at will
    try:
        name = server.create_database()
        dsn = server.dsn(name)
        async with open_postgres(dsn, timeout=2.0) as backend, AuditWriter.running(backend) as store:
            assert await store.record(event(1)) == 1
            await anyio.to_thread.run_sync(server.restart)
            with anyio.fail_after(20):
                while True:
                    try:
                        seq = await store.record(event(2))
                        break
                    except AuditError:  # while the server restarts: denied, not hung
                        await anyio.sleep(0.1)
            assert seq == 2
        assert verify(dsn).ok
    finally:
        for stop in server.stop:
            stop()


# ---------------------------------------------------------------------------------------------- settings and DSNs


def test_redact_dsn_never_shows_the_password() -> None:
    assert redact_dsn("postgresql://alice:s3cr3t@db.example:6543/audit") == "postgresql://alice@db.example:6543/audit"
    assert redact_dsn("host=db user=bob password=s3cr3t dbname=a") == "postgresql://bob@db/a"
    assert "s3cr3t" not in redact_dsn("postgresql://alice:s3cr3t@")
    assert redact_dsn("this is not a dsn=") == "postgresql://(unparsable DSN)"


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        ('backend = "postgres"', 'required with backend = "postgres"'),
        ('dsn = "postgresql://u:s3cr3t@h/db"', 'only used with backend = "postgres"'),
        ('backend = "postgres"\ndsn = "host=h password=s3cr3t port"', "not a PostgreSQL connection string"),
    ],
)
def test_dsn_config_errors_name_file_and_key_never_the_password(tmp_path: Path, audit: str, message: str) -> None:
    """Settings check that a DSN is given iff the backend is postgres; the backend, when it opens, that libpq
    can parse it (settings never import the driver)."""
    path = tmp_path / "mcp-guard.toml"
    path.write_text(f"[audit]\n{audit}\n")
    with pytest.raises(ConfigError) as err, open_reader(load_settings(path)):
        pass
    assert (err.value.file, err.value.key) == (str(path), "audit.dsn")
    assert str(err.value).startswith(f"{path}: audit.dsn: ") and message in str(err.value)
    assert "s3cr3t" not in str(err.value)


def test_the_dsn_stays_out_of_the_settings_repr(tmp_path: Path) -> None:
    path = tmp_path / "mcp-guard.toml"
    path.write_text('[audit]\nbackend = "postgres"\ndsn = "postgresql://u:s3cr3t@h/db"\n')
    settings = load_settings(path)
    assert settings.audit.dsn == "postgresql://u:s3cr3t@h/db"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.audit)


async def test_open_sink_and_open_reader_use_the_configured_dsn(pg_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "mcp-guard.toml"
    path.write_text(f'[audit]\nbackend = "postgres"\ndsn = "{pg_dsn}"\nbatch_max = 4\n')
    settings = load_settings(path)
    async with open_sink(settings) as sink:
        assert isinstance(sink.backend, PostgresBackend)
        for i in range(10):
            sink.record_nowait(event(i))
        assert await sink.record(event(10)) == 11
        assert sink.stats.largest_batch == 4  # batch_max
    with open_reader(settings) as reader:
        assert isinstance(reader, PostgresReader)
        assert reader.head() is not None and [r[0] for r in reader.rows(last=2)] == [10, 11]
    assert not (tmp_path / "mcp-guard-audit.db").exists()  # nothing written to the SQLite path


# ---------------------------------------------------------------------------------------------- helpers


def stored_oid(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT 'audit_events'::regclass::oid::int4").fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def socketless_port() -> Iterator[int]:
    """A loopback port with nothing listening on it (bound, not listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
