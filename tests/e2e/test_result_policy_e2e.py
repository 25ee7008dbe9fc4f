"""The result policy through a real ``mcp-guard run --transport http`` in front of real recorder upstreams, with
the default bundle plus the shipped example result rule (policies/examples/results/results.rego, asked through
``[policy] decision = "mcp_guard/decision_with_results"``):

* a result carrying a card number reaches the client redacted (the upstream's log proves it sent the number);
* a CONFIDENTIAL result labels the flow private, and a later rule (the default trifecta rule, set to deny egress
  after private data) denies a post in that flow naming the *result* decision; a fresh flow may post;
* a result carrying a private key (the recorder's ``env`` tool showing a key it was started with; a key in the
  arguments would be refused before the call ran) is withheld: the client gets a deny naming the call's
  decision, the audit has the call's allow row and a ``call.result`` row that says withheld;
* a stateless 2026-07-28 client's result is redacted the same way;
* ``audit verify`` passes over the whole story.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import API_KEY, REPO, guard_argv, http_guard, recorder, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CARD = "4111 1111 1111 1111"
KEY_BLOCK = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"


def _bundle(tmp: Path) -> Path:
    """The default bundle with the example result rule dropped in, a role for these upstreams, the social
    recorder an egress sink, and egress denied after private data alone."""
    bundle = tmp / "bundle"
    shutil.copytree(REPO / "policies" / "rego", bundle)
    shutil.copy(REPO / "policies" / "examples" / "results" / "results.rego", bundle / "mcp_guard" / "results.rego")
    data = json.loads((bundle / "data.json").read_text())
    cfg = data["mcp_guard_config"]
    grants = [{"server": "notes", "tools": ["echo", "env"]}, {"server": "social", "tools": ["echo"]}]
    cfg["roles"] = {"agent": {"grants": grants}}
    cfg["principals"] = {"agent": ["agent"]}
    cfg["flows"]["egress"].append({"server": "social", "tools": ["echo"]})
    cfg["flows"]["deny_egress_after"] = [["private"]]
    (bundle / "data.json").write_text(json.dumps(data))
    for test in bundle.rglob("*_test.rego"):
        test.unlink()  # their fixtures assume the default data.json
    return bundle


def _config(tmp: Path) -> Path:
    upstreams = {
        "notes": recorder(tmp / "notes.log", RECORDER_NAME="notes", NOTES_DEPLOY_KEY=KEY_BLOCK),
        "social": recorder(tmp / "social.log", RECORDER_NAME="social"),
    }
    cfg = write_config(tmp, upstreams, bundle=_bundle(tmp))
    text = cfg.read_text().replace("[policy]\n", '[policy]\ndecision = "mcp_guard/decision_with_results"\n', 1)
    cfg.write_text(text)
    return cfg


def _client(url: str, mode: str = "legacy") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx2.Timeout(60.0))
    return Client(
        streamable_http_client(url, http_client=http),
        mode=mode,  # type: ignore[arg-type]
        read_timeout_seconds=60.0,
        client_info=types.Implementation(name="e2e-results", version="1"),
    )


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _decision_id(result: types.CallToolResult) -> str:
    assert not result.is_error, _text(result)
    decision_id = (result.meta or {})["mcp-guard/decision_id"]
    assert isinstance(decision_id, str)
    return decision_id


def _echoes(log: Path) -> list[str]:
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e["arguments"]["text"] for e in entries if e.get("name") == "echo"]


def _rows(audit: Path, decision_id: str) -> list[dict[str, Any]]:
    """Every row of one call (its decision id), oldest first, JSON columns decoded."""
    db = sqlite3.connect(audit)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM audit_events WHERE decision_id = ? ORDER BY seq", (decision_id,)).fetchall()
    finally:
        db.close()
    out = []
    for r in rows:
        row = dict(r)
        for col in ("reasons", "result", "details"):
            row[col] = json.loads(row[col]) if row[col] else None
        out.append(row)
    return out


async def _wait_for_tools(url: str) -> None:
    async with _client(url) as c:
        with anyio.fail_after(60):
            while True:
                names = {t.name for t in (await c.list_tools()).tools}
                if {"notes__echo", "social__echo"} <= names:
                    return
                await anyio.sleep(0.05)


async def _verify(cfg: Path) -> None:
    with anyio.fail_after(60):
        verify = await anyio.run_process([*guard_argv(cfg)[:3], "audit", "verify", "--config", str(cfg)], check=False)
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()


async def test_results_are_redacted_labelled_and_withheld(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    audit = tmp_path / "audit.db"
    with http_guard(cfg, tmp_path / "guard.log") as url:
        await _wait_for_tools(url)
        async with _client(url) as agent:
            # 1. a card number in a result reaches the client redacted
            paid = await agent.call_tool("notes__echo", {"text": f"paid with card {CARD}, thanks"})
            card_call = _decision_id(paid)
            assert _text(paid) == "paid with card [redacted], thanks"

            # 2. a CONFIDENTIAL result labels the flow private; the trifecta rule then refuses egress, naming it
            confidential = await agent.call_tool("notes__echo", {"text": "CONFIDENTIAL: merger plan"})
            labelled_call = _decision_id(confidential)
            assert _text(confidential) == "CONFIDENTIAL: merger plan"
            post = await agent.call_tool("social__echo", {"text": "the merger plan"})
            assert post.is_error and "social__echo is an egress sink" in _text(post), _text(post)

            # 3. a private key in a result is withheld
            key = await agent.call_tool("notes__env", {})
            assert key.is_error
            denial = (key.meta or {})["mcp-guard/decision"]
            assert denial["code"] == "result_withheld"
            assert denial["reasons"] == ["result_withheld", "the result of notes__env carries a private key"]
            assert "PRIVATE KEY" not in _text(key).replace("carries a private key", "")
            withheld_call = denial["decision_id"]

        async with _client(url) as fresh:  # a new session is a new flow: nothing private in it
            _decision_id(await fresh.call_tool("social__echo", {"text": "hello from a clean flow"}))

        async with _client(url, "2026-07-28") as stateless:  # the other protocol era: the same result rule
            receipt = await stateless.call_tool("notes__echo", {"text": f"receipt: {CARD.replace(' ', '-')}"})
            _decision_id(receipt)
            assert _text(receipt) == "receipt: [redacted]"

    # the upstream saw everything (the policy judged what came back, not what went out)
    assert _echoes(tmp_path / "notes.log") == [
        f"paid with card {CARD}, thanks",
        "CONFIDENTIAL: merger plan",
        f"receipt: {CARD.replace(' ', '-')}",
    ]
    assert _echoes(tmp_path / "social.log") == ["hello from a clean flow"]

    decision, result = _rows(audit, card_call)
    assert (decision["kind"], decision["decision"]) == ("call.decision", "allow")
    assert result["kind"] == "call.result" and result["decision"] is None
    assert result["result"]["redacted"]["patterns"] == 1
    assert result["details"]["result_decision"]["obligations"]["redact"]["patterns"]

    labelled = _rows(audit, labelled_call)[-1]
    result_decision = labelled["details"]["result_decision"]
    assert result_decision["obligations"]["labels"] == ["private"]
    assert post.meta is not None
    assert f"'private' (decision {result_decision['decision_id']}: notes echo)" in _text(post), _text(post)

    allow_row, withheld = _rows(audit, withheld_call)
    assert (allow_row["kind"], allow_row["decision"]) == ("call.decision", "allow")
    assert (withheld["kind"], withheld["decision"]) == ("call.result", "deny")
    assert withheld["result"]["withheld"] is True and withheld["result"]["bytes"] > 0
    assert withheld["reasons"] == ["result_withheld", "the result of notes__env carries a private key"]
    assert withheld["details"]["result_decision"]["allow"] is False
    assert "PRIVATE KEY-----" not in json.dumps(withheld)
    await _verify(cfg)
