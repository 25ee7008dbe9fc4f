"""The decision cache: an embedded engine that remembers decisions, keyed on what the bundle reads.

A decision is a function of the bundle (its revision: policies, data and data overlays) and of the input
fields its decision rule can reach (:func:`mcp_guard.policy.reads.input_reads`, derived from the bundle's
AST at load and at every reload). Two inputs equal on those fields get the same decision, so the second
is answered from memory — that is the whole correctness argument, and the differential test
(``tests/policy/test_decision_cache.py``) checks it on thousands of generated inputs. Everything else is
belt and braces:

* the key is the bundle revision plus the exact JSON (what the engine itself is given) of every read
  field, present or absent — never a hash; an input whose key is over ``max_key_bytes`` is not kept;
* on a miss the engine is asked about the document cut down to the read fields (:func:`project`): by
  the same argument the decision is the same, and regorus does not parse what no rule reads;
* a bundle whose decision is not a function of input and data (``time.now_ns``, ``http.send``,
  randomness, ``with input as``, a read of the whole input) is never cached, and says why in the log;
* only decisions the policy made are kept: fail-closed denies (``engine_error``, ``timeout``,
  ``policy_undefined``, ``result_invalid``) are asked again every time;
* bounded: ``size`` entries, least recently used first out, each for at most ``ttl_s``; a reload
  (new revision) empties it.

A remembered decision is handed out as a new decision — its own ``decision_id``, its own copy of the
obligations — so the pipeline audits it, shadows it and replays it exactly as a fresh one.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.lowlevel
import structlog

from mcp_guard.frozen import evolve
from mcp_guard.policy.bundle import Bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.reads import InputReads, rule_reads
from mcp_guard.settings import DecisionCacheSettings
from mcp_guard.types import Decision, PolicyInput, new_id

__all__ = ["CacheStats", "CachedEngine", "decision_key", "project"]

log = structlog.get_logger(__name__)

_MISSING = object()


@dataclass(slots=True)
class CacheStats:
    """What the cache has done since start, for ``/metrics`` (:mod:`mcp_guard.frontend.ops`).

    Plain integers bumped in place on the evaluation path (one addition each, nothing built per call);
    a scrape reads them. Every evaluation is exactly one of ``hits``, ``misses`` or ``uncacheable``; every
    entry that leaves the cache other than by being replaced is one of ``evicted``, ``expired`` or
    ``invalidated``."""

    hits: int = 0
    misses: int = 0
    uncacheable: int = 0  # evaluations the cache could not key (bundle not cacheable, key too large, not JSON)
    evicted: int = 0  # entries pushed out, least recently used first, to stay within ``size``
    expired: int = 0  # entries found past their ``ttl_s`` by a lookup (then dropped: the lookup is a miss)
    invalidated: int = 0  # entries dropped because the bundle revision changed (a reload, a data overlay)


@dataclass(frozen=True, slots=True)
class _Entry:
    decision: Decision
    obligations_json: str | None  # a fresh copy per hit, so no caller can alter the remembered one
    expires: float


def _at(document: Mapping[str, Any], path: tuple[str, ...]) -> object:
    value: object = document
    for seg in path:
        # A plain dict (every object of an input document PolicyInput builds) skips the Mapping ABC's check.
        if not (type(value) is dict or isinstance(value, Mapping)) or seg not in value:
            return _MISSING
        value = value[seg]
    return value


# json.dumps with these arguments, its encoder built once (json.dumps builds one per call when given arguments).
_KEY_TEXT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


def decision_key(values: Sequence[object], *, max_bytes: int) -> str | None:
    """The exact key of the read fields' ``values`` (:func:`_at` of each read path), or None when it cannot be
    keyed.

    One entry per read path: ``[]`` when absent, ``[value]`` when present, so an absent field and a
    ``null`` one differ. The JSON is what the engine would see (keys sorted), so equal keys mean inputs
    the decision rule cannot tell apart."""
    parts = [[] if v is _MISSING else [v] for v in values]
    try:
        key = _KEY_TEXT(parts)
    except (TypeError, ValueError):
        return None  # the engine refuses it too (engine_error); nothing to remember
    return key if len(key) <= max_bytes else None


def project(paths: Sequence[tuple[str, ...]], values: Sequence[object]) -> dict[str, Any]:
    """The input document cut down to the read fields: what the engine is asked on a miss.

    The decision rule observes the input only through these paths (that is what :func:`input_reads`
    establishes), and the projection has the same value — or the same absence — at each of them, so it
    gets the same decision as the whole document; regorus is spared parsing what no rule reads (a flow's
    history, the usage counters, the session). The paths are minimal (none inside another), so no value
    is overwritten by another path's intermediate object."""
    out: dict[str, Any] = {}
    for path, value in zip(paths, values, strict=True):
        if value is _MISSING:
            continue
        node = out
        for seg in path[:-1]:
            node = node.setdefault(seg, {})
        node[path[-1]] = value
    return out


