"""What a config reload changes: the plan :meth:`mcp_guard.app.Guard.reload` applies (docs/architecture.md §10).

A reload re-reads the whole file, but only three tables are applied while serving — ``[upstreams.*]``,
``[principals.*]`` and ``[secrets.*]`` — because the rest is built once at start (the listening socket,
the audit store, the policy engine, the HTTP front's security settings). :func:`plan_reload` compares
the running settings with the new ones and says, by name only (never a value: a principal's key digest
or a secret's command line are not for the log):

* which upstreams are added, removed or changed (any of its settings differs, or a secret it injects is
  configured differently), so the registry stops and starts exactly those;
* which principals and secrets changed;
* which other dotted keys changed and wait for a restart.

The plan also carries the *effective* settings: the running ones with the three reloadable tables
taken from the new file, validated again as a whole (an upstream name that the running tool separator
makes ambiguous is refused here, not discovered later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mcp_guard.settings import Settings, changed_keys, parse_settings

__all__ = ["RELOADABLE", "ReloadPlan", "plan_reload", "upstream_secrets"]

# The top-level tables a reload applies while serving; any other changed key waits for a restart.
RELOADABLE: tuple[str, ...] = ("upstreams", "principals", "secrets")


@dataclass(frozen=True)
class ReloadPlan:
    """The difference between the running config and a new one, and the settings to run with next."""

    effective: Settings
    upstreams_added: tuple[str, ...] = ()
    upstreams_removed: tuple[str, ...] = ()
    upstreams_changed: tuple[str, ...] = ()
    principals_changed: tuple[str, ...] = ()  # added, removed or any of its keys differs
    secrets_changed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()  # dotted keys outside RELOADABLE

    @property
    def stopped(self) -> tuple[str, ...]:
        """Upstreams whose connection ends: removed, or changed (restarted with the new settings)."""
        return tuple(sorted({*self.upstreams_removed, *self.upstreams_changed}))

    @property
    def started(self) -> tuple[str, ...]:
        """Upstreams given a new connection: added, or changed."""
        return tuple(sorted({*self.upstreams_added, *self.upstreams_changed}))

    @property
    def applies_anything(self) -> bool:
        return bool(self.stopped or self.started or self.principals_changed or self.secrets_changed)

    def details(self) -> dict[str, Any]:
        """What the ``config.reload`` row and log line say about the change: names only."""
        return {
            "upstreams_added": list(self.upstreams_added),
            "upstreams_removed": list(self.upstreams_removed),
            "upstreams_changed": list(self.upstreams_changed),
            "principals_changed": list(self.principals_changed),
            "secrets_changed": list(self.secrets_changed),
            "restart_required": list(self.restart_required),
        }


def upstream_secrets(settings: Settings, upstream: str) -> set[str]:
    """The secret names one upstream injects (env vars and header templates)."""
    up = settings.upstreams.get(upstream)
    if up is None:
        return set()
    names = set(up.inject_env.values())
    for template in up.inject_headers.values():
        names.update(re.findall(r"\{([^}]*)\}", template))
    return names


def _enabled(settings: Settings) -> dict[str, Any]:
    return {n: u for n, u in settings.upstreams.items() if u.enabled}


def _changed_names(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n)))


def plan_reload(running: Settings, new: Settings, *, rotated: frozenset[str] = frozenset()) -> ReloadPlan:
    """The plan for moving from ``running`` to ``new`` (both validated). ``rotated`` names secrets whose
    resolved value changed: an upstream injecting one is restarted so it gets the new value.

    Raises :class:`~mcp_guard.errors.ConfigError` (naming the new file) when the effective settings do not validate.
    """
    effective = _effective(running, new)
    secrets_changed = _changed_names(running.secrets, new.secrets)
    touched_secrets = set(secrets_changed) | set(rotated)
    old_up, new_up = _enabled(running), _enabled(effective)
    added = tuple(sorted(set(new_up) - set(old_up)))
    removed = tuple(sorted(set(old_up) - set(new_up)))
    changed = tuple(
        sorted(
            n
            for n in set(old_up) & set(new_up)
            if old_up[n] != new_up[n] or upstream_secrets(effective, n) & touched_secrets
        )
    )
    restart = tuple(k for k in changed_keys(running, new) if k.split(".", 1)[0] not in RELOADABLE)
    return ReloadPlan(
        effective=effective,
        upstreams_added=added,
        upstreams_removed=removed,
        upstreams_changed=changed,
        principals_changed=_changed_names(running.principals, new.principals),
        secrets_changed=secrets_changed,
        restart_required=restart,
    )


def _effective(running: Settings, new: Settings) -> Settings:
    """``running`` with the reloadable tables of ``new``, validated as one config (cross-references
    such as an upstream's secrets and the tool separator's ambiguity rules are checked again)."""
    data = running.model_dump(mode="python", exclude_none=False)
    fresh = new.model_dump(mode="python", exclude_none=False)
    for table in RELOADABLE:
        data[table] = fresh[table]
    if data.get("auth") is None:
        data.pop("auth", None)
    source = new.source or running.source or "<config>"
    return parse_settings(data, source=source, base_dir=new.base_dir or running.base_dir)
