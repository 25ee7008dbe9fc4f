"""Step-up on the HTTP front: a deny carrying ``obligations.step_up`` is answered ``403 insufficient_scope``.

How the front learns it. The deny is made deep inside the SDK's session task, long after the HTTP layer
handed the request over — and on the handshake era (SSE) the SDK starts the ``200`` response before the
handler even runs. So the decision travels back on the request itself:

1. :class:`StepUpGate` (installed by :class:`~mcp_guard.frontend.auth.BearerAuth` on POSTs to ``/mcp``
   authenticated with a JWT) puts a :class:`StepUpSlot` on the ASGI scope and holds back the response's
   ``http.response.start`` until its first body message;
2. the handler that answers a denied call calls :func:`note_denial` with the request's context: if the deny
   asks for scopes (:func:`~mcp_guard.pipeline.stepup.step_up_scopes`), they go into the slot — before the
   handler returns, hence before any byte of its answer is sent;
3. when the first body message comes, the gate sends either the held start and that message (no step-up:
   the response is untouched) or, instead of the whole response, the ``403`` with the scope challenge.

A step-up deny is made before the call is forwarded (by the policy), so nothing of the upstream's can precede
its answer on that request's stream. Holding the start costs nothing visible: a client reads headers and the
first event together. Both protocol eras go through the same path (2026-07-28 answers each request in its
own response). Requests the gate is not on (stdio, API keys, GET streams) keep the plain deny.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from mcp.server.context import ServerRequestContext
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_guard.pipeline.stepup import step_up_scopes
from mcp_guard.types import Decision

__all__ = ["StepUpGate", "StepUpSlot", "note_denial"]

log = structlog.get_logger("mcp_guard.auth")

_SLOT = "mcp_guard.step_up"


class StepUpSlot:
    """The scopes a denied request needs, set by the handler that denied it (None: no step-up)."""

    __slots__ = ("decision_id", "scopes")

    def __init__(self) -> None:
        self.scopes: tuple[str, ...] | None = None
        self.decision_id: str | None = None


def note_denial(ctx: ServerRequestContext[Any, Any], decision: Decision) -> None:
    """Tell the front a request was denied; if the deny asks for scopes and the request came through a
    :class:`StepUpGate`, its answer becomes the 403 scope challenge."""
    scopes = step_up_scopes(decision)
    if scopes is None:
        return
    request = ctx.request
    slot = getattr(request, "scope", {}).get(_SLOT) if request is not None else None
    if isinstance(slot, StepUpSlot):
        slot.scopes = scopes
        slot.decision_id = decision.decision_id


class StepUpGate:
    """Runs ``app`` for one request with a :class:`StepUpSlot`; answers 403 instead if the slot is filled.

    ``challenge(scopes)`` is the ``WWW-Authenticate`` value (:meth:`ResourceServer.insufficient_scope`).
    """

    def __init__(self, app: ASGIApp, challenge: Callable[[Sequence[str]], str]) -> None:
        self.app = app
        self._challenge = challenge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot = StepUpSlot()
        scope[_SLOT] = slot
        held: list[Message] = []
        state = {"replaced": False, "passing": False}

        async def gate(message: Message) -> None:
            if state["replaced"]:
                return  # the 403 went out instead of this response: the rest of it is dropped
            if state["passing"]:
                await send(message)
                return
            if message["type"] == "http.response.start" and message.get("status") == 200:
                held.append(message)
                return
            if held and message["type"] == "http.response.body" and slot.scopes is not None:
                state["replaced"] = True
                await self._send_challenge(send, slot)
                return
            state["passing"] = True
            for m in held:
                await send(m)
            await send(message)

        await self.app(scope, receive, gate)
        if held and not state["passing"] and not state["replaced"]:
            for m in held:  # a start with no body after it (not sent by the SDK, but never lose it)
                await send(m)

    async def _send_challenge(self, send: Send, slot: StepUpSlot) -> None:
        scopes = slot.scopes or ()
        log.info("auth.step_up", scopes=list(scopes), decision_id=slot.decision_id)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32001,
                    "message": f"insufficient scope: this request needs {' '.join(scopes)}",
                    "data": {"decision_id": slot.decision_id, "scopes": list(scopes)},
                },
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", self._challenge(scopes).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
