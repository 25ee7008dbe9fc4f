"""The ``mcp-guard`` command line: argv → settings → the command that was asked for.

Each area of mcp-guard owns its subcommands in a ``commands`` module exposing
``register(subparsers)``; every subparser it adds sets ``func(args) -> int``. This module only
assembles them and turns errors into exit codes: 0 ok, 1 a check failed, 2 usage or config error.
An error the user can act on is one line, ``mcp-guard: error: …``, naming the file, key or port —
never a traceback, even when it surfaced through a task group.

``--config``/``-c`` is accepted before the subcommand and after it, at any depth
(``mcp-guard -c F tools pins`` and ``mcp-guard tools -c F pins`` and ``mcp-guard tools pins -c F``):
every parser declares it with ``default=SUPPRESS``, so a nested parser that did not see the option
leaves the value an outer one parsed alone instead of overwriting it with its own default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TypeVar

from mcp_guard.errors import ConfigError, MCPGuardError, PolicyError, SecretError
from mcp_guard.logging import configure_logging
from mcp_guard.settings import CONFIG_ENV, DEFAULT_CONFIG, Settings, find_config, load_settings

__all__ = ["add_config_arg", "config_hint", "load_config", "main"]

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "mcp_guard.commands",
    "mcp_guard.demo",
    "mcp_guard.audit.commands",
    "mcp_guard.policy.commands",
    "mcp_guard.approvals.commands",
    "mcp_guard.ops_commands",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_E = TypeVar("_E", bound=BaseException)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--config``/``-c`` option (read it with :func:`load_config`)."""
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})",
    )


def load_config(args: argparse.Namespace) -> Settings:
    """The settings named by ``--config`` wherever it was given (or found by the rules of docs/architecture.md §8.1)."""
    return load_settings(find_config(getattr(args, "config", None)))


def config_hint(settings: Settings) -> str:
    """`` -c FILE`` for a command line printed as advice, when the config is not the one found by default."""
    source = settings.source
    if not source or source in (str(DEFAULT_CONFIG), f"./{DEFAULT_CONFIG}"):
        return ""
    return f" -c {source}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-guard",
        description="A governed execution layer for MCP: policy, secrets and audit in front of every tool call.",
    )
    from mcp_guard import __version__

    parser.add_argument("--version", action="version", version=f"mcp-guard {__version__}")
    add_config_arg(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` if it is a ``kind``, else the first ``kind`` inside it when it is a (nested) exception group."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _report(err: MCPGuardError) -> int:
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"mcp-guard: error: {text}", file=sys.stderr)
    return EXIT_USAGE if isinstance(err, ConfigError | PolicyError | SecretError) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Warnings and errors only, on stderr, until a command asks for more (`run --log-level`): the debug
    # and info lines of the parts a command uses are not its output.
    configure_logging("warning")
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (MCPGuardError, BaseExceptionGroup) as e:
        err = _find(e, MCPGuardError)
        if err is not None:
            return _report(err)
        if _find(e, KeyboardInterrupt) is not None:
            return EXIT_INTERRUPTED
        raise
