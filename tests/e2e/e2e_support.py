"""Shared set-up for end-to-end tests: real mcp-guard processes in front of real MCP servers."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "tests" / "e2e"
NODE_BIN = E2E / "node_modules" / ".bin"
RECORDER = REPO / "tests" / "fixtures" / "recorder.py"
INSPECTOR_CLI = E2E / "node_modules" / "@modelcontextprotocol" / "inspector" / "cli" / "build" / "cli.js"
ALLOW_ALL_REGO = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["e2e: allow all"], "obligations": {"secrets": secrets}}

secrets := [s | some s in data.e2e_secrets]
"""
POLL_S = 0.05  # interval of condition polls (always under a deadline)
API_KEY = "e2e-agent-key-4f1c2d"


def need_node_peers() -> None:
    if not (NODE_BIN / "mcp-server-everything").exists():
        pytest.fail("npm peers are missing: run `make peers` (tests/e2e/node_modules)")


def toml_value(v: Any) -> str:
    return (
        json.dumps(v)
        if not isinstance(v, dict)
        else "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    )


def write_config(
    tmp: Path,
    upstreams: dict[str, dict[str, Any]],
    *,
    extra: str = "",
    secrets_allowed: list[str] | None = None,
    bundle: Path | None = None,
) -> Path:
    """A config file (allow-all bundle unless given) with an HTTP key for principal 'agent'."""
    if bundle is None:
        bundle = tmp / "bundle"
        bundle.mkdir(exist_ok=True)
        (bundle / "allow.rego").write_text(ALLOW_ALL_REGO)
        (bundle / "data.json").write_text(json.dumps({"e2e_secrets": secrets_allowed or []}))
    lines = [
        "[server]",
        'principal = "agent"',
        "",
        "[policy]",
        f"bundle = {json.dumps(str(bundle))}",
        "",
        "[audit]",
        f"path = {json.dumps(str(tmp / 'audit.db'))}",
        "",
        "[principals.agent]",
        'roles = ["developer"]',
        f'api_key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"',
        "",
    ]
    for name, table in upstreams.items():
        lines.append(f"[upstreams.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    cfg = tmp / "mcp-guard.toml"
    cfg.write_text("\n".join(lines) + extra)
    return cfg


def everything() -> dict[str, Any]:
    return {
        "command": shutil.which("node") or "node",
        "args": [str(NODE_BIN / "mcp-server-everything")],
        "timeout_s": 30,
    }


def time_server() -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def recorder(log: Path | None = None, **env: str) -> dict[str, Any]:
    e = dict(env)
    if log is not None:
        e["RECORDER_LOG"] = str(log)
    return {"command": sys.executable, "args": [str(RECORDER)], "env": e, "restart_backoff_s": 0.2, "timeout_s": 10}


def guard_argv(cfg: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "mcp_guard", "run", "--config", str(cfg), *more]


@contextmanager
def http_guard(cfg: Path, log_file: Path) -> Iterator[str]:
    """Start `mcp-guard run --transport http --port 0`; yield its /mcp URL (read from its log)."""
    err = log_file.open("w")
    proc = subprocess.Popen(
        guard_argv(cfg, "--transport", "http", "--port", "0", "--log-level", "info"),
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = _wait_for_url(proc, log_file)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


def _wait_for_url(proc: subprocess.Popen[bytes], log_file: Path, within: float = 60.0) -> str:
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mcp-guard exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
        for line in log_file.read_text().splitlines():
            if '"http.listening"' in line:
                return str(json.loads(line)["url"])
        time.sleep(POLL_S)
    raise AssertionError(f"mcp-guard did not start listening:\n{log_file.read_text()[-3000:]}")


IDP_START_S = 30.0  # a real IdP prints its issuer within a second or two


def start_oidc_idp(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """tests/e2e/oidc_idp.mjs (npm oidc-provider) on ``args``: the process and the issuer it prints once it listens.

    The line is awaited at most IDP_START_S: a node process that neither listens nor exits (seen once in a full
    run: no socket, no output) is killed and started once more, so one stuck start is not a suite that hangs;
    a second failure is the test's error."""
    node = shutil.which("node")
    if node is None or not (E2E / "node_modules" / "oidc-provider").exists():
        pytest.fail("oidc-provider is missing: run `make peers` (tests/e2e/node_modules)")
    problem = ""
    for _attempt in range(2):
        proc = subprocess.Popen(
            [node, str(E2E / "oidc_idp.mjs"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a long-lived process: a pipe nobody reads would fill and stall it
            text=True,
            env={**os.environ, **env},
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], IDP_START_S)
        line = proc.stdout.readline() if ready else ""
        if line:
            return proc, str(json.loads(line)["issuer"])
        problem = f"exited ({proc.poll()}) before listening" if ready else f"no issuer within {IDP_START_S:g} s"
        proc.kill()
        proc.wait(10)
    raise AssertionError(f"the IdP did not start ({problem})")
