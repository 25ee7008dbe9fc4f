"""Secrets stay with the upstream they belong to; client credentials never travel upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from guard_harness import REPO, client_of, make_settings, read_log, recorder_upstream, text_of, wait_for
from http_harness import http_client, http_front
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.testing import FunctionEngine
from mcp_guard.types import Decision, PolicyInput

pytestmark = pytest.mark.anyio

A_SECRET = "alpha-secret-value-7f3k2"
B_SECRET = "bravo-secret-value-9q1z8"
CLIENT_KEY = "client-own-key-should-stay-home"


def _grant_all(i: PolicyInput) -> Decision:
    return Decision(allow=True, obligations={"secrets": ["a_token", "b_token"]})


@pytest.fixture
def http_upstream(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "headers.log"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fixtures" / "http_recorder.py"), "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    yield f"http://127.0.0.1:{int(line.split()[1])}/mcp", log
    proc.terminate()
    proc.wait(timeout=10)


async def test_each_upstream_gets_only_its_own_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_A_TOKEN", A_SECRET)
    monkeypatch.setenv("MG_B_TOKEN", B_SECRET)
    settings = make_settings(
        {
            "a": recorder_upstream() | {"inject_env": {"A_TOKEN": "a_token"}},
            "b": recorder_upstream() | {"inject_env": {"B_TOKEN": "b_token"}},
        },
        secrets={
            "a_token": {"provider": "env", "name": "MG_A_TOKEN"},
            "b_token": {"provider": "env", "name": "MG_B_TOKEN"},
        },
    )
    from mcp_guard.app import Guard
    from mcp_guard.testing import RecordingSink

    guard = Guard(settings, engine=FunctionEngine(_grant_all), sink=RecordingSink(), secrets=SecretManager(settings))
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        async with client_of(guard) as client:
            # The env tool's output is scrubbed, so ask for the names the child sees instead of values.
            env_a = text_of(await client.call_tool("a__env", {}))
            env_b = text_of(await client.call_tool("b__env", {}))
    assert "A_TOKEN" in env_a and "B_TOKEN" not in env_a
    assert "B_TOKEN" in env_b and "A_TOKEN" not in env_b
    # And what did come back was scrubbed.
    assert A_SECRET not in env_a and "[REDACTED:a_token]" in env_a
    assert B_SECRET not in env_b and "[REDACTED:b_token]" in env_b


@pytest.mark.parametrize(
    "obligations", [{}, {"secrets": ["a_token"]}], ids=["no-secrets-obligation", "other-upstream's-secret"]
)
async def test_an_upstream_whose_secret_is_not_granted_is_not_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, obligations: dict[str, list[str]]
) -> None:
    """The secrets obligation handler, through the built pipeline: no grant (or a grant of another
    upstream's secret) for an upstream that runs with a secret is a deny, recorded, never forwarded."""
    monkeypatch.setenv("MG_B_TOKEN", B_SECRET)
    settings = make_settings(
        {"b": recorder_upstream(tmp_path / "b.log") | {"inject_env": {"B_TOKEN": "b_token"}}},
        secrets={"b_token": {"provider": "env", "name": "MG_B_TOKEN"}},
    )
    from mcp_guard.app import Guard
    from mcp_guard.testing import RecordingSink

    sink = RecordingSink()
    engine = FunctionEngine(lambda i: Decision(allow=True, obligations=obligations, revision="r1"))
    guard = Guard(settings, engine=engine, sink=sink, secrets=SecretManager(settings))
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        async with client_of(guard) as client:
            r = await client.call_tool("b__echo", {"text": "hi"})
    assert r.is_error and "secret_not_granted" in text_of(r) and "b_token" in text_of(r)
    assert read_log(tmp_path / "b.log") == []
    (row,) = sink.of_kind("call.decision")
    assert row.decision == "deny" and row.reasons is not None and row.reasons[0] == "secret_not_granted"
    assert row.policy_revision == "r1"


async def test_client_authorization_never_reaches_http_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_upstream: tuple[str, Path]
) -> None:
    import hashlib

    url, log = http_upstream
    monkeypatch.setenv("MG_H_TOKEN", A_SECRET)
    settings = make_settings(
        {
            "h": {
                "transport": "http",
                "url": url,
                "inject_headers": {"Authorization": "Bearer {a_token}"},
                "timeout_s": 10,
            }
        },
        secrets={"a_token": {"provider": "env", "name": "MG_H_TOKEN"}},
        principals={"alice": {"roles": ["x"], "api_key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}},
    )
    from mcp_guard.app import Guard
    from mcp_guard.testing import RecordingSink

    guard = Guard(
        settings,
        engine=FunctionEngine(lambda i: Decision(allow=True, obligations={"secrets": ["a_token"]})),
        sink=RecordingSink(),
        secrets=SecretManager(settings),
    )
    async with guard.running():
        assert not await guard.registry.wait_ready(20)
        async with http_front(guard) as front, http_client(front, CLIENT_KEY) as client:
            r = await client.call_tool(
                "h__echo", {"text": "hello"}, meta={"authorization": f"Bearer {CLIENT_KEY}", "trace": "t-1"}
            )
            assert text_of(r) == "hello"
            forwarded = text_of(
                await client.call_tool("h__meta", {}, meta={"authorization": f"Bearer {CLIENT_KEY}", "trace": "t-1"})
            )
            assert "t-1" in forwarded and CLIENT_KEY not in forwarded and "authorization" not in forwarded
            await wait_for(lambda: log.exists())
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen and all(h.get("authorization") == f"Bearer {A_SECRET}" for h in seen)
    assert CLIENT_KEY not in log.read_text()
