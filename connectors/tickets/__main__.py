"""``python -m connectors.tickets``: serve the tickets connector on stdio (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio

from connectors._shared import data_path, serve_stdio, setup_logging
from connectors.tickets.server import TicketsServer, build_server
from connectors.tickets.store import TicketStore, Unauthorized, token_fingerprint

EXIT_NO_TOKEN = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.tickets", description="Tickets MCP server (stdio).")
    parser.add_argument("--db", type=Path, help="database path (default: $TICKETS_DB or a temp-dir file)")
    parser.add_argument("--init", action="store_true", help="create the database if missing, then exit")
    ns = parser.parse_args(argv)
    log = setup_logging("tickets")

    token = os.environ.get("TICKETS_TOKEN", "")
    if not token.strip():
        print(
            "tickets: refusing to start: TICKETS_TOKEN is not set. This connector needs an API credential; "
            "with mcp-guard, declare a [secrets.*] entry and inject it with "
            'inject_env = { TICKETS_TOKEN = "<secret name>" }.',
            file=sys.stderr,
            flush=True,
        )
        return EXIT_NO_TOKEN
    expected = os.environ.get("TICKETS_EXPECTED_TOKEN") or None
    path = ns.db or data_path("TICKETS_DB", "tickets.db")
    store = TicketStore(path, token, expected_token=expected)
    if store.ensure():
        how = "configured TICKETS_EXPECTED_TOKEN" if expected else f"enrolled token {token_fingerprint(token)}"
        log.info("created %s with sample data (%s)", path, how)
    try:
        store.authenticate("tickets:read")
    except Unauthorized as e:
        log.warning("the backend rejects this connector's credential (%s); every call will be unauthorized", e)
    if ns.init:
        return 0
    debug_echo = os.environ.get("TICKETS_DEBUG_ECHO", "") == "1"
    if debug_echo:
        log.warning("TICKETS_DEBUG_ECHO=1: whoami and errors echo the credential (test hook)")
    overrides = os.environ.get("TICKETS_TOOL_OVERRIDES") or None
    tickets = TicketsServer(
        store, token, debug_echo=debug_echo, overrides_path=Path(overrides).expanduser() if overrides else None
    )
    anyio.run(_serve, tickets)
    return 0


async def _serve(tickets: TicketsServer) -> None:
    async with anyio.create_task_group() as tg:
        if tickets.overrides_path is not None:
            tg.start_soon(tickets.watch_overrides)
        await serve_stdio(build_server(tickets), tools_changed=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
