"""The policy life cycle through real proxies: record mixed traffic, replay it against a stricter candidate (the
diff lists exactly the calls the change affects), the same candidate in shadow mode audits the same
disagreements live; a tampered signed bundle is refused at start and at reload; rollback restores the previous
revision without a file edit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e_support import API_KEY, POLL_S, REPO, guard_argv, recorder, write_config

from http_harness import http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

OPA = Path("/root/.cache/mcp-guard/bin/opa")

CURRENT = """package mcp_guard

import rego.v1

default decision := {"allow": false, "reasons": ["not granted"]}

decision := {"allow": true} if input.tool in {"echo", "add"}
"""

# Stricter: no "secret" in an echo, no sum with a > 100. Everything else decides as CURRENT does.
CANDIDATE = """package mcp_guard

import rego.v1

default decision := {"allow": false, "reasons": ["not granted"]}

secretish if contains(input.arguments.text, "secret")

big if input.arguments.a > 100

decision := {"allow": true} if {
	input.tool == "echo"
	not secretish
}

decision := {"allow": false, "reasons": ["no secrets in echo"]} if {
	input.tool == "echo"
	secretish
}

decision := {"allow": true} if {
	input.tool == "add"
	not big
}

decision := {"allow": false, "reasons": ["sums over 100 need approval"]} if {
	input.tool == "add"
	big
}
"""


def bundle(root: Path, rego: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.rego").write_text(rego)
    return root


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_guard", *args, "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MCP_GUARD_OPERATOR": "secops-alice"},
    )


@contextmanager
def proxy(cfg: Path, log_file: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`mcp-guard run --transport http --port 0`: the process and its /mcp URL; stopped (SIGTERM) at the end."""
    err = log_file.open("w")
    proc = subprocess.Popen(
        guard_argv(cfg, "--transport", "http", "--port", "0", "--log-level", "info"),
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert proc.poll() is None, f"mcp-guard exited {proc.returncode}:\n{log_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mcp-guard did not listen:\n{log_file.read_text()[-3000:]}"
            for line in log_file.read_text().splitlines():
                if '"http.listening"' in line:
                    url = str(json.loads(line)["url"])
            time.sleep(POLL_S)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


def audit_rows(db: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [dict(r) for r in rows]


async def until(check: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    with anyio.move_on_after(within):
        while True:
            got = check()
            if got:
                return got
            await anyio.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


def mixed_calls(n: int) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        if i % 3 == 0:
            calls.append(("echo", {"text": f"secret {i}" if i % 7 == 0 else f"hello {i}"}))
        elif i % 3 == 1:
            calls.append(("add", {"a": i, "b": 1}))
        else:
            calls.append(("slow", {"seconds": 0, "steps": 1}))  # denied by both bundles
    return calls


def affected(tool: str, arguments: dict[str, Any]) -> bool:
    """Exactly what CANDIDATE changes relative to CURRENT."""
    return (tool == "echo" and "secret" in arguments["text"]) or (tool == "add" and arguments["a"] > 100)


async def test_replay_and_shadow_find_exactly_the_affected_calls(tmp_path: Path) -> None:
    current = bundle(tmp_path / "current", CURRENT)
    candidate = bundle(tmp_path / "candidate", CANDIDATE)
    cfg = write_config(tmp_path, {"rec": recorder()}, bundle=current)
    cfg.write_text(cfg.read_text().replace("[policy]\n", f"[policy]\nshadow_bundle = {json.dumps(str(candidate))}\n"))
    calls = mixed_calls(300)
    with proxy(cfg, tmp_path / "guard.log") as (_, url):
        async with http_client(url, API_KEY) as client:
            for tool, arguments in calls:
                result = await client.call_tool(f"rec__{tool}", arguments)
                assert result.is_error == (tool == "slow")  # the shadow never enforces
    db = tmp_path / "audit.db"
    decisions = {r["decision_id"]: r for r in audit_rows(db, "call.decision")}
    assert len(decisions) == 300
    expected = {
        d
        for d, r in decisions.items()
        if affected(r["tool"], json.loads(r["arguments"]))  # what the change affects, from the recorded calls
    }
    assert len(expected) == sum(affected(t, a) for t, a in calls) > 50

    replay = cli(cfg, "policy", "replay", "--bundle", str(candidate), "--json")
    assert replay.returncode == 1, replay.stderr
    report = json.loads(replay.stdout)
    assert report["rows"] == 300 and report["replayed"] == 300 and report["skipped_count"] == 0
    assert {c["decision_id"] for c in report["changed"]} == expected
    assert {c["change"] for c in report["changed"]} == {"allow→deny"}

    shadow = audit_rows(db, "policy.shadow_diff")
    assert {r["decision_id"] for r in shadow} == expected  # the same disagreements, audited live
    assert all(json.loads(r["details"])["enforced"]["allow"] is True for r in shadow)

    same = cli(cfg, "policy", "replay", "--bundle", str(current))
    assert same.returncode == 0 and "0 would change" in same.stdout
    verify = cli(cfg, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def sign(root: Path, key: Path) -> None:
    subprocess.run(
        [str(OPA), "sign", "--signing-key", str(key), "--bundle", ".", "-o", "."],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_signed_bundles_tampering_and_rollback(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp_path / "signer.pem", tmp_path / "signer.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    root = bundle(tmp_path / "bundle", CURRENT)
    sign(root, private)
    cfg = write_config(
        tmp_path,
        {"rec": recorder()},
        bundle=root,
        extra=f'\n[policy.signing]\nkeys = {{ release = "{public}" }}\n',
    )
    cfg.write_text(cfg.read_text().replace("[audit]\n", f'[audit]\nstate_path = "{tmp_path / "state.db"}"\n'))
    db = tmp_path / "audit.db"
    echo = ("rec__echo", {"text": "hi"})

    with proxy(cfg, tmp_path / "guard.log") as (proc, url):
        async with http_client(url, API_KEY) as client:
            assert not (await client.call_tool(*echo)).is_error
            v1 = audit_rows(db, "policy.load")[-1]["policy_revision"]

            # Tampered (not re-signed): refused at reload, the signed revision stays.
            (root / "policy.rego").write_text(CURRENT.replace('{"echo", "add"}', '{"echo", "add", "slow"}'))
            proc.send_signal(signal.SIGHUP)
            failed = await until(lambda: audit_rows(db, "policy.reload_failed"), "the reload to be refused")
            assert "does not match the bundle signature" in failed[-1]["details"]
            assert (await client.call_tool("rec__slow", {"seconds": 0, "steps": 1})).is_error

            # Tampered at start: a second proxy on the same directory does not start.
            with anyio.fail_after(60):
                started = await anyio.run_process(
                    guard_argv(cfg, "--transport", "http", "--port", "0"), cwd=REPO, check=False, env=dict(os.environ)
                )
            assert started.returncode == 2
            last = started.stderr.decode().strip().splitlines()[-1]
            assert last.startswith("mcp-guard: error:") and "policy.rego: does not match the bundle signature" in last

            # A properly signed v2 (denies echo) is hot-loaded and recorded in the history.
            (root / "policy.rego").write_text(CURRENT.replace('{"echo", "add"}', '{"add"}'))
            sign(root, private)
            await until(lambda: len(audit_rows(db, "policy.load")) >= 2, "v2 to load")
            assert (await client.call_tool(*echo)).is_error
            history = json.loads(cli(cfg, "policy", "history", "--json").stdout)
            revisions = [a["revision"] for a in history["activations"]]
            v2 = revisions[0]
            assert v2 != v1 and v1 in revisions

            # Rollback to v1, no file edit: the running proxy loads it, the rollback is audited.
            rolled = cli(cfg, "policy", "rollback", v1[:12])
            assert rolled.returncode == 0, rolled.stderr
            await until(lambda: audit_rows(db, "policy.load")[-1]["policy_revision"] == v1, "the rollback to apply")
            assert not (await client.call_tool(*echo)).is_error
            rollback = audit_rows(db, "policy.rollback")
            assert [(r["policy_revision"], r["principal"]) for r in rollback] == [(v1, "secops-alice")]
            history = json.loads(cli(cfg, "policy", "history", "--json").stdout)
            assert history["pinned"]["revision"] == v1
            assert history["activations"][0]["source"] == "rollback"

    # At the next start the pin still wins over the directory (which holds v2).
    with proxy(cfg, tmp_path / "guard2.log") as (_, url):
        async with http_client(url, API_KEY) as client:
            assert not (await client.call_tool(*echo)).is_error
    assert audit_rows(db, "policy.load")[-1]["policy_revision"] == v1
