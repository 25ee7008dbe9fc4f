"""Why a Rego test failed: the first expression of its body that does not hold, with its file:line.

regorus has no evaluation trace (OPA's ``opa test --explain fails``), so the explanation is computed: the
test's body is re-evaluated one prefix at a time — statements ``1..k`` as a synthetic rule in the test's
package, on a clone of the engine that ran the test. A body is a conjunction, so the first prefix that
is undefined ends at the statement that failed (a prefix of a satisfiable body is satisfiable, so the
search cannot point at a statement that held). For a comparison (``d.allow == false``) both sides are
evaluated under the statements before it, with the statement's own ``with`` modifiers, so the report
says what the values were; for an assignment, the right-hand side's value; for ``not X``, that ``X``
held. A prefix regorus cannot compile on its own (a variable a later statement binds, which OPA's
re-ordering would have moved) is skipped: the explanation then names a later statement, never an
earlier one that held.

When the failing statement calls a function of the same package that has one body (the helpers tests
are written with: ``denied_with(inp, "…")``), the search goes on inside it: the arguments and the
statement's ``with`` values are evaluated, bound as constants, and the function's body is searched the
same way (:attr:`Explanation.inner`), up to :data:`MAX_DEPTH` calls deep. Values pass through JSON there,
so a set argument arrives as an array — a diagnostic may then differ, the test verdict never does.

It runs only for failing tests, on regorus (for ``--engine opa``, only for a failure regorus reproduces:
:func:`mcp_guard.policy.runner.explain_opa_failures`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import regorus

__all__ = ["MAX_DEPTH", "Explainer", "Explanation", "explain_failure"]

Node = dict[str, Any]

MAX_DEPTH = 3  # function calls followed below the test body
_RULE = "mcp_guard_explain_prefix"
_VALUE = "mcp_guard_explain_value"
_UNDEFINED = '"<undefined>"'
_LITERALS = frozenset({"String", "RawString", "Number", "Bool", "Null"})
_COMPARISONS = {"Eq": "==", "Ne": "!=", "Lt": "<", "Le": "<=", "Gt": ">", "Ge": ">="}
_MAX_VALUE = 200  # characters of a value shown in an explanation


@dataclass(frozen=True, slots=True)
class Explanation:
    """The statement of a test body that failed, where it is, the values that made it fail, and — when
    it called a function of the package — the statement that failed inside that function."""

    file: str
    line: int
    col: int
    expression: str
    reason: str  # "false", "undefined", "held (under `not`)"
    values: tuple[tuple[str, str], ...] = ()
    inner: Explanation | None = None

    def __str__(self) -> str:
        expr = " ".join(self.expression.split())
        text = f"{self.file}:{self.line}:{self.col}: {self.reason}: {expr}"
        if self.values:
            text += " (" + ", ".join(f"{k} = {v}" for k, v in self.values) + ")"
        if self.inner is not None:
            text += f"; in it, {self.inner}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "expression": self.expression,
            "reason": self.reason,
            "values": dict(self.values),
            "inner": self.inner.to_dict() if self.inner is not None else None,
        }


def _tag(node: Any) -> tuple[str, Node]:
    if isinstance(node, dict) and len(node) == 1:
        ((k, v),) = node.items()
        if isinstance(v, dict):
            return k, v
    return "", {}


@dataclass(frozen=True, slots=True)
class _Source:
    """One module of the compiled engine: its text (as bytes, spans are byte offsets) and AST."""

    file: str
    raw: bytes
    ast: Node

    def text(self, span: Mapping[str, Any]) -> str:
        return self.raw[span["start"] : span["end"]].decode("utf-8", "replace")

    @property
    def package(self) -> str:
        return self.text(self.ast["package"]["span"]).removeprefix("package").strip()

    def header(self) -> str:
        """``package …`` and the imports, for a synthetic module in the same namespace."""
        parts = [self.text(self.ast["package"]["span"])]
        parts += [self.text(i["span"]) for i in self.ast.get("imports") or [] if "span" in i]
        return "\n".join(parts)

    def rules(self, name: str) -> list[tuple[str, Node]]:
        """(head kind, rule) of every definition of ``name`` in this module."""
        out: list[tuple[str, Node]] = []
        for rule in self.ast.get("rules") or []:
            tag, spec = _tag(rule)
            if tag != "Spec":
                continue
            htag, head = _tag(spec.get("head"))
            rtag, refr = _tag(head.get("refr"))
            if rtag == "Var" and refr.get("value") == name:
                out.append((htag, spec))
        return out


@dataclass(frozen=True, slots=True)
class _Frame:
    """Where a body is searched: its module, constant bindings before it, ``with`` appended to it."""

    src: _Source
    prelude: tuple[str, ...] = ()
    suffix: str = ""
    depth: int = 0

    def stmt_text(self, stmt: Node) -> str:
        text = self.src.text(stmt["span"])
        ltag, _ = _tag(stmt.get("literal"))
        return f"{text} {self.suffix}" if self.suffix and ltag in ("Expr", "NotExpr") else text


class Explainer:
    """Explanations for the failing tests of one engine (its AST read once)."""

    def __init__(self, engine: regorus.Engine, rels: Mapping[str, str]) -> None:
        self._engine = engine
        self._rels = rels
        self._sources = [
            _Source(str(m["source"]["file"]), str(m["source"].get("contents", "")).encode("utf-8"), m["ast"])
            for m in json.loads(engine.get_ast_as_json())
            if isinstance(m.get("source"), dict)
        ]

    def _eval(self, src: _Source, text: str, rule: str) -> tuple[bool, Any]:
        """(compiled, value) of ``data.<package>.<rule>`` after adding ``text`` (a module of ``src``'s
        package) to a clone; value None when undefined."""
        probe = self._engine.clone()
        try:
            probe.add_policy(f"{src.file}#explain", f"{src.header()}\n{text}")
            raw = probe.eval_rule_as_json(f"data.{src.package}.{rule}")
        except (RuntimeError, ValueError):  # a prefix that does not compile alone, or evaluates to an error
            return False, None
        return True, None if raw == _UNDEFINED else json.loads(raw)

    def test(self, path: str, name: str) -> Explanation | None:
        for src in self._sources:
            if src.file == path:
                for htag, spec in src.rules(name):
                    if htag != "Func" and spec.get("bodies"):
                        return self.search(_Frame(src), list(spec["bodies"][0]["query"]["stmts"]))
        return None

    def search(self, frame: _Frame, stmts: list[Node]) -> Explanation | None:
        for k in range(1, len(stmts) + 1):
            body = "\n".join([*frame.prelude, *(frame.stmt_text(s) for s in stmts[:k])])
            compiled, value = self._eval(frame.src, f"{_RULE} if {{\n{body}\n}}\n", _RULE)
            if compiled and value is None:
                return self._describe(frame, stmts[: k - 1], stmts[k - 1])
        return None

    def _values(self, frame: _Frame, before: list[Node], stmt: Node, node: Node) -> list[Any] | None:
        """Every value the expression ``node`` (of ``stmt``, tagged: ``{"Var": {...}}``) takes under the
        statements before it, or None when that cannot be computed alone."""
        tag, expr = _tag(node)
        if tag in _LITERALS:  # a string's span is its contents, without the quotes
            return [expr.get("value")]
        mods = " ".join(frame.src.text(m["span"]) for m in stmt.get("with_mods") or [])
        lines = [*frame.prelude, *(frame.stmt_text(s) for s in before)]
        lines.append(f"v := {frame.src.text(expr['span'])} {mods} {frame.suffix}".rstrip())
        # a multi-value rule: the statements before may iterate (`some x in xs`), giving several values
        text = f"{_VALUE} contains v if {{\n" + "\n".join(lines) + "\n}\n"
        compiled, value = self._eval(frame.src, text, _VALUE)
        return value if compiled and isinstance(value, list) else None

    def _show(self, frame: _Frame, before: list[Node], stmt: Node, node: Node) -> str:
        values = self._values(frame, before, stmt, node)
        if values is None:
            return "?"
        if len(values) <= 1:
            return _show(values[0] if values else None)
        return "one of " + _show(values)

    def _describe(self, frame: _Frame, before: list[Node], stmt: Node) -> Explanation:
        src = frame.src
        span = stmt["span"]
        ltag, literal = _tag(stmt.get("literal"))
        values: list[tuple[str, str]] = []
        reason = "undefined"
        inner = None
        if ltag == "NotExpr":
            reason = "held (under `not`)"
        elif ltag == "Expr":
            etag, expr = _tag(literal.get("expr"))
            if etag == "BoolExpr" and expr.get("op") in _COMPARISONS:
                reason = "false"
                values = [
                    ("left", self._show(frame, before, stmt, expr["lhs"])),
                    ("right", self._show(frame, before, stmt, expr["rhs"])),
                ]
            elif etag == "AssignExpr":
                shown = self._show(frame, before, stmt, expr["rhs"])
                values = [(" ".join(src.text(_spanned(expr["rhs"])["span"]).split()), shown)]
                reason = "undefined" if shown == "undefined" else "false"
            else:
                reason = "undefined" if self._show(frame, before, stmt, literal["expr"]) == "undefined" else "false"
                if etag == "Call" and frame.depth < MAX_DEPTH:
                    inner = self._descend(frame, before, stmt, expr)
                if etag == "Call" and inner is None:  # a builtin (or a function with no single body): its arguments
                    values = self._arguments(frame, before, stmt, expr)
        rel = self._rels.get(src.file, src.file)
        return Explanation(rel, span["line"], span["col"], src.text(span), reason, tuple(values), inner)

    def _arguments(self, frame: _Frame, before: list[Node], stmt: Node, call: Node) -> list[tuple[str, str]]:
        """The call's arguments that are not written as their own value, with their values."""
        out: list[tuple[str, str]] = []
        for arg in call.get("params") or []:
            if _tag(arg)[0] in _LITERALS:
                continue
            text = " ".join(frame.src.text(_spanned(arg)["span"]).split())
            shown = self._show(frame, before, stmt, arg)
            if shown.replace(" ", "") != text.replace(" ", ""):
                out.append((text, shown))
        return out

    def _descend(self, frame: _Frame, before: list[Node], stmt: Node, call: Node) -> Explanation | None:
        """Search the body of the called function, its parameters bound to the arguments' values."""
        ftag, fcn = _tag(call.get("fcn"))
        if ftag != "Var":
            return None
        found = self._function(frame.src.package, str(fcn.get("value")), len(call.get("params") or []))
        if found is None:
            return None
        fsrc, names, stmts = found
        prelude: list[str] = []
        for name, arg in zip(names, call.get("params") or [], strict=True):
            value = self._single(frame, before, stmt, arg)
            if value is None:
                return None
            prelude.append(f"{name} := {value}")
        mods: list[str] = [frame.suffix] if frame.suffix else []
        for mod in stmt.get("with_mods") or []:
            value = self._single(frame, before, stmt, mod["as"])
            if value is None:
                return None
            mods.append(f"with {frame.src.text(_spanned(mod['refr'])['span'])} as {value}")
        return self.search(_Frame(fsrc, tuple(prelude), " ".join(mods), frame.depth + 1), stmts)

    def _single(self, frame: _Frame, before: list[Node], stmt: Node, node: Node) -> str | None:
        """The expression's value as a Rego literal (JSON), when it has exactly one."""
        values = self._values(frame, before, stmt, node)
        return json.dumps(values[0]) if values is not None and len(values) == 1 else None

    def _function(self, package: str, name: str, arity: int) -> tuple[_Source, list[str], list[Node]] | None:
        """The function's module, parameter names and body — when it is defined once, with one body, no
        ``else``, and plain variables as parameters (anything else has no single body to search)."""
        defs = [(src, spec) for src in self._sources if src.package == package for htag, spec in src.rules(name)]
        if len(defs) != 1:
            return None
        src, spec = defs[0]
        htag, head = _tag(spec.get("head"))
        bodies = spec.get("bodies") or []
        args = head.get("args") or []
        if htag != "Func" or len(bodies) != 1 or len(args) != arity:
            return None
        names = [str(inner.get("value")) for tag, inner in map(_tag, args) if tag == "Var"]
        if len(names) != arity or "_" in names:
            return None
        return src, names, list(bodies[0]["query"]["stmts"])


def _show(value: Any) -> str:
    if value is None:
        return "undefined"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _spanned(node: Node) -> Node:
    """An expression node (``{"Var": {...}}``) → its inner dict, which carries the span."""
    _, inner = _tag(node)
    return inner


def explain_failure(engine: regorus.Engine, rels: Mapping[str, str], path: str, name: str) -> Explanation | None:
    """The failing statement of test ``name`` defined in the module added as ``path``; ``rels`` maps module
    paths to the names shown (bundle-relative). None when the rule has no body to search (``test_x :=
    false``) or every prefix holds (the rule's value is not ``true``)."""
    return Explainer(engine, rels).test(path, name)
