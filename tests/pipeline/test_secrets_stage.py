"""InspectArguments (audit copy + secrets_seen for the policy) and the ``secrets`` obligation handler."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from mcp_guard.pipeline.authorize import Authorize
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.obligations import EnforceObligations
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.pipeline.secrets import (
    InspectArguments,
    SecretsObligation,
    granted_secrets,
    strip_meta_credentials,
)
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.settings import parse_settings
from mcp_guard.types import Decision, PolicyInput, Principal, ReasonCode, SessionInfo

pytestmark = pytest.mark.anyio

TOKEN = "tickets-token-5f4e3d2c1b"
AWS = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture
async def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretManager:
    monkeypatch.setenv("MG_TICKETS_TOKEN", TOKEN)
    settings = parse_settings(
        {
            "secrets": {"tickets_token": {"provider": "env", "name": "MG_TICKETS_TOKEN"}},
            "upstreams": {
                "tickets": {"command": "tickets-server", "inject_env": {"TICKETS_TOKEN": "tickets_token"}},
                "open": {"command": "open-server"},
            },
        },
        base_dir=str(tmp_path),
    )
    m = SecretManager(settings)
    assert await m.check() == {}
    return m


def _ctx(server: str = "tickets", arguments: Mapping[str, Any] | None = None, **kw: Any) -> CallContext:
    args = dict(arguments or {})
    return CallContext(
        action="tools/call",
        principal=Principal("alice", ("support",)),
        session=SessionInfo("s1", "memory"),
        server=server,
        target="create_ticket",
        exposed=f"{server}__create_ticket",
        arguments=args,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="create_ticket", arguments=args)),
        **kw,
    )


class _Recorder:
    def __init__(self, outcome: Outcome | None = None) -> None:
        self.seen: list[CallContext] = []
        self.outcome = outcome or Outcome(result={"content": [], "isError": False})

    async def __call__(self, ctx: CallContext) -> Outcome:
        self.seen.append(ctx)
        return self.outcome


class _Engine:
    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.inputs: list[PolicyInput] = []

    async def evaluate(self, input: PolicyInput) -> Decision:
        self.inputs.append(input)
        return self.decision


# --------------------------------------------------------------------------- InspectArguments
async def test_audit_copy_is_masked_and_policy_sees_the_kinds(manager: SecretManager) -> None:
    args = {
        "title": "printer broken",
        "note": f"my key is {AWS}",
        "echo": base64.b64encode(TOKEN.encode()).decode(),
        "password": "hunter2",
    }
    engine = _Engine(Decision(allow=True, obligations={"secrets": ["tickets_token"]}))
    terminal = _Recorder()
    call = build_chain([InspectArguments(manager), Authorize(engine)], terminal)
    await call(_ctx(arguments=args))

    ctx = terminal.seen[0]
    assert ctx.arguments == args  # forwarded unchanged
    assert ctx.audit_arguments == {
        "title": "printer broken",
        "note": "my key is [REDACTED:aws_access_key]",
        "echo": "[REDACTED:tickets_token]",
        "password": "[REDACTED:password]",
    }
    expected = ("aws_access_key", "injected:tickets_token", "password")
    assert ctx.secrets_seen == expected
    policy_doc = engine.inputs[0].to_dict()
    assert policy_doc["context"]["secrets_seen"] == list(expected)


async def test_clean_arguments_are_copied_with_no_kinds(manager: SecretManager) -> None:
    terminal = _Recorder()
    await InspectArguments(manager)(_ctx(arguments={"title": "x", "n": 3}), terminal)
    assert terminal.seen[0].audit_arguments == {"title": "x", "n": 3}
    assert terminal.seen[0].secrets_seen == ()


async def test_without_secrets_configured_shapes_are_still_masked() -> None:
    """The null SecretSource: nothing injected to find, but the audit copy still hides credential shapes."""
    terminal = _Recorder()
    await InspectArguments(NO_SECRETS)(_ctx(arguments={"note": f"key {AWS}", "n": 1}), terminal)
    assert terminal.seen[0].arguments == {"note": f"key {AWS}", "n": 1}
    assert terminal.seen[0].audit_arguments == {"note": "key [REDACTED:aws_access_key]", "n": 1}
    assert terminal.seen[0].secrets_seen == ("aws_access_key",)


# --------------------------------------------------------------------------- the secrets obligation
def _obligations(manager: SecretManager) -> EnforceObligations:
    return EnforceObligations([SecretsObligation(manager)])


@pytest.mark.parametrize(
    "obligations",
    [{}, {"secrets": []}, {"secrets": ["other"]}],
    ids=["absent", "empty", "other"],
)
async def test_upstream_with_secrets_needs_them_granted(manager: SecretManager, obligations: dict[str, Any]) -> None:
    terminal = _Recorder()
    ctx = _ctx(decision=Decision(allow=True, obligations=obligations, revision="rev1"))
    outcome = await _obligations(manager)(ctx, terminal)
    assert terminal.seen == []  # never reached the upstream
    assert outcome.denied
    assert outcome.decision is not None
    assert outcome.decision.code == ReasonCode.SECRET_NOT_GRANTED
    assert outcome.decision.reasons[0] == ReasonCode.SECRET_NOT_GRANTED
    assert "tickets_token" in outcome.decision.reasons[1] and "'tickets'" in outcome.decision.reasons[1]
    assert outcome.decision.revision == "rev1"
    assert TOKEN not in repr(outcome)


@pytest.mark.parametrize("server", ["tickets", "open"])
@pytest.mark.parametrize("value", ["tickets_token", [1], {"tickets_token": True}, None], ids=repr)
async def test_a_malformed_grant_is_obligation_invalid(manager: SecretManager, server: str, value: Any) -> None:
    """Not a list of names: a policy bug, refused whatever the upstream (with or without secrets)."""
    terminal = _Recorder()
    ctx = _ctx(server, decision=Decision(allow=True, obligations={"secrets": value}, revision="rev1"))
    outcome = await _obligations(manager)(ctx, terminal)
    assert terminal.seen == []
    assert outcome.decision is not None and outcome.decision.code == ReasonCode.OBLIGATION_INVALID
    assert outcome.decision.reasons[1].startswith("obligations.secrets must be a list of secret names, got ")
    assert outcome.decision.revision == "rev1"


async def test_granted_secrets_let_the_call_through(manager: SecretManager) -> None:
    terminal = _Recorder()
    ctx = _ctx(decision=Decision(allow=True, obligations={"secrets": ["tickets_token", "extra"]}))
    outcome = await _obligations(manager)(ctx, terminal)
    assert not outcome.denied and len(terminal.seen) == 1


@pytest.mark.parametrize("obligations", [{}, {"secrets": []}], ids=["absent", "empty"])
async def test_upstream_without_secrets_needs_no_obligation(
    manager: SecretManager, obligations: dict[str, Any]
) -> None:
    terminal = _Recorder()
    ctx = _ctx("open", decision=Decision(allow=True, obligations=obligations))
    outcome = await _obligations(manager)(ctx, terminal)
    assert not outcome.denied and len(terminal.seen) == 1


async def test_no_decision_at_all_never_reaches_the_upstream(manager: SecretManager) -> None:
    """The stage sits after Authorize; without an allow in the context it refuses to run at all."""
    terminal = _Recorder()
    with pytest.raises(AssertionError):
        await _obligations(manager)(_ctx(), terminal)
    assert terminal.seen == []


def test_granted_secrets_parsing() -> None:
    assert granted_secrets(None) is None
    assert granted_secrets("a") is None
    assert granted_secrets(["a", 1]) is None
    assert granted_secrets(["a", "b"]) == {"a", "b"}
    assert granted_secrets(("a",)) == {"a"}
    assert granted_secrets([]) == set()


def test_client_credentials_in_meta_are_not_forwarded() -> None:
    meta = {
        "progressToken": "p-1",
        "authorization": "Bearer abc",
        "x-api-key": "whatever",
        "Cookie": "sid=1",
        "vendor/trace": {"jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"},
        "vendor/locale": "en",
    }
    kept, removed = strip_meta_credentials(meta)
    assert kept == {"progressToken": "p-1", "vendor/locale": "en"}
    assert removed == ("authorization", "x-api-key", "Cookie", "vendor/trace")
    assert strip_meta_credentials(None) == (None, ())
    assert strip_meta_credentials({}) == ({}, ())
