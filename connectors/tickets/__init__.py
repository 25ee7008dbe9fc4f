"""Tickets: a company ticketing system as an MCP server (stdio), over a SQLite file with sample data.

Run: ``TICKETS_TOKEN=… python -m connectors.tickets [--db PATH] [--init]``

Environment
    TICKETS_TOKEN            required. The API credential the connector presents to its backend. Without
                             it the process exits with status 2 before serving. mcp-guard injects it with
                             ``inject_env = { TICKETS_TOKEN = "<secret name>" }``.
    TICKETS_EXPECTED_TOKEN   optional. When set, the backend accepts exactly this token. When unset, the
                             backend looks the token's SHA-256 up in the database's ``api_tokens`` table;
                             a new database enrols the token of the process that creates it.
    TICKETS_DB               database path (default ``<tmp>/mcp-guard-connectors/tickets.db``); created
                             with ~40 realistic tickets when missing.
    TICKETS_DEBUG_ECHO=1     test hook: ``whoami`` also returns the credential itself (raw split across
                             two text blocks, base64, base64url, hex, URL-encoded, JSON-escaped, as a
                             header, in structuredContent and in an embedded resource), and
                             "unauthorized" errors quote it. Lets tests prove a proxy scrubs it.
    TICKETS_TOOL_OVERRIDES   demo/test hook: path of a JSON file ``{"<tool>": {"description": "…",
                             "title": "…"}}`` applied to the tool definitions. The file is watched
                             (polled every 0.2 s, absent = no overrides); when it changes the server
                             sends ``notifications/tools/list_changed`` — a tool whose definition
                             changes under a running session ("rug pull"), for pinning demos.
    CONNECTOR_LOG_LEVEL      stderr log level (default WARNING). The token is never logged.

Every tools/call, resources/read and prompts/get is authenticated: a rejected credential gives a tool
result with ``isError=true`` starting ``unauthorized:`` (tools) or JSON-RPC error -32001 (resources,
prompts). Listing tools, resources and prompts needs no credential.

Tools: list_tickets, get_ticket, search_tickets, whoami (readOnlyHint); create_ticket, add_comment,
close_ticket (idempotent), delete_ticket (destructiveHint). Resources: ``ticket://recent`` and the
template ``ticket://{id}``. Prompt: ``triage(ticket_id)``.
"""

from connectors.tickets.server import TicketsServer, build_server, credential_encodings
from connectors.tickets.store import TicketStore, Unauthorized

__all__ = ["TicketStore", "TicketsServer", "Unauthorized", "build_server", "credential_encodings"]
