"""The SQL both database backends run: one table, each transition one statement, the clock the database's.

Written once with two holes — the parameter placeholder and the expression for "now" in UNIX seconds — so
SQLite (:mod:`mcp_guard.approvals.sqlite`) and PostgreSQL (:mod:`mcp_guard.approvals.postgres`) cannot drift
apart. Every transition is a single ``UPDATE … WHERE <from-state> AND <unexpired> RETURNING …``: the row is
changed only if it is still in the state the caller saw, so the first of two racing approvers (or two
identical calls consuming one approval) wins and the other gets no row back. "Now" is evaluated by the
database, so every process and replica decides expiry by one clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcp_guard.approvals.base import Approval, ApprovalRequest, Status, status_at

__all__ = ["COLUMNS", "Statements", "from_row", "insert_params"]

COLUMNS = (
    "id",
    "status",
    "principal",
    "action",
    "server",
    "tool",
    "binding",
    "arguments",
    "policy_revision",
    "reason",
    "approvers",
    "created_at",
    "expires_at",
    "decision_id",
    "session_id",
    "decided_by",
    "decided_at",
    "comment",
    "executed_at",
)
_SELECT = ", ".join(COLUMNS)
_INSERTED = (*COLUMNS[:11], "decision_id", "session_id")  # given by the request (the rest: the clock, later steps)
_OPEN = "('pending', 'granted')"


def ddl(real: str) -> tuple[str, ...]:
    """The table and its indexes; ``real`` is the floating-point type name of the dialect."""
    return (
        f"""CREATE TABLE IF NOT EXISTS approvals (
            id TEXT PRIMARY KEY, status TEXT NOT NULL, principal TEXT NOT NULL, action TEXT NOT NULL,
            server TEXT NOT NULL, tool TEXT NOT NULL, binding TEXT NOT NULL, arguments TEXT NOT NULL,
            policy_revision TEXT, reason TEXT NOT NULL, approvers TEXT NOT NULL, created_at {real} NOT NULL,
            expires_at {real} NOT NULL, decision_id TEXT, session_id TEXT, decided_by TEXT, decided_at {real},
            comment TEXT, executed_at {real})""",
        "CREATE INDEX IF NOT EXISTS approvals_by_binding ON approvals (binding, principal, status)",
        "CREATE INDEX IF NOT EXISTS approvals_by_created ON approvals (created_at)",
    )


@dataclass(frozen=True)
class Statements:
    """The statements of one dialect: ``p`` is its placeholder, ``now`` its expression for UNIX seconds."""

    p: str
    now: str

    def _ret(self) -> str:
        return f"RETURNING {_SELECT}, {self.now}"

    @property
    def find_open(self) -> str:
        return (
            f"SELECT {_SELECT}, {self.now} FROM approvals WHERE binding = {self.p} AND principal = {self.p} "
            f"AND status IN {_OPEN} AND expires_at > {self.now} ORDER BY created_at DESC LIMIT 1"
        )

    @property
    def insert(self) -> str:
        """A pending approval: the :data:`_INSERTED` columns, then created_at = now, expires_at = now + ttl."""
        values = ", ".join([self.p] * len(_INSERTED))
        return (
            f"INSERT INTO approvals ({', '.join(_INSERTED)}, created_at, expires_at) "
            f"VALUES ({values}, {self.now}, {self.now} + {self.p}) {self._ret()}"
        )

    @property
    def get(self) -> str:
        return f"SELECT {_SELECT}, {self.now} FROM approvals WHERE id = {self.p}"

    def list(self, statuses: Sequence[Status] | None) -> str:
        current = f"CASE WHEN status IN {_OPEN} AND expires_at <= {self.now} THEN 'expired' ELSE status END"
        where = ""
        if statuses:
            where = f"WHERE {current} IN ({', '.join([self.p] * len(statuses))}) "
        return f"SELECT {_SELECT}, {self.now} FROM approvals {where}ORDER BY created_at DESC LIMIT {self.p}"

    @property
    def decide(self) -> str:
        return (
            f"UPDATE approvals SET status = {self.p}, decided_by = {self.p}, decided_at = {self.now}, "
            f"comment = {self.p} WHERE id = {self.p} AND status = 'pending' AND expires_at > {self.now} {self._ret()}"
        )

    @property
    def consume(self) -> str:
        return (
            f"UPDATE approvals SET status = 'executed', executed_at = {self.now} "
            f"WHERE id = {self.p} AND status = 'granted' AND expires_at > {self.now} {self._ret()}"
        )

    @property
    def restore(self) -> str:
        return (
            f"UPDATE approvals SET status = 'granted', executed_at = NULL WHERE id = {self.p} AND status = 'executed'"
        )

    @property
    def expire(self) -> str:
        return (
            f"UPDATE approvals SET status = 'expired' WHERE id = {self.p} AND status IN {_OPEN} "
            f"AND expires_at <= {self.now} {self._ret()}"
        )


def insert_params(approval_id: str, req: ApprovalRequest) -> tuple[Any, ...]:
    """Parameters of :attr:`Statements.insert`: the :data:`_INSERTED` columns in order, then ``ttl_s``."""
    return (
        approval_id,
        str(Status.PENDING),
        req.principal,
        req.action,
        req.server,
        req.tool,
        req.binding,
        json.dumps(dict(req.arguments), sort_keys=True, default=str),
        req.policy_revision,
        req.reason,
        json.dumps(list(req.approvers)),
        req.decision_id,
        req.session_id,
        req.ttl_s,
    )


def from_row(row: Sequence[Any]) -> Approval:
    """An :class:`Approval` from a row of :data:`COLUMNS` followed by the database's now."""
    r = dict(zip(COLUMNS, row[: len(COLUMNS)], strict=True))
    now = float(row[len(COLUMNS)])
    expires_at = float(r["expires_at"])
    return Approval(
        id=r["id"],
        status=status_at(Status(r["status"]), expires_at, now),
        principal=r["principal"],
        action=r["action"],
        server=r["server"],
        tool=r["tool"],
        binding=r["binding"],
        arguments=json.loads(r["arguments"]),
        policy_revision=r["policy_revision"],
        reason=r["reason"],
        approvers=tuple(json.loads(r["approvers"])),
        created_at=float(r["created_at"]),
        expires_at=expires_at,
        decision_id=r["decision_id"],
        session_id=r["session_id"],
        decided_by=r["decided_by"],
        decided_at=None if r["decided_at"] is None else float(r["decided_at"]),
        comment=r["comment"],
        executed_at=None if r["executed_at"] is None else float(r["executed_at"]),
    )
