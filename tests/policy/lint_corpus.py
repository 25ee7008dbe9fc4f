"""Bundles for the differential test of the load-time check (``mcp_guard.policy.lint``).

``BROKEN``: bundles real OPA's compiler rejects (``opa check``) and regorus, on its own, loads. The
line marked ``# <- here`` is where the embedded engine must report it, in the named rule. ``effect`` is
what regorus alone does with the bundle once it is loaded: ``fail-open`` (a deny rule silently stops
firing), ``engine-error`` (every evaluation that reaches it is an error), ``crash`` (the process dies),
``silent`` (evaluates without complaint where OPA refuses) or ``load-only`` (no visible effect).

``VALID``: bundles both OPA and the embedded engine accept, written in the idioms real policies use,
so the check is shown to have no false positives beyond the default bundle.

tests/policy/test_lint.py runs the embedded side; tests/policy/test_lint_opa.py runs ``opa check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from textwrap import dedent
from typing import Literal

__all__ = ["BROKEN", "VALID", "BrokenBundle", "ValidBundle"]

Effect = Literal["fail-open", "engine-error", "crash", "silent", "load-only"]
MARK = "# <- here"

# Every bundle decides (so it could be deployed); the rules under test are in policy.rego.
DECISION = """\
package guard

default decision := {"allow": false, "reasons": ["nothing allows this call"]}

decision := {"allow": true, "reasons": ["allowed"]} if input.ok == true
"""


@dataclass(frozen=True)
class BrokenBundle:
    name: str
    files: dict[str, str]
    file: str
    rule: str | None
    code: str  # the LintCode value
    effect: Effect
    why: str

    @property
    def line(self) -> int:
        """The line marked ``# <- here`` in :attr:`file`."""
        lines = self.files[self.file].splitlines()
        return next(i for i, text in enumerate(lines, 1) if MARK in text)


@dataclass(frozen=True)
class ValidBundle:
    name: str
    files: dict[str, str]


def _rego(text: str) -> str:
    return "package guard\n\n" + dedent(text).lstrip("\n")


def broken(
    name: str, policy: str, *, code: str, rule: str | None, effect: Effect, why: str, **other: str
) -> BrokenBundle:
    """A bundle of policy.rego (the rules under test), decision.rego and ``other`` files (name → Rego)."""
    files = {"policy.rego": _rego(policy), "decision.rego": DECISION}
    files.update({f"{k}.rego": _rego(v) for k, v in other.items()})
    return BrokenBundle(name, files, "policy.rego", rule, code, effect, why)


