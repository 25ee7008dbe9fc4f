"""A 2026-07-28 upstream's ``InputRequiredResult``, completed inside the one forwarded call (SEP-2322).

A stateless upstream that needs the client's help mid-call answers with ``resultType: "input_required"``,
its ``inputRequests`` (keyed by the upstream) and an opaque ``requestState``; the caller is to fulfil the
requests and retry with ``inputResponses`` and the echoed state. mcp-guard does not hand that result to
the client as is: every question goes to the call's own client channel, the same way a handshake
upstream's ``elicitation/create`` does (:mod:`mcp_guard.channel`), and the retries to the upstream are
mcp-guard's own, made here until the upstream answers with its final result. So:

* **One logical call, one audit trail, the policy asked again on each round's answers.** The retries happen
  inside the terminal stage of the call's single pipeline run (its allow row before, its outcome row after),
  under one call id. Before a retry carries answers upstream, the policy is asked again with them
  (``input.input_responses``, keyed as the upstream keyed its requests; ``current_redecide()``,
  :mod:`mcp_guard.pipeline.redecide`): an allow is recorded first, a deny ends the call unsent.
* **The upstream's ``requestState`` never leaves mcp-guard.** A 2026-07-28 client gets the questions as
  mcp-guard's own ``InputRequiredResult`` round, whose ``requestState`` is the input-required bridge's
  token (``mcp_guard.frontend.input_required``: an HMAC binding principal, method, upstream, target and
  arguments); the upstream's state stays with the pending call, so a client can neither forge nor swap
  it, and the upstream gets back exactly what it issued. The upstream's keys are kept (the client sees
  ``user_name``, not a name of mcp-guard's), unless two open questions of one call would share a key.
* **A handshake-era client** gets the questions as ``elicitation/create`` / ``sampling/createMessage`` /
  ``roots/list`` requests on its call's stream; a client that cannot be asked (no back channel) gets the
  channel's error, which ends the call with it.

Rounds are bounded (:data:`MAX_ROUNDS`); each upstream request keeps its own timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
import structlog
from pydantic import ValidationError

from mcp_guard.channel import REQUEST_TYPES, ClientChannel, ClientMethod
from mcp_guard.pipeline.context import RedecideFn
from mcp_guard.types import Decision

__all__ = ["MAX_ROUNDS", "complete_input_rounds", "is_input_required"]

log = structlog.get_logger("mcp_guard.pipeline")

MAX_ROUNDS = 10
"""Rounds of questions one call may take before mcp-guard gives up (the SDK client's own default)."""

Send = Callable[[types.ClientRequest], Awaitable[dict[str, Any]]]


def is_input_required(result: dict[str, Any]) -> bool:
    """Whether an upstream's raw result is an ``InputRequiredResult`` (not the request's final result)."""
    return result.get("resultType") == "input_required"


async def complete_input_rounds(
    first: dict[str, Any],
    request: types.ClientRequest,
    send: Send,
    channel: ClientChannel | None,
    *,
    upstream: str,
    redecide: RedecideFn | None = None,
) -> dict[str, Any] | types.ErrorData | Decision:
    """Ask the client what the upstream asks and retry the upstream until it answers finally.

    Before each retry the answers are put to ``redecide`` (the policy, asked again: :mod:`mcp_guard.pipeline.
    redecide`); its deny is returned and the retry not sent. Returns the upstream's final raw result, or the
    error that ends the call (an unanswerable or refused question, a malformed ``InputRequiredResult``, too
    many rounds), or that deny. Upstream errors raise as from ``send``.
    """
    result = first
    for rnd in range(1, MAX_ROUNDS + 1):
        if not is_input_required(result):
            return result
        questions = _questions(result, upstream)
        if isinstance(questions, types.ErrorData):
            return questions
        if questions and channel is None:
            return _error(f"upstream {upstream!r} asked for client input, but this call has no client to ask")
        answers = await _ask_all(channel, questions) if channel is not None and questions else {}
        if isinstance(answers, types.ErrorData):
            return answers
        log.info("upstream.input_round", upstream=upstream, round=rnd, keys=sorted(questions))
        if redecide is not None and answers:
            decision = await redecide(answers)
            if not decision.allow:
                return decision  # the policy refused these answers: the retry is never sent
        request = _retry(request, answers, result.get("requestState"))
        result = await send(request)
    if is_input_required(result):
        return _error(f"upstream {upstream!r} still asked for input after {MAX_ROUNDS} rounds")
    return result


def _questions(
    result: dict[str, Any], upstream: str
) -> dict[str, tuple[ClientMethod, dict[str, Any]]] | types.ErrorData:
    raw = result.get("inputRequests") or {}
    if not isinstance(raw, dict):
        return _error(f"upstream {upstream!r} sent an InputRequiredResult whose inputRequests is not an object")
    out: dict[str, tuple[ClientMethod, dict[str, Any]]] = {}
    for key, req in raw.items():
        method = req.get("method") if isinstance(req, dict) else None
        if method not in {m.value for m in ClientMethod}:
            return _error(f"upstream {upstream!r} asked for input mcp-guard cannot relay ({str(method)[:80]!r})")
        params = req.get("params")
        out[str(key)] = (ClientMethod(method), params if isinstance(params, dict) else {})
    return out


async def _ask_all(
    channel: ClientChannel, questions: dict[str, tuple[ClientMethod, dict[str, Any]]]
) -> dict[str, dict[str, Any]] | types.ErrorData:
    """Every question at once (the client sees them as one round); the first error ends the call."""
    answers: dict[str, dict[str, Any]] = {}
    refused: list[types.ErrorData] = []

    async def ask(key: str, method: ClientMethod, params: dict[str, Any]) -> None:
        raw = await channel.request(method, params, key=key)
        if isinstance(raw, types.ErrorData):
            refused.append(raw)
            tg.cancel_scope.cancel()
            return
        try:
            answers[key] = REQUEST_TYPES[method].normalize(raw)
        except ValidationError as e:
            refused.append(REQUEST_TYPES[method].invalid(e))
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for key, (method, params) in questions.items():
            tg.start_soon(ask, key, method, params)
    return refused[0] if refused else {key: answers[key] for key in questions}


def _retry(request: types.ClientRequest, answers: dict[str, dict[str, Any]], state: Any) -> types.ClientRequest:
    """The original request again, with the answers and the upstream's own ``requestState``."""
    params = getattr(request, "params", None)
    assert params is not None  # tools/call, prompts/get and resources/read always have params
    wire = params.model_dump(by_alias=True, mode="json", exclude_none=True)
    wire.pop("inputResponses", None)
    wire.pop("requestState", None)
    if answers:
        wire["inputResponses"] = answers
    if isinstance(state, str):
        wire["requestState"] = state
    return request.model_copy(update={"params": type(params).model_validate(wire, by_name=False)})


def _error(message: str) -> types.ErrorData:
    return types.ErrorData(code=types.INTERNAL_ERROR, message=f"mcp-guard: {message}")
