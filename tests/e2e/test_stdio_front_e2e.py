"""`mcp-guard run` on stdio as a real process: undecodable lines are answered, and stdout may be anything."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import pytest
from e2e_support import POLL_S, REPO, guard_argv, recorder, write_config

pytestmark = pytest.mark.e2e

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}},
}


def _line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode() + b"\n"


def _start(cfg: Path, stdout: int | IO[bytes], stderr: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        guard_argv(cfg),
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr.open("wb"),
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _answers(path: Path, ids: set[int | None]) -> dict[Any, dict[str, Any]]:
    """Poll a file the proxy writes its answers to until every id in ``ids`` is answered (30 s deadline)."""
    deadline = time.monotonic() + 30
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        got = {m.get("id"): m for m in (json.loads(x) for x in lines if x.strip())}
        if ids <= got.keys():
            return got
        assert time.monotonic() < deadline, f"no answer for {ids - got.keys()} within 30 s; got {list(got)}"
        time.sleep(POLL_S)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdin is not None
    proc.stdin.close()  # end of input: the proxy shuts down by itself
    return proc.wait(timeout=30)


def test_a_deeply_nested_line_gets_a_parse_error_and_the_proxy_serves_on(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"rec": recorder()})
    out = tmp_path / "out.jsonl"
    with out.open("wb") as sink:
        proc = _start(cfg, sink, tmp_path / "err")
    assert proc.stdin is not None
    deep = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"rec__echo","arguments":{"x":'
    proc.stdin.write(_line(INIT) + _line({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    proc.stdin.write(deep + b"[" * 2500 + b"]" * 2500 + b"}}}\n" + b"{nope\n")
    proc.stdin.write(_line({"jsonrpc": "2.0", "id": 6, "method": "ping"}))
    proc.stdin.flush()
    got = _answers(out, {1, 5, 6, None})
    assert got[5]["error"]["code"] == -32700 and got[None]["error"]["code"] == -32700
    assert got[6]["result"] == {}
    assert _stop(proc) == 0


@pytest.mark.parametrize("where", ["file", "devnull"])
def test_stdout_redirected_to_a_file_or_devnull_serves_and_exits_cleanly(tmp_path: Path, where: str) -> None:
    cfg = write_config(tmp_path, {"rec": recorder()})
    out = tmp_path / "out.jsonl"
    with out.open("wb") as sink:
        proc = _start(cfg, sink if where == "file" else subprocess.DEVNULL, tmp_path / "err")
    assert proc.stdin is not None
    proc.stdin.write(_line(INIT))
    proc.stdin.flush()
    if where == "file":
        assert (_answers(out, {1}))[1]["result"]["serverInfo"]
    rc = _stop(proc)
    err = (tmp_path / "err").read_text(errors="replace")
    assert rc == 0, f"exit {rc} (SIGABRT is -6): {err[-500:]}"
    assert "Traceback" not in err
