"""The shadow bundle (``[policy] shadow_bundle``): a candidate decided alongside the enforcing policy.

This module only loads it; the pipeline stage that asks it and audits disagreements is
:mod:`mcp_guard.pipeline.shadow`. The candidate always runs in the embedded engine, whatever ``[policy]
engine`` is, with the same decision rule and ``timeout_ms``: it is mcp-guard's own dry run, needing no
second OPA. It is loaded at start like the enforcing bundle — a candidate that does not load, fails the
static check or (with ``[policy.signing]``) is not validly signed stops the start with an error naming
the file — and is not hot-reloaded: a new candidate is a restart, so the counters on ``/metrics`` always
describe one candidate revision.
"""

from __future__ import annotations

from mcp_guard.errors import ConfigError, PolicyError
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.signing import bundle_loader
from mcp_guard.settings import Settings

__all__ = ["load_shadow"]


def load_shadow(settings: Settings) -> EmbeddedEngine | None:
    """The candidate engine, or None without ``[policy] shadow_bundle``."""
    p = settings.policy
    if p.shadow_bundle is None:
        return None
    root = settings.resolve_path(p.shadow_bundle)
    if not root.is_dir():
        raise ConfigError(
            f"{root}: shadow bundle directory not found", file=settings.source, key="policy.shadow_bundle"
        )
    try:
        bundle = bundle_loader(settings)(root)
        return EmbeddedEngine(bundle, decision=p.decision, timeout_ms=p.timeout_ms)
    except PolicyError as e:
        raise PolicyError(f"policy.shadow_bundle: {e}") from None
