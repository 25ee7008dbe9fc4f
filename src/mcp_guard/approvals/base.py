"""The approval store protocol: one record per parked call, and the transitions operators and calls make.

An approval is what ``obligations.approval`` on an allow turns a call into until a person decides
(docs/architecture.md §3, "Approvals"). It is **bound** to the call — requester, action, server, tool, a
digest of the canonical arguments and the policy revision (:func:`binding_of`) — and to an expiry, and
it is **single use**: the transitions are::

    pending ──decide──► granted ──consume──► executed        (restore: executed ──► granted, when the
       │                   │                                   call was refused after all before it ran)
       ├──decide──► denied │
       └──── expire ◄──────┘  (pending or granted, once the store's clock passes expires_at)

Every transition is one atomic step of the store (:meth:`ApprovalStore.decide`, :meth:`consume`,
:meth:`expire`), so two approvers, two replicas or two identical calls can never both win. Expiry is
decided by the store's clock (SQLite: the host's; PostgreSQL: the server's ``now()``), never by a
caller's. :meth:`ApprovalStore.request` reuses an *open* approval (pending or granted, unexpired) with the
same binding: a client that retries the identical call while waiting — or after a disconnect — finds the
approval it already asked for instead of queueing a second one; once executed, the same call asks anew.

Store failures raise :class:`~mcp_guard.errors.StateError` (the call is denied ``state_unavailable``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "OPEN",
    "Approval",
    "ApprovalRequest",
    "ApprovalStore",
    "Status",
    "Verdict",
    "binding_of",
    "status_at",
]


class Status(StrEnum):
    """Where an approval stands."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    EXPIRED = "expired"
    EXECUTED = "executed"


OPEN = frozenset({Status.PENDING, Status.GRANTED})
"""Statuses an approval can still leave (by decision, consumption or expiry)."""


class Verdict(StrEnum):
    """What an approver decides."""

    GRANT = "granted"
    DENY = "denied"


def binding_of(
    *, principal: str, action: str, server: str, tool: str, arguments: Mapping[str, Any], revision: str | None
) -> str:
    """The sha256 hex an approval is bound to: who asks, what, of which upstream, with which arguments, under
    which policy revision. Canonical JSON (sorted keys, no spaces), so key order never makes a new approval."""
    doc = [principal, action, server, tool, dict(arguments), revision]
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What a parked call asks the store for. ``arguments`` is the audit copy (secrets masked, bounded) that
    operators are shown; ``binding`` is over the raw arguments (:func:`binding_of`)."""

    principal: str
    action: str
    server: str
    tool: str
    binding: str
    arguments: Mapping[str, Any]
    policy_revision: str | None
    reason: str
    approvers: tuple[str, ...]
    ttl_s: float
    decision_id: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval as stored; ``status`` as of the store's clock when it was read (a pending approval past its
    expiry reads as expired). Times are UNIX seconds."""

    id: str
    status: Status
    principal: str  # the requester
    action: str
    server: str
    tool: str
    binding: str
    arguments: Mapping[str, Any]
    policy_revision: str | None
    reason: str
    approvers: tuple[str, ...]
    created_at: float
    expires_at: float
    decision_id: str | None = None
    session_id: str | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    comment: str | None = None
    executed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the CLI (``--json``) and the admin API show."""
        return {
            "id": self.id,
            "status": str(self.status),
            "principal": self.principal,
            "action": self.action,
            "server": self.server,
            "tool": self.tool,
            "arguments": dict(self.arguments),
            "arguments_binding": self.binding,
            "policy_revision": self.policy_revision,
            "reason": self.reason,
            "approvers": list(self.approvers),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "decision_id": self.decision_id,
            "session_id": self.session_id,
            "decided_by": self.decided_by,
            "decided_at": _iso(self.decided_at),
            "comment": self.comment,
            "executed_at": _iso(self.executed_at),
        }


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def status_at(status: Status, expires_at: float, now: float) -> Status:
    """The status as of ``now``: an open approval past its expiry is expired (whether or not a row says so yet)."""
    if status in OPEN and now >= expires_at:
        return Status.EXPIRED
    return status


class ApprovalStore(Protocol):
    """Where approvals live: memory (tests), SQLite (``[audit] state_path``) or PostgreSQL (``[audit] dsn``)."""

    async def request(self, req: ApprovalRequest) -> tuple[Approval, bool]:
        """The open approval with ``req.binding`` and requester, else a new pending one; and whether it is new."""
        ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def list(self, statuses: Sequence[Status] | None = None, limit: int = 200) -> list[Approval]:
        """Newest first; ``statuses`` filters on the status as of now."""
        ...

    async def decide(self, approval_id: str, verdict: Verdict, by: str, comment: str | None) -> Approval | None:
        """Pending (and unexpired) → granted/denied, atomically; the approval after it, or None if it was not
        pending (then :meth:`get` says what it is)."""
        ...

    async def consume(self, approval_id: str) -> Approval | None:
        """Granted (and unexpired) → executed, atomically; None if it was not (another call won, or it expired)."""
        ...

    async def restore(self, approval_id: str) -> None:
        """Executed → granted: the call that consumed it was refused before it ran."""
        ...

    async def expire(self, approval_id: str) -> Approval | None:
        """Mark an open approval past its expiry expired; the approval if *this* call made the transition."""
        ...
