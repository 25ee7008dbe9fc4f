"""Subcommands for running mcp-guard as a service: ``reload`` and ``init`` (``--version`` is on the top parser).

``mcp-guard reload [-c F]`` sends SIGHUP to the process named in F's ``[server] pid_file`` and, unless
``--no-wait``, waits for that process's ``config.reload`` audit row and prints what it says: exit 0 when
the reload was applied (``ok`` or ``restart_required``), 1 when it was rejected or no row came in time,
2 for a config error (no ``pid_file`` configured). ``mcp-guard init DIR [--force]`` scaffolds a config,
the default bundle and the connector catalogue (:mod:`mcp_guard.scaffold`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mcp_guard.cli import add_config_arg, load_config
from mcp_guard.errors import ConfigError
from mcp_guard.settings import Settings
from mcp_guard.types import EventKind

__all__ = ["register"]

_POLL_S = 0.1


def register(sub: Any) -> None:
    reload = sub.add_parser("reload", help="reload the running proxy's config, secrets and policy (SIGHUP)")
    add_config_arg(reload)
    reload.add_argument("--no-wait", action="store_true", help="signal and return; do not wait for the outcome")
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the outcome")
    reload.add_argument("--json", action="store_true", help="print the config.reload row's details as JSON")
    reload.set_defaults(func=_reload)

    init = sub.add_parser("init", help="scaffold a config, the default policy bundle and the connector catalogue")
    init.add_argument("directory", type=Path, help="where to write them (created; must be empty)")
    init.add_argument("--force", action="store_true", help="write into a non-empty directory")
    init.set_defaults(func=_init)


# ------------------------------------------------------------------------------------------- reload
def _reload(args: argparse.Namespace) -> int:
    from mcp_guard.pidfile import signal_running

    settings = load_config(args)
    if settings.server.pid_file is None:
        raise ConfigError(
            "[server] pid_file is not set: the running proxy cannot be found (set it, restart, and retry; "
            "or send SIGHUP to the process yourself)",
            file=settings.source,
            key="server.pid_file",
        )
    after = None if args.no_wait else _audit_head(settings)
    pid = signal_running(settings.resolve_path(settings.server.pid_file))
    if args.no_wait:
        print(f"signalled mcp-guard (pid {pid}) to reload")
        return 0
    details = _wait_for_reload(settings, pid, after or 0, args.timeout)
    if details is None:
        print(f"mcp-guard (pid {pid}) was signalled; no config.reload row within {args.timeout:g}s")
        return 1
    if args.json:
        print(json.dumps(details, indent=2))
    else:
        print(_describe(pid, details))
    return 1 if details.get("status") == "rejected" else 0


def _audit_head(settings: Settings) -> int:
    """The newest audit row's seq (0 for a log that does not exist yet)."""
    from mcp_guard.audit import open_reader

    if settings.audit.backend == "sqlite" and not settings.resolve_path(settings.audit.path).exists():
        return 0
    with open_reader(settings) as reader:
        head = reader.head()
        return head.seq if head is not None else 0


def _wait_for_reload(settings: Settings, pid: int, after: int, timeout: float) -> dict[str, Any] | None:
    """The details of the first ``config.reload`` row after ``after`` written by process ``pid``."""
    from mcp_guard.audit import open_reader
    from mcp_guard.audit.reader import Filters, row_to_dict

    deadline = time.monotonic() + timeout
    with open_reader(settings, wait=True) as reader:
        while time.monotonic() < deadline:
            for row in reader.rows(Filters(after_seq=after, kinds=(str(EventKind.CONFIG_RELOAD),))):
                data = row_to_dict(row)
                after = max(after, int(data["seq"]))
                details = data.get("details") or {}
                if isinstance(details, dict) and details.get("pid") == pid:
                    return details
            time.sleep(_POLL_S)
    return None


def _describe(pid: int, d: dict[str, Any]) -> str:
    status = d.get("status")
    if status == "rejected":
        return f"mcp-guard (pid {pid}): reload rejected, the running config is unchanged: {d.get('error')}"
    policy = f"policy {d.get('policy')}, revision {d.get('policy_revision')}"
    lines = [f"mcp-guard (pid {pid}): reloaded ({status}); {policy}"]
    for key in ("upstreams_added", "upstreams_removed", "upstreams_changed", "principals_changed", "secrets_changed"):
        if d.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {', '.join(d[key])}")
    if d.get("restart_required"):
        lines.append(f"  needs a restart to take effect: {', '.join(d['restart_required'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- init
def _init(args: argparse.Namespace) -> int:
    from mcp_guard.scaffold import scaffold

    written = scaffold(args.directory, force=args.force)
    config = written[0]
    print(f"wrote {len(written)} entries under {args.directory}:")
    for path in written:
        print(f"  {path}")
    print(f"next: mcp-guard check -c {config}   then   mcp-guard run -c {config}")
    return 0
