"""The default Rego bundle through a real proxy: each principal sees and calls only its role's tools, and a
denied call returns the policy's reasons without ever reaching the upstream (the recorder logs every call)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from e2e_support import REPO, guard_argv, recorder, write_config
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _bundle(tmp: Path) -> Path:
    """The default bundle's rules with roles for the recorder upstream."""
    bundle = tmp / "bundle"
    shutil.copytree(REPO / "policies" / "rego", bundle)
    data = json.loads((bundle / "data.json").read_text())
    cfg = data["mcp_guard_config"]
    cfg["roles"] = {
        "echoer": {"grants": [{"server": "rec", "tools": ["echo", "slow"]}]},
        "adder": {"grants": [{"server": "rec", "tools": ["add", "echo"]}]},
    }
    cfg["principals"] = {"alice": ["echoer"], "bob": ["adder"]}
    cfg["blocked"] = [{"server": "rec", "tools": ["slow"], "reason": "slow is switched off today"}]
    (bundle / "data.json").write_text(json.dumps(data))
    for test in bundle.rglob("*_test.rego"):
        test.unlink()  # their fixtures assume the default data.json
    return bundle


def _client(cfg: Path, principal: str) -> Client:
    argv = guard_argv(cfg, "--principal", principal)
    return Client(
        StdioServerParameters(
            command=argv[0],
            args=argv[1:],
            cwd=str(REPO),
            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")},
        ),
        mode="legacy",
        read_timeout_seconds=60,
    )


async def test_roles_shape_what_each_principal_sees_and_calls(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    cfg = write_config(tmp_path, {"rec": recorder(log)}, bundle=_bundle(tmp_path))

    async with _client(cfg, "alice") as alice:
        names = {t.name for t in (await alice.list_tools()).tools}
        assert names == {"rec__echo"}  # slow is blocked outright, so it is not even listed
        assert not (await alice.call_tool("rec__echo", {"text": "hi"})).is_error
        r = await alice.call_tool("rec__add", {"a": 1, "b": 2})
        text = r.content[0].text  # type: ignore[union-attr]
        assert r.is_error and "Denied by mcp-guard" in text and "alice" in text
        r = await alice.call_tool("rec__slow", {"seconds": 0, "steps": 1})
        assert r.is_error and "slow is switched off today" in r.content[0].text  # type: ignore[union-attr]

    async with _client(cfg, "bob") as bob:
        assert {t.name for t in (await bob.list_tools()).tools} == {"rec__add", "rec__echo"}
        assert (await bob.call_tool("rec__add", {"a": 1, "b": 2})).structured_content == {"sum": 3}

    async with _client(cfg, "mallory") as mallory:  # no roles at all
        assert (await mallory.list_tools()).tools == []
        assert (await mallory.call_tool("rec__echo", {"text": "x"})).is_error

    calls = [json.loads(line)["name"] for line in log.read_text().splitlines() if '"tools/call"' in line]
    assert sorted(calls) == ["add", "echo"]  # alice's echo and bob's add; no denied call arrived
