"""SIGKILL in the middle of a burst loses no event whose record() returned, and the chain verifies."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from audit_testkit import PYTHON, child_env, event, seqs

from mcp_guard.audit import open_sqlite_sink
from mcp_guard.audit.verify import verify_file

pytestmark = pytest.mark.anyio

CHILD = str(Path(__file__).with_name("audit_durability_child.py"))


@pytest.mark.parametrize(("concurrency", "mode"), [(1, ""), (200, ""), (1, "yield")])
async def test_sigkill_mid_burst_keeps_every_acknowledged_event(tmp_path: Path, concurrency: int, mode: str) -> None:
    """``yield``: a lone recorder passing through the loop between rows, so record() commits each row itself."""
    db = tmp_path / "audit.db"
    command = [PYTHON, CHILD, str(db), str(concurrency), *([mode] if mode else [])]
    process = await anyio.open_process(command, env=child_env())
    acknowledged: list[int] = []
    buffer = b""
    killed = False
    try:
        assert process.stdout is not None
        with anyio.fail_after(60):
            while len(acknowledged) < 3000:
                buffer += await process.stdout.receive()
                *complete, buffer = buffer.split(b"\n")
                acknowledged.extend(int(line) for line in complete)
        process.send_signal(signal.SIGKILL)  # mid-burst: the recorders are still going
        killed = True
    finally:
        # Signal once only: a second kill() can reap the child before asyncio's watcher does,
        # which then reports exit status 255 instead of the signal.
        if not killed:
            process.kill()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()
    assert process.returncode == -signal.SIGKILL

    stored = set(seqs(db))
    assert len(acknowledged) == len(set(acknowledged))
    missing = sorted(set(acknowledged) - stored)
    assert missing == [], f"acknowledged but lost: {missing[:10]}"
    result = verify_file(db)
    assert result.ok, result.problem
    assert result.head_seq == max(stored) == len(stored)

    # The next run continues the chain where the killed one stopped.
    async with open_sqlite_sink(db) as store:
        assert await store.record(event(0)) == len(stored) + 1
    assert verify_file(db).ok
