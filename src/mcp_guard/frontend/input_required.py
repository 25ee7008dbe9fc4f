"""Upstream→client requests for 2026-07-28 clients, bridged as ``InputRequiredResult`` rounds (SEP-2322).

Upstreams are spoken to on the 2025-11-25 handshake, where a server that needs the client's help mid-call
(``sampling/createMessage``, ``elicitation/create``, ``roots/list``) sends a request back and waits. A
2026-07-28 client has no back channel: each request is answered once, and a server that needs input
answers with an ``InputRequiredResult`` (``resultType: "input_required"``, ``inputRequests`` keyed by
the server, an opaque ``requestState``); the client fulfils the requests and *retries* the original
request with ``inputResponses`` and the echoed ``requestState``.

:class:`InputRequiredBridge` joins the two. A modern client's ``tools/call`` / ``prompts/get`` /
``resources/read`` runs through the pipeline in a background task (a plain asyncio task the bridge ends on
shutdown), with a :class:`BridgedCallChannel` as its client channel (see :mod:`mcp_guard.channel`) — unless the
client declared none of ``sampling``, ``elicitation`` and ``roots``: no question could then be put to it, so the
call runs in its request's own task, and its request's channel refuses an upstream's question with ``-32021`` as
a round would (:func:`mcp_guard.channel.answers_nothing`). When the upstream asks
the client something, the question is parked on the pending call instead of being sent; the client's
request is answered with an ``InputRequiredResult`` carrying every question asked so far, and the retry
delivers the answers to the upstream requests still waiting for them, then waits for the next event: the
final result, or more questions (another round)::

    client ──tools/call──► bridge ──(pipeline, once)──► upstream
           ◄─input_required {elicitation-1}─┘    ◄── elicitation/create (waits)
    client ──tools/call + inputResponses + requestState──► answer delivered ──► upstream continues
           ◄──────────────── result ◄──────────────────────────────────────────── result

Rules
    * The policy/audit pipeline runs once per logical call, at the first round; a retry resumes it. A retry
      that answers questions of the admitted call has its answers put to the policy first (the call's
      ``Redecide``, told to the bridge through ``CallContext.on_redecide``; :mod:`mcp_guard.pipeline.redecide`):
      the policy input gains ``input_responses`` keyed as the questions were, an allow is recorded under the
      call's id before the answers reach the upstream, and a deny ends the call: the answers are never
      delivered, the retry is answered with the deny (recorded as the call's outcome).
    * ``requestState`` is ``mg1.<call id>.<round>.<mac>``: HMAC-SHA256 under a per-process random key over
      the call id, the round, and a digest binding the principal, method, upstream, target and arguments.
      An altered token, one replayed by another principal or for other arguments, an answered (stale)
      round, or a call that is no longer pending is refused with ``-32602`` and a message saying which.
    * Questions that arrive together are batched into one round: after the first question the bridge
      waits until ``settle_s`` pass without another one (at most ``settle_max_s``). An upstream sending
      concurrent requests emits them back to back (well under a millisecond apart on a pipe, a few ms over
      HTTP), so 20 ms of quiet separates a burst from a sequential dialogue while adding nothing a person
      or model answering the question could notice; the cap bounds the delay if an upstream trickles.
    * Capabilities are the request's own (``_meta`` clientCapabilities). A question the client did not
      declare it can answer is never put to it: it is refused to the upstream with ``-32021`` and
      ``data.requiredCapabilities`` as soon as no answerable question of the call is open (questions
      asked together with it are put to the client first, so an upstream asking several things at once
      still gets every answer the client can give); an upstream that cannot go on without it fails the
      call with that error, which reaches the client as such (HTTP 400 on the modern HTTP path).
    * Pending calls are bounded: at most ``max_pending`` (``max_per_principal`` per principal) at once, and
      a call whose client does not come back within ``pending_ttl_s`` of its last round expires: its open
      questions are answered with an error, and the upstream call is cancelled ``grace_s`` later if it
      has not ended. The upstream's own ``timeout_s`` keeps running while the client answers.
    * Between rounds a call is *parked*: the registry does not attribute new upstream→client requests to a
      parked call while a call of the same principal to that upstream is being served (a parked call of
      another principal keeps such a request ambiguous, hence refused; see ``Registry._candidates``).

Deployment note: the key is per process, so pending calls do not survive a restart and a replicated
deployment needs sticky routing of retries to the replica that issued the state.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types as types
import structlog
from anyio.abc import TaskGroup
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from mcp_guard.channel import REQUEST_TYPES, ClientMethod, answers_nothing, capability_refusal, missing_capability
from mcp_guard.frontend.sessions import DownstreamSession, RequestScopedChannel
from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome, RedecideFn
from mcp_guard.types import new_id

__all__ = ["BridgedCallChannel", "InputRequiredBridge"]

log = structlog.get_logger("mcp_guard.frontend")

_TOKEN_PREFIX = "mg1"
_MAC_CONTEXT = b"mcp-guard/request-state/v1\x00"
_KEY_PREFIX = {ClientMethod.ELICITATION: "elicitation", ClientMethod.SAMPLING: "sampling", ClientMethod.ROOTS: "roots"}
_Answer = dict[str, Any] | types.ErrorData
_STOP_WAIT_S = 10.0  # how long shutdown waits for the cancelled calls' shielded writes


@dataclasses.dataclass(eq=False)
class _Ask:
    """One upstream→client request, waiting for the client's answer."""

    key: str
    method: ClientMethod
    params: dict[str, Any]
    answered: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    answer: _Answer | None = None
    sent: bool = False  # already included in an InputRequiredResult
    missing: dict[str, Any] | None = None  # capabilities the client lacks for it: held, then refused

    def resolve(self, answer: _Answer) -> None:
        if not self.answered.is_set():
            self.answer = answer
            self.answered.set()

    def wire(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}


