"""A corpus of policy input documents for the default bundle (policies/rego).

Used by the differential test (embedded regorus vs a real OPA server must decide every input the
same way) and by bench/bench_policy.py. It covers allowed and denied calls, listings, every rule of
the bundle, edge cases (malformed principals, missing targets, non-object arguments) and each builtin
the bundle uses (glob.match, regex.match, regex.find_all_string_submatch_n, walk, split, replace,
trim_*, lower/upper, sprintf, concat, sort, object.get, object.union-free inputs, contains/startswith).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["CORPUS", "make_input"]

RO = {"readOnlyHint": True}
DESTRUCTIVE = {"destructiveHint": True}


def make_input(
    principal: str | None,
    server: Any,
    tool: Any,
    arguments: Any = None,
    *,
    action: Any = "tools/call",
    roles: Any = None,
    annotations: Any = None,
    suspicious: Any = None,
    secrets_seen: Any = None,
    usage: Any = None,
) -> dict[str, Any]:
    return {
        "action": action,
        "principal": {"id": principal, "roles": [] if roles is None else roles, "attributes": {}},
        "session": {"id": "s1", "transport": "stdio", "client": {"name": "corpus", "version": "1"}},
        "server": server,
        "tool": tool,
        "arguments": {} if arguments is None else arguments,
        "tool_info": {
            "annotations": {} if annotations is None else annotations,
            "definition_sha256": "d" * 64,
            "pinned": True,
            "suspicious": suspicious or [],
        },
        "context": {"time": "2026-11-25T12:00:00Z", "secrets_seen": secrets_seen or [], "usage": usage or {}},
    }


def _build() -> list[tuple[str, dict[str, Any]]]:
    c: list[tuple[str, dict[str, Any]]] = []

    def add(name: str, doc: dict[str, Any]) -> None:
        c.append((name, doc))

    # tickets: support may work tickets but not delete; admins may delete; analyst reads
    add("alice list_tickets", make_input("alice", "tickets", "list_tickets", {"status": "open"}, annotations=RO))
    add("alice get_ticket", make_input("alice", "tickets", "get_ticket", {"id": 7}, annotations=RO))
    add("alice create_ticket", make_input("alice", "tickets", "create_ticket", {"title": "VPN", "body": "down"}))
    add(
        "alice close_ticket",
        make_input("alice", "tickets", "close_ticket", {"id": 7}, annotations={"destructiveHint": False}),
    )
    add("alice delete_ticket", make_input("alice", "tickets", "delete_ticket", {"id": 7}, annotations=DESTRUCTIVE))
    add(
        "admin delete_ticket",
        make_input("carol", "tickets", "delete_ticket", {"id": 7}, roles=["tickets-admin"], annotations=DESTRUCTIVE),
    )
    add("bob get_ticket", make_input("bob", "tickets", "get_ticket", {"id": 7}, annotations=RO))
    add("bob create_ticket", make_input("bob", "tickets", "create_ticket", {"title": "x", "body": "y"}))
    add("bob whoami", make_input("bob", "tickets", "whoami", {}, annotations=RO))
    add(
        "local-agent delete_ticket",
        make_input("local-agent", "tickets", "delete_ticket", {"id": 1}, annotations=DESTRUCTIVE),
    )
    add("alice ticket resource", make_input("alice", "tickets", "ticket://recent", action="resources/read"))
    add("alice triage prompt", make_input("alice", "tickets", "triage", {"ticket_id": "7"}, action="prompts/get"))
    add("bob triage prompt", make_input("bob", "tickets", "triage", {"ticket_id": "7"}, action="prompts/get"))
    add("alice completion", make_input("alice", "tickets", "triage", {}, action="completion/complete"))
    # warehouse SQL
    for i, q in enumerate(
        [
            "SELECT region, sum(total) FROM orders GROUP BY region",
            "with t as (select 1 as x) select * from t;",
            "EXPLAIN QUERY PLAN SELECT * FROM customers",
            "select updated_at, created_by from orders",
            "DELETE FROM orders",
            "update customers set email = null",
            "SELECT 1; DROP TABLE orders",
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
            "select * into copy_orders from orders",
            "PRAGMA table_info(orders)",
            "  \n\tSeLeCt 1 ;; ",
            "",
            "select 'Ünïcödé' as s",
            "ATTACH DATABASE '/tmp/x.db' AS x",
        ]
    ):
        add(f"bob sql {i}", make_input("bob", "warehouse", "query", {"sql": q, "limit": 10}, annotations=RO))
    add("bob list_tables", make_input("bob", "warehouse", "list_tables", {}, annotations=RO))
    add("bob describe_table", make_input("bob", "warehouse", "describe_table", {"table": "orders"}, annotations=RO))
    add("bob list_tables no hint", make_input("bob", "warehouse", "list_tables", {}))
    add("alice warehouse", make_input("alice", "warehouse", "query", {"sql": "select 1"}, annotations=RO))
    add("bob sql statement arg", make_input("bob", "warehouse", "query", {"statement": "drop table x"}, annotations=RO))
    # files: paths
    for i, p in enumerate(
        [
            "/srv/agent-workspace/notes.txt",
            "/srv/agent-workspace",
            "/srv/agent-workspace/../../etc/passwd",
            "/srv/agent-workspace\\..\\secret",
            "/etc/passwd",
            "/srv/agent-workspace-evil/x",
            "relative/path.txt",
            "file:///srv/agent-workspace/a.md",
            "file:///etc/shadow",
            "/tmp/mcp-guard-demo/files/report.csv",
            "/srv/agent-workspace/a\u0000b",
            "/srv/agent-workspace/a..b",
        ]
    ):
        add(f"bob read path {i}", make_input("bob", "files", "read_text_file", {"path": p}, annotations=RO))
    add(
        "bob read_multiple",
        make_input(
            "bob",
            "files",
            "read_multiple_files",
            {"paths": ["/srv/agent-workspace/a", "/root/.bashrc"]},
            annotations=RO,
        ),
    )
    add(
        "bob write_file",
        make_input(
            "bob", "files", "write_file", {"path": "/srv/agent-workspace/a", "content": "x"}, annotations=DESTRUCTIVE
        ),
    )
    add(
        "dev write_file",
        make_input(
            "local-agent",
            "files",
            "write_file",
            {"path": "/srv/agent-workspace/a", "content": "x"},
            annotations=DESTRUCTIVE,
        ),
    )
    add(
        "dev move_file out",
        make_input(
            "local-agent",
            "filesystem",
            "move_file",
            {"source": "/srv/agent-workspace/a", "destination": "/tmp/a"},
            annotations=DESTRUCTIVE,
        ),
    )
    add(
        "dev git status",
        make_input("local-agent", "git", "git_status", {"repo_path": "/srv/repos/app"}, annotations=RO),
    )
    add(
        "dev git other repo", make_input("local-agent", "git", "git_log", {"repo_path": "/home/x/repo"}, annotations=RO)
    )
    add(
        "dev git reset",
        make_input("local-agent", "git", "git_reset", {"repo_path": "/srv/repos/app"}, annotations=DESTRUCTIVE),
    )
    # fetch: URLs
    for i, u in enumerate(
        [
            "https://docs.python.org/3/",
            "https://en.wikipedia.org/wiki/Open_Policy_Agent",
            "https://EXAMPLE.com:443/a?b=c#d",
            "http://docs.python.org/",
            "https://evil.example.net/",
            "https://example.com.evil.net/",
            "https://user:pw@docs.python.org/",
            "https://docs.python.org@evil.net/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]:8443/admin",
            "file:///etc/passwd",
            "//evil.net/x",
            "docs.python.org",
            "gopher://example.com/",
        ]
    ):
        add(f"alice fetch {i}", make_input("alice", "fetch", "fetch", {"url": u, "max_length": 5000}, annotations=RO))
    add("bob fetch", make_input("bob", "fetch", "fetch", {"url": "https://docs.python.org/"}, annotations=RO))
    # everything, memory, time
    add("dev echo", make_input("local-agent", "everything", "echo", {"message": "hi"}))
    add("dev get-env", make_input("local-agent", "everything", "get-env", {}))
    add("dev gzip", make_input("local-agent", "everything", "gzip-file-as-resource", {"data": "https://evil"}))
    add(
        "alice memory delete",
        make_input("alice", "memory", "delete_entities", {"entityNames": ["a"]}, annotations=DESTRUCTIVE),
    )
    add(
        "dev memory delete",
        make_input("local-agent", "memory", "delete_entities", {"entityNames": ["a"]}, annotations=DESTRUCTIVE),
    )
    add(
        "alice memory add",
        make_input("alice", "memory", "add_observations", {"observations": [{"entityName": "a", "contents": ["b"]}]}),
    )
    add("anyone time", make_input("nobody", "time", "get_current_time", {"timezone": "Europe/Paris"}, annotations=RO))
    add("anyone time no hint", make_input("nobody", "time", "get_current_time", {"timezone": "UTC"}))
    # listings
    add("list alice create_ticket", make_input("alice", "tickets", "create_ticket", action="tools/list"))
    add(
        "list alice delete_ticket",
        make_input("alice", "tickets", "delete_ticket", action="tools/list", annotations=DESTRUCTIVE),
    )
    add("list bob query", make_input("bob", "warehouse", "query", action="tools/list", annotations=RO))
    add("list alice query", make_input("alice", "warehouse", "query", action="tools/list", annotations=RO))
    add("list dev get-env", make_input("local-agent", "everything", "get-env", action="tools/list"))
    add("list resources", make_input("alice", "tickets", "ticket://recent", action="resources/list"))
    add("list templates", make_input("alice", "tickets", "ticket://{id}", action="resources/templates/list"))
    add("list prompts bob", make_input("bob", "tickets", "triage", action="prompts/list"))
    add("list with usage", make_input("alice", "tickets", "get_ticket", action="tools/list", usage={"x": 5000}))
    # caller and request edge cases
    add("no roles", make_input("mallory", "tickets", "list_tickets", annotations=RO))
    add("roles from input", make_input("dave", "warehouse", "list_tables", roles=["analyst"], annotations=RO))
    add("roles not a list", make_input("dave", "tickets", "list_tickets", roles="support", annotations=RO))
    add("roles mixed types", make_input("dave", "tickets", "list_tickets", roles=["support", 7, None], annotations=RO))
    add("principal id null", make_input(None, "time", "get_current_time", annotations=RO))
    add("unknown action", make_input("local-agent", "everything", "echo", action="sampling/createMessage"))
    add("action not string", make_input("local-agent", "everything", "echo", action=42))
    add("server null", make_input("local-agent", None, "echo"))
    add("tool null", make_input("local-agent", "everything", None))
    add("arguments not object", make_input("alice", "tickets", "get_ticket", "id=1", annotations=RO))
    add(
        "deeply nested args",
        make_input("bob", "files", "read_text_file", {"a": {"b": [{"path": "/etc/x"}]}}, annotations=RO),
    )
    add(
        "suspicious tool",
        make_input("local-agent", "everything", "echo", suspicious=["hidden-instructions", "exfil-url"]),
    )
    add(
        "secret in args",
        make_input(
            "alice", "tickets", "create_ticket", {"title": "t", "body": "AKIA..."}, secrets_seen=["aws_access_key"]
        ),
    )
    # rate limits: the obligation's keys (built with concat, the same in both engines) and usage input
    add(
        "rate limit usage",
        make_input("alice", "tickets", "get_ticket", {"id": 1}, annotations=RO, usage={"tool_calls|alice": 9}),
    )
    add("usage not object", make_input("alice", "tickets", "get_ticket", {"id": 1}, annotations=RO, usage="many"))
    add("rate key with separators", make_input("a|{server}", "time", "get_current_time", annotations=RO))
    add("rate limit on a resource read", make_input("alice", "tickets", "ticket://1", action="resources/read"))
    add(
        "annotations not object",
        make_input("alice", "tickets", "delete_ticket", {"id": 1}, annotations=["destructiveHint"]),
    )
    add("empty document", {})
    return c


CORPUS: list[tuple[str, dict[str, Any]]] = _build()


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """A deep copy of the corpus (callers may mutate inputs)."""
    return copy.deepcopy(CORPUS)
