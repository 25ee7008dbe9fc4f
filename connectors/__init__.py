"""First-party reference MCP connectors for mcp-guard (runnable as ``python -m connectors.<name>``).

- :mod:`connectors.tickets`: a token-protected ticketing system over SQLite.
- :mod:`connectors.warehouse`: a read-only sales data warehouse over SQLite.
- ``connectors/catalog/*.toml``: ready-to-paste ``[upstreams.*]`` tables for well-known MCP servers.

They depend only on the MCP SDK (``mcp``, ``mcp_types``), anyio and the standard library.
"""
