"""Which parts of the input document a bundle's decision can depend on, derived from the bundle itself.

The decision cache (:mod:`mcp_guard.policy.cache`) keys a decision on exactly these parts, so the set must
cover everything the decision rule can observe — never a hand-kept list. It is computed on the AST
regorus parses (the same one :mod:`mcp_guard.policy.lint` checks), with the check's own name resolution
for the rule dependency graph:

1. the rules the decision rule can reach: the check's dependency graph (rule and function references,
   ``data`` refs, dynamic ``data.pkg[x]`` — which reaches every rule under the prefix), walked from the
   decision rule; rules nothing reaches (e.g. an unused helper) read nothing;
2. in every reachable rule, every ref rooted at ``input``: its constant prefix (``input.a.b`` → ``a.b``;
   ``input.a[x].c`` with a variable ``x`` → the whole ``a``). The value at that path is what the rule
   reads, *whole* — whatever is done with it next (bound to a variable, passed to a function, walked,
   iterated with ``some … in``) only sees that subtree, so no alias analysis is needed;
3. a bare ``input`` (``f(input)``, ``x := input``, ``input[x]``) reads the whole document; an ``import
   input.…`` reads the imported subtree.

A decision is *not* a function of the input and data alone — so it is never cached — when a reachable
rule calls a builtin whose value changes between evaluations (:data:`NONDETERMINISTIC`: ``time.now_ns``,
randomness, ``http.send``, DNS, ``opa.runtime``, time-dependent verification), replaces part of the input
with ``with input… as`` or a function with ``with f as g`` (the check's graph has no edge to ``g``), or
reads the whole input (which carries the call's time, so no two calls would
share a key anyway). Anything the walk does not understand falls into one of these: it can only make the
read set larger or switch the cache off, never smaller.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regorus

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import Bundle
from mcp_guard.policy.embedded import regorus_message
from mcp_guard.policy.lint import RuleGraph, ast_tag, dotted_ref, ref_chain

__all__ = [
    "NONDETERMINISTIC",
    "InputReads",
    "PathRead",
    "bundle_reads_path",
    "input_reads",
    "input_reads_of_modules",
    "reads_path",
    "rule_reads",
]

Path = tuple[str, ...]

# Builtins whose value is not a function of their arguments (OPA's capabilities mark most of these
# "nondeterministic"); io.jwt.decode_verify and the x509 verifiers compare against the current time.
NONDETERMINISTIC = frozenset(
    {
        "time.now_ns",
        "rand.intn",
        "uuid.rfc4122",
        "http.send",
        "net.lookup_ip_addr",
        "opa.runtime",
        "io.jwt.decode_verify",
        "crypto.x509.parse_and_verify_certificates",
        "crypto.x509.parse_and_verify_certificates_with_options",
        "providers.aws.sign_req",
    }
)


@dataclass(frozen=True, slots=True)
class InputReads:
    """The input paths a decision depends on (``paths``), or why it cannot be cached (``uncacheable``)."""

    paths: tuple[Path, ...]
    uncacheable: str | None = None

    @property
    def cacheable(self) -> bool:
        return self.uncacheable is None


class _Walk:
    """Collects input paths and reasons not to cache from the AST nodes of the reachable rules."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.problems: list[str] = []

    def node(self, node: Any, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                self.node(item, where)
            return
        if not isinstance(node, dict):
            return
        if "with_mods" in node:
            self._with(node["with_mods"] or [], where)
        tag, body = ast_tag(node)
        if tag in ("RefDot", "RefBrack"):
            self._ref(node, where)
            return
        if tag == "Var" and body.get("value") == "input":
            self.problems.append(f"{where} reads the whole input")
            return
        if tag == "Call":
            name = dotted_ref(body["fcn"])
            if name is not None and ".".join(name) in NONDETERMINISTIC:
                self.problems.append(f"{where} calls {'.'.join(name)}")
        for key, value in node.items():
            if key not in ("span", "with_mods"):
                self.node(value, where)

    def _ref(self, node: Any, where: str) -> None:
        root, segments = ref_chain(node)
        rtag, rbody = ast_tag(root)
        if rtag == "Var" and rbody.get("value") == "input":
            path: list[str] = []
            for seg, index in segments:
                if index is not None or not isinstance(seg, str):
                    break
                path.append(seg)
            if not path:
                self.problems.append(f"{where} reads the whole input")
            self.paths.add(tuple(path))
        else:
            self.node(root, where)
        for _, index in segments:
            if index is not None:
                self.node(index, where)

    def _with(self, mods: Iterable[Any], where: str) -> None:
        for mod in mods:
            rtag, rbody = ast_tag(ref_chain(mod["refr"])[0])
            root = rbody.get("value") if rtag == "Var" else None
            if root == "input":
                self.problems.append(f"{where} replaces input with `with input… as`")
            elif root != "data":
                # `with f as g`: the dependency graph has no edge to g, so what g reads would be missed
                self.problems.append(f"{where} replaces a function with `with … as`")
            self.node(mod.get("as"), where)


def _minimal(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Drop every path that another one in the set contains (``a`` covers ``a.b``)."""
    out: list[Path] = []
    for p in sorted(set(paths)):
        if not any(p[: len(q)] == q for q in out):
            out.append(p)
    return tuple(out)


def input_reads_of_modules(raw_modules: Sequence[Mapping[str, Any]], decision: Path) -> InputReads:
    """:func:`input_reads` on the module list ``regorus.Engine.get_ast_as_json`` returns (decoded)."""
    graph = RuleGraph(raw_modules)
    reachable = graph.reachable(decision)
    walk = _Walk()
    for rule in graph.rules:
        if rule.path in reachable:
            walk.node(rule.node, rule.where)
    for file, path in graph.imports:
        if path[0] == "input":
            walk.paths.add(path[1:])
            if len(path) == 1:
                walk.problems.append(f"{file} imports the whole input")
    if walk.problems:
        return InputReads((), walk.problems[0])
    return InputReads(_minimal(walk.paths))


def input_reads(bundle: Bundle, decision: Path) -> InputReads:
    """What the rule at ``decision`` (``("mcp_guard", "decision")``) in ``bundle``'s policies can read."""
    engine = regorus.Engine()
    engine.set_rego_v0(False)
    try:
        for f in bundle.policies:
            engine.add_policy(str(f.path), f.text)
    except RuntimeError as e:  # pragma: no cover - the bundle compiled before it got here
        raise PolicyError(f"policy does not compile: {regorus_message(e)}") from None
    return input_reads_of_modules(json.loads(engine.get_ast_as_json()), decision)


_REMEMBERED = 4  # bundles whose analysis is kept (the active one, a shadow candidate, the one just replaced)
_ANALYSED: OrderedDict[tuple[int, str], tuple[Bundle, InputReads]] = OrderedDict()


def rule_reads(bundle: Bundle, rule: str) -> InputReads:
    """:func:`input_reads` of the decision rule ``rule`` (an engine's ``rule``: ``data.mcp_guard.decision``),
    remembered for the last few bundle objects (by identity).

    Why: the analysis compiles the bundle again (~50 ms for the shipped one, on the event loop), and three parts ask
    it of every bundle that becomes active — the decision cache, the usage read and the history read — so a reload
    would block calls three times as long. A new bundle object (every load makes one) is analysed anew."""
    key = (id(bundle), rule)
    hit = _ANALYSED.get(key)
    if hit is not None and hit[0] is bundle:
        _ANALYSED.move_to_end(key)
        return hit[1]
    reads = input_reads(bundle, tuple(rule.split(".")[1:]))
    _ANALYSED[key] = (bundle, reads)
    while len(_ANALYSED) > _REMEMBERED:
        _ANALYSED.popitem(last=False)
    return reads


def reads_path(reads: InputReads, path: Path) -> bool:
    """Whether a decision with this read set can observe the input at ``path`` (``("context", "usage")``): a read
    of it, of something inside it, or of something around it (``input.context`` reads the usage too). An
    uncacheable read set — the whole input, a nondeterministic builtin — is assumed to."""
    if not reads.cacheable:
        return True
    return any(read[: len(path)] == path[: len(read)] for read in reads.paths)


class PathRead:
    """Whether any of ``engines`` can read the input at ``path``: the engine deciding calls, and the shadow candidate
    asked the same input. Derived from each engine's loaded bundle (:func:`input_reads` of its decision rule: the
    analysis the decision cache keys on, so never too small), again after every reload — per bundle object, so
    whoever swapped it, the next call sees the new answer. An engine whose bundle mcp-guard does not hold (OPA
    serving its own policies, test engines), or whose bundle cannot be analysed, is assumed to read it.

    Why: a part of the input no decision can read costs a call its gathering and its decision row its bytes, and no
    decision can tell it is missing (``context.usage``: :mod:`mcp_guard.pipeline.ratelimit`; a flow's history:
    :mod:`mcp_guard.pipeline.flow`)."""

    def __init__(self, path: Path, *engines: object) -> None:
        self._path = path
        self._engines = engines
        self._analysed: dict[int, tuple[object, bool]] = {}  # id(engine) → (bundle analysed, reads the path)

    def __call__(self) -> bool:
        return any(self._reads(engine) for engine in self._engines)

    def _reads(self, engine: object) -> bool:
        bundle, rule = getattr(engine, "bundle", None), getattr(engine, "rule", None)
        if not isinstance(bundle, Bundle) or not isinstance(rule, str):
            return True
        seen = self._analysed.get(id(engine))
        if seen is None or seen[0] is not bundle:
            seen = self._analysed[id(engine)] = (bundle, bundle_reads_path(bundle, rule, self._path))
        return seen[1]


def bundle_reads_path(bundle: Bundle, rule: str, path: Path) -> bool:
    """Whether the decision rule ``rule`` (``data.mcp_guard.decision``) of ``bundle`` can read the input at ``path``
    (:func:`reads_path`); a bundle that cannot be analysed is assumed to."""
    try:
        return reads_path(rule_reads(bundle, rule), path)
    except PolicyError:
        return True
