"""The result policy: after the upstream answers ``tools/call``, the policy is asked about the result.

The same decision rule is evaluated again, with ``input.action == "tools/result"`` and ``input.result`` =
``{"is_error", "content", "structured_content", "truncated"}`` (:func:`result_document`) beside the call's
usual fields (principal, session, server, tool, tool_info, ``arguments`` as the audit copy — secrets
scrubbed, credential shapes masked — and ``context.flow`` as the call's own decision saw it). Its answer:

* **allow** — the result goes to the client, with the decision's obligations applied. Only two are
  known here: ``labels`` (added to the call's flow, as one more history entry with action
  ``tools/result`` and the result decision's id, so ``labeled_by`` names the result decision) and
  ``redact`` (:mod:`mcp_guard.pipeline.result_redact`). Any other key is ``obligation_unknown``, a
  malformed value ``obligation_invalid``: a condition mcp-guard cannot meet is never dropped.
* **deny** — the result is withheld: the client gets a deny (``result_withheld``, then the policy's
  reasons) naming the call's decision id; the outcome row is a ``call.result`` row with
  ``decision = "deny"`` and ``result.withheld = true``.
* an engine failure (``engine_error``, ``timeout``, ``policy_undefined``, ``result_invalid``), an
  obligation that cannot be met, or a flow that cannot take the labels (``state_unavailable``,
  ``flow_limit``) — the result is withheld with that reason (fail closed).

A withheld result is an *override* (:class:`~mcp_guard.pipeline.context.Outcome`): the governing
decision stays the call's allow (its row is written, the call did run), the deny the client gets carries
the call's decision id and the result decision's revision. ``Outcome.result_verdict`` carries the result
decision (its own id) to the outcome row (``details.result_decision``). Labels a result decision added
stay even if the result is withheld afterwards (a later obligation failed, the outcome row could not be
written): stricter, never looser.

**Where it sits** (:mod:`mcp_guard.pipeline.build`): ``RecordDecision → ResultPolicy → Redact → Forward``.

* outside ``Redact``: the policy sees the result with injected secret values already scrubbed, so no
  secret reaches the engine, a decision log or ``input.result``;
* inside ``RecordDecision``: asked only about a call that was recorded and forwarded; a cancellation
  while it evaluates is recorded as ``call.cancelled`` like any other;
* inside ``EnforceObligations``: its deny is not ``audit_unavailable``, so the call's obligations (rate-limit
  count, labels) stand — the call did reach the upstream;
* inside ``RecordOutcome`` (and ``TrackFlow``): what it decides is what the outcome row records, and a
  withheld result reaches the flow's history as a deny, like every deny.

**Which calls.** ``tools/call`` results only. ``resources/read``, ``prompts/get``, ``completion/complete`` and
``resources/subscribe`` pass through unchanged: their answers are not tool output an agent acts on in the same
way, and a rule about them would need its own action name (not part of the contract yet). An upstream
*error* (a JSON-RPC error, not an ``isError`` result) is not a result: it passes, recorded as
``call.error``; an ``isError`` result is asked about like any other.

**Cost.** Off unless the loaded bundle mentions ``"tools/result"`` in a policy or data file
(:class:`ResultUse`, checked once per loaded bundle, so a hot reload turns it on or off), or ``[policy]
result_policy = true`` (needed when OPA serves policies mcp-guard does not hold: it cannot look). Off, the
stage is left out of the composed pipeline (:mod:`mcp_guard.pipeline.in_use`): nothing per call. On: one
more policy evaluation per ``tools/call``, plus the redaction when asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from mcp_guard.audit.events import summarize_result
from mcp_guard.errors import StateError
from mcp_guard.frozen import evolve
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome, ResultVerdict
from mcp_guard.pipeline.flow import flow_ref, parse_labels
from mcp_guard.pipeline.obligations import Refusal
from mcp_guard.pipeline.result_redact import RedactSpec, parse_redact, redact_result
from mcp_guard.policy.base import BundleHolder
from mcp_guard.state.base import FlowCall, FlowFull, StateStore
from mcp_guard.types import Decision, PolicyInput, ReasonCode, utc_now

__all__ = [
    "RESULT_ACTION",
    "RESULT_OBLIGATIONS",
    "ResultPolicy",
    "ResultUse",
    "bundle_uses_results",
    "result_document",
    "result_input",
]

log = structlog.get_logger("mcp_guard.result_policy")

RESULT_ACTION: Final = "tools/result"
RESULT_OBLIGATIONS: Final = frozenset({"labels", "redact"})
"""The obligation keys a ``tools/result`` allow may carry."""
WITHHELD_NOTE: Final = "the call ran; mcp-guard withholds its result"


# ---------------------------------------------------------------------- whether the bundle has a result rule
def bundle_uses_results(files: Mapping[str, str]) -> bool:
    """Whether any policy or data file (path → text) mentions ``tools/result``."""
    return any(RESULT_ACTION in text for text in files.values())


class ResultUse:
    """Whether results go to the policy: ``forced`` (``[policy] result_policy``), or the loaded bundle
    mentions ``tools/result`` (:func:`bundle_uses_results`), re-checked when the engine's bundle changes.

    An engine whose bundle mcp-guard does not hold (OPA serving its own policies) is *not* asked unless
    forced: asking a bundle without a result rule would withhold every result (its decision for an unknown
    action is a deny), so what cannot be seen is assumed absent — the opposite of flows, where assuming
    presence only costs a read."""

    def __init__(self, engine: object, *, forced: bool = False) -> None:
        # Checked once: isinstance against a runtime-checkable protocol costs microseconds, too much per call.
        self._holder = engine if isinstance(engine, BundleHolder) else None
        self._forced = forced
        self._seen: object = None
        self._uses = False

    def __call__(self) -> bool:
        if self._forced:
            return True
        if self._holder is None:
            return False
        bundle = self._holder.bundle
        if bundle is None:
            return False
        if bundle is not self._seen:
            files = {f.rel: f.text for f in (*bundle.policies, *bundle.data_files)}
            self._uses, self._seen = bundle_uses_results(files), bundle
            log.info("result_policy.enabled", enabled=self._uses, revision=getattr(bundle, "revision", None))
        return self._uses


# ---------------------------------------------------------------------- the policy input
def result_document(result: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    """``input.result``: what the policy may read of a (scrubbed) result, bounded.

    ``content`` is one entry per content block: ``{"type", "text"}`` for text, ``{"type", "uri", "mimeType",
    "text"}`` for an embedded resource, ``{"type", "uri", "name"}`` for a resource link and ``{"type",
    "mimeType"}`` for images and audio (binary payloads are never passed). The blocks' texts together hold
    at most ``max_bytes`` of UTF-8; the text that crosses the bound is cut and later texts are empty.
    ``structured_content`` is the object as sent if its JSON fits in ``max_bytes``, else null. ``truncated``
    says whether anything was cut: a rule that must see everything denies when it is true."""
    content, cut = _bounded_content(result.get("content"), max_bytes)
    structured = result.get("structuredContent")
    if structured is not None and _json_bytes(structured) > max_bytes:
        structured, cut = None, True
    return {
        "is_error": result.get("isError") is True,
        "content": content,
        "structured_content": structured,
        "truncated": cut,
    }


_BLOCK_FIELDS: Final = {
    "text": (),
    "resource": ("uri", "mimeType"),
    "resource_link": ("uri", "name", "mimeType"),
    "image": ("mimeType",),
    "audio": ("mimeType",),
}


def _bounded_content(content: object, max_bytes: int) -> tuple[list[dict[str, Any]], bool]:
    if not isinstance(content, list):
        return [], False
    left, cut = max_bytes, False
    blocks: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            continue
        kind = block["type"]
        holder = block.get("resource") if kind == "resource" else block
        holder = holder if isinstance(holder, dict) else {}
        entry: dict[str, Any] = {"type": kind}
        for name in _BLOCK_FIELDS.get(kind, ()):
            if isinstance(holder.get(name), str):
                entry[name] = holder[name]
        text = holder.get("text") if kind in ("text", "resource") else None
        if isinstance(text, str):
            kept = _cut(text, left)
            cut = cut or kept is not text
            left -= len(kept.encode("utf-8"))
            entry["text"] = kept
        blocks.append(entry)
    return blocks, cut


def _cut(text: str, budget: int) -> str:
    """``text`` itself if its UTF-8 fits in ``budget`` bytes, else its longest prefix that does."""
    if len(text) * 4 <= budget:  # a character is at most 4 bytes: fits without encoding it
        return text
    raw = text.encode("utf-8")
    if len(raw) <= budget:
        return text
    return raw[: max(budget, 0)].decode("utf-8", "ignore")


def _json_bytes(value: object) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError):
        return 1 << 62  # not JSON: never passed on


def result_input(ctx: CallContext, result: Mapping[str, Any], max_bytes: int) -> PolicyInput:
    """The ``tools/result`` input for a call's result (the module docstring lists its fields)."""
    return PolicyInput(
        action=RESULT_ACTION,
        principal=ctx.principal,
        session=ctx.session,
        server=ctx.server,
        tool=ctx.target,
        arguments=ctx.audit_arguments if ctx.audit_arguments is not None else ctx.arguments,
        tool_info=ctx.tool_info,
        secrets_seen=ctx.secrets_seen,
        flow=ctx.flow.to_policy() if ctx.flow is not None else None,
        omitted=ctx.flow.omitted if ctx.flow is not None else (),
        result=result_document(result, max_bytes),
    )


