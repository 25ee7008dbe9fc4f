"""``mcp-guard approvals list|show|approve|deny``: operators decide parked calls from the command line.

The command opens the same approval store as the proxy (``[audit] state_path`` or ``dsn``), so a decision here
releases a call parked in a running proxy — another process, or another replica — within its poll interval.
``approve``/``deny`` act as a principal (``--as PRINCIPAL``, default ``$MCP_GUARD_OPERATOR``) whose
``[principals.<id>]`` roles must satisfy the approval's ``approvers``, and who is not the requester
(:mod:`mcp_guard.approvals.decide`). The audit store is opened first and the ``approval.granted``/``denied``
row is committed before the command reports success.

Exit codes: 0 done, 1 refused (unknown id, not pending, not an approver, the requester), 2 usage or config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from mcp_guard.approvals import OPEN, Approval, ApprovalStore, Status, Verdict, open_approvals
from mcp_guard.approvals.decide import ApprovalNotFound, DecisionRefused, decide
from mcp_guard.cli import add_config_arg, load_config
from mcp_guard.errors import ConfigError
from mcp_guard.frontend.auth import principal_for
from mcp_guard.settings import Settings
from mcp_guard.types import AuthInfo, Principal

__all__ = ["OPERATOR_ENV", "register"]

OPERATOR_ENV = "MCP_GUARD_OPERATOR"
_T = TypeVar("_T")


def register(sub: Any) -> None:
    """Add ``approvals`` and its subcommands to the CLI."""
    p = sub.add_parser("approvals", help="list and decide calls waiting for a human approval")
    add_config_arg(p)
    asub = p.add_subparsers(dest="approvals_command", metavar="SUBCOMMAND", required=True)

    ls = asub.add_parser("list", help="approvals, newest first (default: the open ones)")
    add_config_arg(ls)
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.add_argument("--all", action="store_true", help="every approval, decided and expired ones too")
    ls.set_defaults(func=_list)

    show = asub.add_parser("show", help="one approval in full")
    add_config_arg(show)
    show.add_argument("id", help="the approval id (from `approvals list`)")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.set_defaults(func=_show)

    for name, verdict in (("approve", Verdict.GRANT), ("deny", Verdict.DENY)):
        d = asub.add_parser(name, help=f"{name} a pending approval")
        add_config_arg(d)
        d.add_argument("id", help="the approval id (from `approvals list`)")
        d.add_argument("--as", dest="as_principal", metavar="PRINCIPAL", help=f"who decides (default ${OPERATOR_ENV})")
        d.add_argument("--comment", help="why (recorded in the audit trail, shown to the agent on a deny)")
        d.set_defaults(func=_decide, verdict=verdict)


def _list(args: argparse.Namespace) -> int:
    settings = load_config(args)
    statuses: Sequence[Status] | None = None if args.all else sorted(OPEN)
    found = anyio.run(_read, settings, lambda store: store.list(statuses))
    if args.json:
        print(json.dumps({"approvals": [a.to_dict() for a in found]}, indent=2))
        return 0
    if not found:
        print("no approvals" if args.all else "no open approvals")
        return 0
    for a in found:
        d = a.to_dict()
        print(f"{a.id}  {a.status:8s}  {a.principal}  {a.server}/{a.tool}  expires {d['expires_at']}  {a.reason}")
    return 0


def _show(args: argparse.Namespace) -> int:
    settings = load_config(args)
    found: Approval | None = anyio.run(_read, settings, lambda store: store.get(args.id))
    if found is None:
        print(f"mcp-guard: no approval {args.id!r}", file=sys.stderr)
        return 1
    doc = found.to_dict()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for key, value in doc.items():
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            print(f"{key:18s} {shown}")
    return 0


async def _read(settings: Settings, fn: Callable[[ApprovalStore], Awaitable[_T]]) -> _T:
    """``fn`` on the configured approval store, opened for this command only."""
    async with open_approvals(settings) as store:
        return await fn(store)


def _decide(args: argparse.Namespace) -> int:
    settings = load_config(args)
    who = args.as_principal or os.environ.get(OPERATOR_ENV)
    if not who:
        raise ConfigError(f"approvals {args.approvals_command}: say who decides: --as PRINCIPAL or ${OPERATOR_ENV}")
    approver = principal_for(settings, who, auth=AuthInfo(method="none"))
    return anyio.run(_decide_audited, settings, args, approver)


async def _decide_audited(settings: Settings, args: argparse.Namespace, approver: Principal) -> int:
    from mcp_guard.audit import open_sink

    async with open_sink(settings) as sink, open_approvals(settings) as store:
        try:
            decided = await decide(store, sink, args.id, args.verdict, approver, comment=args.comment, source="cli")
        except (ApprovalNotFound, DecisionRefused) as e:
            print(f"mcp-guard: {e}", file=sys.stderr)
            return 1
    what = "approved" if decided.status is Status.GRANTED else "denied"
    print(f"{what} {decided.id}: {decided.principal} → {decided.server}/{decided.tool} (by {approver.id})")
    return 0
