"""Generated policy inputs for the decision cache's differential test (and bench/bench_decision_cache.py).

Each input is drawn from small pools — principals, server/tool pairs, arguments (paths, URLs, SQL, nested
and malformed values), tool annotations, secrets seen, rate-limit usage, flow states, listings and
results — so that many inputs share the fields a bundle reads (cache hits) while differing in others
(session, time, usage, flow history), and many differ in exactly one read field (misses that must not be
answered from memory). Seeded: the same corpus every run.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from mcp_guard.urlhost import url_table

__all__ = ["generated_inputs"]

PRINCIPALS: list[dict[str, Any]] = [
    {"id": "alice", "roles": [], "attributes": {}},
    {"id": "bob", "roles": [], "attributes": {}},
    {"id": "local-agent", "roles": [], "attributes": {}},
    {"id": "carol", "roles": ["tickets-admin"], "attributes": {}},
    {"id": "dave", "roles": ["analyst", "support"], "attributes": {"team": "x"}},
    {"id": "eve", "roles": "developer", "attributes": {}},  # malformed roles
    {"id": 42, "roles": ["developer"], "attributes": {}},  # malformed id
    {"id": "mallory", "roles": [], "attributes": {}},
    *([{"id": "local-agent", "roles": [], "attributes": {}}] * 6),
]

TARGETS: list[tuple[str, str]] = [
    ("tickets", "list_tickets"),
    ("tickets", "get_ticket"),
    ("tickets", "create_ticket"),
    ("tickets", "delete_ticket"),
    ("warehouse", "query"),
    ("warehouse", "list_tables"),
    ("files", "read_file"),
    ("files", "write_file"),
    ("filesystem", "read_text_file"),
    ("git", "git_status"),
    ("git", "git_commit"),
    ("fetch", "fetch"),
    ("memory", "read_graph"),
    ("memory", "delete_entities"),
    ("everything", "echo"),
    ("everything", "get-env"),
    ("time", "get_current_time"),
    ("unknown", "tool"),
]

ARGUMENTS: list[Any] = [
    {},
    {"id": 7},
    {"message": "hello"},
    {"title": "VPN", "body": "down"},
    {"sql": "SELECT region, sum(total) FROM orders GROUP BY region"},
    {"sql": "DELETE FROM orders"},
    {"query": "select 1; drop table x"},
    {"sql": "  \n\tSeLeCt 1 ;; "},
    {"path": "/srv/agent-workspace/notes.txt"},
    {"path": "/srv/agent-workspace/../../etc/passwd"},
    {"path": "/etc/passwd"},
    {"path": "file:///srv/agent-workspace/a.md"},
    {"paths": ["/srv/agent-workspace/a", "/srv/agent-workspace-evil/x"]},
    {"repo_path": "/srv/repos/app"},
    {"source": "/tmp/mcp-guard-demo/files/report.csv", "destination": "/etc/cron.d/x"},
    {"url": "https://example.com/page"},
    {"url": "https://evil.example.org/x"},
    {"url": "http://docs.python.org/3/"},
    {"url": "https://user:pw@example.com/"},
    {"url": "https://en.wikipedia.org/wiki/Rego"},
    {"href": "ftp://example.com/file"},
    {"nested": {"deep": [{"url": "https://pypi.org/simple"}, {"path": "/etc/shadow"}]}},
    {"token": "ghp_" + "a" * 36},
    {"n": 1.5, "flag": True, "none": None},
    {"list": [1, "two", {"three": 3}]},
]

ANNOTATIONS: list[Any] = [
    {},
    {"readOnlyHint": True},
    {"destructiveHint": True},
    {"openWorldHint": True},
    {"readOnlyHint": False, "destructiveHint": False},
    "not-an-object",
    *([{"readOnlyHint": True}] * 4),
]

SUSPICIOUS: list[Any] = [[]] * 12 + [["instructions_in_description"], "malformed"]
SECRETS: list[Any] = [[]] * 8 + [["github_token"], ["aws_access_key", "jwt"]]

FLOW_LABELS: list[Any] = [[], [], ["private"], ["untrusted"], ["private", "untrusted"], "private", None]

ACTIONS = ["tools/call"] * 30 + ["tools/list", "resources/read", "prompts/get", "resources/list", "bogus/action"]

RESULTS: list[dict[str, Any]] = [
    {"is_error": False, "content": [{"type": "text", "text": "all fine"}], "structured_content": None},
    {"is_error": False, "content": [{"type": "text", "text": "CONFIDENTIAL figures"}], "structured_content": None},
    {"is_error": False, "content": [{"type": "text", "text": "card 4111 1111 1111 1111"}], "structured_content": None},
    {
        "is_error": False,
        "content": [{"type": "text", "text": "-----BEGIN PRIVATE KEY-----\nabc"}],
        "structured_content": {"k": 1},
    },
    {"is_error": True, "content": [], "structured_content": {"n": "5555-5555-5555-4444"}},
]


def _flow(rng: random.Random, server: str, tool: str) -> dict[str, Any] | None:
    if rng.random() < 0.15:
        return None if rng.random() < 0.7 else {"labels": "malformed"}
    labels = rng.choice(FLOW_LABELS)
    labeled_by: dict[str, Any] = {}
    if isinstance(labels, list):
        for label in labels:
            labeled_by[label] = {"decision_id": f"d{rng.randrange(3)}", "server": "tickets", "tool": "get_ticket"}
    history = [
        {"server": server, "tool": tool, "action": "tools/call", "decision": "allow", "decision_id": f"h{rng.random()}"}
        for _ in range(rng.randrange(4))
    ]
    return {"id": f"f{rng.randrange(1000)}", "labels": labels, "labeled_by": labeled_by, "history": history}


def _one(rng: random.Random, *, results: bool) -> dict[str, Any]:
    server, tool = rng.choice(TARGETS)
    action = "tools/result" if results and rng.random() < 0.4 else rng.choice(ACTIONS)
    arguments = copy.deepcopy(rng.choice(ARGUMENTS))
    doc: dict[str, Any] = {
        "action": action,
        "principal": copy.deepcopy(rng.choice(PRINCIPALS)),
        "session": {"id": f"s{rng.randrange(10_000)}", "transport": rng.choice(["stdio", "http"])},
        "server": server if rng.random() > 0.03 else None,
        "tool": tool,
        "arguments": arguments if rng.random() > 0.03 else "not-an-object",
        "context": {
            "time": f"2026-12-01T03:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
            "secrets_seen": copy.deepcopy(rng.choice(SECRETS)),
            "usage": {f"tool_calls|x|{server}|{tool}": rng.randrange(400)},
            "urls": url_table(arguments) if rng.random() > 0.05 else {},
        },
        "tool_info": {
            "annotations": copy.deepcopy(rng.choice(ANNOTATIONS)),
            "definition_sha256": rng.choice(["d" * 64, "e" * 64]),
            "pinned": rng.random() > 0.1,
            "suspicious": copy.deepcopy(rng.choice(SUSPICIOUS)),
        },
    }
    flow = _flow(rng, server, tool)
    if flow is not None:
        doc["context"]["flow"] = flow
    if action == "tools/result":
        doc["result"] = dict(copy.deepcopy(rng.choice(RESULTS)), truncated=rng.random() < 0.1)
    return doc


def _variant(rng: random.Random, doc: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with one part replaced by ``fresh``'s: a part the default bundle does not read (session, time,
    usage, the flow's id and history) or one it does (principal, tool, arguments, annotations, labels)."""
    out = copy.deepcopy(doc)
    part = rng.choice(["session", "time", "usage", "history", "principal", "tool", "arguments", "tool_info", "flow"])
    if part in ("time", "usage"):
        out["context"][part] = fresh["context"][part]
    elif part == "history":
        flow = out["context"].get("flow")
        if isinstance(flow, dict):
            flow["id"], flow["history"] = f"f{rng.randrange(1000)}", [{"decision_id": str(rng.random())}]
    elif part == "flow":
        out["context"].pop("flow", None)
        if "flow" in fresh["context"]:
            out["context"]["flow"] = fresh["context"]["flow"]
    elif part == "arguments":
        out["arguments"], out["context"]["urls"] = fresh["arguments"], fresh["context"]["urls"]
    else:
        out[part] = fresh[part]
    return out


def generated_inputs(n: int, *, seed: int = 19, results: bool = False) -> list[dict[str, Any]]:
    """``n`` input documents; with ``results``, some are ``tools/result`` questions for a result rule. About
    half are variants of an earlier one differing in a single part, so keys repeat (see :func:`_variant`)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        fresh = _one(rng, results=results)
        out.append(_variant(rng, rng.choice(out), fresh) if out and rng.random() < 0.6 else fresh)
    return out
