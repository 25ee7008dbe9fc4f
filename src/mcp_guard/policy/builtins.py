"""The Rego builtin functions OPA knows, with their signatures, and the ones regorus lacks.

:mod:`mcp_guard.policy.lint` checks calls against this table the way OPA's compiler does (undefined
function, arity, argument types, deprecated builtins), so the check does not need an OPA binary at load
time. The table is ``builtins.json`` next to this module, generated from a real OPA::

    python -m mcp_guard.policy.builtins /path/to/opa > src/mcp_guard/policy/builtins.json

``tests/policy/test_builtins.py`` regenerates it from the OPA that ``scripts/install-opa.sh`` builds and
fails if the shipped file differs, and probes the installed regorus for the ``embedded_missing`` list,
so neither can drift silently when OPA or regorus is upgraded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["Builtin", "BuiltinTable", "builtin_table", "generate_table", "probe_embedded_missing"]

# Deprecated builtins: OPA's v1 compiler rejects calls to them (capabilities still list them).
DEPRECATED = frozenset(
    {
        "all",
        "any",
        "cast_array",
        "cast_boolean",
        "cast_null",
        "cast_object",
        "cast_set",
        "cast_string",
        "net.cidr_overlap",
        "re_match",
        "set_diff",
    }
)
# Builtins OPA keeps for its own compiler's rewriting; a policy never calls them by name.
_INTERNAL_PREFIX = "internal."


@dataclass(frozen=True, slots=True)
class Builtin:
    """One builtin: argument type declarations (OPA's JSON type format), the result type (``None`` for a
    void function such as ``print``) and, for variadic ones, the type of every argument."""

    name: str
    args: tuple[Any, ...]
    result: Any | None
    variadic: Any | None = None

    @property
    def arity(self) -> int:
        return len(self.args)


@dataclass(frozen=True, slots=True)
class BuiltinTable:
    opa_version: str
    builtins: dict[str, Builtin]
    deprecated: frozenset[str]
    embedded_missing: frozenset[str]

    def namespaces(self) -> frozenset[str]:
        """Leading segments of dotted builtin names (``strings``, ``glob``…)."""
        return frozenset(n.split(".", 1)[0] for n in self.builtins if "." in n)


def _trim(decl: Any) -> Any:
    """OPA's type declaration without the documentation fields."""
    if isinstance(decl, dict):
        return {k: _trim(v) for k, v in decl.items() if k not in ("description", "name")}
    if isinstance(decl, list):
        return [_trim(v) for v in decl]
    return decl


def generate_table(opa: str, embedded_missing: list[str] | None = None) -> dict[str, Any]:
    """The table as JSON data, from ``opa capabilities --current`` and ``opa version``."""
    caps = json.loads(subprocess.run([opa, "capabilities", "--current"], capture_output=True, check=True).stdout)
    version_out = subprocess.run([opa, "version"], capture_output=True, text=True, check=True).stdout
    version = next((ln.split(":", 1)[1].strip() for ln in version_out.splitlines() if ln.startswith("Version:")), "")
    builtins: dict[str, Any] = {}
    for b in caps["builtins"]:
        name = b["name"]
        if name.startswith(_INTERNAL_PREFIX):
            continue
        decl = b.get("decl", {})
        entry: dict[str, Any] = {"args": _trim(decl.get("args", []))}
        if "result" in decl:
            entry["result"] = _trim(decl["result"])
        if "variadic" in decl:
            entry["variadic"] = _trim(decl["variadic"])
        builtins[name] = entry
    missing = probe_embedded_missing(builtins) if embedded_missing is None else embedded_missing
    return {
        "opa_version": version,
        "deprecated": sorted(DEPRECATED),
        "embedded_missing": sorted(missing),
        "builtins": dict(sorted(builtins.items())),
    }


def probe_embedded_missing(builtins: dict[str, Any]) -> list[str]:
    """The builtins the installed regorus does not implement (it reports them as unknown functions)."""
    import regorus

    missing = []
    for name, entry in builtins.items():
        args = ", ".join(["1"] * len(entry["args"]))
        engine = regorus.Engine()
        engine.set_rego_v0(False)
        try:
            engine.add_policy("probe.rego", f"package probe\n\nx := {name}({args})\n")
            engine.eval_rule("data.probe.x")
        except RuntimeError as e:
            if "could not find function" in str(e):
                missing.append(name)
    return sorted(missing)


@cache
def builtin_table() -> BuiltinTable:
    """The shipped table (loaded once)."""
    raw = json.loads(resources.files(__package__).joinpath("builtins.json").read_text(encoding="utf-8"))
    builtins = {
        name: Builtin(name, tuple(e["args"]), e.get("result"), e.get("variadic")) for name, e in raw["builtins"].items()
    }
    return BuiltinTable(
        opa_version=raw["opa_version"],
        builtins=builtins,
        deprecated=frozenset(raw["deprecated"]),
        embedded_missing=frozenset(raw["embedded_missing"]),
    )


def main(argv: list[str]) -> int:  # pragma: no cover - a maintenance tool
    if len(argv) != 1:
        print("usage: python -m mcp_guard.policy.builtins /path/to/opa > builtins.json", file=sys.stderr)
        return 2
    json.dump(generate_table(argv[0]), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
