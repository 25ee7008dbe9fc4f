"""Build the client-facing low-level MCP ``Server`` from the handlers."""

from __future__ import annotations

import warnings
from typing import Any

from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPDeprecationWarning

from mcp_guard import __version__
from mcp_guard.frontend.handlers import Handlers, flat_stamp
from mcp_guard.frontend.headers import tool_input_schema
from mcp_guard.frontend.listing import CACHE_HINTS

__all__ = ["build_server", "initialization_options"]


def build_server(h: Handlers) -> Server[Any]:
    # The SDK types each hook's result; ours return the upstream's raw dicts, which it passes through as they are.
    routes: dict[str, Any] = dict(h.routes())
    with warnings.catch_warnings():
        # logging/setLevel is deprecated in the 2026-07-28 era but part of the 2025-11-25 protocol we serve.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server: Server[Any] = Server(
            h.settings.server.name,
            version=__version__,
            instructions="mcp-guard: tools of several upstream servers, named '<upstream>"
            f"{h.settings.server.tool_separator}<tool>'. Every call is checked by policy and audited.",
            get_tool_input_schema=tool_input_schema(h.registry),  # Mcp-Param-* checks without a policy run
            cache_hints=CACHE_HINTS,  # listings: private, stale at once
            **routes,
        )
    for method, (params_type, handler) in h.methods().items():
        server.add_request_handler(method, params_type, handler)
    server.extensions = h.extensions()  # advertised under capabilities.extensions
    h.server_info_stamp = flat_stamp(server.server_info_stamp)  # 2026-07-28 results stamped by the handlers
    # No OpenTelemetry span per message on the hot path (it is a no-op without an exporter anyway).
    server.middleware = []
    return server


def initialization_options(server: Server[Any]) -> InitializationOptions:
    return server.create_initialization_options(
        NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
    )