BROKEN: list[BrokenBundle] = [
    broken(
        "function-shadows-walk-variable",
        """
        # the issue's bundle: a helper function (helpers.rego) takes over walk's undeclared variable
        string_arguments contains [name, leaf] if {
            walk(input.arguments, [at, leaf])  # <- here
            is_string(leaf)
            name := at[count(at) - 1]
        }

        deny contains sprintf("%s: outside /srv", [name]) if {
            some [name, value] in string_arguments
            not startswith(value, "/srv/")
        }
        """,
        helpers="""
        # a harmless-looking helper
        at(inp, t) := object.get(inp, t, null)
        """,
        code="undefined-ref",
        rule="data.guard.string_arguments",
        effect="fail-open",
        why="walk's output [at, leaf] is compared with the function: no string argument, no path rule",
    ),
    broken(
        "unsafe-variable-in-head",
        """
        deny contains msg if {  # <- here
            input.tool == "rm"
            mesage := "rm is blocked"
        }
        """,
        code="unsafe-var",
        rule="data.guard.deny",
        effect="engine-error",
        why="a typo leaves msg unbound",
    ),
    broken(
        "unsafe-variable-in-body",
        """
        deny contains "too many arguments" if {
            count(input.arguments) > limit  # <- here
        }
        """,
        code="unsafe-var",
        rule="data.guard.deny",
        effect="engine-error",
        why="limit is neither a rule nor bound",
    ),
    broken(
        "wildcard-in-negation",
        """
        deny contains "unlisted tool" if {
            not data.allowed_tools[_] == input.tool  # <- here
        }
        """,
        code="unsafe-var",
        rule="data.guard.deny",
        effect="fail-open",
        why="a v0 idiom OPA 1.x rejects; regorus reads it as 'some entry differs': an empty list denies nothing",
    ),
    broken(
        "some-declared-unused",
        """
        deny contains "mallory" if {
            some role  # <- here
            input.principal.id == "mallory"
        }
        """,
        code="unused-var",
        rule="data.guard.deny",
        effect="load-only",
        why="a `some` variable nothing binds",
    ),
    broken(
        "undefined-function",
        """
        deny contains "not a tickets tool" if {
            not glob_match("tickets__*", input.tool)  # <- here
        }
        """,
        code="undefined-function",
        rule="data.guard.deny",
        effect="engine-error",
        why="glob_match is not a builtin (glob.match is)",
    ),
    broken(
        "builtin-arity",
        """
        deny contains "relative path" if {
            not startswith(input.arguments.path)  # <- here
        }
        """,
        code="arity",
        rule="data.guard.deny",
        effect="engine-error",
        why="startswith takes two arguments",
    ),
    broken(
        "function-arity",
        """
        is_admin(principal, role) if role in principal.roles

        deny contains "admins only" if {
            not is_admin(input.principal)  # <- here
        }
        """,
        code="arity",
        rule="data.guard.deny",
        effect="engine-error",
        why="a function called with too few arguments",
    ),
    broken(
        "sprintf-without-array",
        """
        blocked_tool := "rm"

        deny contains sprintf("%s is blocked", blocked_tool) if {  # <- here
            input.tool == blocked_tool
        }
        """,
        code="type-error",
        rule="data.guard.deny",
        effect="engine-error",
        why="sprintf's second argument must be an array",
    ),
    broken(
        "comparison-of-disjoint-types",
        """
        limit := 10

        deny contains "over quota" if limit == "10"  # <- here
        """,
        code="type-error",
        rule="data.guard.deny",
        effect="silent",
        why="a number compared with a string can never hold (OPA: match error)",
    ),
    broken(
        "arithmetic-on-a-string",
        """
        prefix := "tickets"

        limit := prefix + 1  # <- here
        """,
        code="type-error",
        rule="data.guard.limit",
        effect="engine-error",
        why="plus on a string",
    ),
    broken(
        "ref-into-a-scalar-rule",
        """
        separator := "__"

        deny contains "long separator" if separator.length > 2  # <- here
        """,
        code="undefined-ref",
        rule="data.guard.deny",
        effect="silent",
        why="a string has no fields (OPA: undefined ref)",
    ),
    broken(
        "missing-key-of-a-literal-object",
        """
        limits := {"calls": 100}

        deny contains "call limit" if input.context.session_calls > limits.call  # <- here
        """,
        code="undefined-ref",
        rule="data.guard.deny",
        effect="fail-open",
        why="a typo in a key: the deny rule can never fire",
    ),
    broken(
        "function-used-as-value",
        """
        blocked(tool) if tool in {"rm", "dd"}

        deny contains "blocked" if {
            blocked == true  # <- here
        }
        """,
        code="undefined-ref",
        rule="data.guard.deny",
        effect="fail-open",
        why="the function is compared with true instead of called: the deny never fires",
    ),
    broken(
        "deprecated-builtin",
        """
        deny contains "flagged" if any([input.a, input.b])  # <- here
        """,
        code="deprecated-builtin",
        rule="data.guard.deny",
        effect="engine-error",
        why="any() was removed in Rego v1",
    ),
    broken(
        "void-function-as-value",
        """
        deny contains msg if {
            input.tool == "rm"
            msg := print("denied rm")  # <- here
        }
        """,
        code="void-value",
        rule="data.guard.deny",
        effect="silent",
        why="print() has no value",
    ),
    broken(
        "recursive-rules",
        """
        deny contains "loop" if count(warnings) > 0  # <- here

        warnings contains "warn" if count(deny) > 0
        """,
        code="recursion",
        rule="data.guard.deny",
        effect="engine-error",
        why="deny depends on itself through warnings",
    ),
    broken(
        "recursive-function",
        """
        depth(x) := depth(x) + 1  # <- here

        deny contains "too deep" if depth(input.arguments) > 3
        """,
        code="recursion",
        rule="data.guard.depth",
        effect="crash",
        why="regorus overflows its stack on the first call and the process dies (SIGSEGV)",
    ),
    broken(
        "two-defaults",
        """
        default limit := 10  # <- here
        """,
        limits="""
        default limit := 100
        """,
        code="default-rule",
        rule="data.guard.limit",
        effect="load-only",
        why="two default values for one rule (the other in limits.rego)",
    ),
    broken(
        "complete-and-multi-value-rule",
        """
        deny := {"dd is blocked"} if input.tool == "dd"  # <- here
        """,
        denies="""
        deny contains "rm is blocked" if input.tool == "rm"
        """,
        code="conflicting-rules",
        rule="data.guard.deny",
        effect="silent",
        why="deny is a multi-value rule in denies.rego and a complete rule here; regorus merges them",
    ),
    broken(
        "function-arities-differ",
        """
        glob_one(pattern, value) if glob.match(pattern, null, value)

        glob_one(pattern) if pattern == "*"  # <- here
        """,
        code="conflicting-rules",
        rule="data.guard.glob_one",
        effect="engine-error",
        why="one function defined with two arities",
    ),
    broken(
        "rule-path-extends-a-rule",
        """
        decision.allow := true if input.tool == "echo"  # <- here
        """,
        code="conflicting-rules",
        rule="data.guard.decision.allow",
        effect="silent",
        why="decision is a complete rule (decision.rego) and decision.allow a rule inside it; regorus answers "
        "{allow: true} for echo, or an error when both apply",
    ),
    broken(
        "default-with-a-reference",
        """
        default limit := input.limit  # <- here
        """,
        code="default-rule",
        rule="data.guard.limit",
        effect="engine-error",
        why="a default value must be a constant",
    ),
    broken(
        "assigned-twice",
        """
        deny contains msg if {
            msg := "rm is blocked"
            input.tool == "rm"
            msg := "rm is not allowed"  # <- here
        }
        """,
        code="redeclared-var",
        rule="data.guard.deny",
        effect="engine-error",
        why=":= used twice for one variable",
    ),
    broken(
        "used-before-assignment",
        """
        deny contains "too many tools" if {
            count(tools) > 3
            tools := input.arguments.tools  # <- here
        }
        """,
        code="redeclared-var",
        rule="data.guard.deny",
        effect="engine-error",
        why="a := variable used above its assignment",
    ),
    broken(
        "assignment-to-a-ref",
        """
        deny contains "rm" if {
            input.tool := "rm"  # <- here
        }
        """,
        code="invalid-assign",
        rule="data.guard.deny",
        effect="engine-error",
        why=":= to input.tool (== was meant)",
    ),
    broken(
        "with-unknown-target",
        """
        deny contains "rm" if {
            input.tool == "rm" with tool as "rm"  # <- here
        }
        """,
        code="with-target",
        rule="data.guard.deny",
        effect="engine-error",
        why="with needs input, data or a function",
    ),
    broken(
        "argument-shadows-input",
        """
        is_rm(input) if input.tool == "rm"  # <- here

        deny contains "rm" if is_rm(input)
        """,
        code="shadowed",
        rule="data.guard.is_rm",
        effect="load-only",
        why="a function argument named input",
    ),
    broken(
        "local-shadows-called-function",
        """
        deny contains "many arguments" if {
            count := 3
            count(input.arguments) > count  # <- here
        }
        """,
        code="shadowed",
        rule="data.guard.deny",
        effect="silent",
        why="a local named count, then count() called",
    ),
    broken(
        "keyword-after-a-dot",
        """
        deny contains "default flag" if input.arguments.default == true  # <- here
        """,
        code="keyword",
        rule=None,
        effect="silent",
        why='OPA needs input.arguments["default"]',
    ),
    broken(
        "invalid-rego-import",
        """
        import rego.v2  # <- here
        """,
        code="import",
        rule=None,
        effect="load-only",
        why="only rego.v1 exists",
    ),
    broken(
        "unknown-future-keyword",
        """
        import future.keywords.when  # <- here
        """,
        code="import",
        rule=None,
        effect="load-only",
        why="future.keywords has contains, every, if and in",
    ),
    broken(
        "duplicate-import-alias",
        """
        import data.site.roles
        import input.principal.roles  # <- here

        deny contains "no roles" if count(roles) == 0
        """,
        code="import",
        rule=None,
        effect="silent",
        why="two imports named roles: which one deny reads is an accident",
    ),
    broken(
        "every-variable-unused",
        """
        deny contains "non-string argument" if {
            every i, arg in input.arguments {  # <- here
                is_string(arg)
            }
        }
        """,
        code="unused-var",
        rule="data.guard.deny",
        effect="load-only",
        why="every's key variable is declared and never used",
    ),
    broken(
        "unary-minus-on-a-variable",
        """
        limit := 10

        floor := -limit  # <- here
        """,
        code="type-error",
        rule="data.guard.floor",
        effect="engine-error",
        why="OPA only parses - before a number literal",
    ),
    broken(
        "walk-output-of-wrong-type",
        """
        path := "/"

        leaves contains leaf if walk(input.arguments, [path, leaf])  # <- here

        deny contains "nested too deep" if count(leaves) > 100
        """,
        code="type-error",
        rule="data.guard.leaves",
        effect="fail-open",
        why="a rule named path takes over walk's path variable; a string never matches: leaves is empty",
    ),
]


