"""Human approval as a decision: the store of approvals parked calls wait on, and how operators decide them.

``open_approvals(settings)`` is the one place a backend is chosen (the composition root and the CLI use it)::

    [audit] backend = "sqlite"    → table ``approvals`` in ``[audit] state_path`` (every process on the host)
    [audit] backend = "postgres"  → table ``approvals`` in ``[audit] dsn`` (every replica)

Tests use :class:`MemoryApprovals`. The obligation that parks a call is :mod:`mcp_guard.pipeline.approval`;
who may decide and the audit rows of a decision are :mod:`mcp_guard.approvals.decide`; the CLI is
:mod:`mcp_guard.approvals.commands`, the admin API :mod:`mcp_guard.frontend.admin`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from mcp_guard.approvals.base import OPEN, Approval, ApprovalRequest, ApprovalStore, Status, Verdict, binding_of
from mcp_guard.approvals.memory import MemoryApprovals
from mcp_guard.approvals.sqlite import SQLiteApprovals
from mcp_guard.settings import Settings

if TYPE_CHECKING:
    from mcp_guard.approvals.postgres import PostgresApprovals

__all__ = [
    "OPEN",
    "Approval",
    "ApprovalRequest",
    "ApprovalStore",
    "MemoryApprovals",
    "SQLiteApprovals",
    "Status",
    "Verdict",
    "binding_of",
    "open_approvals",
]


@asynccontextmanager
async def open_approvals(settings: Settings) -> AsyncIterator[ApprovalStore]:
    """The configured approval store, its table created; :class:`~mcp_guard.errors.StateError` if it cannot open."""
    timeout_s = settings.audit.state_timeout_ms / 1000
    store: SQLiteApprovals | PostgresApprovals
    if settings.audit.backend == "postgres":
        from mcp_guard.approvals.postgres import PostgresApprovals  # psycopg only when configured

        assert settings.audit.dsn is not None  # settings require it with this backend
        store = PostgresApprovals(settings.audit.dsn, timeout_s=timeout_s)
    else:
        store = SQLiteApprovals(settings.resolve_path(settings.audit.state_path), timeout_s=timeout_s)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()
