"""Who may decide an approval, and the decision with its audit row — the one path the CLI and the admin API share.

An approver must **satisfy** the approval's ``approvers`` — an entry ``role:<name>`` is satisfied by a principal
with that role, any other entry (``alice``, or ``principal:alice``) by that principal id — and may **not be the
requester**: an agent's principal cannot approve its own call whatever its roles. The decision is one atomic
transition of the store (pending → granted/denied), so of two approvers only the first decides; the second is
told what the approval already is.

The ``approval.granted``/``approval.denied`` row is written after the transition (the approver is told only
once it is committed). If the audit store fails there, the approval stays decided and the command fails; the
``approval.executed`` row of the call it releases names the approver again, so the chain never loses who let a
call through.
"""

from __future__ import annotations

from typing import Protocol

from mcp_guard.approvals.base import Approval, ApprovalStore, Status, Verdict
from mcp_guard.audit import events
from mcp_guard.types import AuditEvent, EventKind, Principal

__all__ = ["ApprovalNotFound", "DecisionRefused", "Recorder", "decide", "may_decide"]


class Recorder(Protocol):
    """Where audit rows go (the audit writer): ``record`` returns once the row is committed."""

    async def record(self, event: AuditEvent) -> int: ...


class DecisionRefused(Exception):
    """The approver may not decide this approval, or it is no longer pending. The message says which."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict  # the approval is not pending (any more), as opposed to: not this approver


class ApprovalNotFound(Exception):
    """No approval has this id."""


def may_decide(approval: Approval, approver: Principal) -> str | None:
    """Why ``approver`` may not decide ``approval``, or None if they may."""
    if approver.id == approval.principal:
        return f"{approver.id!r} requested this call and may not decide its own approval"
    for entry in approval.approvers:
        if entry.startswith("role:"):
            if entry[len("role:") :] in approver.roles:
                return None
        elif entry.removeprefix("principal:") == approver.id:
            return None
    roles = ", ".join(approver.roles) or "none"
    wanted = ", ".join(approval.approvers)
    return f"{approver.id!r} (roles: {roles}) is not among this approval's approvers ({wanted})"


async def decide(
    store: ApprovalStore,
    sink: Recorder,
    approval_id: str,
    verdict: Verdict,
    approver: Principal,
    *,
    comment: str | None = None,
    source: str,
) -> Approval:
    """Grant or deny ``approval_id`` as ``approver`` and record it; ``source`` says where (``cli``, ``api``).

    Raises :class:`ApprovalNotFound`, :class:`DecisionRefused`, or the store's / audit's errors.
    """
    current = await store.get(approval_id)
    if current is None:
        raise ApprovalNotFound(f"no approval {approval_id!r}")
    if current.status is not Status.PENDING:
        raise DecisionRefused(f"approval {approval_id} is {current.status}, not pending", conflict=True)
    why = may_decide(current, approver)
    if why is not None:
        raise DecisionRefused(why)
    decided = await store.decide(approval_id, verdict, approver.id, comment)
    if decided is None:  # decided by someone else, or expired, since we read it
        now = await store.get(approval_id)
        status = now.status if now is not None else "gone"
        raise DecisionRefused(f"approval {approval_id} is {status}, not pending", conflict=True)
    kind = EventKind.APPROVAL_GRANTED if verdict is Verdict.GRANT else EventKind.APPROVAL_DENIED
    await sink.record(
        events.approval_event(
            kind, decided.to_dict(), principal=approver.id, comment=comment, source=source, roles=list(approver.roles)
        )
    )
    return decided
