"""What flows through the interceptor chain: a frozen :class:`CallContext` in, an :class:`Outcome` out.

The stage order is written once, in :mod:`mcp_guard.pipeline.build`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import mcp_types as types

from mcp_guard.channel import ClientChannel
from mcp_guard.state.base import Flow
from mcp_guard.types import Action, Decision, PolicyInput, Principal, ReasonCode, SessionInfo, ToolInfo, new_id
from mcp_guard.upstream.era import Era
from mcp_guard.upstream.token_exchange import UpstreamToken

__all__ = [
    "CallContext",
    "CallNext",
    "ErrorOrigin",
    "Interceptor",
    "Outcome",
    "PolicyVerdict",
    "ProgressFn",
    "RedecideFn",
    "ResultVerdict",
]

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]

RedecideFn = Callable[[Mapping[str, dict[str, Any]]], Awaitable[Decision]]
"""Ask the policy again about an admitted call, now with the client's answers to an upstream's mid-call
questions (keyed as the upstream keyed them), before a retry carries them upstream. An allow's row is committed
when it returns; a deny has ended the call's run (:mod:`mcp_guard.pipeline.redecide`)."""


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """What the policy was asked and what it said, exactly: the input document the engine saw (with its
    recorded context — time, usage, flow) and the engine's own decision, before any stage replaced it.

    ``Authorize`` sets it on the context it passes inward and on the outcome it returns, so the decision row
    can keep the input for ``policy replay`` and a shadow bundle can be asked the same question.
    """

    input: PolicyInput
    decision: Decision
    input_round: int = 0  # 0: the call's first decision; n: the re-decision on the n-th round of input responses
    # The round's input responses as the audit may hold them (secrets scrubbed, credential shapes masked), kept in
    # the row's recorded input in place of the raw ones the policy saw; None when the input has none.
    audit_responses: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallContext:
    """One client request that targets an upstream (tools/call, resources/read, prompts/get, …)."""

    action: Action
    principal: Principal
    session: SessionInfo
    server: str
    target: str  # upstream-local tool name, prompt name or resource URI
    exposed: str  # the namespaced name/URI the client used
    arguments: Mapping[str, Any]
    request: types.ClientRequest  # the request to forward, already de-namespaced
    tool_info: ToolInfo | None = None
    decision: Decision | None = None
    secrets_seen: tuple[str, ...] = ()
    audit_arguments: Mapping[str, Any] | None = None  # arguments with secret-looking values masked
    progress: ProgressFn | None = None
    timeout_s: float | None = None
    call_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    downstream: ClientChannel | None = None  # the client the call came from (for upstream→client traffic)
    correlation_id: str | None = None  # a stateless client's flow correlation id (mcp_guard.pipeline.flow)
    flow: Flow | None = None  # the call's flow as read before policy (None: the bundle does not use flows)
    # W3C trace context (traceparent, tracestate) of the client's HTTP request, if it sent one; the tracing
    # stage (mcp_guard.pipeline.trace) prefers the request's `_meta`.
    trace_context: Mapping[str, str] | None = None
    verdict: PolicyVerdict | None = None  # set by Authorize for the stages inside it (the allow row keeps it)
    # The token exchanged for this call (token_exchange upstreams; mcp_guard.pipeline.exchange): sent upstream as
    # this request's Authorization; the allow row records its audience and scopes, never its value.
    upstream_token: UpstreamToken | None = None
    # Told once the allow row is committed, just before the stages that reach the upstream: a task-augmented
    # call (mcp_guard.frontend.tasks) answers its task handle then, so a denied call is answered at once.
    admitted: Callable[[], None] | None = None
    # Told the call's re-decision once it is admitted (the Redecide stage; Forward, in the call's own task, reads
    # it with redecide.current_redecide): the input-required bridge (mcp_guard.frontend.input_required) re-decides
    # on a client's retry with its inputResponses before delivering them to the waiting upstream.
    on_redecide: Callable[[RedecideFn], None] | None = None
    # The era the upstream is spoken to in (``stateless``: 2026-07-28, ``handshake``: 2025-11-25) when the call was
    # made; None when its connection has not been ready yet. On the call's rows (details.upstream_protocol).
    upstream_protocol: Era | None = None
    # The client's Mcp-Param-* headers (a 2026-07-28 HTTP tools/call), passed on with this call's requests to a
    # 2026-07-28 HTTP upstream (mcp_guard.upstream.param_headers); None: it sent none.
    param_headers: Mapping[str, str] | None = None