class CachedEngine:
    """A :class:`~mcp_guard.policy.base.RegoEngine` in front of an :class:`EmbeddedEngine`."""

    def __init__(
        self,
        inner: EmbeddedEngine,
        settings: DecisionCacheSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._size = settings.size
        self._ttl = settings.ttl_s
        self._max_key = settings.max_key_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.stats = CacheStats()
        self._analysed: Bundle | None = None
        self._reads = InputReads((), "not analysed")
        self._analyse()

    # ----------------------------------------------------------------- the engine, delegated

    @property
    def inner(self) -> EmbeddedEngine:
        return self._inner

    @property
    def revision(self) -> str:
        return self._inner.revision

    @revision.setter
    def revision(self, value: str) -> None:  # pragma: no cover - the protocol declares a plain attribute
        self._inner.revision = value

    @property
    def bundle(self) -> Bundle:
        return self._inner.bundle

    @property
    def rule(self) -> str:
        return self._inner.rule

    @property
    def ready(self) -> bool:
        return self._inner.ready

    @property
    def problem(self) -> str | None:
        return self._inner.problem

    @property
    def reads(self) -> InputReads:
        """What the active bundle's decision depends on (``uncacheable`` says why not, when it cannot be kept)."""
        return self._reads

    def reload(self, bundle: Bundle) -> None:
        """:meth:`EmbeddedEngine.reload`, then the new bundle's read set (the old decisions are dropped)."""
        self._inner.reload(bundle)
        self._analyse()

    async def aclose(self) -> None:
        await self._inner.aclose()

    # ----------------------------------------------------------------------------- caching

    @property
    def entries(self) -> int:
        """Decisions held right now (at most ``size``)."""
        return len(self._entries)

    def _analyse(self) -> None:
        bundle = self._inner.bundle
        self.stats.invalidated += len(self._entries)
        self._entries.clear()
        self._reads = rule_reads(bundle, self._inner.rule)
        self._analysed = bundle
        if self._reads.cacheable:
            log.info(
                "policy.decision_cache",
                revision=bundle.revision,
                enabled=True,
                reads=[".".join(p) for p in self._reads.paths],
            )
        else:
            log.info("policy.decision_cache", revision=bundle.revision, enabled=False, why=self._reads.uncacheable)

    async def evaluate(self, input: PolicyInput) -> Decision:
        return await self.evaluate_document(input.to_dict())

    async def evaluate_document(self, document: Mapping[str, Any]) -> Decision:
        decision, asked = self._answer(document)
        if asked:  # the engine ran (hundreds of µs, synchronously): let the loop serve others before going on
            await anyio.lowlevel.checkpoint()
        return decision  # a remembered answer took µs: no loop turn for it (the call awaits I/O soon enough)

    def evaluate_sync(self, document: Mapping[str, Any]) -> Decision:
        """Answer from memory when the key is known and fresh, else ask the engine (and remember a policy-made
        decision). Never raises for a policy problem, like the engine."""
        return self._answer(document)[0]

    def _answer(self, document: Mapping[str, Any]) -> tuple[Decision, bool]:
        """:meth:`evaluate_sync`, and whether the engine was asked (False: the answer came from memory)."""
        if self._inner.bundle is not self._analysed:
            self._analyse()  # reloaded behind our back: never key on the old bundle's read set
        revision = self._inner.revision
        if not self._reads.cacheable:
            self.stats.uncacheable += 1
            return self._inner.evaluate_sync(document), True
        values = [_at(document, p) for p in self._reads.paths]
        key = decision_key(values, max_bytes=self._max_key)
        if key is None:
            self.stats.uncacheable += 1
            return self._inner.evaluate_sync(project(self._reads.paths, values)), True
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > now and entry.decision.revision == revision:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return self._fresh(entry), False
            self._drop_stale(key, entry, now)
        self.stats.misses += 1
        decision = self._inner.evaluate_sync(project(self._reads.paths, values))
        if decision.code is None and decision.revision == revision:
            self._remember(key, decision, now)
        return decision, True

    def _drop_stale(self, key: str, entry: _Entry, now: float) -> None:
        """Forget an entry a lookup found unusable, counted by why (a revision change wins over age)."""
        del self._entries[key]
        if entry.expires <= now and entry.decision.revision == self._inner.revision:
            self.stats.expired += 1
        else:
            self.stats.invalidated += 1

    @staticmethod
    def _fresh(entry: _Entry) -> Decision:
        obligations = json.loads(entry.obligations_json) if entry.obligations_json is not None else {}
        return evolve(entry.decision, decision_id=new_id(), obligations=obligations)

    def _remember(self, key: str, decision: Decision, now: float) -> None:
        try:
            obligations = json.dumps(dict(decision.obligations)) if decision.obligations else None
        except (TypeError, ValueError):  # pragma: no cover - obligations come from JSON
            return
        self._entries[key] = _Entry(decision, obligations, now + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
            self.stats.evicted += 1
