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

It runs only for failing tests, and only on the embedded engine (the OPA runner says "undefined").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regorus

__all__ = ["Explanation", "explain_failure"]

Node = dict[str, Any]

_RULE = "mcp_guard_explain_prefix"
_VALUE = "mcp_guard_explain_value"
_UNDEFINED = '"<undefined>"'
_COMPARISONS = {"Eq": "==", "Ne": "!=", "Lt": "<", "Le": "<=", "Gt": ">", "Ge": ">="}
_MAX_VALUE = 200  # characters of a value shown in an explanation


@dataclass(frozen=True, slots=True)
class Explanation:
    """The statement of a test body that failed, where it is, and the values that made it fail."""

    file: str
    line: int
    col: int
    expression: str
    reason: str  # "false", "undefined", "held" (a `not X` whose X held)
    values: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        expr = " ".join(self.expression.split())
        text = f"{self.file}:{self.line}:{self.col}: {self.reason}: {expr}"
        if self.values:
            text += " (" + ", ".join(f"{k} = {v}" for k, v in self.values) + ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "expression": self.expression,
            "reason": self.reason,
            "values": dict(self.values),
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

    def header(self) -> str:
        """``package …`` and the imports, for a synthetic module in the same namespace."""
        parts = [self.text(self.ast["package"]["span"])]
        parts += [self.text(i["span"]) for i in self.ast.get("imports") or [] if "span" in i]
        return "\n".join(parts)


def _find_body(modules: Sequence[Node], file: str, name: str) -> tuple[_Source, list[Node]] | None:
    for m in modules:
        source = m.get("source") or {}
        if source.get("file") != file:
            continue
        src = _Source(file, str(source.get("contents", "")).encode("utf-8"), m["ast"])
        for rule in src.ast.get("rules") or []:
            tag, spec = _tag(rule)
            if tag != "Spec":
                continue
            _, head = _tag(spec.get("head"))
            rtag, refr = _tag(head.get("refr"))
            bodies = spec.get("bodies") or []
            if rtag == "Var" and refr.get("value") == name and bodies:
                return src, list(bodies[0]["query"]["stmts"])
    return None


def _eval(engine: regorus.Engine, module: str, text: str, rule: str) -> tuple[bool, Any]:
    """(compiled, value) of ``rule`` after adding ``text`` to a clone; value None when undefined."""
    probe = engine.clone()
    try:
        probe.add_policy(module, text)
        raw = probe.eval_rule_as_json(rule)
    except RuntimeError:
        return False, None
    return True, None if raw == _UNDEFINED else json.loads(raw)


def _show(value: Any) -> str:
    if value is None:
        return "undefined"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def explain_failure(engine: regorus.Engine, path: str, rel: str, package: str, name: str) -> Explanation | None:
    """The failing statement of test ``data.<package>.<name>`` defined in the module added as ``path``
    (shown as ``rel``), or None when the rule has no body to search (``test_x := false``) or every
    prefix holds (the rule's value is not ``true``)."""
    found = _find_body(json.loads(engine.get_ast_as_json()), path, name)
    if found is None:
        return None
    src, stmts = found
    header = src.header()
    module = f"{path}#explain"
    ref = f"data.{package}.{_RULE}"
    for k in range(1, len(stmts) + 1):
        body = "\n".join(src.text(s["span"]) for s in stmts[:k])
        compiled, value = _eval(engine, module, f"{header}\n{_RULE} if {{\n{body}\n}}\n", ref)
        if compiled and value is None:
            return _describe(engine, src, module, package, stmts[: k - 1], stmts[k - 1], rel)
    return None


def _describe(
    engine: regorus.Engine, src: _Source, module: str, package: str, before: list[Node], stmt: Node, rel: str
) -> Explanation:
    span = stmt["span"]
    ltag, literal = _tag(stmt.get("literal"))
    mods = " ".join(src.text(m["span"]) for m in stmt.get("with_mods") or [])
    prefix = [src.text(s["span"]) for s in before]

    def value_of(expr: Node) -> str:
        # a multi-value rule: the statements before may iterate (`some x in xs`), giving several values
        text = f"{_VALUE} contains v if {{\n" + "\n".join([*prefix, f"v := {src.text(expr['span'])} {mods}"]) + "\n}\n"
        compiled, value = _eval(engine, module, f"{src.header()}\n{text}", f"data.{package}.{_VALUE}")
        if not compiled or not isinstance(value, list):
            return "?"
        if len(value) <= 1:
            return _show(value[0] if value else None)
        return "one of " + _show(value)

    values: list[tuple[str, str]] = []
    reason = "undefined"
    if ltag == "NotExpr":
        reason = "held (under `not`)"
    elif ltag == "Expr":
        etag, expr = _tag(literal.get("expr"))
        if etag == "BoolExpr" and expr.get("op") in _COMPARISONS:
            reason = "false"
            values = [("left", value_of(_spanned(expr["lhs"]))), ("right", value_of(_spanned(expr["rhs"])))]
        elif etag == "AssignExpr":
            rhs = _spanned(expr["rhs"])
            shown = value_of(rhs)
            values = [(" ".join(src.text(rhs["span"]).split()), shown)]
            reason = "undefined" if shown == "undefined" else "false"
        else:
            reason = "undefined" if value_of(expr) == "undefined" else "false"
    return Explanation(rel, span["line"], span["col"], src.text(span), reason, tuple(values))


def _spanned(node: Node) -> Node:
    """An expression node (``{"Var": {...}}``) → its inner dict, which carries the span."""
    _, inner = _tag(node)
    return inner
