"""``mcp-guard audit migrate --to DSN``: a SQLite log copied into PostgreSQL with its chain re-verified;
a broken source or a foreign target refused with nothing written."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from audit_testkit import event, tamper
from psycopg import conninfo

from mcp_guard.audit import AuditWriter, open_sqlite_sink
from mcp_guard.audit.export import export
from mcp_guard.audit.migrate import migrate_log
from mcp_guard.audit.postgres import open_postgres, open_postgres_reader
from mcp_guard.audit.sqlite import open_sqlite_reader
from mcp_guard.audit.verify import verify_chain, verify_file
from mcp_guard.cli import main
from mcp_guard.errors import AuditError

pytestmark = pytest.mark.anyio


async def write_sqlite(path: Path, start: int, count: int) -> None:
    async with open_sqlite_sink(path) as store:
        for i in range(start, start + count):
            store.record_nowait(event(i, principal=f"agent-{i % 3}"))
        await store.record(event(start + count))


def exported(reader_cm: Any) -> str:
    out = io.StringIO()
    with reader_cm as reader:
        export(reader, out)
    return out.getvalue()


def target_rows(dsn: str) -> int | None:
    """Rows in the target's audit_events; None if the table does not exist."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('audit_events')").fetchone()
        if row is None or row[0] is None:
            return None
        count = conn.execute("SELECT count(*) FROM audit_events").fetchone()
    assert count is not None
    return int(count[0])


@pytest.fixture
async def source(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    await write_sqlite(path, 0, 300)
    return path


async def test_migrate_copies_the_chain_unchanged_and_the_proxy_continues_it(
    source: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = verify_file(source)
    assert main(["audit", "migrate", "--db", str(source), "--to", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "ok: copied 301 rows" in out and "chain verified" in out
    assert f"head: seq=301 hash={before.head_hash}" in out  # an anchor taken on the file still holds
    assert exported(open_postgres_reader(pg_dsn)) == exported(open_sqlite_reader(source))

    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        assert await store.record(event(1000)) == 302  # the proxy, switched over, chains on
    with open_postgres_reader(pg_dsn) as reader:
        result = verify_chain(reader)
    assert result.ok and result.rows == 302


async def test_a_second_migrate_copies_only_what_is_new(source: Path, pg_dsn: str) -> None:
    with open_sqlite_reader(source) as reader:
        first = migrate_log(reader, pg_dsn)
    assert (first.copied, first.already) == (301, 0)
    with open_sqlite_reader(source) as reader:
        again = migrate_log(reader, pg_dsn)
    assert (again.copied, again.already) == (0, 301) and again.head == first.head
    await write_sqlite(source, 500, 49)  # the proxy kept writing to the file meanwhile
    with open_sqlite_reader(source) as reader:
        more = migrate_log(reader, pg_dsn)
    assert (more.copied, more.already) == (50, 301)
    assert exported(open_postgres_reader(pg_dsn)) == exported(open_sqlite_reader(source))


async def test_a_tampered_source_is_refused_and_nothing_is_written(
    source: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(source, "UPDATE audit_events SET principal = 'mallory' WHERE seq = 7")
    assert main(["audit", "migrate", "--db", str(source), "--to", pg_dsn]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mcp-guard: error: {source}: source chain broken at seq 7:")
    assert "nothing copied" in err and len(err.strip().splitlines()) == 1
    assert target_rows(pg_dsn) is None  # not even the schema


async def test_a_target_holding_another_chain_is_refused_untouched(
    source: Path, pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.db"
    await write_sqlite(other, 10_000, 5)
    assert main(["audit", "migrate", "--db", str(other), "--to", pg_dsn]) == 0
    capsys.readouterr()
    assert main(["audit", "migrate", "--db", str(source), "--to", pg_dsn]) == 1
    err = capsys.readouterr().err
    assert "already holds a different audit chain (head seq=6)" in err and len(err.strip().splitlines()) == 1
    assert target_rows(pg_dsn) == 6
    assert exported(open_postgres_reader(pg_dsn)) == exported(open_sqlite_reader(other))


async def test_a_target_ahead_of_the_source_is_refused(source: Path, pg_dsn: str) -> None:
    with open_sqlite_reader(source) as reader:
        migrate_log(reader, pg_dsn)
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        await store.record(event(9999))  # a proxy already writes to the target
    with open_sqlite_reader(source) as reader, pytest.raises(AuditError, match="different audit chain"):
        migrate_log(reader, pg_dsn)
    assert target_rows(pg_dsn) == 302


async def test_an_empty_source_prepares_the_schema(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.db"
    async with open_sqlite_sink(empty):
        pass
    assert main(["audit", "migrate", "--db", str(empty), "--to", pg_dsn]) == 0
    assert "is empty: nothing to copy" in capsys.readouterr().out
    assert target_rows(pg_dsn) == 0


async def test_migrate_reads_the_source_path_from_the_config(
    source: Path, pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "conf" / "mcp-guard.toml"
    config.parent.mkdir()
    config.write_text('[audit]\npath = "../audit.db"\n')  # relative to the config file
    assert main(["audit", "migrate", "--config", str(config), "--to", pg_dsn]) == 0
    assert "ok: copied 301 rows" in capsys.readouterr().out


async def test_migrate_errors_are_one_line_and_hide_the_password(
    source: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "migrate", "--db", str(source), "--to", "host=h password=s3cr3t port"]) == 2
    err = capsys.readouterr().err
    assert "--to: not a PostgreSQL connection string" in err and "s3cr3t" not in err
    unreachable = conninfo.make_conninfo(pg_dsn, host="127.0.0.1", hostaddr="127.0.0.1", port="1", password="s3cr3t")
    assert main(["audit", "migrate", "--db", str(source), "--to", unreachable]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mcp-guard: error: postgresql://postgres@127.0.0.1:1/")
    assert len(err.strip().splitlines()) == 1 and "s3cr3t" not in err
    assert main(["audit", "migrate", "--db", str(source.parent / "none.db"), "--to", pg_dsn]) == 1
    assert "no audit database here" in capsys.readouterr().err


async def test_a_source_row_postgres_cannot_store_is_named(tmp_path: Path, pg_dsn: str) -> None:
    """Logs written before NUL characters were escaped may hold one; PostgreSQL text cannot."""
    path = tmp_path / "old.db"
    await write_sqlite(path, 0, 2)
    conn = sqlite3.connect(path, isolation_level=None)
    rows = [list(r) for r in conn.execute("SELECT * FROM audit_events ORDER BY seq")]
    conn.close()
    # Rebuild the chain with a NUL in row 2's tool, as an old mcp-guard would have stored it.
    from mcp_guard.audit.chain import GENESIS_HASH, canonical_json, row_hash

    rows[1][8] = "bad\x00tool"
    prev = GENESIS_HASH
    for r in rows:
        r[-2] = prev
        r[-1] = prev = row_hash(prev, r[0], canonical_json(r[1:-2]))
    tamper(
        path,
        "DELETE FROM audit_events",
        *((f"INSERT INTO audit_events VALUES ({', '.join('?' * 18)})", tuple(r)) for r in rows),
    )
    assert verify_file(path).ok
    with open_sqlite_reader(path) as reader, pytest.raises(AuditError, match="source row 2: column tool holds a NUL"):
        migrate_log(reader, pg_dsn)
    assert target_rows(pg_dsn) == 0


def test_help_documents_the_prefix_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "migrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prefix of the source chain" in text and "--to DSN" in text
