"""Token exchange in the pipeline: the ``upstream_scopes`` obligation (shape, subset of the configured scopes)
and the ``ExchangeToken`` stage (the caller's token exchanged and handed to Forward; API-key callers and a
failed exchange denied before anything is recorded as allowed or forwarded). The IdP's token endpoint is an
``httpx2.MockTransport``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx2
import mcp_types as types
import pytest

from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.exchange import ExchangeToken, UpstreamScopesObligation, requested_scopes
from mcp_guard.pipeline.obligations import ABSENT, EnforceObligations, Refusal, Undo
from mcp_guard.settings import TokenExchangeSettings
from mcp_guard.types import AuthInfo, Decision, Principal, ReasonCode, SessionInfo, SubjectToken
from mcp_guard.upstream.token_exchange import TokenExchanger

pytestmark = pytest.mark.anyio

AUDIENCE = "https://reports.example/mcp"


class Idp:
    def __init__(self) -> None:
        self.scopes: list[str] = []
        self.refuse = False
        self.transport = httpx2.MockTransport(self._handle)

    async def _handle(self, request: httpx2.Request) -> httpx2.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.scopes.append(form.get("scope", ""))
        if self.refuse:
            return httpx2.Response(400, json={"error": "invalid_grant"})
        return httpx2.Response(
            200, json={"access_token": "exchanged", "token_type": "Bearer", "expires_in": 300, "scope": form["scope"]}
        )


@dataclass
class Holder:
    exchangers: Mapping[str, TokenExchanger] = field(default_factory=dict)


def _exchanger(idp: Idp) -> TokenExchanger:
    async def secret() -> str:
        return "s3cret-value"

    settings = TokenExchangeSettings(
        token_url="https://idp.example/token",
        client_id="gw",
        client_secret="gw",
        audience=AUDIENCE,
        scopes=["reports:read", "reports:write"],
    )
    return TokenExchanger("rep", settings, issuer=None, client_secret=secret, transport=idp.transport)


def _ctx(obligations: dict[str, Any], *, token: str | None = "alice-at", server: str = "rep") -> CallContext:
    auth = AuthInfo(method="jwt", subject_token=SubjectToken(token)) if token else AuthInfo(method="api_key")
    return CallContext(
        action="tools/call",
        principal=Principal("alice", auth=auth),
        session=SessionInfo("s1", "memory"),
        server=server,
        target="read",
        exposed=f"{server}__read",
        arguments={},
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="read", arguments={})),
        decision=Decision(allow=True, obligations=obligations, revision="rev1"),
    )


@dataclass
class Counted:
    """A handler with an effect to take back (as the rate limiter's count), to see it undone."""

    undone: list[str] = field(default_factory=list)
    name: str = "counted"
    always: bool = True

    async def enforce(self, ctx: CallContext, value: object) -> Undo:
        async def run() -> None:
            self.undone.append(ctx.call_id)

        return Undo(run)


class Terminal:
    def __init__(self) -> None:
        self.seen: list[CallContext] = []

    async def __call__(self, ctx: CallContext) -> Outcome:
        self.seen.append(ctx)
        return Outcome(result={"content": []}, decision=ctx.decision)


def test_requested_scopes_are_a_checked_subset_of_the_configured_ones() -> None:
    ex = _exchanger(Idp())
    assert requested_scopes("rep", ex, ABSENT) == ("reports:read", "reports:write")
    assert requested_scopes("rep", ex, ["reports:write", "reports:read", "reports:read"]) == (
        "reports:read",
        "reports:write",
    )
    outside = requested_scopes("rep", ex, ["reports:read", "admin", "billing"])
    assert isinstance(outside, Refusal) and outside.code is ReasonCode.UPSTREAM_SCOPE_NOT_ALLOWED
    assert "'admin', 'billing'" in outside.detail and "'rep'" in outside.detail
    for bad in ("reports:read", [], [1], [""], {"reports:read": True}):
        refused = requested_scopes("rep", ex, bad)
        assert isinstance(refused, Refusal) and refused.code is ReasonCode.OBLIGATION_INVALID, bad
    elsewhere = requested_scopes("tickets", None, ["reports:read"])
    assert isinstance(elsewhere, Refusal) and "only to an upstream with token_exchange" in elsewhere.detail
    assert requested_scopes("tickets", None, ABSENT) == ()


async def test_the_policy_narrows_the_exchanged_token_and_forward_gets_it() -> None:
    idp = Idp()
    holder = Holder({"rep": _exchanger(idp)})
    terminal = Terminal()
    obligations = EnforceObligations([UpstreamScopesObligation(holder)])
    stage = ExchangeToken(holder)

    async def inner(ctx: CallContext) -> Outcome:
        return await stage(ctx, terminal)

    await obligations(_ctx({"upstream_scopes": ["reports:read"]}), inner)
    await obligations(_ctx({}), inner)
    (narrowed, full) = terminal.seen
    assert narrowed.upstream_token is not None and narrowed.upstream_token.scopes == ("reports:read",)
    assert full.upstream_token is not None and full.upstream_token.scopes == ("reports:read", "reports:write")
    assert idp.scopes == ["reports:read", "reports:read reports:write"]


async def test_a_scope_outside_the_configured_ones_is_denied_naming_it_and_nothing_is_exchanged() -> None:
    idp = Idp()
    holder = Holder({"rep": _exchanger(idp)})
    terminal = Terminal()
    outcome = await EnforceObligations([UpstreamScopesObligation(holder)])(
        _ctx({"upstream_scopes": ["reports:delete"]}), terminal
    )
    assert outcome.decision is not None and outcome.decision.code is ReasonCode.UPSTREAM_SCOPE_NOT_ALLOWED
    assert "'reports:delete'" in outcome.decision.reasons[1]
    assert terminal.seen == [] and idp.scopes == []


async def test_an_api_key_caller_and_a_refused_exchange_are_denied_and_the_obligations_undone() -> None:
    idp = Idp()
    holder = Holder({"rep": _exchanger(idp)})
    counted, terminal = Counted(), Terminal()
    obligations = EnforceObligations([UpstreamScopesObligation(holder), counted])
    stage = ExchangeToken(holder)

    async def inner(ctx: CallContext) -> Outcome:
        return await stage(ctx, terminal)

    keyed = _ctx({}, token=None)
    outcome = await obligations(keyed, inner)
    assert outcome.decision is not None and outcome.decision.code is ReasonCode.SUBJECT_TOKEN_MISSING
    assert "authenticated with api_key has no access token" in outcome.decision.reasons[1]
    assert outcome.decision.revision == "rev1" and idp.scopes == []

    idp.refuse = True
    refused = _ctx({})
    outcome = await obligations(refused, inner)
    assert outcome.decision is not None and outcome.decision.code is ReasonCode.TOKEN_EXCHANGE_FAILED
    assert "refused (400 invalid_grant)" in outcome.decision.reasons[1]
    assert terminal.seen == [] and counted.undone == [keyed.call_id, refused.call_id]


async def test_a_call_to_an_upstream_without_exchange_passes_untouched() -> None:
    terminal = Terminal()
    ctx = _ctx({}, server="tickets", token=None)
    await ExchangeToken(Holder())(ctx, terminal)
    assert terminal.seen == [ctx] and terminal.seen[0].upstream_token is None
