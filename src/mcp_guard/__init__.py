"""mcp-guard."""