class ErrorOrigin(StrEnum):
    """Who wrote an :attr:`Outcome.error` — said by the stage that made it, never read off its code or text
    (an upstream may answer with any code and any words, mcp-guard's included)."""

    UPSTREAM = "upstream"  # the upstream answered with this error
    GUARD = "guard"  # mcp-guard made it: the upstream is down, timed out, or answered with something invalid


@dataclass(frozen=True, slots=True)
class ResultVerdict:
    """What the result policy (:mod:`mcp_guard.pipeline.result_policy`) decided about a ``tools/call`` result,
    for the outcome row: the ``tools/result`` decision as the engine returned it (its own decision id), and
    either what ``obligations.redact`` replaced in the delivered result or the summary (is_error, bytes,
    sha256 — never content) of the result withheld from the client."""

    decision: Decision
    withheld: Mapping[str, Any] | None = None  # summary of the withheld result; None: the result was delivered
    redacted: Mapping[str, int] | None = None  # replacements made by obligations.redact, by kind


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: a raw upstream result, an error for the client, or a deny.

    ``decision`` is always the decision that **governed** the call: the policy's allow for a call that
    went through (so the outcome row names its decision id and policy revision), or the deny that
    stopped it — the policy's own, or a fail-closed one a stage made in its place (``tool_changed``,
    ``secret_not_granted``, ``obligation_unknown``, …, none of which follows a recorded allow).

    ``override`` is set only when mcp-guard refused a call *after* its governing decision allowed it:
    today that is ``audit_unavailable`` (the allow row could not be written, so the call was not
    forwarded; or the outcome row could not be written, so the result is withheld). It is a deny made
    by :meth:`fail_closed`, carrying the governing decision's id and policy revision, so the answer the
    client gets, the log line and any row written for it all name the same decision. Stages tell this
    case apart by the field, never by comparing reason strings.

    ``error_origin`` says who wrote ``error``; an error is the upstream's unless the stage that made it
    says otherwise (:meth:`guard_error`), so nothing an upstream sends can pass for mcp-guard's own.

    ``result_verdict`` is set when the result policy was asked about the result (then a withheld result is
    an override too: the call ran, its result is not shown). ``verdict`` is the call's own policy question
    and answer (set by ``Authorize``), which the deny row keeps for replay.
    """

    result: dict[str, Any] | None = None
    error: types.ErrorData | None = None
    decision: Decision | None = None
    override: Decision | None = None
    error_origin: ErrorOrigin = ErrorOrigin.UPSTREAM
    result_verdict: ResultVerdict | None = None  # the result policy's verdict (ResultPolicy), when it judged
    verdict: PolicyVerdict | None = None  # the policy's input and own decision, when the policy was asked
    upstream_protocol: Era | None = None  # the era of the connection Forward sent the call on (None: none reached)

    @classmethod
    def guard_error(cls, code: int, message: str) -> Outcome:
        """An error mcp-guard itself answers with (the client is told it is mcp-guard's)."""
        return cls(error=types.ErrorData(code=code, message=message), error_origin=ErrorOrigin.GUARD)

    @property
    def denied(self) -> bool:
        return self.denial is not None

    @property
    def denial(self) -> Decision | None:
        """The deny the client is answered with: the override if any, else a denying governing decision."""
        if self.override is not None:
            return self.override
        if self.decision is not None and not self.decision.allow:
            return self.decision
        return None

    @classmethod
    def fail_closed(cls, governing: Decision | None, code: ReasonCode, detail: str) -> Outcome:
        """Refuse a call its ``governing`` decision allowed; nothing of a result survives.

        The override shares the governing decision's id and revision (one call, one decision id). With no
        governing decision at all the deny governs itself.
        """
        deny = Decision.deny(code, detail, revision=governing.revision if governing else None)
        if governing is None:
            return cls(decision=deny)
        return cls(decision=governing, override=replace(deny, decision_id=governing.decision_id))


CallNext = Callable[[CallContext], Awaitable[Outcome]]
Interceptor = Callable[[CallContext, CallNext], Awaitable[Outcome]]
