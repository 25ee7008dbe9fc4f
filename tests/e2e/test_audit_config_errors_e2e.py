"""A configuration error in the audit path is one line on stderr, exit 2 — never followed by an aiosqlite
"Event loop is closed" traceback from a connection thread that outlived the loop (issue #20). Run a few
times per case: the traceback came from a race, not from every run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import REPO, recorder, write_config

pytestmark = pytest.mark.e2e

RUNS = 1  # raise locally to hunt the race


def _case(tmp: Path, case: str) -> tuple[str, str]:
    """(the [audit] line to set, the key the error must name)."""
    (tmp / "notdb.txt").write_text("not a database\n")
    (tmp / "adir").mkdir(exist_ok=True)
    if case == "not_a_database":
        return f'path = "{tmp / "notdb.txt"}"', "audit.path"
    if case == "a_directory":
        return f'path = "{tmp / "adir"}"', "audit.path"
    if case == "newer_schema":
        with sqlite3.connect(tmp / "newer.db") as db:
            db.execute("CREATE TABLE schema_version (version INTEGER)")
            db.execute("INSERT INTO schema_version VALUES (999)")
        return f'path = "{tmp / "newer.db"}"', "audit.path"
    return f'state_path = "{tmp / "notdb.txt"}"', "audit.state_path"  # audit opens, then the state store fails


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("case", ["not_a_database", "a_directory", "newer_schema", "state_not_a_database"])
def test_an_audit_config_error_is_one_line_and_nothing_after_it(tmp_path: Path, case: str, transport: str) -> None:
    line, key = _case(tmp_path, case)
    cfg = write_config(tmp_path, {"rec": recorder()})
    text = cfg.read_text()
    if line.startswith("path = "):
        text = "\n".join(line if ln.startswith("path = ") and "audit.db" in ln else ln for ln in text.splitlines())
    else:
        text = text.replace("[audit]\n", f"[audit]\n{line}\n")
    cfg.write_text(text)
    argv = [sys.executable, "-m", "mcp_guard", "run", "--config", str(cfg), "--transport", transport]
    if transport == "http":
        argv += ["--port", "0"]
    for _ in range(RUNS):
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=REPO)
        *logged, last = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-2000:]
        # The contract (DESIGN §8.1): JSON log lines may come first; the last line is the one error, naming the
        # key; nothing else — no traceback before or after it.
        assert last.startswith("mcp-guard: error: ") and key in last, proc.stderr[-2000:]
        assert all(isinstance(json.loads(ln), dict) for ln in logged), proc.stderr[-2000:]