# ---------------------------------------------------------------------- the stage
_NO_REDACTION: Final = RedactSpec()


@dataclass(frozen=True, slots=True)
class _Plan:
    """The obligations of a result allow, checked before anything is done."""

    labels: tuple[str, ...] = ()
    redact: RedactSpec = _NO_REDACTION


def _plan(obligations: Mapping[str, Any]) -> _Plan | Refusal:
    unknown = sorted(set(obligations) - RESULT_OBLIGATIONS)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        return Refusal(
            ReasonCode.OBLIGATION_UNKNOWN,
            f"the tools/result decision carries obligation(s) {names}; a result decision may carry only "
            f"{', '.join(sorted(RESULT_OBLIGATIONS))}",
        )
    labels: tuple[str, ...] = ()
    if "labels" in obligations:
        parsed = parse_labels(obligations["labels"])
        if isinstance(parsed, str):
            return Refusal(ReasonCode.OBLIGATION_INVALID, parsed)
        labels = parsed
    redact = _NO_REDACTION
    if "redact" in obligations:
        spec = parse_redact(obligations["redact"])
        if isinstance(spec, str):
            return Refusal(ReasonCode.OBLIGATION_INVALID, spec)
        redact = spec
    return _Plan(labels, redact)


class ResultPolicy:
    """Inside ``call_next``: ``Redact`` → ``Forward``. A ``tools/call`` result that comes back is put to the
    policy (when :class:`ResultUse` says so) and returned allowed (obligations applied) or withheld.

    Always composed, even while no result goes to the policy (:mod:`mcp_guard.pipeline.in_use` could leave it out):
    the question is asked when the result arrives, so a result rule activated while a call is out (a long tool
    call, one parked for approval) judges that call's result too, as it always did. It costs ~0.5 µs a call."""

    def __init__(self, engine: Evaluator, store: StateStore, uses: Callable[[], bool], *, max_bytes: int) -> None:
        self._engine = engine
        self._store = store
        self._uses = uses
        self._max_bytes = max_bytes

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        outcome = await call_next(ctx)
        result = outcome.result
        if ctx.action != "tools/call" or result is None or outcome.error is not None or outcome.denied:
            return outcome
        if not self._uses():
            return outcome
        return await self._judge(ctx, outcome, result)

    async def _judge(self, ctx: CallContext, outcome: Outcome, result: dict[str, Any]) -> Outcome:
        """Ask the policy about ``result`` and pass it on (obligations applied) or withhold it."""
        governing = ctx.decision
        assert governing is not None and governing.allow, "ResultPolicy runs after an allow"
        decision = await self._engine.evaluate(result_input(ctx, result, self._max_bytes))
        if not decision.allow:
            code = decision.code or ReasonCode.RESULT_WITHHELD
            return self._withhold(ctx, governing, decision, result, code, decision.reasons)
        plan = _plan(decision.obligations)
        if isinstance(plan, Refusal):
            return self._withhold(ctx, governing, decision, result, plan.code, (plan.detail,))
        refusal = await self._label(ctx, decision, plan.labels) if plan.labels else None
        if refusal is not None:
            return self._withhold(ctx, governing, decision, result, refusal.code, (refusal.detail,))
        if not plan.redact:
            return evolve(outcome, result_verdict=ResultVerdict(decision))
        redaction = redact_result(result, plan.redact)
        log.debug("result.redacted", call_id=ctx.call_id, result_decision_id=decision.decision_id, **redaction.counts())
        return evolve(
            outcome, result=redaction.result, result_verdict=ResultVerdict(decision, redacted=redaction.counts())
        )

    async def _label(self, ctx: CallContext, decision: Decision, labels: tuple[str, ...]) -> Refusal | None:
        """Add the result decision's labels to the call's flow (one history entry, action ``tools/result``)."""
        call = FlowCall(
            decision_id=decision.decision_id,
            action=RESULT_ACTION,
            server=ctx.server,
            tool=ctx.target,
            decision="allow",
            labels=labels,
            time=utc_now(),
        )
        try:
            recorded = await self._store.record_call(flow_ref(ctx), call)
        except StateError as e:
            log.error("flow.state_unavailable", error=str(e), call_id=ctx.call_id, stage="result_labels")
            return Refusal(
                ReasonCode.STATE_UNAVAILABLE,
                f"the labels of this result cannot be recorded in its flow ({e.cause})",
            )
        if isinstance(recorded, FlowFull):
            detail = f"this call's flow cannot take the result's labels: {recorded.reason}"
            return Refusal(ReasonCode.FLOW_LIMIT, detail)
        return None

    def _withhold(
        self,
        ctx: CallContext,
        governing: Decision,
        decision: Decision,
        result: Mapping[str, Any],
        code: ReasonCode,
        reasons: tuple[str, ...],
    ) -> Outcome:
        """The override that withholds ``result``: the call's decision id, the result decision's revision."""
        if reasons and reasons[0] == str(code):
            reasons = reasons[1:]  # a fail-closed deny already leads with its code
        note = () if code is ReasonCode.RESULT_WITHHELD else (WITHHELD_NOTE,)
        override = Decision(
            allow=False,
            reasons=(str(code), *reasons, *note),
            revision=decision.revision,
            decision_id=governing.decision_id,
            code=code,
        )
        log.warning(
            "result.withheld",
            code=str(code),
            reasons=list(override.reasons),
            call_id=ctx.call_id,
            decision_id=governing.decision_id,
            result_decision_id=decision.decision_id,
            policy_revision=decision.revision,
        )
        verdict = ResultVerdict(decision, withheld=summarize_result(result))
        return Outcome(decision=governing, override=override, result_verdict=verdict)
