"""The ``mcp-guard`` command line: argv → settings → the command that was asked for.

Each area of mcp-guard owns its subcommands in a ``commands`` module exposing
``register(subparsers)``; every subparser it adds sets ``func(args) -> int``. This module only
assembles them and turns errors into exit codes: 0 ok, 1 a check failed, 2 usage or config error
(with a message that names the file, key and problem — never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mcp_guard.errors import ConfigError, MCPGuardError, PolicyError, SecretError
from mcp_guard.settings import Settings, find_config, load_settings

__all__ = ["add_config_arg", "load_config", "main"]

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "mcp_guard.commands",
    "mcp_guard.demo",
    "mcp_guard.audit.commands",
    "mcp_guard.policy.commands",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="config file (default: $MCP_GUARD_CONFIG, else ./config/mcp-guard.toml, else built-in defaults)",
    )


def load_config(args: argparse.Namespace) -> Settings:
    """The settings named by ``args.config`` (or found by the DESIGN §3 rules)."""
    return load_settings(find_config(getattr(args, "config", None)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-guard",
        description="A governed execution layer for MCP: policy, secrets and audit in front of every tool call.",
    )
    from mcp_guard import __version__

    parser.add_argument("--version", action="version", version=f"mcp-guard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except (ConfigError, PolicyError, SecretError) as e:
        print(f"mcp-guard: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MCPGuardError as e:
        print(f"mcp-guard: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
