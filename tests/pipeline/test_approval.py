"""The approval obligation: a call parked until a person decides, bound to the exact call, single use, audited.

The pipeline here is the real middle of the chain (RecordOutcome → Authorize → EnforceObligations with the real
handler list → RecordDecision) in front of a recording upstream, over a memory approval store; the approver
decides through :func:`mcp_guard.approvals.decide.decide`, as the CLI and the admin API do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import mcp_types as types
import pytest
from pipeline_kit import call_ctx, registry

from mcp_guard.approvals import ApprovalStore, MemoryApprovals, Status, Verdict
from mcp_guard.approvals.decide import DecisionRefused, decide
from mcp_guard.channel import ClientMethod
from mcp_guard.errors import StateError
from mcp_guard.pipeline.approval import ApprovalObligation, parse_approval
from mcp_guard.pipeline.audit import RecordDecision, RecordOutcome
from mcp_guard.pipeline.authorize import Authorize
from mcp_guard.pipeline.build import obligation_handlers, pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.pipeline.obligations import EnforceObligations
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.state import MemoryState
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import Decision, EventKind, Principal, ReasonCode, SessionInfo

pytestmark = pytest.mark.anyio

APPROVAL = {"reason": "deletes a ticket", "approvers": ["role:secops"], "ttl_s": 30}
BOB = Principal("bob", ("secops",))


def _engine(**obligations: Any) -> FunctionEngine:
    ob = {"approval": APPROVAL, **obligations}
    return FunctionEngine(lambda _inp: Decision(allow=True, obligations=ob, revision="rev1"))


@dataclass
class Rig:
    """A pipeline with the approval handler over one store; ``call`` runs a call through it."""

    store: ApprovalStore = field(default_factory=MemoryApprovals)
    sink: RecordingSink = field(default_factory=RecordingSink)
    upstream: RecordingUpstream = field(default_factory=RecordingUpstream)
    engine: FunctionEngine = field(default_factory=_engine)
    state: MemoryState = field(default_factory=MemoryState)
    metrics: CallMetrics = field(default_factory=CallMetrics)

    def chain(self) -> CallNext:
        handler = ApprovalObligation(self.store, self.sink, poll_s=0.01, progress_s=0.05, metrics=self.metrics)
        stages = [
            RecordOutcome(self.sink),
            Authorize(self.engine, None),
            EnforceObligations(obligation_handlers(NO_SECRETS, self.state, handler)),
            RecordDecision(self.sink),
        ]
        return build_chain(stages, self.upstream)

    async def call(self, ctx: CallContext | None = None) -> Outcome:
        return await self.chain()(ctx or call_ctx(tool="delete", arguments={"id": 7}))

    async def pending(self, n: int = 1) -> list[str]:
        """Ids of the pending approvals, once there are ``n``."""
        with anyio.fail_after(10):
            while len(found := await self.store.list([Status.PENDING])) < n:  # noqa: ASYNC110 - the store (or another task) changes it
                await anyio.sleep(0.005)
        return [a.id for a in found]

    def kinds(self) -> list[str]:
        return [str(e.kind) for e in self.sink.events]


async def _run_and_decide(
    rig: Rig, verdict: Verdict, ctx: CallContext | None = None, *, approver: Principal = BOB, comment: str | None = None
) -> tuple[Outcome, str]:
    """Start the call, decide its approval once it is pending, and return how the call ended."""
    before = {a.id for a in await rig.store.list()}
    result: list[Outcome] = []

    async def run() -> None:
        result.append(await rig.call(ctx))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(10):
            while not (new := [a for a in await rig.store.list([Status.PENDING]) if a.id not in before]):  # noqa: ASYNC110 - the store (or another task) changes it
                await anyio.sleep(0.005)
        await decide(rig.store, rig.sink, new[0].id, verdict, approver, comment=comment, source="test")
    return result[0], new[0].id


# ------------------------------------------------------------------------------------------- the obligation
@pytest.mark.parametrize(
    "value",
    [
        "yes",
        {},
        {"reason": "x", "approvers": [], "ttl_s": 10},
        {"reason": "x", "approvers": ["role:"], "ttl_s": 10},
        {"reason": "", "approvers": ["bob"], "ttl_s": 10},
        {"reason": "x", "approvers": ["bob"], "ttl_s": 0},
        {"reason": "x", "approvers": ["bob"], "ttl_s": True},
        {"reason": "x", "approvers": ["bob"], "ttl_s": 10, "extra": 1},
    ],
)
async def test_a_malformed_approval_is_obligation_invalid_and_nothing_is_parked(value: object) -> None:
    assert isinstance(parse_approval(value), str)
    rig = Rig(engine=FunctionEngine(lambda _i: Decision(allow=True, obligations={"approval": value})))
    outcome = await rig.call()
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.OBLIGATION_INVALID
    assert not rig.upstream.seen and not await rig.store.list()
    assert rig.kinds() == ["call.decision"]


async def test_granted_call_runs_once_and_every_step_is_audited() -> None:
    rig = Rig()
    outcome, approval_id = await _run_and_decide(rig, Verdict.GRANT, comment="ok")
    assert not outcome.denied and len(rig.upstream.seen) == 1
    assert rig.kinds() == [
        "approval.requested",
        "approval.granted",
        "approval.executed",
        "call.decision",
        "call.result",
    ]
    requested, granted, executed, allow, _ = rig.sink.events
    assert {requested.details["approval_id"], granted.details["approval_id"]} == {approval_id}  # type: ignore[index]
    assert requested.principal == "alice" and granted.principal == "bob" and executed.principal == "alice"
    assert executed.details["decided_by"] == "bob"  # type: ignore[index]
    assert requested.decision_id == allow.decision_id == executed.decision_id, "one decision, one id"
    assert requested.tool == "delete" and requested.policy_revision == "rev1"
    got = await rig.store.get(approval_id)
    assert got is not None and got.status is Status.EXECUTED


async def test_a_parked_call_counts_as_waiting_until_it_is_decided() -> None:
    """``mcp_guard_approvals_pending`` reads this count: one while the call is parked, none once decided."""
    rig = Rig()
    seen: list[int] = []

    async def run() -> None:
        await rig.call()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        (approval_id,) = await rig.pending()
        with anyio.fail_after(10):
            while rig.metrics.approvals_waiting == 0:  # noqa: ASYNC110 - the parked call changes it
                await anyio.sleep(0.005)
        seen.append(rig.metrics.approvals_waiting)
        await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, BOB, source="test")
    assert seen == [1] and rig.metrics.approvals_waiting == 0


async def test_the_same_call_again_needs_a_new_approval_and_a_deny_names_it() -> None:
    rig = Rig()
    first, first_id = await _run_and_decide(rig, Verdict.GRANT)
    assert not first.denied
    second, second_id = await _run_and_decide(rig, Verdict.DENY, comment="not today")
    assert second_id != first_id
    assert second.denial is not None and second.denial.code is ReasonCode.APPROVAL_DENIED
    assert second_id in second.denial.reasons[1] and "not today" in second.denial.reasons[1]
    assert len(rig.upstream.seen) == 1


async def test_changed_arguments_need_a_new_approval() -> None:
    rig = Rig()

    async def cannot(params: dict[str, Any]) -> types.ErrorData:
        return types.ErrorData(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY, message="no url elicitation")

    await rig.call(_modern(_Client(cannot), {"id": 7}))
    [for_7] = await rig.store.list()
    await decide(rig.store, rig.sink, for_7.id, Verdict.GRANT, BOB, source="test")  # granted, not yet used
    outcome, for_8 = await _run_and_decide(rig, Verdict.GRANT, call_ctx(tool="delete", arguments={"id": 8}))
    assert for_8 != for_7.id and not outcome.denied
    assert [c.arguments for c in rig.upstream.seen] == [{"id": 8}]
    still = await rig.store.get(for_7.id)
    assert still is not None and still.status is Status.GRANTED, "id 7's approval is untouched by the id 8 call"


async def test_a_retry_of_the_identical_call_waits_on_the_same_approval() -> None:
    rig = Rig()
    results: list[Outcome] = []

    async def run() -> None:
        results.append(await rig.call())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        [approval_id] = await rig.pending()
        tg.start_soon(run)  # the client retried (e.g. after a disconnect): same binding, same approval
        with anyio.fail_after(10):
            while len(rig.engine.inputs) < 2:  # noqa: ASYNC110 - the store (or another task) changes it
                await anyio.sleep(0.005)
        assert [a.id for a in await rig.store.list()] == [approval_id]
        await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, BOB, source="test")
    codes = sorted(str(o.denial.code) if o.denial else "ran" for o in results)
    assert codes == ["approval_used", "ran"], "single use: of two identical waiting calls exactly one runs"
    assert len(rig.upstream.seen) == 1


async def test_expiry_is_a_deny_naming_the_approval() -> None:
    rig = Rig(engine=_engine(approval={"reason": "r", "approvers": ["bob"], "ttl_s": 0.2}))
    outcome = await rig.call()
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.APPROVAL_EXPIRED
    [approval] = await rig.store.list()
    assert approval.id in outcome.denial.reasons[1]
    assert rig.kinds() == ["approval.requested", "approval.expired", "call.decision"]
    assert not rig.upstream.seen


async def test_the_requester_and_non_approvers_cannot_decide() -> None:
    rig = Rig()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        [approval_id] = await rig.pending()
        alice_secops = Principal("alice", ("secops",))
        with pytest.raises(DecisionRefused, match="may not decide its own"):
            await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, alice_secops, source="test")
        with pytest.raises(DecisionRefused, match="not among"):
            await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, Principal("eve", ("dev",)), source="test")
        by_id = Principal("carol")
        with pytest.raises(DecisionRefused, match="not among"):
            await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, by_id, source="test")
        await decide(rig.store, rig.sink, approval_id, Verdict.DENY, BOB, source="test")
        with pytest.raises(DecisionRefused, match="is denied, not pending") as e:
            await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, BOB, source="test")
        assert e.value.conflict
    assert not rig.upstream.seen


async def test_progress_is_sent_while_a_2025_client_waits() -> None:
    rig = Rig()
    sent: list[tuple[float, float | None, str | None]] = []

    async def progress(p: float, total: float | None, message: str | None) -> None:
        sent.append((p, total, message))

    ctx = replace(call_ctx(tool="delete", arguments={"id": 7}), progress=progress)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call, ctx)
        [approval_id] = await rig.pending()
        with anyio.fail_after(10):
            while len(sent) < 2:  # noqa: ASYNC110 - the store (or another task) changes it
                await anyio.sleep(0.005)
        await decide(rig.store, rig.sink, approval_id, Verdict.GRANT, BOB, source="test")
    assert all(total == 30 and approval_id in (msg or "") for _, total, msg in sent)
    assert sent[0][0] <= sent[1][0]


# ------------------------------------------------------------------------------------------- 2026-07-28
@dataclass
class _Client:
    """A bridged client channel: answers each elicitation with ``answer(params)``."""

    answer: Callable[[dict[str, Any]], Any]
    asked: list[dict[str, Any]] = field(default_factory=list)
    channel_id: str = "c1"
    principal_id: str = "alice"
    parked: bool = False

    async def request(self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None) -> Any:
        assert method is ClientMethod.ELICITATION
        self.asked.append(params)
        return await self.answer(params)

    async def notify_log(self, params: types.LoggingMessageNotificationParams) -> None:
        return None

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None


def _modern(client: _Client, arguments: dict[str, Any] | None = None) -> CallContext:
    ctx = call_ctx(tool="delete", arguments=arguments or {"id": 7})
    return replace(ctx, session=SessionInfo("m1", "http", stateless=True), downstream=client)


async def test_a_2026_client_is_asked_a_url_elicitation_and_its_retry_runs_once_approved() -> None:
    rig = Rig()
    decided = anyio.Event()

    async def answer(params: dict[str, Any]) -> dict[str, Any]:
        if len(client.asked) == 1:
            return {"action": "accept"}  # retried before anyone approved: asked again
        await decide(rig.store, rig.sink, params["url"].rsplit("/", 1)[1], Verdict.GRANT, BOB, source="test")
        decided.set()
        return {"action": "accept"}

    client = _Client(answer)
    outcome = await rig.call(_modern(client))
    assert decided.is_set() and not outcome.denied and len(rig.upstream.seen) == 1
    assert len(client.asked) == 2
    first = client.asked[0]
    [approval] = await rig.store.list()
    assert first["mode"] == "url" and "elicitationId" not in first, "2026-07-28 has no elicitationId"
    assert first["url"].endswith(f"/admin/api/approvals/{approval.id}")
    assert approval.status is Status.EXECUTED


async def test_a_2026_client_that_cannot_wait_is_denied_pending_and_an_identical_call_runs_once_approved() -> None:
    rig = Rig()

    async def cannot(params: dict[str, Any]) -> types.ErrorData:
        return types.ErrorData(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY, message="no url elicitation")

    outcome = await rig.call(_modern(_Client(cannot)))
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.APPROVAL_PENDING
    [approval] = await rig.store.list()
    assert approval.id in outcome.denial.reasons[1]
    await decide(rig.store, rig.sink, approval.id, Verdict.GRANT, BOB, source="test")

    other = await rig.call(_modern(_Client(cannot), {"id": 8}))
    assert other.denial is not None and other.denial.code is ReasonCode.APPROVAL_PENDING, "other arguments"
    again = await rig.call(_modern(_Client(cannot)))
    assert not again.denied and [c.arguments for c in rig.upstream.seen] == [{"id": 7}]


async def test_a_declined_elicitation_leaves_the_approval_pending() -> None:
    rig = Rig()

    async def decline(params: dict[str, Any]) -> dict[str, Any]:
        return {"action": "decline"}

    outcome = await rig.call(_modern(_Client(decline)))
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.APPROVAL_PENDING
    assert [a.status for a in await rig.store.list()] == [Status.PENDING]


# ------------------------------------------------------------------------------------------- failing closed
class _BrokenStore(MemoryApprovals):
    async def request(self, req: Any) -> Any:
        raise StateError("approval store x: disk I/O error", cause="disk I/O error")


async def test_a_store_that_cannot_answer_is_state_unavailable() -> None:
    rig = Rig(store=_BrokenStore())
    outcome = await rig.call()
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.STATE_UNAVAILABLE
    assert not rig.upstream.seen


async def test_an_unrecordable_request_is_audit_unavailable_and_nothing_runs() -> None:
    rig = Rig()
    rig.sink.fail_when = lambda e: e.kind is EventKind.APPROVAL_REQUESTED
    outcome = await rig.call()
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.AUDIT_UNAVAILABLE
    assert not rig.upstream.seen


async def test_a_call_refused_after_approval_gives_the_approval_back() -> None:
    """rate_limit runs after approval: a call it refuses keeps its (granted) approval for a later identical call."""
    limit = [{"key": "k", "limit": 1, "window_s": 60}]
    rig = Rig(engine=_engine(rate_limit=limit))
    first, _ = await _run_and_decide(rig, Verdict.GRANT)
    assert not first.denied
    second, second_id = await _run_and_decide(rig, Verdict.GRANT)
    assert second.denial is not None and second.denial.code is ReasonCode.RATE_LIMITED
    got = await rig.store.get(second_id)
    assert got is not None and got.status is Status.GRANTED, "restored: the refused call did not use it"


async def test_the_handler_is_registered_before_labels_and_rate_limit() -> None:
    stages = pipeline_stages(
        engine=_engine(), sink=RecordingSink(), registry=registry(), secrets=NO_SECRETS, state=MemoryState()
    )
    enforce = next(s for s in stages if isinstance(s, EnforceObligations))
    names = [h.name for h in enforce._handlers]
    assert names.index("approval") < names.index("labels") < names.index("rate_limit") == len(names) - 1


async def test_operators_see_the_audit_copy_of_the_arguments_bounded() -> None:
    rig = Rig()
    ctx = replace(
        call_ctx(tool="delete", arguments={"token": "s3cret-value", "blob": "x" * 500}),
        audit_arguments={"token": "***", "blob": "x" * 500},
    )
    handler = ApprovalObligation(rig.store, rig.sink, poll_s=0.01, max_arguments_bytes=100)
    chain = build_chain(
        [Authorize(rig.engine, None), EnforceObligations(obligation_handlers(NO_SECRETS, rig.state, handler))],
        rig.upstream,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(chain, ctx)
        [approval_id] = await rig.pending()
        shown = await rig.store.get(approval_id)
        tg.cancel_scope.cancel()
    assert shown is not None and "s3cret" not in str(shown.to_dict())
    assert set(shown.arguments) == {"mcp-guard/truncated"}
