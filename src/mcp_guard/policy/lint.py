"""A static check of a Rego bundle, so the embedded engine never loads what OPA's compiler rejects.

regorus parses a bundle but checks far less than OPA's compiler; some of what it lets through is a
silent fail-open. The case that started this: a helper *function* ``at(inp, t) := …`` added to the
package made ``walk(arguments, [at, leaf])`` in another file compare against the function instead of
binding a new variable ``at``, so the rule producing every string argument was always empty and every
path, URL and SQL rule was off. OPA rejects that bundle (``undefined ref: data.mcp_guard.at``); regorus
loaded it. This module re-does, on the AST regorus produces (``Engine.get_ast_as_json``), the checks of
OPA's compiler that regorus skips or only does when a rule happens to be evaluated:

* name resolution: a function used as a value; a ``some`` variable named like a rule or import (OPA
  declares a new local, regorus reads the rule); an import alias that is also a rule (OPA and regorus
  pick different ones); ``with rule as …`` on a bare rule name (regorus cannot replace it);
  ``input``/``data`` shadowed by arguments, ``some`` or imports; a called function shadowed by a local
  variable; a keyword after a dot (``input.default``); ``import rego.vN``; duplicate import aliases;
* safety: variables used but bound nowhere (also inside ``not``, comprehensions, ``every``, ``with``
  values and rule heads), ``_`` where a value is needed, declared-but-unused ``some``/``every``
  variables, ``:=`` after a use or a declaration of the same name, ``:=`` to a non-variable;
* calls: undefined functions, arity, deprecated builtins, void functions used as values, and (for the
  embedded engine) builtins regorus does not implement;
* types, where they are known statically: builtin argument types, arithmetic operands, ``==``/``=``
  between values of disjoint types, ``some … in`` over a non-collection, refs into scalars or missing
  keys of literal objects (OPA's type checker; input and base data are untyped, as in OPA without a
  schema);
* rule structure: conflicting kinds (complete / multi-value / function / different arities), a rule
  whose path extends another's, several ``default`` rules, a default value with variables, refs or
  calls, several bodies ``{…} {…}`` on one rule (regorus gives the second body the value ``true``);
* recursion between rules or functions (a recursive function crashes regorus with a stack overflow).

What the check cannot see is listed in the README's security section: mainly the inference of function
argument types from their bodies, unification of two unbound variables, and safety that depends on
OPA re-ordering a body in a cycle. Each finding names ``file:line:col`` and the rule it is in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import structlog

from mcp_guard.errors import PolicyError
from mcp_guard.policy.builtins import Builtin, BuiltinTable, builtin_table

log = structlog.get_logger(__name__)

__all__ = [
    "Finding",
    "LintCode",
    "PolicyCheckError",
    "RuleGraph",
    "RuleNode",
    "ast_tag",
    "check_compiled",
    "dotted_ref",
    "lint_ast",
    "lint_modules",
    "ref_chain",
]

Node = dict[str, Any]
Severity = Literal["error", "warning"]


class LintCode(StrEnum):
    """What a finding is about (stable names for tests and ``policy check --json``)."""

    UNDEFINED_REF = "undefined-ref"
    UNSAFE_VAR = "unsafe-var"
    UNUSED_VAR = "unused-var"
    REDECLARED_VAR = "redeclared-var"
    INVALID_ASSIGN = "invalid-assign"
    SHADOWED = "shadowed"
    DIVERGENT_NAME = "divergent-name"
    UNDEFINED_FUNCTION = "undefined-function"
    ARITY = "arity"
    TYPE = "type-error"
    DEPRECATED = "deprecated-builtin"
    EMBEDDED_BUILTIN = "embedded-builtin"
    VOID_VALUE = "void-value"
    WITH_TARGET = "with-target"
    CONFLICT = "conflicting-rules"
    DEFAULT = "default-rule"
    MULTIPLE_BODIES = "multiple-bodies"
    RECURSION = "recursion"
    IMPORT = "import"
    KEYWORD = "keyword"
    RULE_AS_VARIABLE = "rule-as-variable"
    UNDECLARED_LOCAL = "undeclared-local"  # only with strict_locals (the default bundle's own rule)
    ELSE_VALUE = "else-value"  # embedded only: regorus evaluates it differently from OPA


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where, what, and in which rule (``data.<package>.<rule>``)."""

    file: str
    line: int
    col: int
    code: LintCode
    message: str
    rule: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f" (in rule {self.rule})" if self.rule else ""
        return f"{self.file}:{self.line}:{self.col}: {self.message}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": str(self.code),
            "message": self.message,
            "rule": self.rule,
            "severity": self.severity,
        }


KEYWORDS = frozenset(
    {"as", "contains", "default", "else", "every", "false", "if", "import", "in", "not", "null", "package"}
    | {"some", "true", "with"}
)
ROOTS = frozenset({"input", "data"})
FUTURE_KEYWORDS = frozenset({"contains", "every", "if", "in"})
_ARITH_BUILTIN = {"Add": "plus", "Sub": "minus", "Mul": "mul", "Div": "div", "Mod": "rem"}
_SET_OPS = {"Union": "or", "Intersection": "and"}


# ------------------------------------------------------------------------------------------- types
#
# A small model of OPA's types, enough to say "definitely incompatible": ANY is unknown (input, base
# data, most builtin results), and every check passes on anything that is not fully known.


class Ty:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _AnyT(Ty):
    def __str__(self) -> str:
        return "any"


ANY: Ty = _AnyT()


@dataclass(frozen=True, slots=True)
class Scalar(Ty):
    name: str  # null, boolean, number, string

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ArrT(Ty):
    static: tuple[Ty, ...] = ()
    dynamic: Ty | None = None

    def __str__(self) -> str:
        return "array"


@dataclass(frozen=True, slots=True)
class SetT(Ty):
    of: Ty | None = None  # None: the empty set (no element type)

    def __str__(self) -> str:
        return "set"


@dataclass(frozen=True, slots=True)
class ObjT(Ty):
    static: tuple[tuple[Any, Ty], ...] = ()
    dyn_key: Ty | None = None
    dyn_value: Ty | None = None

    def __str__(self) -> str:
        return "object"


@dataclass(frozen=True, slots=True)
class UnionT(Ty):
    members: tuple[Ty, ...]

    def __str__(self) -> str:
        return " or ".join(sorted({str(m) for m in self.members}))


NULL, BOOLEAN, NUMBER, STRING = Scalar("null"), Scalar("boolean"), Scalar("number"), Scalar("string")
_SCALARS = {"null": NULL, "boolean": BOOLEAN, "number": NUMBER, "string": STRING}
_COLLECTION_KINDS = (ArrT, SetT, ObjT)


def union(types: Iterable[Ty]) -> Ty:
    members: list[Ty] = []
    for t in types:
        if t is ANY:
            return ANY
        for m in t.members if isinstance(t, UnionT) else (t,):
            if m not in members:
                members.append(m)
    if not members:
        return ANY
    return members[0] if len(members) == 1 else UnionT(tuple(members))


def from_decl(decl: Any) -> Ty:
    """An OPA JSON type declaration (capabilities format) as a :class:`Ty`."""
    if not isinstance(decl, dict):
        return ANY
    kind = decl.get("type")
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "any":
        of = decl.get("of")
        return union(from_decl(d) for d in of) if of else ANY
    if kind == "array":
        dyn = decl.get("dynamic")
        return ArrT(tuple(from_decl(d) for d in decl.get("static") or ()), from_decl(dyn) if dyn else None)
    if kind == "set":
        return SetT(from_decl(decl.get("of")))
    if kind == "object":
        dyn = decl.get("dynamic")
        static = tuple((s.get("key"), from_decl(s.get("value"))) for s in decl.get("static") or ())
        if dyn:
            return ObjT(static, from_decl(dyn.get("key")), from_decl(dyn.get("value")))
        return ObjT(static)
    return ANY


def compatible(have: Ty, want: Ty) -> bool:
    """False only when no value of type ``have`` can be a value of type ``want``."""
    if have is ANY or want is ANY:
        return True
    if isinstance(have, UnionT):
        return any(compatible(m, want) for m in have.members)
    if isinstance(want, UnionT):
        return any(compatible(have, m) for m in want.members)
    if isinstance(have, Scalar) or isinstance(want, Scalar):
        return have == want
    if isinstance(have, ArrT) and isinstance(want, ArrT):
        if want.dynamic is None and have.dynamic is None and len(have.static) != len(want.static):
            return False
        for i, h in enumerate(have.static):
            w = want.static[i] if i < len(want.static) else want.dynamic
            if w is not None and not compatible(h, w):
                return False
        if have.dynamic is not None:
            wanted = [w for w in (*want.static, want.dynamic) if w is not None]
            return not wanted or any(compatible(have.dynamic, w) for w in wanted)
        return True
    if isinstance(have, SetT) and isinstance(want, SetT):
        return have.of is None or want.of is None or compatible(have.of, want.of)
    return bool(isinstance(have, ObjT) and isinstance(want, ObjT))


def _const_type(value: Any) -> Ty:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    return ANY


