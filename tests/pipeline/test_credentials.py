"""The ``secrets`` obligation on an upstream with per-principal credentials: a caller without its own
credential is denied ``credential_missing`` (the reason says what is missing, never a value), and the call
never reaches an upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.obligations import EnforceObligations
from mcp_guard.pipeline.secrets import SecretsObligation
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.settings import parse_settings
from mcp_guard.types import Decision, Principal, ReasonCode, SessionInfo

pytestmark = pytest.mark.anyio

ALICE = "alice-gh-token-0123456789"


class Credentials:
    """A CredentialCheck as the registry answers it: from the secrets, per principal."""

    def __init__(self, manager: SecretManager) -> None:
        self.manager = manager
        self.asked: list[tuple[str, str]] = []

    async def credential_problem(self, upstream: str, principal: str) -> str | None:
        self.asked.append((upstream, principal))
        if upstream not in self.manager.pooled_upstreams():
            return None
        try:
            await self.manager.injections_for_principal(upstream, principal)
        except Exception as e:
            return str(e)
        return None


class Terminal:
    def __init__(self) -> None:
        self.seen: list[CallContext] = []

    async def __call__(self, ctx: CallContext) -> Outcome:
        self.seen.append(ctx)
        return Outcome(result={"content": [], "isError": False})


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretManager:
    monkeypatch.setenv("MG_GH_alice", ALICE)
    settings = parse_settings(
        {
            "secrets": {"gh": {"provider": "env", "name": "MG_GH_{principal}"}},
            "upstreams": {"github": {"command": "gh-server", "inject_env": {"GH_TOKEN": "gh"}}},
        },
        base_dir=str(tmp_path),
    )
    return SecretManager(settings)


def _ctx(principal: str, obligations: dict[str, Any]) -> CallContext:
    return CallContext(
        action="tools/call",
        principal=Principal(principal, ()),
        session=SessionInfo("s1", "memory"),
        server="github",
        target="whoami",
        exposed="github__whoami",
        arguments={},
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="whoami", arguments={})),
        decision=Decision(allow=True, obligations=obligations, revision="rev1"),
    )


async def test_a_caller_without_its_own_credential_is_denied(manager: SecretManager) -> None:
    terminal = Terminal()
    chain = EnforceObligations([SecretsObligation(manager, Credentials(manager))])
    outcome = await chain(_ctx("carol", {"secrets": ["gh"]}), terminal)
    assert terminal.seen == []
    assert outcome.decision is not None and outcome.decision.code == ReasonCode.CREDENTIAL_MISSING
    assert "'carol' has none" in outcome.decision.reasons[1] and "MG_GH_carol is not set" in outcome.decision.reasons[1]


async def test_a_caller_with_its_credential_goes_through(manager: SecretManager) -> None:
    terminal = Terminal()
    chain = EnforceObligations([SecretsObligation(manager, Credentials(manager))])
    outcome = await chain(_ctx("alice", {"secrets": ["gh"]}), terminal)
    assert not outcome.denied and len(terminal.seen) == 1
    assert ALICE not in repr(outcome)


async def test_an_ungranted_secret_is_refused_before_the_credential_is_looked_up(manager: SecretManager) -> None:
    credentials = Credentials(manager)
    outcome = await EnforceObligations([SecretsObligation(manager, credentials)])(_ctx("carol", {}), Terminal())
    assert outcome.decision is not None and outcome.decision.code == ReasonCode.SECRET_NOT_GRANTED
    assert credentials.asked == []
