"""``python -m mcp_guard`` is the ``mcp-guard`` command."""

from mcp_guard.cli import main

raise SystemExit(main())