class _Pending:
    """One bridged logical call: the background pipeline run, its open questions, and its rounds."""

    def __init__(self, call_id: str, principal: str, call: CallContext, timeout_s: float) -> None:
        self.id = call_id
        self.principal = principal
        self._call = call  # what its requestState is bound to (:attr:`binding`)
        self._binding: bytes | None = None
        self.timeout_s = timeout_s
        self.round = 0  # rounds answered with an InputRequiredResult so far
        self.asks: dict[str, _Ask] = {}  # open (unanswered) questions, in arrival order
        self.seq = 0
        self.final: Outcome | None = None
        self.closed = False  # expired, or its final result was handed out
        self.busy = True  # a client request of this call is being served (False: parked between rounds)
        self.ctx: ServerRequestContext[Any, Any] | None = None
        self.caps: types.ClientCapabilities | None = None
        self.deadline = math.inf  # when a parked call expires
        self.scope = anyio.CancelScope()  # the background run's: expiry and shutdown cancel it (entered by _drive)
        self.overdue = False  # the round being served passed its deadline (InputRequiredBridge._serve_round)
        self.redecide: RedecideFn | None = None  # the admitted call's re-decision (None until it is admitted)
        self.refused = False  # the policy refused a retry's answers: the call is ending, no round is served
        self.watched = False  # its expiry (InputRequiredBridge._watch) runs: started when it first parks
        # Made when someone waits for a change (most notices find none). asyncio's Event, not anyio's: anyio's looks
        # its backend up on every creation, and a bridged call makes one per wait (the loop is asyncio's anyway).
        self._changed: asyncio.Event | None = None

    @property
    def binding(self) -> bytes:
        """The digest its requestState is bound to, computed when first needed: most calls never issue one."""
        if self._binding is None:
            self._binding = _binding(self._call)
        return self._binding

    def changed(self) -> asyncio.Event:
        """Set at the next :meth:`notify`."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def bind(self, redecide: RedecideFn) -> None:
        self.redecide = redecide

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def askable(self) -> list[_Ask]:
        """Open questions the client declared it can answer."""
        return [a for a in self.asks.values() if a.missing is None]

    def refuse_held(self) -> None:
        """Refuse the questions the client cannot answer (``-32021`` to the upstream)."""
        for ask, missing in [(a, a.missing) for a in self.asks.values() if a.missing is not None]:
            del self.asks[ask.key]
            log.info("bridge.capability_missing", call=self.id, method=ask.method, required=missing)
            ask.resolve(capability_refusal(ask.method, missing))
        self.notify()

    def fail_asks(self, message: str) -> None:
        for ask in list(self.asks.values()):
            ask.resolve(types.ErrorData(code=types.INVALID_REQUEST, message=message))
        self.asks.clear()


class BridgedCallChannel(RequestScopedChannel):
    """The :class:`~mcp_guard.channel.ClientChannel` of one bridged call: questions wait for a round.

    Log and progress ride the round being served (dropped between rounds, when no client request of the
    call is open); progress only for a call whose first request carried a progress token.
    """

    def __init__(self, pending: _Pending) -> None:
        self.channel_id = pending.id
        self.principal_id = pending.principal
        self._p = pending

    @property
    def parked(self) -> bool:
        """True between rounds: the call's questions are with the client, no request of it is being served."""
        return not self._p.busy

    def _carrier(self) -> ServerRequestContext[Any, Any] | None:
        return self._p.ctx

    async def request(self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None) -> _Answer:
        """Park the question on the call; the answer comes with a retry (or an error when the call ends).

        It is asked under ``key`` (a 2026-07-28 upstream's own) unless an open question of the call has it."""
        p = self._p
        if p.closed or p.final is not None:
            return types.ErrorData(
                code=types.INVALID_REQUEST, message=f"mcp-guard: {method} arrived after the client's call ended"
            )
        p.seq += 1
        ask = _Ask(
            key=key if key and key not in p.asks else f"{_KEY_PREFIX.get(method, 'input')}-{p.seq}",
            method=method,
            params=params,
            missing=missing_capability(method, params, p.caps),
        )
        p.asks[ask.key] = ask
        if ask.missing is not None and not p.busy and not p.askable():
            p.refuse_held()  # parked with nothing the client could answer: no round will hold it
        p.notify()
        try:
            await ask.answered.wait()
        finally:
            if p.asks.get(ask.key) is ask:  # the upstream gave up (cancelled) before an answer came
                del p.asks[ask.key]
                p.notify()
        assert ask.answer is not None
        return ask.answer


