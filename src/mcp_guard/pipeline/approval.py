"""The ``approval`` obligation: an allow that parks the call until a person approves it.

``"approval": {"reason": "…", "approvers": ["role:secops", "bob"], "ttl_s": 900}`` on an allow asks the
approval store (:mod:`mcp_guard.approvals`) for an approval **bound** to this call — requester, action, server,
tool, a digest of the canonical arguments and the policy revision — that expires ``ttl_s`` seconds from now by
the store's clock. An open approval with the same binding is reused (a retry of the identical call waits on the
approval it already asked for); after it was executed, the same call asks anew; other arguments or another
policy revision are another binding, hence another approval. Then, by the client's era:

* **2025-11-25** (and stdio): the call waits, polling the store every ``poll_s`` (an approval granted by the CLI
  or on another replica is seen within one interval), with a progress notification every ``progress_s`` if the
  client gave a ``progressToken``, until the approval is decided or expires.
* **2026-07-28**: the call asks its client a URL-mode ``elicitation/create`` pointing at the approval
  (``[console] base_url`` + ``/admin/api/approvals/<id>``); the input-required bridge
  (:mod:`mcp_guard.frontend.input_required`) answers the request with an ``InputRequiredResult`` whose
  ``requestState`` is sealed to the principal, method, upstream, target and arguments. The client's retry
  (``action: accept``) lets the call run if the approval was granted meanwhile, and asks again if it is still
  pending. A client that cannot take URL elicitation, declines, or does not come back is denied
  ``approval_pending`` naming the approval — calling again with identical arguments once it is granted runs.

Granted → the approval is **consumed** (granted → executed, atomically: of two identical calls only one runs)
and the call goes on; the :class:`~mcp_guard.pipeline.obligations.Undo` puts it back to granted if a later
handler refuses the call before it is forwarded. Denied → ``approval_denied``, expired →
``approval_expired``, consumed by another identical call first → ``approval_used``; every deny names the
approval id. Every step is an audit row (``approval.requested``, ``approval.expired``, ``approval.executed``;
the approver's ``approval.granted``/``denied`` is written by :mod:`mcp_guard.approvals.decide`); a step that
cannot be recorded refuses the call (``audit_unavailable``), and a store that cannot answer refuses it
(``state_unavailable``). A malformed value is ``obligation_invalid``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio
import mcp_types as types
import structlog

from mcp_guard.approvals.base import Approval, ApprovalRequest, ApprovalStore, Status, binding_of
from mcp_guard.audit import events
from mcp_guard.channel import ClientMethod
from mcp_guard.errors import AuditError, StateError
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.context import CallContext
from mcp_guard.pipeline.obligations import Refusal, Undo
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.types import EventKind, ReasonCode

__all__ = ["MAX_TTL_S", "ApprovalObligation", "ApprovalSpec", "parse_approval"]

log = structlog.get_logger("mcp_guard.approval")

MAX_TTL_S: Final = 7 * 24 * 3600.0
MAX_APPROVERS: Final = 64
MAX_TEXT: Final = 1024
_FIELDS: Final = frozenset({"reason", "approvers", "ttl_s"})
_EXPECTED: Final = (
    'an object {"reason": str, "approvers": [non-empty "role:<name>" or principal id, …], "ttl_s": seconds}'
)


@dataclass(frozen=True, slots=True)
class ApprovalSpec:
    """A well-formed ``obligations.approval``."""

    reason: str
    approvers: tuple[str, ...]
    ttl_s: float


def parse_approval(value: object) -> ApprovalSpec | str:
    """The approval a decision asks for, or what is wrong with it (for ``obligation_invalid``)."""
    if not isinstance(value, dict):
        return f"obligations.approval must be {_EXPECTED}, got {type(value).__name__}"
    extra = sorted(set(value) - _FIELDS)
    if extra:
        names = ", ".join(map(repr, extra))
        return f"obligations.approval has unknown field(s) {names} (expected reason, approvers, ttl_s)"
    reason, approvers, ttl = value.get("reason"), value.get("approvers"), value.get("ttl_s")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_TEXT:
        return f"obligations.approval.reason must be a non-empty string of at most {MAX_TEXT} characters"
    if (
        not isinstance(approvers, list)
        or not approvers
        or len(approvers) > MAX_APPROVERS
        or not all(isinstance(a, str) and a.strip() and a != "role:" and len(a) <= MAX_TEXT for a in approvers)
    ):
        return f"obligations.approval.approvers must be a list of 1 to {MAX_APPROVERS} non-empty strings"
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_S or math.isnan(ttl):
        return f"obligations.approval.ttl_s must be seconds above 0 and at most {MAX_TTL_S:.0f}, got {ttl!r}"
    return ApprovalSpec(reason, tuple(approvers), float(ttl))


class ApprovalObligation:
    """The ``approval`` obligation (see the module docstring)."""

    name = "approval"
    always = False

    def __init__(
        self,
        store: ApprovalStore,
        sink: EventSink,
        *,
        base_url: str = "http://127.0.0.1:8080",
        poll_s: float = 0.5,
        progress_s: float = 5.0,
        max_arguments_bytes: int | None = None,
        metrics: CallMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics if metrics is not None else CallMetrics()
        self._max_arguments_bytes = max_arguments_bytes
        self._sink = sink
        self._base_url = base_url.rstrip("/")
        self.poll_s = poll_s
        self.progress_s = progress_s

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | Undo | None:
        spec = parse_approval(value)
        if isinstance(spec, str):
            return Refusal(ReasonCode.OBLIGATION_INVALID, spec)
        try:
            approval = await self._request(ctx, spec)
            if isinstance(approval, Refusal):
                return approval
            decided = await self._wait(ctx, approval)
            if isinstance(decided, Refusal):
                return decided
            return await self._consume(ctx, decided)
        except StateError as e:
            log.error("approval.state_unavailable", error=str(e), call_id=ctx.call_id)
            return Refusal(
                ReasonCode.STATE_UNAVAILABLE,
                f"the approval store cannot be used ({e.cause}), so this call cannot be approved; mcp-guard "
                "refuses calls whose approval it cannot check",
            )

    # ------------------------------------------------------------------ steps
    async def _request(self, ctx: CallContext, spec: ApprovalSpec) -> Approval | Refusal:
        decision = ctx.decision
        assert decision is not None
        req = ApprovalRequest(
            principal=ctx.principal.id,
            action=ctx.action,
            server=ctx.server,
            tool=ctx.target,
            binding=binding_of(
                principal=ctx.principal.id,
                action=ctx.action,
                server=ctx.server,
                tool=ctx.target,
                arguments=ctx.arguments,
                revision=decision.revision,
            ),
            # what operators are shown: the audit copy (secrets masked), bounded like an audit row's
            arguments=events.bound_arguments(ctx.audit_arguments or {}, self._max_arguments_bytes) or {},
            policy_revision=decision.revision,
            reason=spec.reason,
            approvers=spec.approvers,
            ttl_s=spec.ttl_s,
            decision_id=decision.decision_id,
            session_id=ctx.session.id,
        )
        approval, created = await self._store.request(req)
        log.info("approval.requested", approval_id=approval.id, new=created, call_id=ctx.call_id)
        if created:
            refusal = await self._record(ctx, EventKind.APPROVAL_REQUESTED, approval, reason=spec.reason)
            if refusal is not None:
                return refusal
        return approval

    async def _wait(self, ctx: CallContext, approval: Approval) -> Approval | Refusal:
        """The approval once granted, or the refusal it ended in."""
        if approval.status is Status.GRANTED:
            return approval
        self._metrics.approvals_waiting += 1  # mcp_guard_approvals_pending
        try:
            if ctx.session.stateless and ctx.downstream is not None:
                return await self._ask_client(ctx, approval)
            return await self._poll(ctx, approval)
        finally:
            self._metrics.approvals_waiting -= 1

    async def _poll(self, ctx: CallContext, approval: Approval) -> Approval | Refusal:
        """2025-11-25: wait for the decision, polling the store, with progress notifications."""
        started = anyio.current_time()
        next_progress = started
        ttl = max(approval.expires_at - approval.created_at, 0.0)
        while True:
            current = await self._store.get(approval.id)
            if current is None or current.status is not Status.PENDING:
                return await self._settled(ctx, approval, current)
            now = anyio.current_time()
            if ctx.progress is not None and now >= next_progress:
                next_progress = now + self.progress_s
                with anyio.move_on_after(1):
                    await ctx.progress(now - started, ttl, self._waiting_text(approval))
            await anyio.sleep(self.poll_s)

    async def _ask_client(self, ctx: CallContext, approval: Approval) -> Approval | Refusal:
        """2026-07-28: a URL elicitation per round, until the approval is decided (or the client gives up)."""
        assert ctx.downstream is not None
        while True:
            current = await self._store.get(approval.id)
            if current is None or current.status is not Status.PENDING:
                return await self._settled(ctx, approval, current)
            # no elicitationId: 2026-07-28 removed it (the inputRequests key names the question); the URL
            # names the approval
            params = {"mode": "url", "message": self._waiting_text(approval), "url": self.url_of(approval.id)}
            answer: dict[str, Any] | types.ErrorData | None = None
            with anyio.move_on_after(max(current.expires_at - time.time(), 0.0) + self.poll_s):
                answer = await ctx.downstream.request(ClientMethod.ELICITATION, params)
            if answer is None:
                continue  # parked past the expiry: the next read says expired
            if isinstance(answer, types.ErrorData) or answer.get("action") != "accept":
                current = await self._store.get(approval.id)
                if current is not None and current.status is not Status.PENDING:
                    return await self._settled(ctx, approval, current)
                why = (
                    answer.message
                    if isinstance(answer, types.ErrorData)
                    else f"the client answered {answer.get('action')!r}"
                )
                return Refusal(
                    ReasonCode.APPROVAL_PENDING,
                    f"approval {approval.id} is pending ({why}); call again with the same arguments once it is "
                    f"approved: {self.url_of(approval.id)}",
                )

    async def _settled(self, ctx: CallContext, approval: Approval, current: Approval | None) -> Approval | Refusal:
        """The approval has left pending: granted (go on), or the refusal naming it."""
        if current is None:
            return Refusal(ReasonCode.APPROVAL_EXPIRED, f"approval {approval.id} no longer exists")
        if current.status is Status.GRANTED:
            return current
        if current.status is Status.DENIED:
            by = f" by {current.decided_by}" if current.decided_by else ""
            note = f": {current.comment}" if current.comment else ""
            return Refusal(ReasonCode.APPROVAL_DENIED, f"approval {approval.id} was denied{by}{note}")
        if current.status is Status.EXECUTED:
            return _used(approval)
        expired = await self._store.expire(approval.id)
        if expired is not None:
            refusal = await self._record(ctx, EventKind.APPROVAL_EXPIRED, expired)
            if refusal is not None:
                return refusal
        return Refusal(
            ReasonCode.APPROVAL_EXPIRED,
            f"approval {approval.id} expired before it was approved; calling again asks for a new approval",
        )

    async def _consume(self, ctx: CallContext, approval: Approval) -> Refusal | Undo:
        consumed = await self._store.consume(approval.id)
        if consumed is None:
            current = await self._store.get(approval.id)
            if current is not None and current.status is Status.EXPIRED:
                settled = await self._settled(ctx, approval, current)
                assert isinstance(settled, Refusal)
                return settled
            return _used(approval)
        undo = Undo(partial(self._restore, ctx, approval.id))
        refusal = await self._record(
            ctx, EventKind.APPROVAL_EXECUTED, consumed, decided_by=consumed.decided_by, comment=consumed.comment
        )
        if refusal is not None:
            await undo.run()
            return refusal
        log.info("approval.executed", approval_id=approval.id, call_id=ctx.call_id, decided_by=consumed.decided_by)
        return undo

    async def _restore(self, ctx: CallContext, approval_id: str) -> None:
        try:
            await self._store.restore(approval_id)
        except StateError as e:  # stays executed: the call is refused and a new approval is needed
            log.warning("approval.restore_failed", approval_id=approval_id, error=str(e), call_id=ctx.call_id)
        else:
            log.info("approval.restored", approval_id=approval_id, call_id=ctx.call_id)

    # ------------------------------------------------------------------ helpers
    async def _record(self, ctx: CallContext, kind: EventKind, approval: Approval, **details: Any) -> Refusal | None:
        decision = ctx.decision
        row = events.approval_event(
            kind,
            approval.to_dict(),
            principal=ctx.principal.id,
            decision_id=decision.decision_id if decision else None,
            session_id=ctx.session.id,
            call_id=ctx.call_id,
            **details,
        )
        try:
            await self._sink.record(row)
        except AuditError as e:
            log.error("audit.unavailable", stage=str(kind), error=str(e), call_id=ctx.call_id)
            return Refusal(
                ReasonCode.AUDIT_UNAVAILABLE,
                f"the audit store cannot record {kind} of approval {approval.id}, so the call was not forwarded",
            )
        return None

    def url_of(self, approval_id: str) -> str:
        """Where a person (or the console) finds the approval."""
        return f"{self._base_url}/admin/api/approvals/{approval_id}"

    def _waiting_text(self, approval: Approval) -> str:
        return (
            f"mcp-guard: this call needs a human approval ({approval.reason}). Approval {approval.id} waits for "
            f"{', '.join(approval.approvers)}: mcp-guard approvals approve {approval.id} --as <approver>"
        )


def _used(approval: Approval) -> Refusal:
    return Refusal(
        ReasonCode.APPROVAL_USED,
        f"approval {approval.id} was already used by an identical call; calling again asks for a new approval",
    )
