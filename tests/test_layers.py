"""The import layers of ``src/mcp_guard``: a module imports only from its own layer or a lower one.

Every module of the package is parsed with ``ast`` and every ``import`` counts — at module level, inside
functions (the lazy imports) and under ``if TYPE_CHECKING:`` alike, because a type-only import is still a
dependency of the design. The layers, lowest first, are written once, in ``LAYERS`` below; a new module
must be placed in one (the test fails for a module no layer claims).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mcp_guard"

# Lowest first. An entry names a module or a package (every module under it); the longest entry that
# matches a module decides its layer, so "mcp_guard.audit.commands" is CLI while "mcp_guard.audit" is not.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Plain values and plumbing every layer may use: no configuration, no I/O policy.
    # upstream.naming is pure name arithmetic (how exposed names are formed), which settings validation uses.
    (
        "foundation",
        (
            "mcp_guard",
            "mcp_guard.types",
            "mcp_guard.frozen",
            "mcp_guard.memo",
            "mcp_guard.errors",
            "mcp_guard.logging",
            "mcp_guard.streams",
            "mcp_guard.upstream.naming",
            "mcp_guard.metrics",
            "mcp_guard.pidfile",
        ),
    ),
    # The validated TOML configuration.
    ("settings", ("mcp_guard.settings", "mcp_guard.config_diff")),
    # The parts the proxy is made of, each usable on its own: policy engines, the audit store and its
    # readers, secrets, tool pins, the client channel seam, upstream connections and their registry. (Among
    # themselves they may import each other: secrets hands upstreams their Injections.)
    (
        "services",
        (
            "mcp_guard.policy",
            "mcp_guard.audit",
            "mcp_guard.secrets",
            "mcp_guard.pins",
            "mcp_guard.channel",
            "mcp_guard.state",
            "mcp_guard.upstream",
            "mcp_guard.approvals",
            "mcp_guard.telemetry",
        ),
    ),
    # The interceptor chain that governs one call, over the services.
    ("pipeline", ("mcp_guard.pipeline",)),
    # The client-facing MCP server: transports, auth, sessions, handlers.
    ("frontend", ("mcp_guard.frontend",)),
    # The composition root: the one module that builds everything above from settings.
    ("app", ("mcp_guard.app",)),
    # What builds a Guard or runs commands: the command line and the helpers shipped for tests.
    (
        "cli",
        (
            "mcp_guard.__main__",
            "mcp_guard.cli",
            "mcp_guard.commands",
            "mcp_guard.demo",
            "mcp_guard.audit.commands",
            "mcp_guard.policy.commands",
            "mcp_guard.approvals.commands",
            "mcp_guard.testing",
            "mcp_guard.ops_commands",
            "mcp_guard.scaffold",
        ),
    ),
)
APP = "mcp_guard.app"
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    return best[1] if best else None


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str) -> set[str]:
    """Every module of the package that ``module`` imports, anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            # ``from pkg import sub`` imports the submodule pkg.sub when there is one.
            subs = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(subs or {target})
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def test_every_module_has_a_layer() -> None:
    assert MODULES, f"no modules found under {SRC / PACKAGE}"
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"place these modules in LAYERS of tests/test_layers.py: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    mine = layer_of(module)
    if mine is None:
        pytest.skip("not placed (see test_every_module_has_a_layer)")
    upward = sorted(
        f"{target} ({layer_of(target)})"
        for target in imports_of(module)
        if (theirs := layer_of(target)) is not None and RANK[theirs] > RANK[mine]
    )
    assert not upward, f"{module} ({mine}) imports from a higher layer: {upward}"


def test_only_the_cli_layer_imports_the_composition_root() -> None:
    importers = sorted(m for m in MODULES if m != APP and APP in imports_of(m))
    assert importers, "nothing imports mcp_guard.app: the parser missed the CLI's imports"
    assert all(layer_of(m) == "cli" for m in importers), importers


def test_the_parser_sees_lazy_and_type_checking_imports() -> None:
    """A check of the checker: imports inside functions and TYPE_CHECKING blocks are found."""
    commands = imports_of("mcp_guard.commands")
    assert "mcp_guard.app" in commands  # only imported inside functions and under TYPE_CHECKING
    assert "mcp_guard.frontend.stdio" in imports_of("mcp_guard.app")  # only inside a function body
    assert "mcp_guard.policy" in imports_of("mcp_guard.app")  # under TYPE_CHECKING (and in a function body)
    assert layer_of("mcp_guard.audit.commands") == "cli" and layer_of("mcp_guard.audit.writer") == "services"
