"""Approvals in memory: one process (tests, a Guard built without a state file). Same transitions as the SQL
stores; ``clock`` (UNIX seconds) is injectable so expiry can be tested without waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from mcp_guard.approvals.base import OPEN, Approval, ApprovalRequest, Status, Verdict, status_at
from mcp_guard.types import new_id

__all__ = ["MemoryApprovals"]


class MemoryApprovals:
    """The approval store as a dict. Every method runs without an await point, so each transition is atomic."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: dict[str, Approval] = {}

    def _now(self, a: Approval) -> Approval:
        return replace(a, status=status_at(a.status, a.expires_at, self._clock()))

    async def request(self, req: ApprovalRequest) -> tuple[Approval, bool]:
        for a in sorted(self._rows.values(), key=lambda a: a.created_at, reverse=True):
            current = self._now(a)
            if current.binding == req.binding and current.principal == req.principal and current.status in OPEN:
                return current, False
        now = self._clock()
        approval = Approval(
            id=new_id(),
            status=Status.PENDING,
            principal=req.principal,
            action=req.action,
            server=req.server,
            tool=req.tool,
            binding=req.binding,
            arguments=dict(req.arguments),
            policy_revision=req.policy_revision,
            reason=req.reason,
            approvers=req.approvers,
            created_at=now,
            expires_at=now + req.ttl_s,
            decision_id=req.decision_id,
            session_id=req.session_id,
        )
        self._rows[approval.id] = approval
        return approval, True

    async def get(self, approval_id: str) -> Approval | None:
        a = self._rows.get(approval_id)
        return None if a is None else self._now(a)

    async def list(self, statuses: Sequence[Status] | None = None, limit: int = 200) -> list[Approval]:
        rows = [self._now(a) for a in sorted(self._rows.values(), key=lambda a: a.created_at, reverse=True)]
        return [a for a in rows if not statuses or a.status in statuses][:limit]

    def _move(self, approval_id: str, src: Status, **changes: object) -> Approval | None:
        a = self._rows.get(approval_id)
        if a is None or self._now(a).status is not src:
            return None
        self._rows[approval_id] = moved = replace(a, **changes)  # type: ignore[arg-type]
        return moved

    async def decide(self, approval_id: str, verdict: Verdict, by: str, comment: str | None) -> Approval | None:
        status = Status.GRANTED if verdict is Verdict.GRANT else Status.DENIED
        now = self._clock()
        return self._move(approval_id, Status.PENDING, status=status, decided_by=by, decided_at=now, comment=comment)

    async def consume(self, approval_id: str) -> Approval | None:
        return self._move(approval_id, Status.GRANTED, status=Status.EXECUTED, executed_at=self._clock())

    async def restore(self, approval_id: str) -> None:
        a = self._rows.get(approval_id)
        if a is not None and a.status is Status.EXECUTED:
            self._rows[approval_id] = replace(a, status=Status.GRANTED, executed_at=None)

    async def expire(self, approval_id: str) -> Approval | None:
        a = self._rows.get(approval_id)
        if a is None or a.status not in OPEN or self._now(a).status is not Status.EXPIRED:
            return None
        self._rows[approval_id] = expired = replace(a, status=Status.EXPIRED)
        return expired