class InputRequiredBridge:
    """Pending bridged calls of 2026-07-28 clients (see the module docstring)."""

    def __init__(
        self,
        *,
        settle_s: float = 0.02,
        settle_max_s: float = 0.2,
        pending_ttl_s: float = 300.0,
        grace_s: float = 10.0,
        round_slack_s: float = 10.0,
        max_pending: int = 1024,
        max_per_principal: int = 64,
        key: bytes | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.settle_s = settle_s
        self.settle_max_s = settle_max_s
        self.pending_ttl_s = pending_ttl_s
        self.grace_s = grace_s
        self.round_slack_s = round_slack_s  # a round waits the call's timeout_s and this long for news, then fails
        self.max_pending = max_pending
        self.max_per_principal = max_per_principal
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock
        self._tg: TaskGroup | None = None
        self._driving: dict[asyncio.Task[None], _Pending] = {}  # the background runs (see _keep)
        self._stopping = False
        self.calls: dict[str, _Pending] = {}
        self._per_principal: dict[str, int] = {}  # pending calls per principal (max_per_principal)

    def attach(self, tg: TaskGroup) -> None:
        """The guard's task group: it holds the bridge's keeper (:meth:`_keep`, which ends the bridged calls when
        the group is cancelled on shutdown) and the expiry of parked calls."""
        self._tg = tg
        tg.start_soon(self._keep, name="bridge-keeper")

    async def _keep(self) -> None:
        """Until the guard stops; then cancel every bridged call's run and wait for them (bounded).

        Why a keeper rather than each call's run in the guard's task group: an anyio task costs a task handle, its
        own cancel scope, an event and the group's bookkeeping — with the round's ``fail_after`` (now a timer, see
        :meth:`_serve_round`), ~140 K instructions of a bridged call's ~3,740 K (bench_instructions.py). A plain
        asyncio task per call, cancelled
        through its run's cancel scope (so shielded audit and state writes finish as under the group's cancel),
        keeps the shutdown guarantee at the price of this one task."""
        try:
            await anyio.sleep_forever()
        finally:
            self._stopping = True
            for pending in self._driving.values():
                pending.scope.cancel()
            running = list(self._driving)
            if running:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_WAIT_S):
                    await asyncio.wait(running)

    # ------------------------------------------------------------------ entry point
    async def run(
        self,
        ctx: ServerRequestContext[Any, Any],
        sess: DownstreamSession,
        call: CallContext,
        params: types.InputResponseRequestParams,
        run: CallNext,
    ) -> Outcome | dict[str, Any]:
        """Run ``call`` for a 2026-07-28 client: its final :class:`Outcome`, or an ``InputRequiredResult`` dict.

        ``params`` are the request's params (``request_state`` / ``input_responses`` read from them);
        ``run`` is the pipeline. A retry (``request_state`` set) resumes its pending call instead.
        """
        if params.request_state is None:
            if answers_nothing(ctx.session.client_capabilities):
                # No question of this call could ever be put to its client (each would be refused with -32021,
                # as a round would refuse it): no round, so no background run — the call runs in this request's
                # task with its own channel, which refuses questions so (sessions.RequestChannel).
                return await run(call)
            pending = self._start(call, run)
        else:
            pending, answers = self._resume(params.request_state, _binding(call), params.input_responses)
            await self._decide_and_deliver(pending, answers)
        return await self._serve_round(pending, ctx)

    # ------------------------------------------------------------------ starting and resuming
    def _start(self, call: CallContext, run: CallNext) -> _Pending:
        if self._tg is None or self._stopping:
            raise MCPError(code=types.INTERNAL_ERROR, message="mcp-guard: the input-required bridge is not running")
        if len(self.calls) >= self.max_pending:
            raise MCPError(
                code=types.INTERNAL_ERROR,
                message=f"mcp-guard: too many calls waiting for client input ({self.max_pending}); retry later",
            )
        if self._per_principal.get(call.principal.id, 0) >= self.max_per_principal:
            raise MCPError(
                code=types.INTERNAL_ERROR,
                message=f"mcp-guard: principal {call.principal.id!r} has {self.max_per_principal} calls "
                "waiting for input already; answer or abandon some first",
            )
        pending = _Pending(new_id(), call.principal.id, call, call.timeout_s or 60.0)
        channel = BridgedCallChannel(pending)
        # Progress is relayed when the request that started the call asked for it (a progress token), as on the
        # handshake era: the upstream is asked for progress only then, and a call without it can take the lean
        # lane to a stdio upstream (mcp_guard.upstream.raw_lane) instead of an SDK session.
        progress = channel.progress if call.progress is not None else None
        bridged = evolve(call, downstream=channel, progress=progress, on_redecide=pending.bind)
        self.calls[pending.id] = pending
        self._per_principal[pending.principal] = self._per_principal.get(pending.principal, 0) + 1
        task = asyncio.get_running_loop().create_task(self._drive(pending, bridged, run), name=f"bridge:{pending.id}")
        self._driving[task] = pending
        task.add_done_callback(self._driven)
        return pending

    def _driven(self, task: asyncio.Task[None]) -> None:
        del self._driving[task]

    def _resume(self, token: str, binding: bytes, responses: Any) -> tuple[_Pending, dict[str, dict[str, Any]]]:
        """The pending call a retry resumes, taken (``busy``) for this retry, and its checked answers."""
        parsed = _parse(token)
        if parsed is None:
            raise _bad_state("requestState is malformed or was not issued by this mcp-guard")
        call_id, rnd, mac = parsed
        pending = self.calls.get(call_id)
        if not hmac.compare_digest(mac, self._mac(call_id, rnd, binding)):
            if pending is not None and hmac.compare_digest(mac, self._mac(call_id, rnd, pending.binding)):
                raise _bad_state(
                    "requestState belongs to another request: the principal, method, name or "
                    "arguments of this retry differ from those of the call that issued it"
                )
            raise _bad_state(
                "requestState failed its integrity check (altered, or issued by another mcp-guard process)"
            )
        if pending is None or pending.closed:
            raise _bad_state(
                "requestState names a call that is no longer pending (it ended, expired, or "
                "mcp-guard restarted); send the request again without requestState"
            )
        if rnd != pending.round:
            raise _bad_state(
                f"requestState is stale: round {rnd} of this call was already answered "
                f"(the current round is {pending.round})"
            )
        if pending.busy:
            raise MCPError(
                code=types.INVALID_REQUEST,
                message="mcp-guard: another retry of this call is being served; wait for its answer",
            )
        answers = _answers(pending, responses)
        pending.busy = True  # no other retry of this call while its answers are decided on
        return pending, answers

    async def _decide_and_deliver(self, pending: _Pending, answers: dict[str, dict[str, Any]]) -> None:
        """Put a retry's answers to the policy (once the call is admitted), then hand them to the waiting
        upstream requests; refused, they are never delivered and the call ends with the deny."""
        try:
            if answers and pending.redecide is not None:
                decision = await pending.redecide(answers)
                if not decision.allow:
                    log.info("bridge.answers_refused", call=pending.id, round=pending.round, keys=sorted(answers))
                    pending.refused = True
                    pending.fail_asks("mcp-guard: the policy refused the client's answers; the call has ended")
                    pending.notify()
                    return
        except BaseException:
            pending.busy = False
            pending.notify()
            raise
        for key, answer in answers.items():
            ask = pending.asks.pop(key, None)  # gone if the call ended while the policy was asked
            if ask is not None:
                ask.resolve(answer)
        if answers:
            pending.notify()

    # ------------------------------------------------------------------ the background call
    async def _drive(self, pending: _Pending, call: CallContext, run: CallNext) -> None:
        """Run the call's pipeline once (a plain asyncio task, see :meth:`_keep`); its outcome is the call's final
        result.

        Its expiry (:meth:`_watch`) is not started here but when the call first parks (:meth:`_park`): until
        then a request of the call is being served and there is nothing to expire — and most calls never park,
        so they cost one task, not a task group and two.
        """
        with pending.scope as scope:
            try:
                outcome = await run(call)
            except Exception as e:  # the pipeline's stages turn failures into outcomes; this is a bug
                log.exception("bridge.call_failed", call=pending.id)
                outcome = Outcome(
                    error=types.ErrorData(
                        code=types.INTERNAL_ERROR, message=f"mcp-guard internal error: {type(e).__name__}"
                    )
                )
        if scope.cancelled_caught:
            why = "mcp-guard is shutting down" if self._stopping else "its client stopped answering"
            outcome = Outcome(
                error=types.ErrorData(code=types.INTERNAL_ERROR, message=f"mcp-guard: the call was cancelled: {why}")
            )
        pending.final = outcome
        pending.fail_asks("mcp-guard: the call ended before the client answered")
        pending.notify()

    def _park(self, pending: _Pending) -> None:
        """The call waits for its client's next request (a round answered with questions, or its request gone):
        its expiry runs from now on (started once per call)."""
        if not pending.watched and self._tg is not None:
            pending.watched = True
            self._tg.start_soon(self._watch, pending, name=f"bridge-expiry:{pending.id}")

    async def _watch(self, pending: _Pending) -> None:
        """Expire the call if its client does not come back within ``pending_ttl_s`` of its last round."""
        while not pending.closed:
            changed = pending.changed()
            remaining = pending.deadline - self._clock()
            if remaining <= 0:
                self._expire(pending)
                return
            with anyio.move_on_after(remaining):
                await changed.wait()

    def _expire(self, pending: _Pending) -> None:
        log.info(
            "bridge.expired",
            call=pending.id,
            round=pending.round,
            open=list(pending.asks),
            finished=pending.final is not None,
        )
        self._close(pending)
        pending.fail_asks(f"mcp-guard: the client did not answer within {self.pending_ttl_s:g}s")
        if pending.final is None:
            pending.scope.deadline = self._clock() + self.grace_s
        pending.notify()

    def _close(self, pending: _Pending) -> None:
        pending.closed = True
        # Its re-decision is the run's (Redecide's rounds, which hold the bridged call, whose channel holds this
        # pending call): no retry can resume a closed call, so let go — else every bridged call is a reference cycle
        # of ~100 objects (the request and its context among them) left to the garbage collector.
        pending.redecide = None
        if self.calls.pop(pending.id, None) is not None:
            left = self._per_principal[pending.principal] - 1
            if left:
                self._per_principal[pending.principal] = left
            else:
                del self._per_principal[pending.principal]
        pending.notify()

    # ------------------------------------------------------------------ rounds
    async def _serve_round(self, pending: _Pending, ctx: ServerRequestContext[Any, Any]) -> Outcome | dict[str, Any]:
        pending.busy, pending.ctx, pending.deadline = True, ctx, math.inf
        pending.caps = ctx.session.client_capabilities
        pending.notify()
        finishing = False  # the round returns the call's final result (it is closed next, nothing to expire)
        # The round's deadline is a timer that marks the call overdue and wakes the round, not a cancel scope: the
        # round only ever waits on the call's changes, and a scope with a deadline (a timer handle in the loop's
        # heap, two context managers) cost most of a bridged call's overhead after its task (see _keep).
        pending.overdue = False
        limit = pending.timeout_s + self.round_slack_s
        timer = asyncio.get_running_loop().call_later(limit, self._overdue, pending)
        try:
            while True:
                await self._until(
                    pending,
                    lambda: (
                        pending.overdue or pending.final is not None or (bool(pending.asks) and not pending.refused)
                    ),
                )
                if pending.final is None and not pending.refused and not pending.overdue:
                    await self._settle(pending)
                if pending.final is not None:
                    break
                if pending.overdue:
                    raise MCPError(
                        code=types.INTERNAL_ERROR,
                        message=f"mcp-guard: the upstream neither answered nor asked anything within {limit:g}s",
                    )
                if pending.refused:
                    continue  # the call is ending with the policy's deny: wait for it
                if pending.askable():
                    break
                pending.refuse_held()  # only questions the client cannot answer: refuse, wait for more
            finishing = pending.final is not None
        finally:
            timer.cancel()
            pending.busy, pending.ctx = False, None
            if not pending.closed:
                pending.deadline = self._clock() + self.pending_ttl_s
                if not finishing:
                    self._park(pending)
            pending.notify()
        if pending.final is not None:
            self._close(pending)
            return pending.final
        pending.round += 1
        asks = pending.askable()
        for ask in asks:
            ask.sent = True
        log.info(
            "bridge.input_required",
            call=pending.id,
            round=pending.round,
            keys=[a.key for a in asks],
            held=len(pending.asks) - len(asks),
        )
        return {
            "resultType": "input_required",
            "inputRequests": {ask.key: ask.wire() for ask in asks},
            "requestState": self._seal(pending),
        }

    @staticmethod
    def _overdue(pending: _Pending) -> None:
        pending.overdue = True
        pending.notify()

    @staticmethod
    async def _until(pending: _Pending, condition: Callable[[], bool]) -> None:
        while True:
            changed = pending.changed()
            if condition():
                return
            await changed.wait()

    async def _settle(self, pending: _Pending) -> None:
        """Let questions that arrive together join this round (see the module docstring)."""
        end = self._clock() + self.settle_max_s
        while pending.final is None:
            changed = pending.changed()
            window = min(self.settle_s, end - self._clock())
            if window <= 0:
                return
            with anyio.move_on_after(window) as quiet:
                await changed.wait()
            if quiet.cancelled_caught:
                return

    # ------------------------------------------------------------------ requestState
    def _mac(self, call_id: str, rnd: int, binding: bytes) -> bytes:
        msg = _MAC_CONTEXT + f"{call_id}.{rnd}".encode() + b"\x00" + binding
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def _seal(self, pending: _Pending) -> str:
        mac = base64.urlsafe_b64encode(self._mac(pending.id, pending.round, pending.binding)).rstrip(b"=").decode()
        return f"{_TOKEN_PREFIX}.{pending.id}.{pending.round}.{mac}"