_NO_KEY = object()


def select(ty: Ty, key: Any, key_ty: Ty) -> Ty | None:
    """The type of ``x[key]`` for ``x: ty`` (``key`` is the constant, or ``_NO_KEY``); None when it is
    certainly undefined (OPA: ``undefined ref``)."""
    if ty is ANY:
        return ANY
    if isinstance(ty, UnionT):
        found = [t for t in (select(m, key, key_ty) for m in ty.members) if t is not None]
        return union(found) if found else None
    if isinstance(ty, Scalar):
        return None
    if isinstance(ty, ArrT):
        if not compatible(key_ty, NUMBER):
            return None
        if key is not _NO_KEY and isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < len(ty.static):
                return ty.static[key]
            return ty.dynamic
        items = [*ty.static, *([ty.dynamic] if ty.dynamic else [])]
        return union(items) if items else ANY
    if isinstance(ty, SetT):
        if ty.of is None:
            return ANY
        return ty.of if compatible(key_ty, ty.of) else None
    if isinstance(ty, ObjT):
        if key is not _NO_KEY:
            for k, v in ty.static:
                if k == key:
                    return v
            if ty.dyn_value is not None and (ty.dyn_key is None or compatible(key_ty, ty.dyn_key)):
                return ty.dyn_value
            return None
        values = [v for _, v in ty.static] + ([ty.dyn_value] if ty.dyn_value else [])
        return union(values) if values else ANY
    return ANY


def _elements(ty: Ty) -> tuple[Ty, Ty]:
    """(key type, value type) of ``some k, v in x`` for ``x: ty``."""
    if isinstance(ty, ArrT):
        items = [*ty.static, *([ty.dynamic] if ty.dynamic else [])]
        return NUMBER, union(items) if items else ANY
    if isinstance(ty, SetT):
        return (ty.of or ANY), (ty.of or ANY)
    if isinstance(ty, ObjT):
        values = [v for _, v in ty.static] + ([ty.dyn_value] if ty.dyn_value else [])
        keys = [_const_type(k) for k, _ in ty.static] + ([ty.dyn_key] if ty.dyn_key else [])
        return (union(keys) if keys else ANY), (union(values) if values else ANY)
    return ANY, ANY


def _is_collection(ty: Ty) -> bool:
    """False only if ``ty`` certainly holds no array, set or object."""
    if ty is ANY:
        return True
    if isinstance(ty, UnionT):
        return any(_is_collection(m) for m in ty.members)
    return isinstance(ty, _COLLECTION_KINDS)


# --------------------------------------------------------------------------------- the bundle model


def _tag(node: Any) -> tuple[str, Node]:
    """``{"Var": {...}}`` → ``("Var", {...})``."""
    if isinstance(node, dict) and len(node) == 1:
        ((k, v),) = node.items()
        if isinstance(v, dict):
            return k, v
    return "", {}


@dataclass(slots=True)
class _Module:
    file: str
    raw: bytes
    package: tuple[str, ...]
    imports: dict[str, tuple[str, ...]]  # alias -> path (data.…/input.…)
    ast: Node

    def text(self, span: Node) -> str:
        return self.raw[span["start"] : span["end"]].decode("utf-8", "replace")


@dataclass(slots=True)
class _RuleDef:
    module: _Module
    node: Node
    is_default: bool
    path: tuple[str | None, ...]  # the head's path in the package; None marks a non-constant segment
    kind: str  # complete, set, object, function, default
    arity: int
    line: int
    col: int

    @property
    def static(self) -> tuple[str, ...]:
        """The package path plus the head's constant prefix."""
        out: list[str] = []
        for p in self.path:
            if p is None:
                break
            out.append(p)
        return self.module.package + tuple(out)

    @property
    def name(self) -> str:
        return "data." + ".".join(self.static)

    @property
    def location(self) -> str:
        return f"{self.module.file}:{self.line}"


def _ref_chain(expr: Node) -> tuple[Node, list[tuple[Any, Node | None]]]:
    """``a.b[c]`` → (the root node, [(segment, index expr or None)]); a constant segment is its value,
    a non-constant one is ``_NO_KEY`` with its expression."""
    segments: list[tuple[Any, Node | None]] = []
    node = expr
    while True:
        tag, body = _tag(node)
        if tag == "RefDot":
            segments.append((body["field"][1], None))
            node = body["refr"]
        elif tag == "RefBrack":
            itag, ibody = _tag(body["index"])
            if itag in ("String", "RawString", "Number", "Bool", "Null"):
                segments.append((ibody["value"], None))
            else:
                segments.append((_NO_KEY, body["index"]))
            node = body["refr"]
        else:
            segments.reverse()
            return node, segments


def _head_path(refr: Node) -> tuple[str | None, ...]:
    root, segments = _ref_chain(refr)
    tag, body = _tag(root)
    first = str(body.get("value")) if tag == "Var" else "?"
    return (first, *(str(s) if s is not _NO_KEY and isinstance(s, str) else None for s, _ in segments))


def _dotted(expr: Node) -> list[str] | None:
    """``glob.match`` / ``data.x.f`` as segments, or None if the call target is not a plain dotted name."""
    root, segments = _ref_chain(expr)
    tag, body = _tag(root)
    if tag != "Var" or any(s is _NO_KEY or not isinstance(s, str) for s, _ in segments):
        return None
    return [str(body["value"]), *(str(s) for s, _ in segments)]


# ------------------------------------------------------------------------------------------ scopes


@dataclass(slots=True)
class _Scope:
    """The variables of one query (rule body, comprehension, ``every`` body) and its enclosing ones."""

    parent: _Scope | None
    bound: dict[str, Ty] = field(default_factory=dict)
    later: set[str] = field(default_factory=set)  # bound by a later literal (OPA re-orders bodies)
    assigned_later: dict[str, Node] = field(default_factory=dict)  # `:=` further down: name -> span
    declared: dict[str, str] = field(default_factory=dict)  # name -> "some" | ":=" | "some in"
    some_vars: dict[str, Node] = field(default_factory=dict)  # `some x` declarations (must be bound)
    used: set[str] = field(default_factory=set)  # names read or bound in this query so far

    def lookup(self, name: str) -> Ty | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.bound:
                return scope.bound[name]
            if name in scope.later:
                return ANY
            scope = scope.parent
        return None

    def lookup_bound(self, name: str) -> Ty | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.bound:
                return scope.bound[name]
            scope = scope.parent
        return None

    def mark_used(self, name: str) -> None:
        """Record a use in this query and the enclosing ones, up to the one the variable belongs to."""
        scope: _Scope | None = self
        while scope is not None:
            scope.used.add(name)
            if name in scope.bound or name in scope.declared:
                return
            scope = scope.parent


@dataclass(slots=True)
class _Ctx:
    rule: _RuleDef
    module: _Module


# ----------------------------------------------------------------------------------------- checker


