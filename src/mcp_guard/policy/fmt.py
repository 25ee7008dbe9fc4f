"""``mcp-guard policy fmt``: Rego in OPA's canonical format, by OPA's own formatter.

The canonical format *is* whatever ``opa fmt`` prints (OPA documents no other definition), so a
formatter of our own could only ever approximate it, and one that differs on a single construct would
make ``fmt --check`` and OPA's CI disagree. mcp-guard therefore runs the ``opa`` binary when one is
found — ``$MCP_GUARD_OPA``, ``opa`` on ``PATH``, then ``scripts/install-opa.sh``'s cache
(``$MCP_GUARD_CACHE/bin/opa``, default ``~/.cache/mcp-guard/bin/opa``) — and otherwise refuses with a
message saying how to get one. Nothing else in mcp-guard needs OPA.

``opa fmt`` rewrites ``f(x) := true if {…} else := g(x)`` to ``f(x) if {…} else := g(x)``, a shape the
embedded engine evaluates differently (:class:`~mcp_guard.policy.lint.LintCode` ``ELSE_VALUE``); the
command re-checks the bundle after writing, so such a change is reported, not silently deployed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mcp_guard.errors import PolicyError

__all__ = ["FmtResult", "find_opa", "format_bundle"]

_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class FmtResult:
    opa: str  # the binary that formatted
    changed: tuple[Path, ...]  # files that were (write) or would be (check) reformatted


def find_opa() -> str | None:
    """The ``opa`` binary to format with, or None."""
    cache = Path(os.environ.get("MCP_GUARD_CACHE", Path.home() / ".cache" / "mcp-guard"))
    for candidate in (os.environ.get("MCP_GUARD_OPA"), shutil.which("opa"), str(cache / "bin" / "opa")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _opa() -> str:
    opa = find_opa()
    if opa is None:
        raise PolicyError(
            "policy fmt runs OPA's own formatter and no opa binary was found: set MCP_GUARD_OPA=/path/to/opa, "
            "put opa on PATH, or build one with scripts/install-opa.sh"
        )
    return opa


def format_bundle(root: Path, *, write: bool) -> FmtResult:
    """List (``write=False``) or rewrite in place (``write=True``) the ``.rego`` files under ``root``
    that are not in canonical format. A file that does not parse raises :class:`PolicyError` with
    OPA's ``file:line: message``."""
    if not root.exists():
        raise PolicyError(f"{root}: policy bundle directory not found")
    opa = _opa()
    changed = tuple(Path(ln.strip()) for ln in _run(opa, "--list", root).splitlines() if ln.strip())
    if write and changed:
        _run(opa, "--write", root)  # (`--list` with `--write` only lists)
    return FmtResult(opa, changed)


def _run(opa: str, mode: str, root: Path) -> str:
    try:
        done = subprocess.run(
            [opa, "fmt", mode, str(root)], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise PolicyError(f"{opa} fmt did not finish within {_TIMEOUT_S:.0f}s") from None
    except OSError as e:
        raise PolicyError(f"{opa}: cannot run: {e.strerror}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if "rego_" in ln] or done.stderr.strip().splitlines()
        raise PolicyError(f"opa fmt: {lines[0] if lines else f'exit status {done.returncode}'}")
    return done.stdout
