"""Site data over a bundle's ``data.json`` without forking the bundle: ``[policy] data_overlay``.

Each overlay file is a JSON object merged over the bundle's data document, in the order listed, as a
JSON Merge Patch (RFC 7386): objects merge key by key, recursively; ``null`` removes the key (a site
can drop a shipped role or principal); anything else (arrays, strings, numbers) replaces what was
there. Arrays replace rather than append so that a site can *narrow* a list (allowed roots, hosts) —
appending could only ever widen it. The merged document is what the engine evaluates and
what is pushed to OPA; it is validated by the bundle's ``data.schema.json`` (:mod:`.schema`), and
which file set a key is kept (:func:`provenance`) so a schema error names the file to fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcp_guard.errors import PolicyError
from mcp_guard.settings import Settings

__all__ = ["configured_overlays", "deep_merge", "provenance", "read_overlay"]


def configured_overlays(settings: Settings) -> tuple[Path, ...]:
    """``[policy] data_overlay``, each path resolved against the config file's directory."""
    return tuple(settings.resolve_path(p) for p in settings.policy.data_overlay)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (RFC 7386): objects recursively, ``null`` deletes,
    everything else replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            out[key] = deep_merge(old if isinstance(old, Mapping) else {}, value)
        else:
            out[key] = value
    return out


def read_overlay(path: Path) -> tuple[str, dict[str, Any]]:
    """The overlay's text and its document; one-line :class:`PolicyError` naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy.data_overlay file not found") from None
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy.data_overlay file: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{path}: a policy.data_overlay file must hold a JSON object (merged over data)")
    return text, doc


def _defines(doc: Any, path: Sequence[str | int]) -> bool:
    """Whether ``doc`` itself has a value at ``path`` (or at a prefix of it that replaces what is below)."""
    node = doc
    for part in path:
        if not isinstance(node, Mapping):
            return True  # a non-object here replaced everything below it
        if part not in node:
            return False
        node = node[part]
    return True


def provenance(path: Sequence[str | int], layers: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Which of ``layers`` (name, document), last wins, set the value at ``path``; the first layer's
    name (the bundle's data.json) when no later one did."""
    for name, doc in reversed(layers[1:]):
        if path and _defines(doc, path):
            return name
    return layers[0][0] if layers else ""