class _Checker:
    def __init__(
        self, modules: list[_Module], *, embedded: bool, table: BuiltinTable, strict_locals: bool = False
    ) -> None:
        self.modules = modules
        self.embedded = embedded
        self.strict_locals = strict_locals
        self.table = table
        self.findings: list[Finding] = []
        self.defs: list[_RuleDef] = []
        self.by_package: dict[tuple[str, ...], dict[str, list[_RuleDef]]] = {}
        self.by_static: dict[tuple[str, ...], list[_RuleDef]] = {}
        self.deps: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        self._report = True
        self._seen: set[tuple[str, int, int, str]] = set()
        self._rule_types: dict[tuple[str, ...], Ty] = {}
        self._func_types: dict[tuple[str, ...], Ty] = {}
        self._inferring: set[tuple[str, ...]] = set()

    # -------------------------------------------------------------------------------- reporting

    def add(
        self,
        module: _Module,
        span: Node,
        code: LintCode,
        message: str,
        rule: _RuleDef | None = None,
        severity: Severity = "error",
    ) -> None:
        if not self._report:
            return
        key = (module.file, span["line"], span["col"], message)
        if key in self._seen:
            return
        self._seen.add(key)
        self.findings.append(
            Finding(module.file, span["line"], span["col"], code, message, rule.name if rule else None, severity)
        )

    # ------------------------------------------------------------------------------- collection

    def collect(self) -> None:
        for m in self.modules:
            self._check_module_header(m)
            for raw in m.ast.get("rules", []):
                tag, body = _tag(raw)
                d = self._rule_def(m, tag, body)
                if d is None:
                    continue
                self.defs.append(d)
                self.by_package.setdefault(m.package, {}).setdefault(str(d.path[0]), []).append(d)
                self.by_static.setdefault(d.static, []).append(d)

    def _check_module_header(self, m: _Module) -> None:
        for span, word in _dot_keywords([m.ast["package"], m.ast.get("rules", [])]):
            self.add(
                m,
                span,
                LintCode.KEYWORD,
                f'unexpected {word} keyword (a keyword cannot follow a dot; write ["{word}"])',
            )
        seen: dict[str, str] = {}
        for imp in m.ast.get("imports", []):
            path = _dotted(imp["refr"]) or []
            span = imp["span"]
            text = ".".join(path)
            if path[:1] == ["rego"] and path != ["rego", "v1"]:
                self.add(m, span, LintCode.IMPORT, f"invalid import `{text}`, must be `rego.v1`")
                continue
            if path[:1] == ["future"] and not _valid_future_import(path):
                self.add(
                    m,
                    span,
                    LintCode.IMPORT,
                    f"invalid import `{text}`: the future keywords are {', '.join(sorted(FUTURE_KEYWORDS))}",
                )
                continue
            if path[:1] not in (["data"], ["input"]):
                continue
            alias = m.text(imp["as"]) if imp.get("as") else path[-1]
            if imp.get("as") and alias in ROOTS:
                self.add(m, span, LintCode.SHADOWED, f"import alias {alias!r} would shadow {alias}")
                continue
            if alias in seen:
                self.add(m, span, LintCode.IMPORT, f"import must not shadow import {seen[alias]}")
                continue
            seen[alias] = text

    def _rule_def(self, m: _Module, tag: str, body: Node) -> _RuleDef | None:
        span = body.get("span", {"line": 0, "col": 0})
        if tag == "Default":
            path = _head_path(body["refr"])
            return _RuleDef(m, body, True, path, "default", len(body.get("args") or []), span["line"], span["col"])
        if tag != "Spec":
            return None
        htag, head = _tag(body["head"])
        path = _head_path(head["refr"])
        if htag == "Func":
            kind, arity = "function", len(head.get("args") or [])
        elif htag == "Set":
            kind, arity = "set", 0
        elif None in path:
            kind, arity = "object", 0
        else:
            kind, arity = "complete", 0
        return _RuleDef(m, body, False, path, kind, arity, span["line"], span["col"])

    # ------------------------------------------------------------------------------ resolution

    def package_names(self, m: _Module) -> dict[str, list[_RuleDef]]:
        return self.by_package.get(m.package, {})

    def functions_at(self, path: tuple[str, ...]) -> list[_RuleDef]:
        return [d for d in self.by_static.get(path, []) if d.kind == "function" and len(d.static) == len(path)]

    def rules_under(self, path: Sequence[str]) -> list[tuple[str, ...]]:
        """Static rule paths a ref with constant prefix ``path`` may read (for dependencies)."""
        p = tuple(path)
        return [k for k in self.by_static if k[: len(p)] == p or p[: len(k)] == k]

    def add_dep(self, ctx: _Ctx, path: Sequence[str]) -> None:
        if self._report:
            self.deps.setdefault(ctx.rule.static, set()).update(self.rules_under(path))

    # ------------------------------------------------------------------------ rule structure

    def check_structure(self) -> None:
        groups: dict[tuple[str, ...], list[_RuleDef]] = {}
        for d in self.defs:
            groups.setdefault(d.static, []).append(d)
        for path, defs in groups.items():
            self._check_group(path, defs)
        dynamic_free = {d.static for d in self.defs if d.kind in ("complete", "set", "function")}
        reported: set[tuple[str, ...]] = set()
        for d in self.defs:
            for prefix in (d.static[:i] for i in range(1, len(d.static))):
                if prefix in dynamic_free and prefix not in reported:
                    reported.add(prefix)
                    self.add(
                        d.module,
                        d.node["span"],
                        LintCode.CONFLICT,
                        f"rule data.{'.'.join(prefix)} conflicts with [{d.name}]",
                        d,
                    )

    def _check_group(self, path: tuple[str, ...], defs: list[_RuleDef]) -> None:
        name = "data." + ".".join(path)
        defaults = [d for d in defs if d.is_default]
        if len(defaults) > 1:
            where = ", ".join(d.location for d in defaults)
            self.add(
                defaults[1].module,
                defaults[1].node["span"],
                LintCode.DEFAULT,
                f"multiple default rules {name} found at {where}",
                defaults[1],
            )
        kinds: dict[tuple[str, int], _RuleDef] = {}
        for d in defs:
            kind = (d.kind, d.arity)
            if d.is_default:
                kind = ("function", d.arity) if d.arity else ("complete", 0)
            kinds.setdefault(kind, d)
        if len(kinds) > 1:
            second = sorted(kinds.values(), key=lambda d: (d.module.file, d.line))[1]
            described = ", ".join(
                f"{k}{f'/{a}' if k == 'function' else ''} at {d.location}" for (k, a), d in kinds.items()
            )
            self.add(
                second.module,
                second.node["span"],
                LintCode.CONFLICT,
                f"conflicting rules {name} found ({described})",
                second,
            )

    def check_recursion(self) -> None:
        graph = {k: sorted(v) for k, v in self.deps.items()}
        state: dict[tuple[str, ...], int] = {}
        reported: set[frozenset[tuple[str, ...]]] = set()
        for start in sorted(graph):
            if state.get(start):
                continue
            stack: list[tuple[tuple[str, ...], Iterator[tuple[str, ...]]]] = [(start, iter(graph.get(start, [])))]
            path = [start]
            state[start] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                    path.pop()
                    continue
                if state.get(nxt) == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        self._report_cycle(cycle)
                elif not state.get(nxt):
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, iter(graph.get(nxt, []))))

    def _report_cycle(self, cycle: list[tuple[str, ...]]) -> None:
        first = self.by_static[cycle[0]][0]
        text = " -> ".join("data." + ".".join(p) for p in cycle)
        self.add(first.module, first.node["span"], LintCode.RECURSION, f"rule {first.name} is recursive: {text}", first)

    # ------------------------------------------------------------------------------ rules

    def check_rules(self) -> None:
        for d in self.defs:
            self._check_rule(d)

    def _check_rule(self, d: _RuleDef) -> None:
        ctx = _Ctx(d, d.module)
        if d.is_default:
            self._check_default(ctx)
            return
        htag, head = _tag(d.node["head"])
        bodies = d.node.get("bodies") or []
        if sum(1 for b in bodies if not b.get("is_else")) > 1:
            self.add(
                d.module,
                d.node["span"],
                LintCode.MULTIPLE_BODIES,
                "a rule with several bodies `{…} {…}`: regorus gives the second body the value true, OPA the "
                "head's value; write one rule per body",
                d,
            )
        args_scope = _Scope(None)
        for arg in head.get("args") or []:
            self._bind_arg(ctx, arg, args_scope)
        if not bodies:
            self._check_head(ctx, htag, head, args_scope, head.get("assign"))
            return
        for b in bodies:
            scope = self._query(ctx, b["query"]["stmts"], args_scope)
            assign = b.get("assign") if b.get("is_else") else head.get("assign")
            self._check_head(ctx, htag, head, scope, assign)
            self._check_else_value(ctx, htag, head, b)

    def _check_else_value(self, ctx: _Ctx, htag: str, head: Node, body: Node) -> None:
        """``f(x) if {…} else := g(x)`` — a function whose head has no value (so ``true``) and an else
        with a computed one: when that value is undefined OPA leaves ``f`` undefined, regorus returns
        ``true`` (a silent fail-open for a check written this way). ``opa fmt`` produces this shape from
        ``f(x) := true if {…} else := g(x)``, so it is refused for the embedded engine; a constant else
        value, or ``else if {g(x)}``, behaves the same on both."""
        if not self.embedded or htag != "Func" or head.get("assign") is not None or not body.get("is_else"):
            return
        assign = body.get("assign")
        if assign is None or self._ground_literal(assign["value"]):
            return
        self.add(
            ctx.module,
            body["span"],
            LintCode.ELSE_VALUE,
            "a function without a head value (true) whose else has a computed value: when that value is "
            "undefined regorus returns true where OPA is undefined; write `else if { … }` or give the "
            "head a value (`:= true if`)",
            ctx.rule,
        )

    def _bind_arg(self, ctx: _Ctx, arg: Node, scope: _Scope) -> None:
        for name, span in self._pattern_vars(arg):
            if name in ROOTS:
                self.add(
                    ctx.module,
                    span,
                    LintCode.SHADOWED,
                    f"args must not shadow {name} (use a different variable name)",
                    ctx.rule,
                )
            scope.bound[name] = ANY
            scope.declared[name] = "arg"
        tag, _ = _tag(arg)
        if tag not in ("Var", "Array", "Object"):
            self._expr(ctx, arg, scope)

    def _check_head(self, ctx: _Ctx, htag: str, head: Node, scope: _Scope, assign: Node | None) -> Ty:
        for _, index in _ref_chain(head["refr"])[1]:
            if index is not None:
                self._expr(ctx, index, scope)
        if htag == "Set" and head.get("key") is not None:
            return SetT(self._expr(ctx, head["key"], scope))
        if assign is not None:
            return self._expr(ctx, assign["value"], scope)
        return BOOLEAN

    def _check_default(self, ctx: _Ctx) -> None:
        node = ctx.rule.node
        for arg in node.get("args") or []:
            for name, span in self._pattern_vars(arg):
                self.add(
                    ctx.module, span, LintCode.DEFAULT, f"illegal default rule (argument {name} must be _)", ctx.rule
                )
        problem = self._non_ground(node["value"])
        if problem:
            self.add(
                ctx.module,
                node["span"],
                LintCode.DEFAULT,
                f"illegal default rule (value cannot contain {problem})",
                ctx.rule,
            )

    def _non_ground(self, expr: Node) -> str | None:
        tag, body = _tag(expr)
        if tag == "Var":
            return "var"
        if tag in ("RefDot", "RefBrack"):
            return "ref"
        if tag == "Call":
            return "call"
        if tag in ("ArrayCompr", "SetCompr", "ObjectCompr"):
            return None
        for child in _children(body):
            found = self._non_ground(child)
            if found:
                return found
        return None

    # ---------------------------------------------------------------------------- queries

    def _query(self, ctx: _Ctx, stmts: list[Node], outer: _Scope | None, extra: dict[str, Ty] | None = None) -> _Scope:
        scope = _Scope(outer)
        if extra:
            scope.bound.update(extra)
        for stmt in stmts:
            self._collect_binders(ctx, stmt["literal"], scope)
        for stmt in stmts:
            self._literal(ctx, stmt, scope)
        for name, span in scope.some_vars.items():
            if name not in scope.bound:
                used = name in scope.used
                self.add(
                    ctx.module,
                    span,
                    LintCode.UNSAFE_VAR if used else LintCode.UNUSED_VAR,
                    f"var {name} is unsafe" if used else f"declared var {name} unused",
                    ctx.rule,
                )
        return scope

    def _is_rule_or_import(self, ctx: _Ctx, name: str) -> bool:
        return name in self.package_names(ctx.module) or name in ctx.module.imports

    def _free(self, ctx: _Ctx, scope: _Scope, name: str) -> bool:
        """Would a variable ``name`` in an output position here be a new binding?"""
        if name == "_" or name in ROOTS:
            return False
        if scope.lookup_bound(name) is not None:
            return False
        return not self._is_rule_or_import(ctx, name) or self._declared(scope, name)

    @staticmethod
    def _declared(scope: _Scope, name: str) -> bool:
        s: _Scope | None = scope
        while s is not None:
            if name in s.declared:
                return True
            s = s.parent
        return False

    def _collect_binders(self, ctx: _Ctx, literal: Node, scope: _Scope) -> None:
        """Pass 1 over a query: the names its output positions bind, so a use before the binding literal
        is safe (OPA re-orders), and the names ``:=`` declares further down."""
        tag, body = _tag(literal)
        names: list[tuple[str, Node]] = []
        if tag == "SomeVars":
            for span in body["vars"]:
                scope.declared.setdefault(ctx.module.text(span), "some")
            return
        if tag == "Expr":
            expr = body["expr"]
            etag, ebody = _tag(expr)
            if etag == "AssignExpr" and ebody["op"] == "ColEq":
                for name, span in self._pattern_vars(ebody["lhs"]):
                    scope.assigned_later.setdefault(name, span)
                names += self._ref_binders(ebody["rhs"])
            elif etag == "AssignExpr":
                names += self._pattern_vars(ebody["lhs"]) + self._pattern_vars(ebody["rhs"])
                names += self._ref_binders(ebody["lhs"]) + self._ref_binders(ebody["rhs"])
            elif etag == "Call":
                params = ebody["params"]
                if params and self._has_output_arg(ctx, ebody, scope):
                    names += self._pattern_vars(params[-1])
                for p in params:
                    names += self._ref_binders(p)
            else:
                names += self._ref_binders(expr)
        elif tag == "SomeIn":
            names += self._ref_binders(body["collection"])
        for name, _ in names:
            if self._free(ctx, scope, name) or (name in scope.declared and scope.declared[name] == "some"):
                scope.later.add(name)

    def _has_output_arg(self, ctx: _Ctx, call: Node, scope: _Scope) -> bool:
        arity = self._call_arity(ctx, call, scope)
        return arity is not None and len(call["params"]) == arity + 1

    def _call_arity(self, ctx: _Ctx, call: Node, scope: _Scope) -> int | None:
        name = _dotted(call["fcn"])
        if not name:
            return None
        target = self._resolve_function(ctx, name)
        if isinstance(target, Builtin):
            return None if target.variadic is not None else target.arity
        if isinstance(target, list) and target:
            return target[0].arity
        return None

    @staticmethod
    def _data_path(ctx: _Ctx, name: list[str]) -> str:
        return ".".join(("data", *ctx.module.package, *name))

    @staticmethod
    def _arity_of(target: Builtin | list[_RuleDef] | None) -> int | None:
        if isinstance(target, Builtin):
            return None if target.variadic is not None else target.arity
        return target[0].arity if target else None

    def _pattern_vars(self, expr: Node) -> list[tuple[str, Node]]:
        """Variables a pattern (var, array or object of patterns) would bind; ``_`` excluded."""
        tag, body = _tag(expr)
        if tag == "Var":
            name = str(body["value"])
            return [] if name == "_" else [(name, body["span"])]
        if tag == "Array":
            return [v for item in body["items"] for v in self._pattern_vars(item)]
        if tag == "Object":
            return [v for _, _, value in body["fields"] for v in self._pattern_vars(value)]
        return []

    def _ref_binders(self, expr: Node) -> list[tuple[str, Node]]:
        """Variables in ref brackets (``x[k]`` binds ``k``), outside comprehensions."""
        tag, body = _tag(expr)
        out: list[tuple[str, Node]] = []
        if tag in ("ArrayCompr", "SetCompr", "ObjectCompr"):
            return out
        if tag == "RefBrack":
            out += self._pattern_vars(body["index"])
        for child in _children(body):
            out += self._ref_binders(child)
        return out

    # --------------------------------------------------------------------------- literals

    def _literal(self, ctx: _Ctx, stmt: Node, scope: _Scope) -> None:
        tag, body = _tag(stmt["literal"])
        for mod in stmt.get("with_mods") or []:
            self._with(ctx, mod, scope)
        if tag == "SomeVars":
            for span in body["vars"]:
                name = ctx.module.text(span)
                self._check_new_local(ctx, scope, name, span, "some")
                scope.some_vars[name] = span
        elif tag == "SomeIn":
            self._some_in(ctx, body, scope)
        elif tag == "Every":
            self._every(ctx, body, scope)
        elif tag == "NotExpr":
            etag, ebody = _tag(body["expr"])
            if etag == "Call":
                self._call(ctx, ebody, scope, statement=True, negated=True)
            else:
                self._expr(ctx, body["expr"], scope, negated=True)
        elif tag == "Expr":
            self._statement(ctx, body["expr"], scope)

    def _check_new_local(self, ctx: _Ctx, scope: _Scope, name: str, span: Node, how: str) -> None:
        """A name a ``some``, ``some … in``, ``every`` or ``:=`` introduces."""
        if name == "_":
            return
        if name in ROOTS:
            self.add(
                ctx.module,
                span,
                LintCode.SHADOWED,
                f"variables must not shadow {name} (use a different variable name)",
                ctx.rule,
            )
            return
        if how != ":=" and how != "every" and self._is_rule_or_import(ctx, name):
            what = self.describe_name(ctx.module, name)
            self.add(
                ctx.module,
                span,
                LintCode.DIVERGENT_NAME,
                f"`{how} {name}` names a local variable like {what}: OPA declares a new variable, regorus reads "
                "the rule; rename the variable",
                ctx.rule,
            )
        previous = scope.declared.get(name)
        if how == ":=" and previous is not None and name in scope.bound | scope.some_vars:
            word = "declared" if previous == "some" else "assigned"
            self.add(ctx.module, span, LintCode.REDECLARED_VAR, f"var {name} {word} above", ctx.rule)
        elif how == ":=" and name in scope.used:
            self.add(ctx.module, span, LintCode.REDECLARED_VAR, f"var {name} referenced above", ctx.rule)
        elif how == "some" and name in scope.some_vars:
            self.add(ctx.module, span, LintCode.REDECLARED_VAR, f"var {name} declared above", ctx.rule)
        if how != "every":  # every's variables belong to its own body, not to this query
            scope.declared[name] = how

    def describe_name(self, module: _Module, name: str) -> str:
        defs = self.package_names(module).get(name)
        if defs:
            d = defs[0]
            what = "function" if d.kind == "function" else "rule"
            return f"the {what} data.{'.'.join(module.package)}.{name} ({d.location})"
        return f"the import {'.'.join(module.imports[name])}"

    def _some_in(self, ctx: _Ctx, body: Node, scope: _Scope) -> None:
        coll = self._expr(ctx, body["collection"], scope)
        if not _is_collection(coll):
            self.add(
                ctx.module,
                body["span"],
                LintCode.TYPE,
                f"match error: some … in over a {coll}, not a collection",
                ctx.rule,
            )
        key_ty, value_ty = _elements(coll)
        for part, ty in ((body.get("key"), key_ty), (body["value"], value_ty)):
            if part is None:
                continue
            for name, span in self._pattern_vars(part):
                self._check_new_local(ctx, scope, name, span, "some")
            self._bind(ctx, part, ty, scope, declare=True)

    def _every(self, ctx: _Ctx, body: Node, scope: _Scope) -> None:
        domain = self._expr(ctx, body["domain"], scope)
        if not _is_collection(domain):
            self.add(
                ctx.module,
                body["span"],
                LintCode.TYPE,
                f"match error: every over a {domain}, not a collection",
                ctx.rule,
            )
        key_ty, value_ty = _elements(domain)
        extra: dict[str, Ty] = {}
        spans: list[tuple[str, Node]] = []
        for span, ty in ((body.get("key"), key_ty), (body["value"], value_ty)):
            if span is None:
                continue
            name = ctx.module.text(span)
            if name == "_":
                continue
            self._check_new_local(ctx, scope, name, span, "every")
            extra[name] = ty
            spans.append((name, span))
        inner = self._query(ctx, body["query"]["stmts"], scope, extra)
        for name, span in spans:
            if name not in inner.used:
                self.add(ctx.module, span, LintCode.UNUSED_VAR, f"declared var {name} unused", ctx.rule)

    def _with(self, ctx: _Ctx, mod: Node, scope: _Scope) -> None:
        target = mod["refr"]
        root_tag, root = _tag(_ref_chain(target)[0])
        ok = replaces_function = False
        name: list[str] | None = None
        resolved: Builtin | list[_RuleDef] | None = None
        if root_tag == "Var" and str(root["value"]) in ROOTS:
            ok = True
        else:
            name = _dotted(target)
            resolved = self._resolve_function(ctx, name) if name else None
            replaces_function = isinstance(resolved, Builtin) or bool(resolved)
            ok = replaces_function or bool(name and self._is_rule_or_import(ctx, name[0]))
            if ok and not replaces_function and name and name[0] in self.package_names(ctx.module):
                full = self._data_path(ctx, name)
                self.add(
                    ctx.module,
                    mod["span"],
                    LintCode.WITH_TARGET,
                    f"with {'.'.join(name)} as …: regorus cannot replace a rule named without its data path "
                    f"(an error when evaluated; OPA accepts it); write with {full} as …",
                    ctx.rule,
                )
        if not ok:
            self.add(
                ctx.module,
                mod["span"],
                LintCode.WITH_TARGET,
                "with keyword target must reference existing input, data, or a function",
                ctx.rule,
            )
        replacement = _dotted(mod["as"]) if replaces_function else None
        if replacement and scope.lookup(replacement[0]) is None:
            other = self._resolve_function(ctx, replacement)
            if other:  # a function replaced by another function: the arities must match
                if name and self._arity_of(resolved) != self._arity_of(other):
                    text = ".".join(name)
                    self.add(
                        ctx.module,
                        mod["span"],
                        LintCode.ARITY,
                        f"{text}: arity mismatch (replaced by {'.'.join(replacement)})",
                        ctx.rule,
                    )
                return
        self._expr(ctx, mod["as"], scope)

    def _statement(self, ctx: _Ctx, expr: Node, scope: _Scope) -> None:
        tag, body = _tag(expr)
        if tag == "AssignExpr" and body["op"] == "ColEq":
            ltag, _ = _tag(body["lhs"])
            rhs = self._expr(ctx, body["rhs"], scope)
            if ltag not in ("Var", "Array", "Object") or not self._is_pattern(body["lhs"]):
                self.add(
                    ctx.module,
                    body["span"],
                    LintCode.INVALID_ASSIGN,
                    f"cannot assign to {self._describe_expr(body['lhs'])}",
                    ctx.rule,
                )
                return
            for name, span in self._pattern_vars(body["lhs"]):
                self._check_new_local(ctx, scope, name, span, ":=")
            self._bind(ctx, body["lhs"], rhs, scope, declare=True)
        elif tag == "AssignExpr":
            self._unify(ctx, body, scope)
        elif tag == "Call":
            self._call(ctx, body, scope, statement=True)
        else:
            self._expr(ctx, expr, scope)

    def _is_pattern(self, expr: Node) -> bool:
        tag, body = _tag(expr)
        if tag == "Var":
            return True
        if tag == "Array":
            return all(self._is_pattern(i) or self._ground_literal(i) for i in body["items"])
        if tag == "Object":
            return all(self._is_pattern(v) or self._ground_literal(v) for _, _, v in body["fields"])
        return False

    def _ground_literal(self, expr: Node) -> bool:
        tag, _ = _tag(expr)
        return tag in ("String", "RawString", "Number", "Bool", "Null")

    @staticmethod
    def _describe_expr(expr: Node) -> str:
        tag, _ = _tag(expr)
        return {
            "Number": "number",
            "String": "string",
            "RawString": "string",
            "Bool": "boolean",
            "Null": "null",
            "RefDot": "ref",
            "RefBrack": "ref",
            "Call": "call",
        }.get(tag, tag.lower() or "expression")

    def _unify(self, ctx: _Ctx, body: Node, scope: _Scope) -> None:
        lhs, rhs = body["lhs"], body["rhs"]
        lfree = self._pattern_free(ctx, lhs, scope)
        rfree = self._pattern_free(ctx, rhs, scope)
        lty = ANY if lfree else self._expr(ctx, lhs, scope)
        rty = ANY if rfree else self._expr(ctx, rhs, scope)
        if not lfree and not rfree and not compatible(lty, rty):
            self.add(ctx.module, body["span"], LintCode.TYPE, f"match error: {lty} = {rty} can never hold", ctx.rule)
        if lfree:
            self._bind(ctx, lhs, rty, scope, declare=False)
        if rfree:
            self._bind(ctx, rhs, lty, scope, declare=False)

    def _pattern_free(self, ctx: _Ctx, expr: Node, scope: _Scope) -> bool:
        return any(self._free(ctx, scope, name) and name not in scope.bound for name, _ in self._pattern_vars(expr))

    def _bind(self, ctx: _Ctx, pattern: Node, ty: Ty, scope: _Scope, *, declare: bool) -> None:
        """Bind the variables of a pattern to (parts of) a value of type ``ty``; a part that is not a new
        variable is compared with the value instead."""
        tag, body = _tag(pattern)
        if tag == "Var":
            name = str(body["value"])
            if name == "_":
                return
            if declare or self._free(ctx, scope, name):
                if not declare:
                    self._undeclared_local(ctx, name, body["span"], scope)
                scope.bound[name] = ty
                scope.mark_used(name)
                return
            self._check_output_var(ctx, name, body["span"], scope)
            have = self._expr(ctx, pattern, scope)
            if not compatible(have, ty):
                self.add(
                    ctx.module,
                    body["span"],
                    LintCode.TYPE,
                    f"match error: {name} is {have}, the value here is {ty}",
                    ctx.rule,
                )
            return
        if tag == "Array":
            for i, item in enumerate(body["items"]):
                part = select(ty, i, NUMBER)
                self._bind(ctx, item, part if part is not None else ANY, scope, declare=declare)
            return
        if tag == "Object":
            for _, key, value in body["fields"]:
                ktag, kbody = _tag(key)
                const = kbody["value"] if ktag in ("String", "RawString", "Number", "Bool", "Null") else _NO_KEY
                kty = self._expr(ctx, key, scope)
                part = select(ty, const, kty)
                self._bind(ctx, value, part if part is not None else ANY, scope, declare=declare)
            return
        have = self._expr(ctx, pattern, scope)
        if not compatible(have, ty):
            self.add(
                ctx.module,
                body.get("span", {"line": 0, "col": 0}),
                LintCode.TYPE,
                f"match error: {have} here, the value is {ty}",
                ctx.rule,
            )

    def _undeclared_local(self, ctx: _Ctx, name: str, span: Node, scope: _Scope) -> None:
        """``strict_locals``: a new variable must be declared (``some``, ``:=``, ``some … in``), so that a
        rule or function added later under the same name cannot take it over."""
        if self.strict_locals and not self._declared(scope, name):
            self.add(
                ctx.module,
                span,
                LintCode.UNDECLARED_LOCAL,
                f"var {name} is bound here without a declaration; declare it with `some {name}` so a rule named "
                f"{name} added later cannot take it over",
                ctx.rule,
            )

    def _check_output_var(self, ctx: _Ctx, name: str, span: Node, scope: _Scope) -> None:
        """A variable in an output position that is not new: a rule or an import. A function is an
        error (OPA: undefined ref); a rule is legal Rego but rarely meant, so it is a warning."""
        if scope.lookup(name) is not None or name in ROOTS:
            return
        defs = self.package_names(ctx.module).get(name)
        if defs and all(d.kind != "function" for d in defs):
            self.add(
                ctx.module,
                span,
                LintCode.RULE_AS_VARIABLE,
                f"`{name}` here is {self.describe_name(ctx.module, name)}, not a new variable: this compares with the "
                "rule's value; rename the variable if a new one was meant",
                ctx.rule,
                severity="warning",
            )

    # ------------------------------------------------------------------------------ expressions

    def _expr(self, ctx: _Ctx, expr: Node, scope: _Scope, *, negated: bool = False) -> Ty:
        tag, body = _tag(expr)
        if tag in ("String", "RawString"):
            return STRING
        if tag == "Number":
            return NUMBER
        if tag == "Bool":
            return BOOLEAN
        if tag == "Null":
            return NULL
        if tag == "Var":
            return self._var(ctx, body, scope, negated=negated)
        if tag in ("RefDot", "RefBrack"):
            return self._ref(ctx, expr, scope, negated=negated)
        if tag == "Call":
            return self._call(ctx, body, scope, statement=False, negated=negated)
        if tag == "Array":
            return ArrT(tuple(self._expr(ctx, i, scope, negated=negated) for i in body["items"]))
        if tag == "Set":
            items = [self._expr(ctx, i, scope, negated=negated) for i in body["items"]]
            return SetT(union(items) if items else None)
        if tag == "Object":
            return self._object(ctx, body, scope, negated)
        if tag in ("ArrayCompr", "SetCompr"):
            inner = self._query(ctx, body["query"]["stmts"], scope)
            term = self._expr(ctx, body["term"], inner)
            return ArrT((), term) if tag == "ArrayCompr" else SetT(term)
        if tag == "ObjectCompr":
            inner = self._query(ctx, body["query"]["stmts"], scope)
            return ObjT((), self._expr(ctx, body["key"], inner), self._expr(ctx, body["value"], inner))
        if tag == "UnaryExpr":
            if _tag(body["expr"])[0] != "Number":
                self.add(
                    ctx.module, body["span"], LintCode.TYPE, "unary minus applies to number literals only", ctx.rule
                )
            self._expr(ctx, body["expr"], scope, negated=negated)
            return NUMBER
        if tag == "ArithExpr":
            return self._arith(ctx, body, scope, negated)
        if tag == "BinExpr":
            for side in ("lhs", "rhs"):
                ty = self._expr(ctx, body[side], scope, negated=negated)
                if not compatible(ty, SetT(ANY)):
                    name = _SET_OPS.get(body["op"], "set operator")
                    self.add(
                        ctx.module,
                        body["span"],
                        LintCode.TYPE,
                        f"{name}: invalid argument(s) ({ty}, expected set)",
                        ctx.rule,
                    )
            return SetT(ANY)
        if tag == "BoolExpr":
            lty = self._expr(ctx, body["lhs"], scope, negated=negated)
            rty = self._expr(ctx, body["rhs"], scope, negated=negated)
            if body["op"] == "Eq" and not compatible(lty, rty):
                self.add(
                    ctx.module, body["span"], LintCode.TYPE, f"match error: {lty} == {rty} can never hold", ctx.rule
                )
            return BOOLEAN
        if tag == "AssignExpr":
            if negated:
                for side in ("lhs", "rhs"):
                    self._expr(ctx, body[side], scope, negated=True)
            else:
                self._statement(ctx, expr, scope)
            return BOOLEAN
        if tag == "Membership":
            for part in ("key", "value"):
                if body.get(part) is not None:
                    self._expr(ctx, body[part], scope, negated=negated)
            self._expr(ctx, body["collection"], scope, negated=negated)
            return BOOLEAN
        for child in _children(body):  # pragma: no cover - every expression kind is handled above
            self._expr(ctx, child, scope, negated=negated)
        return ANY

    def _object(self, ctx: _Ctx, body: Node, scope: _Scope, negated: bool) -> Ty:
        static: list[tuple[Any, Ty]] = []
        dynamic = False
        keys: list[Ty] = []
        values: list[Ty] = []
        for _, key, value in body["fields"]:
            ktag, kbody = _tag(key)
            kty = self._expr(ctx, key, scope, negated=negated)
            vty = self._expr(ctx, value, scope, negated=negated)
            keys.append(kty)
            values.append(vty)
            if ktag in ("String", "RawString", "Number", "Bool", "Null"):
                static.append((kbody["value"], vty))
            else:
                dynamic = True
        if dynamic:
            return ObjT((), union(keys), union(values))
        return ObjT(tuple(static))

    def _arith(self, ctx: _Ctx, body: Node, scope: _Scope, negated: bool) -> Ty:
        op = body["op"]
        lty = self._expr(ctx, body["lhs"], scope, negated=negated)
        rty = self._expr(ctx, body["rhs"], scope, negated=negated)
        name = _ARITH_BUILTIN.get(op, "arithmetic")
        allowed: Ty = union([NUMBER, SetT(ANY)]) if op == "Sub" else NUMBER
        for ty in (lty, rty):
            if not compatible(ty, allowed):
                self.add(
                    ctx.module,
                    body["span"],
                    LintCode.TYPE,
                    f"{name}: invalid argument(s) ({ty}, expected {allowed})",
                    ctx.rule,
                )
                return ANY
        if op == "Sub" and (isinstance(lty, SetT) or isinstance(rty, SetT)):
            return SetT(ANY)
        if op == "Sub" and not (lty == NUMBER and rty == NUMBER):
            return ANY
        return NUMBER

    def _var(self, ctx: _Ctx, body: Node, scope: _Scope, *, negated: bool) -> Ty:
        name = str(body["value"])
        span = body["span"]
        if name == "_":
            self.add(ctx.module, span, LintCode.UNSAFE_VAR, "var _ is unsafe", ctx.rule)
            return ANY
        if name in ROOTS:
            if name == "data":
                self.add_dep(ctx, [])
            return ANY
        found = scope.lookup(name)
        if found is not None:
            scope.mark_used(name)
            return found
        if self._declared(scope, name) and name not in ctx.module.imports:
            scope.mark_used(name)
            if not self._is_rule_or_import(ctx, name):
                return ANY
        defs = self.package_names(ctx.module).get(name)
        if defs:
            return self._rule_ref(ctx, name, defs, span)
        if name in ctx.module.imports:
            path = ctx.module.imports[name]
            if path[0] == "data":
                self.add_dep(ctx, path[1:])
                if self.functions_at(path[1:]):
                    text = ".".join(path)
                    self.add(
                        ctx.module,
                        span,
                        LintCode.UNDEFINED_REF,
                        f"undefined ref: {text} (a function used as a value)",
                        ctx.rule,
                    )
            return ANY
        scope.mark_used(name)
        if self._assigned_below(scope, name):
            return ANY  # reported at the `:=` (var referenced above)
        self.add(ctx.module, span, LintCode.UNSAFE_VAR, f"var {name} is unsafe", ctx.rule)
        return ANY

    @staticmethod
    def _assigned_below(scope: _Scope, name: str) -> bool:
        s: _Scope | None = scope
        while s is not None:
            if name in s.assigned_later and name not in s.bound:
                return True
            s = s.parent
        return False

    def _rule_ref(self, ctx: _Ctx, name: str, defs: list[_RuleDef], span: Node) -> Ty:
        path = (*ctx.module.package, name)
        self.add_dep(ctx, path[:])
        if any(d.kind == "function" and d.static == path for d in defs):
            self.add(
                ctx.module,
                span,
                LintCode.UNDEFINED_REF,
                f"undefined ref: data.{'.'.join(path)} (a function, used here as a value or variable; a local "
                "variable must not be named like a function of the package)",
                ctx.rule,
            )
            return ANY
        return self._rule_type(path)

    def _ref(self, ctx: _Ctx, expr: Node, scope: _Scope, *, negated: bool) -> Ty:
        root, segments = _ref_chain(expr)
        rtag, rbody = _tag(root)
        ty: Ty
        static_path: list[str] | None = None
        if rtag == "Var":
            name = str(rbody["value"])
            if name == "data":
                static_path = []
                ty = ANY
            elif name == "input" or name == "_":
                ty = ANY
                if name == "_":
                    self.add(ctx.module, rbody["span"], LintCode.UNSAFE_VAR, "var _ is unsafe", ctx.rule)
            elif scope.lookup(name) is None and not self._declared(scope, name) and name in ctx.module.imports:
                path = ctx.module.imports[name]
                static_path = list(path[1:]) if path[0] == "data" else None
                ty = ANY
            elif (
                scope.lookup(name) is None
                and not self._declared(scope, name)
                and name in self.package_names(ctx.module)
            ):
                static_path = [*ctx.module.package, name]
                ty = ANY  # typed below once the constant part of the ref is known
            else:
                ty = self._var(ctx, rbody, scope, negated=negated)
        else:
            ty = self._expr(ctx, root, scope, negated=negated)
        # the constant prefix of a data ref decides which rules it reads
        consumed = 0
        if static_path is not None:
            for seg, _ in segments:
                if seg is _NO_KEY or not isinstance(seg, str):
                    break
                static_path.append(seg)
                consumed += 1
            self.add_dep(ctx, static_path)
            ty = self._data_type(ctx, static_path, rbody["span"])
        text_parts = [self._root_text(root, static_path)]
        for seg, index in segments[consumed:]:
            if index is not None:
                key_ty = self._index(ctx, index, scope, negated=negated)
                key: Any = _NO_KEY
            else:
                key, key_ty = seg, _const_type(seg)
            text_parts.append(
                f".{seg}" if isinstance(seg, str) and seg.isidentifier() else f"[{seg if seg is not _NO_KEY else '…'}]"
            )
            nxt = select(ty, key, key_ty)
            if nxt is None:
                self.add(
                    ctx.module,
                    _span_of(expr),
                    LintCode.UNDEFINED_REF,
                    f"undefined ref: {''.join(text_parts)}",
                    ctx.rule,
                )
                return ANY
            ty = nxt
        return ty

    @staticmethod
    def _root_text(root: Node, static_path: list[str] | None) -> str:
        if static_path is not None:
            return "data." + ".".join(static_path) if static_path else "data"
        tag, body = _tag(root)
        return str(body["value"]) if tag == "Var" else f"<{tag.lower()}>"

    def _data_type(self, ctx: _Ctx, path: list[str], span: Node) -> Ty:
        """The type of ``data.<path>``: a rule's when the path names a (single-segment) rule."""
        for pkg, names in self.by_package.items():
            n = len(pkg)
            if tuple(path[:n]) == pkg and len(path) > n and path[n] in names:
                defs = names[path[n]]
                full = (*pkg, path[n])
                if any(d.kind == "function" and d.static == full for d in defs):
                    self.add(
                        ctx.module,
                        span,
                        LintCode.UNDEFINED_REF,
                        f"undefined ref: data.{'.'.join(full)} (a function used as a value)",
                        ctx.rule,
                    )
                    return ANY
                ty = self._rule_type(full)
                for seg in path[n + 1 :]:
                    nxt = select(ty, seg, STRING)
                    if nxt is None:
                        self.add(
                            ctx.module, span, LintCode.UNDEFINED_REF, f"undefined ref: data.{'.'.join(path)}", ctx.rule
                        )
                        return ANY
                    ty = nxt
                return ty
        return ANY

    def _index(self, ctx: _Ctx, index: Node, scope: _Scope, *, negated: bool) -> Ty:
        """A non-constant ref index: a new variable there is bound (not inside ``not``)."""
        tag, body = _tag(index)
        if tag == "Var":
            name = str(body["value"])
            if name == "_" and not negated:
                return ANY
            if not negated and self._free(ctx, scope, name):
                self._undeclared_local(ctx, name, body["span"], scope)
                scope.bound[name] = ANY
                scope.mark_used(name)
                return ANY
        elif tag in ("Array", "Object") and not negated and self._pattern_free(ctx, index, scope):
            self._bind(ctx, index, ANY, scope, declare=False)
            return ANY
        return self._expr(ctx, index, scope, negated=negated)

    # ------------------------------------------------------------------------------ calls

    def _resolve_function(self, ctx: _Ctx, name: list[str]) -> Builtin | list[_RuleDef] | None:
        """What a call to ``name`` calls: package function(s) (possibly an empty list, meaning a name
        that is a rule, not a function), a builtin, or None (undefined)."""
        first = name[0]
        pkg_names = self.package_names(ctx.module)
        if first in pkg_names:
            path = (*ctx.module.package, *name)
            funcs = self.functions_at(path)
            if funcs:
                return funcs
            if len(name) == 1 or path in self.by_static:
                return []
        elif first in ctx.module.imports:
            imported = ctx.module.imports[first]
            if imported[0] == "data":
                return self.functions_at((*imported[1:], *name[1:])) or None
            return None
        elif first == "data":
            return self.functions_at(tuple(name[1:])) or None
        dotted = ".".join(name)
        return self.table.builtins.get(dotted)

    def _call(self, ctx: _Ctx, body: Node, scope: _Scope, *, statement: bool, negated: bool = False) -> Ty:
        params: list[Node] = body["params"]
        name = _dotted(body["fcn"])
        span = body["span"]
        if name is None:
            for p in params:
                self._expr(ctx, p, scope, negated=negated)
            return ANY
        text = ".".join(name)
        if scope.lookup(name[0]) is not None or (
            self._declared(scope, name[0]) and name[0] not in self.package_names(ctx.module)
        ):
            self.add(
                ctx.module, span, LintCode.SHADOWED, f"called function {text} shadowed by a local variable", ctx.rule
            )
            return ANY
        target = self._resolve_function(ctx, name)
        if target is None:
            full = text
            if name[0] in ctx.module.imports:
                full = ".".join((*ctx.module.imports[name[0]], *name[1:]))
            self.add(ctx.module, span, LintCode.UNDEFINED_FUNCTION, f"undefined function {full}", ctx.rule)
            for p in params:
                self._expr(ctx, p, scope, negated=negated)
            return ANY
        if isinstance(target, Builtin):
            return self._builtin_call(ctx, target, params, span, scope, statement=statement, negated=negated)
        return self._user_call(ctx, name, target, params, span, scope, statement=statement, negated=negated)

    def _user_call(
        self,
        ctx: _Ctx,
        name: list[str],
        funcs: list[_RuleDef],
        params: list[Node],
        span: Node,
        scope: _Scope,
        *,
        statement: bool,
        negated: bool,
    ) -> Ty:
        if name[0] in self.package_names(ctx.module):
            path = (*ctx.module.package, *name)
        elif name[0] in ctx.module.imports:
            path = (*ctx.module.imports[name[0]][1:], *name[1:])
        else:
            path = tuple(name[1:])
        self.add_dep(ctx, path)
        arity = funcs[0].arity if funcs else 0
        n = len(params)
        if n not in (arity, arity + 1) or (n == arity + 1 and not statement):
            s = "" if n == 1 else "s"
            self.add(
                ctx.module,
                span,
                LintCode.ARITY,
                f"function data.{'.'.join(path)} has arity {arity}, got {n} argument{s}",
                ctx.rule,
            )
            for p in params:
                self._expr(ctx, p, scope, negated=negated)
            return ANY
        for p in params[:arity]:
            self._expr(ctx, p, scope, negated=negated)
        result = self._function_type(path)
        if n == arity + 1:
            self._output(ctx, params[-1], result, scope, negated)
            return BOOLEAN
        return result

    def _builtin_call(
        self,
        ctx: _Ctx,
        b: Builtin,
        params: list[Node],
        span: Node,
        scope: _Scope,
        *,
        statement: bool,
        negated: bool,
    ) -> Ty:
        if b.name in self.table.deprecated:
            self.add(
                ctx.module,
                span,
                LintCode.DEPRECATED,
                f"deprecated built-in function calls in expression: {b.name}",
                ctx.rule,
            )
        elif self.embedded and b.name in self.table.embedded_missing:
            self.add(
                ctx.module,
                span,
                LintCode.EMBEDDED_BUILTIN,
                f'builtin {b.name} is not implemented by the embedded engine (regorus); use engine = "opa"',
                ctx.rule,
            )
        if b.variadic is not None:
            for p in params:
                self._expr(ctx, p, scope, negated=negated)
            if b.result is None and not statement:
                self.add(ctx.module, span, LintCode.VOID_VALUE, f"{b.name}(…) used as value", ctx.rule)
            return ANY if b.result is None else from_decl(b.result)
        n = len(params)
        void = b.result is None
        if n < b.arity or n > b.arity + 1 or (n == b.arity + 1 and (not statement or void)):
            self.add(ctx.module, span, LintCode.ARITY, f"{b.name}: arity mismatch (takes {b.arity}, got {n})", ctx.rule)
            for p in params:
                self._expr(ctx, p, scope, negated=negated)
            return ANY
        if void and not statement:
            self.add(ctx.module, span, LintCode.VOID_VALUE, f"{b.name}(…) used as value", ctx.rule)
        for i, (p, decl) in enumerate(zip(params, b.args, strict=False)):
            have = self._expr(ctx, p, scope, negated=negated)
            want = from_decl(decl)
            if not compatible(have, want):
                self.add(
                    ctx.module,
                    _span_of(p),
                    LintCode.TYPE,
                    f"{b.name}: invalid argument(s): argument {i + 1} is {have}, expected {want}",
                    ctx.rule,
                )
        result = from_decl(b.result) if b.result is not None else ANY
        if n == b.arity + 1:
            self._output(ctx, params[-1], result, scope, negated, builtin=b.name)
            return BOOLEAN
        return result

    def _output(
        self, ctx: _Ctx, pattern: Node, result: Ty, scope: _Scope, negated: bool, builtin: str | None = None
    ) -> None:
        """The extra last argument of a call: bound to (or compared with) the result."""
        if negated:
            self._expr(ctx, pattern, scope, negated=True)
            return
        before = len(self.findings)
        self._bind(ctx, pattern, result, scope, declare=False)
        if builtin and len(self.findings) > before:
            for i in range(before, len(self.findings)):
                f = self.findings[i]
                if f.code == LintCode.TYPE and f.message.startswith("match error"):
                    self.findings[i] = Finding(
                        f.file,
                        f.line,
                        f.col,
                        f.code,
                        f"{builtin}: invalid argument(s): {f.message}",
                        f.rule,
                        f.severity,
                    )

    # ------------------------------------------------------------------------------ rule types

    def _rule_type(self, path: tuple[str, ...]) -> Ty:
        if path in self._rule_types:
            return self._rule_types[path]
        defs = [d for d in self.by_static.get(path, []) if len(d.path) == 1]
        if not defs or path in self._inferring or any(d.kind in ("object", "function") for d in defs):
            return ANY
        self._inferring.add(path)
        saved = self._report
        self._report = False
        try:
            ty = union(self._def_value_types(d) for d in defs)
        finally:
            self._report = saved
            self._inferring.discard(path)
        if any(d.kind == "set" for d in defs):
            ty = SetT(ty)
        self._rule_types[path] = ty
        return ty

    def _function_type(self, path: tuple[str, ...]) -> Ty:
        if path in self._func_types:
            return self._func_types[path]
        defs = self.functions_at(path)
        if not defs or path in self._inferring:
            return ANY
        self._inferring.add(path)
        saved = self._report
        self._report = False
        try:
            ty = union(self._def_value_types(d) for d in defs)
        finally:
            self._report = saved
            self._inferring.discard(path)
        self._func_types[path] = ty
        return ty

    def _def_value_types(self, d: _RuleDef) -> Ty:
        if d.is_default:
            return self._expr(_Ctx(d, d.module), d.node["value"], _Scope(None))
        ctx = _Ctx(d, d.module)
        htag, head = _tag(d.node["head"])
        args_scope = _Scope(None)
        for arg in head.get("args") or []:
            for name, _ in self._pattern_vars(arg):
                args_scope.bound[name] = ANY
        bodies = d.node.get("bodies") or []
        if not bodies:
            return self._head_value(ctx, htag, head, args_scope, head.get("assign"))
        types = []
        for b in bodies:
            scope = self._query(ctx, b["query"]["stmts"], args_scope)
            assign = b.get("assign") if b.get("is_else") else head.get("assign")
            types.append(self._head_value(ctx, htag, head, scope, assign))
        return union(types)

    def _head_value(self, ctx: _Ctx, htag: str, head: Node, scope: _Scope, assign: Node | None) -> Ty:
        """The type of one definition's value (for a multi-value set rule: of its elements)."""
        if htag == "Set":
            return self._expr(ctx, head["key"], scope) if head.get("key") is not None else ANY
        if assign is not None:
            return self._expr(ctx, assign["value"], scope)
        return BOOLEAN


