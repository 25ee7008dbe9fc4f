"""Shared state between calls and processes: rate-limit counters and information flows (later approvals).

``open_state(settings)`` is the one place a backend is chosen::

    async with open_state(settings) as state:
        admission = await state.admit([Limit("alice|tickets", 5, 60.0)])

The backend follows the audit log's: SQLite in ``[audit] state_path`` (the file the tool pins live in)
with ``[audit] backend = "sqlite"``; PostgreSQL on ``[audit] dsn`` with ``backend = "postgres"``
(:mod:`mcp_guard.state.postgres`: every replica on that database shares the counters and flows). Flows
expire after ``[audit] flow_idle_ttl_s``. The writes of one call go as one batch
(``state.apply([Record(ref, call), Admit(limits)])``: one transaction, all or nothing;
:mod:`mcp_guard.state.base`, Batches). Every operation is bounded by ``[audit] state_timeout_ms`` and
raises :class:`~mcp_guard.errors.StateError` when it cannot answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp_guard.settings import Settings
from mcp_guard.state.base import (
    Admission,
    Admit,
    Applied,
    Bucket,
    Flow,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    LabelOrigin,
    Limit,
    OpResult,
    Record,
    Release,
    StateOp,
    StateStore,
    Ticket,
    Unrecord,
)
from mcp_guard.state.memory import MemoryState
from mcp_guard.state.sqlite import SQLiteState

__all__ = [
    "Admission",
    "Admit",
    "Applied",
    "Bucket",
    "Flow",
    "FlowBounds",
    "FlowCall",
    "FlowFull",
    "FlowRef",
    "FlowTicket",
    "LabelOrigin",
    "Limit",
    "MemoryState",
    "OpResult",
    "Record",
    "Release",
    "SQLiteState",
    "StateOp",
    "StateStore",
    "Ticket",
    "Unrecord",
    "open_state",
]


@asynccontextmanager
async def open_state(settings: Settings) -> AsyncIterator[StateStore]:
    """The configured state store, opened (tables created) and closed on exit; StateError if it cannot open."""
    timeout_s = settings.audit.state_timeout_ms / 1000
    flows = FlowBounds(idle_s=float(settings.audit.flow_idle_ttl_s))
    store: StateStore
    if settings.audit.backend == "postgres" and settings.audit.dsn:
        from mcp_guard.state.postgres import PostgresState  # psycopg only when it is used

        store = pg = PostgresState(settings.audit.dsn, timeout_s=timeout_s, flows=flows)
        await pg.start()
    else:
        store = lite = SQLiteState(settings.resolve_path(settings.audit.state_path), timeout_s=timeout_s, flows=flows)
        await lite.start()
    try:
        yield store
    finally:
        await store.aclose()
