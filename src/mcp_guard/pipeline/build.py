"""The one place the stage order of the pipeline is written.

Every request that targets an upstream runs through these stages, outermost first::

    Observe → InspectArguments → RecordOutcome → TrackFlow → PinCheck → ShadowPolicy → Authorize
        → EnforceObligations → ExchangeToken → RecordDecision → Redecide → ResultPolicy → Redact → Forward

* :class:`~mcp_guard.pipeline.observe.Observe` — counts and times every request as the client is answered
  (``/metrics``); outermost, so every other stage and the upstream call run inside it. The two audit
  stages write through :meth:`CallMetrics.timed <mcp_guard.pipeline.observe.CallMetrics.timed>`, which
  times the commit wait.
* :class:`~mcp_guard.pipeline.secrets.InspectArguments` — the audit copy of the arguments (secrets
  scrubbed, credential shapes masked) and ``secrets_seen``; first, so no stage can record raw arguments.
* :class:`~mcp_guard.pipeline.audit.RecordOutcome` — records how the call ended (every deny, the result
  summary or the error) before the client is answered; withholds a result it cannot record.
* :class:`~mcp_guard.pipeline.flow.TrackFlow` — reads the call's information flow for the policy
  (``context.flow``) when the bundle uses flows, and appends a denied call to it; inside RecordOutcome so
  its own ``state_unavailable`` deny is recorded, outside PinCheck so every deny reaches the history.
* :class:`~mcp_guard.pipeline.pins.PinCheck` — ``tool_changed`` for a changed, unapproved tool; before
  the policy, so that is the reason whatever the policy would say.
* :class:`~mcp_guard.pipeline.shadow.ShadowPolicy` — asks the ``[policy] shadow_bundle`` candidate the
  question ``Authorize`` asked, after the call, and audits a disagreement (``policy.shadow_diff``); right
  outside Authorize because only the verdict coming back out of it holds the exact input and the policy's own
  answer for allows and denies alike; never changes the outcome (left out without a candidate).
* :class:`~mcp_guard.pipeline.authorize.Authorize` — nothing goes further without ``allow: true``; the
  policy input carries ``context.usage`` for the rate-limit keys the bundle declares, read only while the
  decision (or the shadow candidate's) can read it (:class:`~mcp_guard.pipeline.ratelimit.DeclaredUsage`).
* :class:`~mcp_guard.pipeline.obligations.EnforceObligations` — every obligation of the allow is
  enforced by its handler (:func:`obligation_handlers`) or the call is denied; the handlers' state writes
  (the flow record, the rate-limit admission) commit as one batch, one transaction; before the allow is
  recorded, so a refused call has a deny row and no allow row.
* :class:`~mcp_guard.pipeline.exchange.ExchangeToken` — a call to a ``token_exchange`` upstream gets the caller's
  token exchanged for the upstream's audience and the call's scopes, or is denied (``subject_token_missing``,
  ``token_exchange_failed``) before its allow is recorded; after the obligations (approval, rate limit).
* :class:`~mcp_guard.pipeline.audit.RecordDecision` — the allow row is committed before the upstream
  sees the call; if it cannot be, the call is not forwarded (``audit_unavailable``).
* :class:`~mcp_guard.pipeline.redecide.Redecide` — the policy asked again, with the client's answers, before an
  upstream's mid-call questions are answered by a retry (a 2026-07-28 upstream's ``InputRequiredResult``
  rounds, a 2026-07-28 client's retry with ``inputResponses``): an allow's row is committed first, a deny
  ends the call. Inside ``RecordDecision``, so it only re-decides an admitted, recorded call; outside the
  result policy, so a call it ends has no result to judge.
* :class:`~mcp_guard.pipeline.result_policy.ResultPolicy` — a ``tools/call`` result is put to the policy
  (``action = "tools/result"``) when the bundle has a result rule: allowed (labels, redaction) or withheld.
  Outside ``Redact``, so the policy never sees an injected secret; inside ``RecordDecision`` and
  ``RecordOutcome``, so it only judges a recorded, forwarded call and its verdict is what the outcome row
  records.
* :class:`~mcp_guard.pipeline.redact.Redact` — injected secret values are scrubbed from whatever comes back.
* :class:`~mcp_guard.pipeline.forward.Forward` — the request to the upstream.

Each stage's docstring states what runs inside its ``call_next``; :class:`~mcp_guard.pipeline.context.Outcome`
documents what comes back out.

**A call runs through the stages in use** (:mod:`mcp_guard.pipeline.in_use`): :func:`pipeline_stages` is every
stage in the order above, :func:`build_pipeline` composes those in use, in that order, and composes again when
the loaded bundle changes. Left out while not in use: ``TrackFlow`` (the bundle does not use flows),
``ShadowPolicy`` (no candidate); narrowed: ``Authorize`` without its usage source (no declared limit it can read),
``EnforceObligations`` running the ``labels`` handler only for a present key (no flows) — each decided at the
call's start, as the stage itself decided. Always there: the rest, ``Observe`` (metrics are always on), and the
stages that ask later in the call: ``ExchangeToken`` (a config reload can add a ``token_exchange`` upstream while a
call waits for approval), ``ResultPolicy`` (a result rule activated while a call is out judges its result) and
``Redecide`` (an input round is known only when the upstream answers).
Each stage says for itself whether it is in use (its ``as_used()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp_guard.approvals.base import ApprovalStore
from mcp_guard.approvals.memory import MemoryApprovals
from mcp_guard.pipeline.approval import ApprovalObligation
from mcp_guard.pipeline.audit import EventSink, RecordDecision, RecordOutcome
from mcp_guard.pipeline.authorize import Authorize, Evaluator, UsageSource
from mcp_guard.pipeline.context import CallNext, Interceptor
from mcp_guard.pipeline.exchange import Exchangers, ExchangeToken, UpstreamScopesObligation
from mcp_guard.pipeline.flow import FlowUse, HistoryRead, LabelsObligation, TrackFlow
from mcp_guard.pipeline.forward import Forward
from mcp_guard.pipeline.in_use import InUsePipeline
from mcp_guard.pipeline.obligations import EnforceObligations, ObligationHandler
from mcp_guard.pipeline.observe import CallMetrics, Observe
from mcp_guard.pipeline.pins import PinCheck
from mcp_guard.pipeline.ratelimit import DeclaredUsage, RateLimitObligation, UsageRead, bundle_data_of
from mcp_guard.pipeline.redact import Redact
from mcp_guard.pipeline.redecide import Redecide
from mcp_guard.pipeline.result_policy import ResultPolicy, ResultUse
from mcp_guard.pipeline.secret_source import CredentialCheck, SecretSource
from mcp_guard.pipeline.secrets import InspectArguments, SecretsObligation
from mcp_guard.pipeline.shadow import ShadowPolicy, ShadowStats
from mcp_guard.pipeline.stepup import StepUpObligation
from mcp_guard.state.base import StateStore
from mcp_guard.upstream.registry import Registry

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["build_pipeline", "obligation_handlers", "pipeline_stages", "traced_stages", "usage_source"]


def obligation_handlers(
    secrets: SecretSource,
    state: StateStore,
    approval: ObligationHandler | None = None,
    *,
    credentials: CredentialCheck | None = None,
    exchangers: Exchangers | None = None,
    flows: FlowUse | None = None,
) -> list[ObligationHandler]:
    """Every obligation mcp-guard enforces, in the order they run; a key not handled here is a deny.

    ``labels`` records the allowed call in its flow and ``rate_limit`` counts it: both as ops of the call's one
    state batch, committed in this order once every handler has let the call through (a full limit rolls the record
    back; the batch is taken back if the call is not forwarded after all). ``rate_limit`` stays last. ``step_up``
    belongs on a deny (the front turns it into a scope challenge); on an allow its handler refuses the call.
    ``approval`` (:func:`pipeline_stages` always gives one) parks the call until a person decides: before ``labels``
    and ``rate_limit``, so a call waiting for approval neither labels its flow nor counts against a limit.
    ``upstream_scopes`` (given ``exchangers``) checks the policy's narrowing of a token-exchange upstream's token;
    the exchange itself is the ``ExchangeToken`` stage's, after every obligation. ``flows`` (the bundle's
    :class:`~mcp_guard.pipeline.flow.FlowUse`) lets the composed pipeline run ``labels`` only when asked for while
    the bundle does not use flows; without it ``labels`` runs on every allowed call."""
    approvals = [approval] if approval is not None else []
    scopes = [UpstreamScopesObligation(exchangers)] if exchangers is not None else []
    return [
        SecretsObligation(secrets, credentials),
        StepUpObligation(),
        *scopes,
        *approvals,
        LabelsObligation(state, flows),
        RateLimitObligation(state),
    ]


def usage_source(engine: Evaluator, state: StateStore, shadow: Evaluator | None = None) -> UsageSource | None:
    """``context.usage`` from the declarations in the engine's bundle, read only while the engine's (or the shadow
    candidate's) decision can read it; None when the engine holds no bundle."""
    data = bundle_data_of(engine)
    if data is None:
        return None
    return DeclaredUsage(state, data, UsageRead(engine, *([shadow] if shadow is not None else [])))


def pipeline_stages(
    *,
    engine: Evaluator,
    sink: EventSink,
    registry: Registry,
    secrets: SecretSource,
    state: StateStore,
    metrics: CallMetrics | None = None,
    approvals: ApprovalStore | None = None,
    tracer: Tracer | None = None,
    stage_metrics: bool = False,
    shadow: Evaluator | None = None,
    shadow_stats: ShadowStats | None = None,
) -> list[Interceptor]:
    """The stages, outermost first (the order in the module docstring). ``metrics`` is where the calls are
    counted (the Guard's, read by ``/metrics``); without one they are counted in a private instance.
    ``approvals`` is where parked calls wait (the Guard's shared store); without one, in memory.
    ``tracer`` (traces on, mcp_guard.telemetry) adds the tracing stage: see :func:`traced_stages`.
    ``stage_metrics`` (``[telemetry] stage_metrics``) times every stage but ``Observe`` into ``metrics.stages``.
    ``shadow`` is the ``[policy] shadow_bundle`` candidate (None: none), counted in ``shadow_stats``.

    Every stage, in use or not: :func:`build_pipeline` composes the ones in use (:mod:`mcp_guard.pipeline.in_use`)."""
    metrics = metrics if metrics is not None else CallMetrics()
    audit = metrics.timed(sink)
    bound = registry.settings.audit.max_arguments_bytes
    approval = ApprovalObligation(
        approvals if approvals is not None else MemoryApprovals(),
        audit,
        base_url=registry.settings.console.url_base(registry.settings.server),
        max_arguments_bytes=bound,
        metrics=metrics,
    )
    policy = registry.settings.policy
    flows = FlowUse(engine)
    stages: list[Interceptor] = [
        Observe(metrics),
        InspectArguments(secrets),
        RecordOutcome(audit, max_arguments_bytes=bound),
        TrackFlow(state, flows, HistoryRead(engine, *([shadow] if shadow is not None else []))),
        PinCheck(registry),
        ShadowPolicy(shadow, sink, shadow_stats),
        Authorize(engine, usage_source(engine, state, shadow)),
        EnforceObligations(
            obligation_handlers(secrets, state, approval, credentials=registry, exchangers=registry, flows=flows)
        ),
        ExchangeToken(registry),
        RecordDecision(audit, max_arguments_bytes=bound),
        Redecide(engine, audit, secrets, max_arguments_bytes=bound),
        ResultPolicy(engine, state, ResultUse(engine, forced=policy.result_policy), max_bytes=policy.result_max_bytes),
        Redact(secrets),
    ]
    return _wrapping(metrics, tracer, stage_metrics)(stages)


def _wrapping(
    metrics: CallMetrics, tracer: Tracer | None, stage_metrics: bool
) -> Callable[[list[Interceptor]], list[Interceptor]]:
    """What wraps a stage list: every stage but ``Observe`` timed (``stage_metrics``), then the tracing stages."""

    def wrap(stages: list[Interceptor]) -> list[Interceptor]:
        if stage_metrics:
            stages = [stages[0], *(metrics.time_stage(s) for s in stages[1:])]
        return stages if tracer is None else traced_stages(stages, tracer)

    return wrap


def traced_stages(stages: list[Interceptor], tracer: Tracer) -> list[Interceptor]:
    """With traces on: :class:`~mcp_guard.pipeline.trace.TraceCall` outermost (the call's span, child of the
    client's trace context), and every stage inside a span of its own. Imported here, only now: with traces
    off the pipeline neither imports OpenTelemetry nor runs one instruction for it."""
    from mcp_guard.pipeline.trace import TraceCall, traced_stage

    return [TraceCall(tracer), *(traced_stage(s, tracer) for s in stages)]


def build_pipeline(
    *,
    engine: Evaluator,
    sink: EventSink,
    registry: Registry,
    secrets: SecretSource,
    state: StateStore,
    metrics: CallMetrics | None = None,
    approvals: ApprovalStore | None = None,
    tracer: Tracer | None = None,
    stage_metrics: bool = False,
    shadow: Evaluator | None = None,
    shadow_stats: ShadowStats | None = None,
    terminal: CallNext | None = None,
) -> InUsePipeline:
    """The whole pipeline: the stages of :func:`pipeline_stages` that are in use now
    (:class:`~mcp_guard.pipeline.in_use.InUsePipeline`, recomposed when the loaded bundle changes) ending in
    :class:`~mcp_guard.pipeline.forward.Forward` (inside a CLIENT span that hands the upstream its trace context,
    when traces are on). ``terminal`` replaces Forward (benchmarks: a recording upstream)."""
    metrics = metrics if metrics is not None else CallMetrics()
    # Unwrapped (no tracer, no stage timers): the pipeline wraps what it composes, each time it composes.
    stages = pipeline_stages(
        engine=engine,
        sink=sink,
        registry=registry,
        secrets=secrets,
        state=state,
        metrics=metrics,
        approvals=approvals,
        shadow=shadow,
        shadow_stats=shadow_stats,
    )
    forward: CallNext = terminal if terminal is not None else Forward(registry)
    if stage_metrics:
        forward = metrics.time_forward(forward)
    if tracer is not None:
        from mcp_guard.pipeline.trace import traced_forward

        forward = traced_forward(forward, tracer)
    return InUsePipeline(stages, forward, engine=engine, wrap=_wrapping(metrics, tracer, stage_metrics))
