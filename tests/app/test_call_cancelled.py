"""A call the client cancels (the SDK sends notifications/cancelled) has an outcome row: call.cancelled."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from guard_harness import client_of, make_settings, read_log, recorder_upstream, running_guard, wait_for
from mcp_guard.testing import RecordingSink
from mcp_guard.types import EventKind

pytestmark = pytest.mark.anyio


async def test_a_cancelled_call_has_its_allow_row_and_a_cancelled_row(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    sink = RecordingSink()
    settings = make_settings({"rec": recorder_upstream(log)})
    async with running_guard(settings, sink=sink) as guard, client_of(guard) as client:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "rec__hang", {})
                await wait_for(lambda: bool(sink.of_kind(EventKind.CALL_DECISION)))
                await wait_for(lambda: any(e.get("name") == "hang" for e in read_log(log)))
                scope.cancel()  # the client gives up: the SDK sends notifications/cancelled
        await wait_for(lambda: bool(sink.of_kind(EventKind.CALL_CANCELLED)))
    allow = sink.of_kind(EventKind.CALL_DECISION)[0]
    cancelled = sink.of_kind(EventKind.CALL_CANCELLED)[0]
    assert allow.decision == "allow" and cancelled.decision_id == allow.decision_id
    assert (cancelled.server, cancelled.tool, cancelled.principal) == ("rec", "hang", allow.principal)
    assert not sink.of_kind(EventKind.CALL_RESULT) and not sink.of_kind(EventKind.CALL_ERROR)