def _children(body: Node) -> Iterator[Node]:
    """The sub-expressions of an expression node's body (one level)."""
    for key, value in body.items():
        if key in ("span", "eidx", "field", "op", "value"):
            continue
        if isinstance(value, dict) and _tag(value)[0]:
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and _tag(item)[0]:
                    yield item
                elif isinstance(item, list):  # object fields: [span, key, value]
                    for part in item:
                        if isinstance(part, dict) and _tag(part)[0]:
                            yield part


def _valid_future_import(path: list[str]) -> bool:
    """``future.keywords`` or ``future.keywords.<keyword>`` (no-ops in Rego v1, still parsed)."""
    return path[:2] == ["future", "keywords"] and (len(path) == 2 or (len(path) == 3 and path[2] in FUTURE_KEYWORDS))


def _dot_keywords(node: Any) -> Iterator[tuple[Node, str]]:
    """Every ``x.<keyword>`` in a module (OPA's parser rejects them; regorus takes them as fields)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "RefDot" and isinstance(value, dict):
                field_span, word = value["field"]
                if word in KEYWORDS:
                    yield field_span, str(word)
            yield from _dot_keywords(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dot_keywords(item)


def _span_of(expr: Node) -> Node:
    _, body = _tag(expr)
    span = body.get("span")
    return span if isinstance(span, dict) else {"line": 0, "col": 0}


# ------------------------------------------------------------------------------------------- API


def _module(raw: Node) -> _Module | None:
    source = raw.get("source") or {}
    ast = raw.get("ast") or {}
    if not ast:
        return None
    package = tuple(_dotted(ast["package"]["refr"]) or ())
    m = _Module(str(source.get("file", "?")), str(source.get("contents", "")).encode("utf-8"), package, {}, ast)
    for imp in ast.get("imports", []):
        path = _dotted(imp["refr"]) or []
        if path[:1] in (["data"], ["input"]):
            alias = m.text(imp["as"]) if imp.get("as") else path[-1]
            if alias not in ROOTS:
                m.imports.setdefault(alias, tuple(path))
    return m


def lint_modules(
    raw_modules: list[Node],
    *,
    embedded: bool = True,
    strict_locals: bool = False,
    table: BuiltinTable | None = None,
) -> list[Finding]:
    """Check the modules of one compilation unit (as ``Engine.get_ast_as_json`` lists them).

    ``embedded`` adds the findings only the embedded engine has (builtins regorus lacks);
    ``strict_locals`` also requires every new variable to be declared (see :class:`LintCode`)."""
    modules = [m for m in (_module(r) for r in raw_modules) if m is not None]
    checker = _Checker(modules, embedded=embedded, table=table or builtin_table(), strict_locals=strict_locals)
    checker.collect()
    for m in modules:
        for alias in m.imports:
            if alias in checker.package_names(m):
                span = next(i["span"] for i in m.ast["imports"] if _import_alias(m, i) == alias)
                checker.add(
                    m,
                    span,
                    LintCode.DIVERGENT_NAME,
                    f"import alias {alias!r} is also {checker.describe_name(m, alias)}: OPA reads the import, "
                    "regorus the rule; rename one",
                )
    checker.check_structure()
    checker.check_rules()
    checker.check_recursion()
    return sorted(checker.findings, key=lambda f: (f.severity != "error", f.file, f.line, f.col))


def _import_alias(m: _Module, imp: Node) -> str:
    path = _dotted(imp["refr"]) or [""]
    return m.text(imp["as"]) if imp.get("as") else path[-1]


def lint_ast(ast_json: str, *, embedded: bool = True, strict_locals: bool = False) -> list[Finding]:
    """:func:`lint_modules` on the JSON text ``regorus.Engine.get_ast_as_json()`` returns."""
    return lint_modules(json.loads(ast_json), embedded=embedded, strict_locals=strict_locals)


class PolicyCheckError(PolicyError):
    """The bundle parses but fails the static check. The message is one line (the first errors);
    :attr:`findings` holds all of them, warnings included."""

    def __init__(self, findings: Sequence[Finding], *, shown: int = 3) -> None:
        self.findings = tuple(findings)
        errors = [f for f in self.findings if f.severity == "error"]
        text = "; ".join(str(f) for f in errors[:shown])
        more = f" (and {len(errors) - shown} more; `mcp-guard policy check` lists them)" if len(errors) > shown else ""
        super().__init__(f"policy check failed: {text}{more}")

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


def check_compiled(engine: Any, *, embedded: bool = True) -> list[Finding]:
    """Check what a ``regorus.Engine`` has loaded. Raises :class:`PolicyCheckError` on an error;
    returns (and logs) the warnings."""
    findings = lint_ast(engine.get_ast_as_json(), embedded=embedded)
    if any(f.severity == "error" for f in findings):
        raise PolicyCheckError(findings)
    for f in findings:
        log.warning("policy.check_warning", finding=str(f), code=str(f.code))
    return findings


# ------------------------------------------------------------------------------ analysis on the check's model


# The AST helpers the check reads nodes with, for analyses over the same AST (policy/reads.py).
ast_tag = _tag
ref_chain = _ref_chain
dotted_ref = _dotted


@dataclass(frozen=True, slots=True)
class RuleNode:
    """One rule definition, as the check sees it: its static path (package plus the head's constant prefix),
    where it is (``file:line (rule data.…)``) and its AST node."""

    path: tuple[str, ...]
    where: str
    node: Node


class RuleGraph:
    """The check's name resolution of one compilation unit, for analyses that must agree with it.

    The decision cache's read set (:mod:`mcp_guard.policy.reads`) has to follow exactly the rule references
    the check resolves — a rule, a function, a ``data`` ref, a dynamic ``data.pkg[x]`` that reaches every
    rule under the prefix — or it could miss a rule the decision depends on. So rather than a second
    resolver, this runs the check itself (its findings are the load-time check's business and are
    dropped) and exposes the dependency graph it builds, the rule definitions and the modules' imports.
    """

    def __init__(
        self, raw_modules: Sequence[Mapping[str, Any]], *, embedded: bool = True, table: BuiltinTable | None = None
    ) -> None:
        modules = [m for m in (_module(dict(r)) for r in raw_modules) if m is not None]
        checker = _Checker(modules, embedded=embedded, table=table or builtin_table())
        checker.collect()
        checker.check_rules()  # fills checker.deps
        self._checker = checker
        self.rules = tuple(RuleNode(d.static, f"{d.location} (rule {d.name})", d.node) for d in checker.defs)
        # (file, imported path) of every ``import data.…`` / ``import input.…``
        self.imports = tuple((m.file, path) for m in modules for path in m.imports.values())

    def reachable(self, root: Sequence[str]) -> set[tuple[str, ...]]:
        """Static paths of every rule a reference to ``root`` can reach, directly or through other rules."""
        todo = list(self._checker.rules_under(root))
        seen: set[tuple[str, ...]] = set()
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            todo.extend(self._checker.deps.get(path, ()))
        return seen
