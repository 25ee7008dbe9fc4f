"""Redact: nothing an upstream sends back carries an injected value; the log processor likewise."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import mcp_types as types
import pytest
import structlog

from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.redact import Redact, redact_outcome, scrub_processor
from mcp_guard.secrets.manager import SecretManager
from mcp_guard.secrets.redact import Scrubber
from mcp_guard.settings import parse_settings
from mcp_guard.types import Principal, SessionInfo

pytestmark = pytest.mark.anyio


def _secret_checks() -> ModuleType:
    """tests/secrets/secret_checks.py (test dirs are not packages; load it by path)."""
    if "secret_checks" in sys.modules:
        return sys.modules["secret_checks"]
    spec = importlib.util.spec_from_file_location(
        "secret_checks", Path(__file__).resolve().parents[1] / "secrets" / "secret_checks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["secret_checks"] = module
    spec.loader.exec_module(module)
    return module


assert_no_secret = _secret_checks().assert_no_secret

TOKEN = "tk_live_8c7b6a5d4e3f2a1b0c9d"
OTHER = "other-upstream-secret-77"


@pytest.fixture
async def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretManager:
    monkeypatch.setenv("MG_T1", TOKEN)
    monkeypatch.setenv("MG_T2", OTHER)
    settings = parse_settings(
        {
            "secrets": {
                "tickets_token": {"provider": "env", "name": "MG_T1"},
                "wiki_token": {"provider": "env", "name": "MG_T2"},
            },
            "upstreams": {
                "tickets": {"command": "t", "inject_env": {"TOKEN": "tickets_token"}},
                "wiki": {"command": "w", "inject_env": {"TOKEN": "wiki_token"}},
            },
        },
        base_dir=str(tmp_path),
    )
    m = SecretManager(settings)
    assert await m.check() == {}
    return m


def _ctx() -> CallContext:
    return CallContext(
        action="tools/call",
        principal=Principal("alice"),
        session=SessionInfo("s1", "memory"),
        server="tickets",
        target="echo",
        exposed="tickets__echo",
        arguments={},
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="echo", arguments={})),
    )


async def _through_redact(manager: SecretManager, outcome: Outcome) -> Outcome:
    async def upstream(ctx: CallContext) -> Outcome:
        return outcome

    return await Redact(manager)(_ctx(), upstream)


async def test_tool_result_every_part_is_scrubbed(manager: SecretManager) -> None:
    result: dict[str, Any] = {
        "content": [
            {"type": "text", "text": f"token={TOKEN}"},
            {"type": "text", "text": "split: " + TOKEN[:9]},
            {"type": "text", "text": TOKEN[9:] + " end"},
            {"type": "image", "data": base64.b64encode(b"\x00\x01" + TOKEN.encode()).decode(), "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "mem://x", "text": json.dumps({"t": TOKEN})}},
            {"type": "resource_link", "uri": f"https://x.test/?k={quote(TOKEN)}", "name": "link"},
        ],
        "structuredContent": {"echo": {"env": {"TOKEN": TOKEN, "hex": TOKEN.encode().hex()}}, "other": OTHER},
        "isError": False,
        "_meta": {"trace": base64.urlsafe_b64encode(TOKEN.encode()).decode()},
    }
    out = await _through_redact(manager, Outcome(result=result))
    assert out.result is not None
    blob = json.dumps(out.result).encode()
    assert_no_secret(blob, TOKEN)
    assert_no_secret(blob, OTHER)  # every upstream's output is scrubbed of every secret
    texts = [b.get("text") for b in out.result["content"]]
    assert texts[:3] == ["token=[REDACTED:tickets_token]", "split: [REDACTED:tickets_token]", " end"]
    assert out.result["structuredContent"]["other"] == "[REDACTED:wiki_token]"
    assert out.result["isError"] is False
    assert result["content"][0]["text"] == f"token={TOKEN}"  # the upstream's dict is not mutated


async def test_resource_contents_and_prompt_messages(manager: SecretManager) -> None:
    read = {"contents": [{"uri": "file:///env", "mimeType": "text/plain", "text": f"TOKEN={TOKEN}\n"}]}
    out = await _through_redact(manager, Outcome(result=read))
    assert out.result == {
        "contents": [{"uri": "file:///env", "mimeType": "text/plain", "text": "TOKEN=[REDACTED:tickets_token]\n"}]
    }
    prompt = {
        "description": f"uses {TOKEN}",
        "messages": [
            {"role": "user", "content": {"type": "text", "text": TOKEN[:4]}},
            {"role": "user", "content": {"type": "text", "text": TOKEN[4:]}},
        ],
    }
    out = await _through_redact(manager, Outcome(result=prompt))
    assert out.result is not None
    assert_no_secret(json.dumps(out.result).encode(), TOKEN)
    assert out.result["messages"][0]["content"]["text"] == "[REDACTED:tickets_token]"


async def test_error_message_and_data_are_scrubbed(manager: SecretManager) -> None:
    error = types.ErrorData(code=-32000, message=f"auth failed for Bearer {TOKEN}", data={"sent": TOKEN, "n": 1})
    out = await _through_redact(manager, Outcome(error=error))
    assert out.error is not None
    assert out.error.message == "auth failed for Bearer [REDACTED:tickets_token]"
    assert out.error.data == {"sent": "[REDACTED:tickets_token]", "n": 1}
    assert out.error.code == -32000


def test_nothing_to_scrub_keeps_the_outcome() -> None:
    o = Outcome(result={"content": []})
    assert redact_outcome(o, Scrubber()) is o


async def test_a_secret_resolved_after_the_stage_was_built_is_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_LATE", "late-secret-value-1234")
    settings = parse_settings(
        {
            "secrets": {"late": {"provider": "env", "name": "MG_LATE"}},
            "upstreams": {"u": {"command": "u", "inject_env": {"X": "late"}}},
        },
        base_dir=str(tmp_path),
    )
    m = SecretManager(settings)
    stage = Redact(m)

    async def upstream(ctx: CallContext) -> Outcome:
        await m.injections_for("u")  # e.g. the upstream restarted while the call ran
        return Outcome(result={"content": [{"type": "text", "text": "late-secret-value-1234"}]})

    out = await stage(_ctx(), upstream)
    assert out.result == {"content": [{"type": "text", "text": "[REDACTED:late]"}]}


# --------------------------------------------------------------------------- log processor
def _logger(manager: SecretManager) -> tuple[Any, io.StringIO]:
    buf = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(buf),
        processors=[scrub_processor(manager), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(0),  # not the level an earlier test configured
    )
    return logger, buf


async def test_log_processor_scrubs_values_and_masks_shapes(manager: SecretManager) -> None:
    logger, buf = _logger(manager)
    logger.info(
        f"upstream said {TOKEN}",
        line=f"stderr: using {quote(TOKEN)}",
        nested={"list": [base64.b64encode(TOKEN.encode()).decode()]},
        api_key="q8Zr2LpX0vN7cKt4Wm9B",
        aws="AKIAIOSFODNN7EXAMPLE",
        path=Path(f"/run/{TOKEN}"),
        count=3,
    )
    out = buf.getvalue()
    assert_no_secret(out.encode(), TOKEN)
    event = json.loads(out)
    assert event["event"] == "upstream said [REDACTED:tickets_token]"
    assert event["line"] == "stderr: using [REDACTED:tickets_token]"
    assert event["api_key"] == "[REDACTED:high_entropy]"
    assert event["aws"] == "[REDACTED:aws_access_key]"
    assert event["path"] == "/run/[REDACTED:tickets_token]"
    assert event["count"] == 3


async def test_log_processor_scrubs_tracebacks(manager: SecretManager) -> None:
    logger, buf = _logger(manager)
    try:
        raise RuntimeError(f"upstream rejected {TOKEN}")
    except RuntimeError:
        logger.exception("call failed")
    out = buf.getvalue()
    assert "RuntimeError: upstream rejected [REDACTED:tickets_token]" in json.loads(out)["exception"]
    assert_no_secret(out.encode(), TOKEN)