def _valid(name: str, **files: str) -> ValidBundle:
    return ValidBundle(name, {k.replace("__", "/") + ".rego": dedent(v).lstrip("\n") for k, v in files.items()})


VALID: list[ValidBundle] = [
    _valid(
        "grants-and-denies",
        grants="""
        package guard

        config := data.site if is_object(data.site)

        else := {}

        kind := "tools"

        matching contains [role, i] if {
            some role in input.principal.roles
            some i, g in object.get(config, ["roles", role, "grants"], [])
            glob.match(g.server, null, input.server)
            g[kind]
        }

        granted if count(matching) > 0
        """,
        denies="""
        package guard

        deny contains msg if {
            some b in object.get(config, "blocked", [])
            b.tool == input.tool
            msg := sprintf("%s is blocked: %s", [input.tool, object.get(b, "reason", "listed")])
        }

        deny contains msg if {
            some path, leaf
            walk(input.arguments, [path, leaf])
            is_string(leaf)
            contains(leaf, "..")
            keys := [k | some k in path; is_string(k)]
            msg := sprintf("argument %s contains '..'", [concat(".", keys)])
        }
        """,
        decision="""
        package guard

        default allow := false

        allow if {
            granted
            count(deny) == 0
        }

        decision := {"allow": true, "reasons": ["granted"]} if allow

        else := {"allow": false, "reasons": sort(deny)}
        """,
        decision_test="""
        package guard

        site := {"roles": {"r": {"grants": [{"server": "*", "tools": ["*"]}]}}}

        test_allow if {
            d := decision with input as {"server": "s", "tool": "t", "principal": {"roles": ["r"]}}
                with data.site as site
            d.allow
        }

        test_dotdot_denied if {
            inp := {"server": "s", "tool": "t", "principal": {"roles": ["r"]}, "arguments": {"p": "../x"}}
            d := decision with input as inp with data.site as site
            not d.allow
            d.reasons == ["argument p contains '..'"]
        }
        """,
    ),
    _valid(
        "functions-and-else",
        p="""
        package guard

        level(n) := "high" if n > 10

        else := "low"

        label := upper(level(input.n))

        f(1) := "one"

        f(2) := "two"

        g(x) := y if y := x + 1

        ok if g(1, 2)

        not_big if not g(input.n, 100)

        default threshold(_) := 5

        threshold(x) := 7 if x == "strict"
        """,
    ),
    _valid(
        "comprehensions-and-closures",
        p="""
        package guard

        names := {lower(n) | some n in input.names; is_string(n)}

        by_key := {k: count(v) | some k, v in input.groups}

        big if {
            limit := 3
            large := [x | some x in input.sizes; x > limit]
            count(large) > 0
        }

        reordered if {
            small := [x | some x in input.sizes; x < cut]
            cut = 2
            count(small) > 0
        }

        all_short if every s in input.names { count(s) < 10 }

        pairs_distinct if every k, v in input.o { k != v }
        """,
    ),
    _valid(
        "refs-patterns-and-sets",
        p="""
        package guard

        limits := {"calls": 100, "bytes": {"max": 10}}

        max_bytes := limits.bytes.max

        for_key := limits[input.key]

        parts if {
            [scheme, rest] := split(input.url, "://")
            scheme == "https"
            count(rest) > 0
        }

        obj if {
            {"a": a} := input.o
            a == 1
        }

        tools := {"a", "b"} | {"c"}

        not_b := tools - {"b"}

        both := tools & {"a", "z"}

        first := sort(input.xs)[0]

        allowed contains k if {
            some k
            input.flags[k] == true
            not input.blocked[k]
        }

        membership if {
            "a" in tools
            "k", "v" in input.o
        }
        """,
    ),
    _valid(
        "packages-imports-and-ref-heads",
        lib__strings="""
        package lib.strings

        normalize(s) := lower(trim_space(s))

        separator := "__"
        """,
        p="""
        package guard

        import data.lib.strings

        name := strings.normalize(input.name)

        joined := concat(strings.separator, ["a", "b"])

        other := data.lib.strings.separator

        report.counts[k] := count(v) if some k, v in input.groups

        report.total := count(input.groups)

        flags.a contains 1

        flags.b contains 2
        """,
    ),
    _valid(
        "tests-with-mocks",
        p="""
        package guard

        now_ok if time.now_ns() > 0

        size(x) := count(x)

        big if size(input.a) > 2
        """,
        p_test="""
        package guard

        fake_size(_) := 10

        test_now if now_ok with time.now_ns as 5

        test_big if big with size as fake_size with input.a as []

        test_rule_mock if big with data.guard.big as true

        test_print if {
            print("debug", input)
            true
        }
        """,
    ),
]
