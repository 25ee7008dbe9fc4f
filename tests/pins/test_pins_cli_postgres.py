"""``mcp-guard tools pins|approve`` with ``[audit] backend = "postgres"``: the CLI reads and approves in the database
every replica shares, records its approval in the same audit chain, and an unreachable database is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from psycopg import conninfo

from mcp_guard.cli import main
from mcp_guard.pins.postgres import PostgresPinStore


def _config(tmp_path: Path, dsn: str) -> Path:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[audit]\nbackend = "postgres"\ndsn = {json.dumps(dsn)}\n\n[upstreams.tickets]\ncommand = "true"\n')
    return cfg


def test_pins_and_approve_on_the_shared_database(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USER", "olga")
    cfg = _config(tmp_path, pg_dsn)
    replica = PostgresPinStore(pg_dsn)  # what a running replica saw
    try:
        replica.observe("tickets", "delete_ticket", "a" * 64, {"name": "delete_ticket", "description": "Delete."})
        replica.observe("tickets", "delete_ticket", "b" * 64, {"name": "delete_ticket", "description": "Delete all!"})
        assert main(["tools", "pins", "--config", str(cfg)]) == 1  # a change awaits approval
        assert '+  "description": "Delete all!"' in capsys.readouterr().out
        assert main(["tools", "approve", "tickets__delete_ticket", "--config", str(cfg)]) == 0
        assert replica.observe("tickets", "delete_ticket", "b" * 64, {"name": "delete_ticket"}).pinned
    finally:
        replica.close()
    capsys.readouterr()
    assert main(["audit", "tail", "--json", "--tool", "delete_ticket", "-c", str(cfg)]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["kind"], row["principal"], row["details"]["approved_by"]) == ("tool.pin_approved", "olga", "cli:olga")
    assert main(["audit", "verify", "-c", str(cfg)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]  # no SQLite file anywhere


def test_an_unreachable_database_is_one_line_naming_the_key(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = conninfo.make_conninfo(pg_dsn, host="127.0.0.1", hostaddr="127.0.0.1", port="1", password="s3cr3t")
    cfg = _config(tmp_path, dsn)
    assert main(["tools", "pins", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("mcp-guard: error: ") and "audit.dsn" in err[-1] and "cannot open the pin store" in err[-1]
    )
    assert "s3cr3t" not in "\n".join(err) and "Traceback" not in "\n".join(err)