def _parse(token: Any) -> tuple[str, int, bytes] | None:
    if not isinstance(token, str) or len(token) > 256:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _TOKEN_PREFIX or not parts[2].isdigit():
        return None
    try:
        mac = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4))
    except ValueError:
        return None
    return parts[1], int(parts[2]), mac


def _answers(pending: _Pending, responses: Any) -> dict[str, dict[str, Any]]:
    """A retry's answers to the call's open questions, each checked as its method's result (none if it has none)."""
    if responses is None:
        return {}
    if not isinstance(responses, dict):
        raise MCPError(code=types.INVALID_PARAMS, message="inputResponses must be an object")
    answers: dict[str, dict[str, Any]] = {}
    for key, ask in pending.asks.items():
        if not ask.sent or key not in responses:
            continue  # unknown keys are ignored; a missing one is asked again next round
        try:
            answers[key] = REQUEST_TYPES[ask.method].normalize(responses[key])
        except ValidationError as e:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"inputResponses[{key!r}] is not a valid {ask.method} result: "
                f"{e.errors()[0].get('msg', 'invalid')}",
                data={"key": key},
            ) from None
    return answers


def _binding(call: CallContext) -> bytes:
    """What a requestState is bound to: who asked, what, of which upstream, with which arguments."""
    doc = [call.principal.id, call.action, call.server, call.target, dict(call.arguments)]
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).digest()


def _bad_state(message: str) -> MCPError:
    return MCPError(code=types.INVALID_PARAMS, message=f"mcp-guard: {message}")
