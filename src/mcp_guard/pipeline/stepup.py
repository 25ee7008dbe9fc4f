"""``obligations.step_up``: a deny that the caller can overcome with a token carrying more OAuth scopes.

The policy says *which* scopes a call needs and denies it when ``input.principal.scopes`` lacks them::

    {"allow": false, "reasons": ["tickets:write needed"], "obligations": {"step_up": {"scopes": ["tickets:write"]}}}

The deny is recorded like any other (its row's ``details.obligations`` names the scopes). What makes it a step-up
is the front: for a request authenticated with a JWT on the HTTP front, the deny is answered
``403`` with ``WWW-Authenticate: Bearer error="insufficient_scope", scope="tickets:write"`` (the MCP
authorization spec's scope challenge, see :mod:`mcp_guard.frontend.stepup`), so an OAuth client can ask its
authorization server for the scopes and retry. Anywhere else (stdio, API keys) it stays an ordinary deny.

:func:`step_up_scopes` is the one reading of the value: a non-empty list of scope tokens. A malformed value
leaves an ordinary deny (the deny stands either way).

On an *allow* the obligation is a policy mistake — an allowed call needs no more scopes — so
:class:`StepUpObligation` refuses it (``obligation_invalid``) instead of letting the call through on a
decision that contradicts itself.
"""

from __future__ import annotations

import re

from mcp_guard.pipeline.context import CallContext
from mcp_guard.pipeline.obligations import Refusal
from mcp_guard.types import Decision, ReasonCode

__all__ = ["STEP_UP", "StepUpObligation", "step_up_scopes"]

STEP_UP = "step_up"
_SCOPE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")  # RFC 6749 §3.3 scope-token
_MAX_SCOPES = 32


def step_up_scopes(decision: Decision) -> tuple[str, ...] | None:
    """The scopes a deny's ``obligations.step_up`` asks for; None if it asks none or the value is malformed."""
    if decision.allow:
        return None
    value = decision.obligations.get(STEP_UP)
    scopes = value.get("scopes") if isinstance(value, dict) else None
    if not isinstance(scopes, list) or not 0 < len(scopes) <= _MAX_SCOPES:
        return None
    if not all(isinstance(s, str) and _SCOPE.fullmatch(s) for s in scopes):
        return None
    return tuple(dict.fromkeys(scopes))


class StepUpObligation:
    """``step_up`` on an allow: refused, ``obligation_invalid`` (it belongs on a deny)."""

    name = STEP_UP
    always = False

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | None:
        return Refusal(
            ReasonCode.OBLIGATION_INVALID,
            "obligations.step_up belongs on a deny (it asks the client for more scopes); an allow cannot carry it",
        )
