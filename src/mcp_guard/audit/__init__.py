"""The audit trail: a hash-chained, append-only SQLite log of every decision and outcome.

:class:`AuditStore` writes it (one writer task, group commit); :mod:`~mcp_guard.audit.verify`,
:mod:`~mcp_guard.audit.tail` and :mod:`~mcp_guard.audit.export` read it from another process.
"""

from mcp_guard.audit.store import AuditStats, AuditStore

__all__ = ["AuditStats", "AuditStore"]
