"""The admin health API's upstream detail: the last stderr lines (scrubbed), restarts and the last failure."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from guard_harness import REPO, TIMEOUT_S, make_settings, wait_for
from mcp_guard.app import Guard
from mcp_guard.frontend.admin_health import health_body
from mcp_guard.frontend.auth import key_digest
from mcp_guard.frontend.ops import OpsSources
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision

pytestmark = pytest.mark.anyio

TOKEN = "tk_live_5e4d3c2b1a09f8e7d6c5b4a39281706f"
VIEWER_KEY = "vera-key-0123456789"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_HEALTH_TOKEN", TOKEN)


async def test_stderr_lines_of_an_upstream_that_prints_its_secret_show_only_the_redacted_form() -> None:
    settings = make_settings(
        {
            "leaky": {
                "command": sys.executable,
                "args": [str(REPO / "tests" / "fixtures" / "leaky.py")],
                "env": {"LEAKY_STDERR": "1"},
                "inject_env": {"LEAK_TOKEN": "tok"},
                "timeout_s": 10.0,
            }
        },
        secrets={"tok": {"provider": "env", "name": "MG_HEALTH_TOKEN"}},
        principals={"vera": {"api_key_sha256": key_digest(VIEWER_KEY), "roles": ["viewer"]}},
    )
    grant = FunctionEngine(lambda _i: Decision(allow=True))
    guard = Guard(settings, engine=grant, sink=RecordingSink(), secrets=SecretManager(settings))
    async with guard.running():
        assert not await guard.registry.wait_ready(TIMEOUT_S)
        async with guard.http_served() as url:
            base = url.removesuffix("/mcp")
            headers = {"Authorization": f"Bearer {VIEWER_KEY}"}
            async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=20.0) as c:
                # The child writes its line as it starts: the tail has it once the connection is ready.
                await wait_for(lambda: bool(guard.registry.connections["leaky"].stderr_tail), TIMEOUT_S)
                text = (await c.get("/admin/api/health")).text
                leaky = json.loads(text)["upstreams"]["leaky"]
    assert leaky["up"] and leaky["restarts"] == 0 and leaky["last_failure"] is None
    assert leaky["stderr"] == ["leaky: starting with LEAK_TOKEN=[REDACTED:tok] (bearer [REDACTED:tok])"]
    assert TOKEN not in text and TOKEN[-12:] not in text and TOKEN[:12] not in text


@dataclass
class _Pool:
    """A pooled upstream as health reads it (the UpstreamPool's properties)."""

    name: str = "gh"
    state: str = "ready"
    restarts: int = 3
    last_failure: str | None = "process exited with code 1"
    stderr_tail: list[str] = field(default_factory=lambda: ["[alice] boom password=hunter2", "[bob] fine"])

    def children_health(self) -> Mapping[str, tuple[str, int, str | None]]:
        return {"bob": ("ready", 0, None), "alice": ("down", 3, "process exited with code 1")}


def test_a_pooled_upstream_is_listed_with_its_children_and_one_labelled_ring(tmp_path: Path) -> None:
    ops = OpsSources(
        calls=CallMetrics(),
        engine=object(),
        engine_name="embedded",
        audit=object(),
        audit_backend="sqlite",
        upstreams=lambda: (),
        session_transports=lambda: (),
        scrub=lambda text: text.replace("boom", "[REDACTED:x]"),
    )
    body = health_body(ops, [], 0, pools=[_Pool()])
    gh = body["upstreams"]["gh"]
    assert gh["pooled"] and gh["up"] and gh["restarts"] == 3
    assert list(gh["children"]) == ["alice", "bob"] and gh["children"]["alice"]["restarts"] == 3
    assert gh["stderr"] == ["[alice] [REDACTED:x] password=[REDACTED]", "[bob] fine"]
    assert gh["last_failure"] == "process exited with code 1"
