"""verify: an intact chain passes; every kind of tampering is named by its row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from audit_testkit import INSERT_ANY, event, forged_row, rows, tamper

from mcp_guard.audit import open_sqlite_sink
from mcp_guard.audit.verify import verify_file
from mcp_guard.cli import main
from mcp_guard.errors import AuditError

pytestmark = pytest.mark.anyio

N = 10


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    async with open_sqlite_sink(path) as store:
        for i in range(N):
            await store.record(event(i))
    return path


def hash_of(path: Path, seq: int) -> str:
    return str(next(r["hash"] for r in rows(path) if r["seq"] == seq))


async def test_intact_chain_verifies_and_reports_the_head(db: Path) -> None:
    result = verify_file(db)
    assert result.ok and result.rows == N and result.bad_seq is None
    assert (result.head_seq, result.head_hash) == (N, hash_of(db, N))
    assert result.warnings == ()


async def test_triggers_refuse_update_and_delete(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_events SET principal = 'mallory' WHERE seq = 3")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_events WHERE seq = 3")
    finally:
        conn.close()


async def test_edited_row_is_named(db: Path) -> None:
    tamper(db, "UPDATE audit_events SET decision = 'deny' WHERE seq = 5")
    result = verify_file(db)
    assert not result.ok and result.bad_seq == 5
    assert "altered" in (result.problem or "")
    assert result.last_good_seq == 4
    assert result.warnings  # the dropped triggers are reported too


async def test_edited_json_column_is_named(db: Path) -> None:
    tamper(db, 'UPDATE audit_events SET arguments = \'{"priority":0,"title":"nothing to see"}\' WHERE seq = 3')
    assert verify_file(db).bad_seq == 3


async def test_deleted_row_is_named(db: Path) -> None:
    tamper(db, "DELETE FROM audit_events WHERE seq = 6")
    result = verify_file(db)
    assert not result.ok and result.bad_seq == 6
    assert "missing" in (result.problem or "")


async def test_deleted_first_rows_are_named(db: Path) -> None:
    tamper(db, "DELETE FROM audit_events WHERE seq <= 2")
    result = verify_file(db)
    assert not result.ok and result.bad_seq == 1


async def test_swapped_rows_are_named(db: Path) -> None:
    tamper(
        db,
        "UPDATE audit_events SET seq = -4 WHERE seq = 4",
        "UPDATE audit_events SET seq = 4 WHERE seq = 7",
        "UPDATE audit_events SET seq = 7 WHERE seq = -4",
    )
    result = verify_file(db)
    assert not result.ok and result.bad_seq == 4


async def test_swapped_neighbours_are_named(db: Path) -> None:
    tamper(
        db,
        "UPDATE audit_events SET seq = -8 WHERE seq = 8",
        "UPDATE audit_events SET seq = 8 WHERE seq = 9",
        "UPDATE audit_events SET seq = 9 WHERE seq = -8",
    )
    assert verify_file(db).bad_seq == 8


async def test_replaced_row_with_recomputed_hash_is_named(db: Path) -> None:
    forged = forged_row(db, 6, hash_of(db, 5), principal="mallory", decision="allow")
    tamper(db, "DELETE FROM audit_events WHERE seq = 6", (INSERT_ANY, forged))
    result = verify_file(db)
    assert not result.ok and result.bad_seq == 6
    assert "replaced" in (result.problem or "")


async def test_inserted_row_is_named(db: Path) -> None:
    # A careful forger opens a gap at 4 (moving later rows up) and fills it with a well-hashed row.
    moves = [f"UPDATE audit_events SET seq = {s + 1} WHERE seq = {s}" for s in range(N, 3, -1)]
    forged = forged_row(db, 4, hash_of(db, 3), principal="mallory")
    tamper(db, *moves, (INSERT_ANY, forged))
    result = verify_file(db)
    assert not result.ok and result.bad_seq == 4
    assert "inserted" in (result.problem or "")


async def test_appended_row_with_a_bad_hash_is_named(db: Path) -> None:
    forged = list(forged_row(db, N + 1, hash_of(db, N)))
    forged[-1] = "f" * 64
    tamper(db, (INSERT_ANY, tuple(forged)))
    result = verify_file(db)
    assert not result.ok and result.bad_seq == N + 1


async def test_empty_database_verifies(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    async with open_sqlite_sink(path):
        pass
    result = verify_file(path)
    assert result.ok and result.rows == 0 and result.head_seq is None


async def test_missing_database_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit database"):
        verify_file(tmp_path / "nope.db")


async def test_cli_verify_prints_head_and_names_bad_row(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"head: seq={N} hash={hash_of(db, N)}" in out

    tamper(db, "UPDATE audit_events SET tool = 'delete_everything' WHERE seq = 7")
    assert main(["audit", "verify", "--db", str(db)]) == 1
    captured = capsys.readouterr()
    assert "seq 7" in captured.out and "FAILED" in captured.out
    assert "trigger" in captured.err


async def test_cli_verify_reads_the_path_from_config(db: Path, tmp_path: Path) -> None:
    config = tmp_path / "conf" / "mcp-guard.toml"
    config.parent.mkdir()
    config.write_text('[audit]\npath = "../audit.db"\n')
    assert main(["audit", "verify", "--config", str(config)]) == 0
    assert main(["audit", "verify", "--config", str(tmp_path / "missing.toml")]) == 2
