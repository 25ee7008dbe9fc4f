"""Rate limits: ``obligations.rate_limit`` is enforced against shared counters, and the policy sees usage.

**The obligation.** ``"rate_limit": [{"key": "tool_calls|alice|tickets|create_ticket", "limit": 5,
"window_s": 60}, …]`` — at most ``limit`` allowed calls per ``window_s`` seconds for each key.
:class:`RateLimitObligation` (the handler registered under ``rate_limit``) asks the state store to
admit the call: every limit is checked and, only if all have room, one hit is counted in each — all
or nothing, atomically across processes (:meth:`~mcp_guard.state.base.StateStore.admit`). The windows
are exact sliding logs (the module docstring of :mod:`mcp_guard.state.base` says why and how precise).

* **Keys are the policy's.** mcp-guard never adds the session to a key, so a new MCP session — or a
  2026-07-28 client, each of whose requests is a new session — counts against the same limit.
* **Only allowed calls count.** The handler does not write: it adds its admission to the call's one
  state batch (:class:`~mcp_guard.pipeline.obligations.StateWrite`), which ``EnforceObligations`` commits
  once every obligation has let the call through — so a call another obligation refuses is never counted,
  and one whose flow cannot take it (``flow_limit``, the ``labels`` op of the same batch) is rolled back
  with it. A call that is not forwarded after all (the allow row cannot be recorded:
  ``audit_unavailable``) is taken back. A denied call — by policy, by another stage, or by this limit —
  counts nothing. A forwarded call counts whatever the upstream answered.
* **The deny** is ``rate_limited`` and says which limits are full and ``retry after N s``
  (``retry_after_s=N``): N is rounded up, so a retry then finds room unless other calls took it.
* **Fail closed.** If the store cannot answer within ``[audit] state_timeout_ms`` (unwritable file,
  locked, timed out) the call is denied with ``state_unavailable`` and the cause; a limit that cannot be
  checked is not skipped.
* A malformed value is ``obligation_invalid`` (:func:`parse_limits` names the entry and field).

**Usage in the policy input.** A policy can only use counts for keys it can name before it decides,
so mcp-guard fills ``input.context.usage`` — ``{key: hits in the window now}`` — for the keys the
bundle *declares* in ``data.mcp_guard_config.limits.rate``::

    {"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": 300, "window_s": 60,
     "actions": ["tools/call"]}

A declaration's key is its ``name`` and the values of its ``by`` fields (``principal``, ``server``,
``tool``: the input's ``principal.id``, ``server`` and ``tool``) joined with ``|``, e.g.
``tool_calls|alice|tickets|create_ticket``; ``actions`` defaults to ``["tools/call"]``. The default
bundle builds its ``rate_limit`` obligation from the same declarations (policies/rego/mcp_guard/limits.rego),
so the usage a rule reads is the counter the obligation enforces. :class:`DeclaredUsage` reads them
before evaluation (one store read per call) — but only when the bundle's decision can read
``context.usage`` at all (:class:`UsageRead`, from the read set the decision cache keys on): the shipped
bundle declares limits yet never reads usage, so it pays no read; its audited input then carries an
empty ``context.usage``. Keys a policy builds some other way (from arguments, say) are enforced all the
same but have no usage entry. With no declarations nothing is read: a bundle without limits pays nothing.
Declarations are read from the loaded bundle of the embedded engine;
with the OPA engine mcp-guard does not hold the bundle's data, and ``context.usage`` is empty.
(Rejected alternative: the usage of the keys this principal's previous decision named. It shows nothing
on the first call to a tool, after a restart, or for a key shared with other principals, so a tiered
rule could be walked around by alternating tools.)

A call cancelled by the client after it was counted stays counted: it may have reached the upstream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from typing import Any, Final, TypeGuard

import structlog

from mcp_guard.errors import StateError
from mcp_guard.pipeline.context import CallContext
from mcp_guard.pipeline.obligations import Refusal, StateWrite
from mcp_guard.policy.base import BundleHolder
from mcp_guard.policy.reads import PathRead
from mcp_guard.state.base import Admission, Admit, Bucket, Limit, OpResult, StateStore, whole_seconds
from mcp_guard.types import ReasonCode

__all__ = [
    "KEY_FIELDS",
    "MAX_LIMITS",
    "DeclaredUsage",
    "RateDeclaration",
    "RateLimitObligation",
    "UsageRead",
    "bundle_data_of",
    "declared_rates",
    "parse_limits",
]

log = structlog.get_logger("mcp_guard.ratelimit")

MAX_LIMITS: Final = 64  # entries in one obligation (one transaction)
MAX_KEY_CHARS: Final = 512
MAX_LIMIT: Final = 10**9
MAX_WINDOW_S: Final = 366 * 24 * 3600.0
_ENTRY_FIELDS: Final = frozenset({"key", "limit", "window_s"})

KEY_FIELDS: Final[Mapping[str, Callable[[CallContext], str]]] = {
    "principal": lambda ctx: ctx.principal.id,
    "server": lambda ctx: ctx.server,
    "tool": lambda ctx: ctx.target,
}
"""The ``by`` fields of a declaration and the input value each stands for."""


# ---------------------------------------------------------------------- the obligation
def parse_limits(value: object) -> list[Limit] | str:
    """The limits of an ``obligations.rate_limit`` value, or what is wrong with it (for ``obligation_invalid``)."""
    if not isinstance(value, list):
        return f"obligations.rate_limit must be a list of {{key, limit, window_s}} objects, got {_type(value)}"
    if len(value) > MAX_LIMITS:
        return f"obligations.rate_limit has {len(value)} entries, at most {MAX_LIMITS} are allowed"
    limits: list[Limit] = []
    for i, entry in enumerate(value):
        at = f"obligations.rate_limit[{i}]"
        if not isinstance(entry, dict):
            return f"{at} must be an object {{key, limit, window_s}}, got {_type(entry)}"
        extra = sorted(set(entry) - _ENTRY_FIELDS)
        if extra:
            return f"{at} has unknown field(s) {', '.join(map(repr, extra))} (expected key, limit, window_s)"
        key, limit, window = entry.get("key"), entry.get("limit"), entry.get("window_s")
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            return f"{at}.key must be a non-empty string of at most {MAX_KEY_CHARS} characters, got {_type(key)}"
        if not _is_int(limit) or not 1 <= limit <= MAX_LIMIT:
            return f"{at}.limit must be an integer from 1 to {MAX_LIMIT}, got {_shown(limit)}"
        if not _is_number(window) or not 0 < window <= MAX_WINDOW_S:
            return f"{at}.window_s must be seconds above 0 and at most {MAX_WINDOW_S:.0f}, got {_shown(window)}"
        limits.append(Limit(key, int(limit), float(window)))
    return limits


class RateLimitObligation:
    """The ``rate_limit`` obligation: admit the call against the policy's limits, or deny ``rate_limited``."""

    name = "rate_limit"
    always = False

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | StateWrite | None:
        limits = parse_limits(value)
        if isinstance(limits, str):
            return Refusal(ReasonCode.OBLIGATION_INVALID, limits)
        if not limits:
            return None
        return StateWrite(self._store, (Admit(tuple(limits)),), _limited, partial(_unavailable, ctx))


def _unavailable(ctx: CallContext, e: StateError) -> Refusal:
    log.error("ratelimit.state_unavailable", error=str(e), call_id=ctx.call_id, stage="admit")
    return Refusal(
        ReasonCode.STATE_UNAVAILABLE,
        f"the rate-limit counters cannot be used ({e.cause}), so this call's limits cannot be checked; "
        "mcp-guard refuses calls it cannot count",
    )


def _limited(admission: OpResult) -> Refusal:
    assert isinstance(admission, Admission) and not admission.admitted, "called for a refused admission"
    seconds = whole_seconds(admission.retry_after_s)
    full = "; ".join(f"{lim.key!r} allows {lim.limit} per {_seconds(lim.window_s)} s" for lim in admission.full)
    return Refusal(
        ReasonCode.RATE_LIMITED, f"rate limit reached: {full}; retry after {seconds} s (retry_after_s={seconds})"
    )


# ---------------------------------------------------------------------- usage for the policy input
@dataclass(frozen=True, slots=True)
class RateDeclaration:
    """One entry of ``data.mcp_guard_config.limits.rate`` (the parts usage needs)."""

    name: str
    by: tuple[str, ...]
    window_s: float
    actions: tuple[str, ...] = ("tools/call",)

    def key(self, ctx: CallContext) -> str:
        return "|".join([self.name, *(KEY_FIELDS[f](ctx) for f in self.by)])

    def applies_to(self, action: str) -> bool:
        """Whether the declaration's ``actions`` (names or globs, as in limits.rego) cover ``action``."""
        return any(fnmatchcase(action, pattern) for pattern in self.actions)


def declared_rates(data: Mapping[str, Any]) -> tuple[tuple[RateDeclaration, ...], list[str]]:
    """The well-formed declarations in bundle data, and a problem line for each one skipped.

    A skipped declaration gets no usage entry; the bundle's own rule (limits.rego) turns the same
    malformed declaration into an invalid obligation, so the call is refused rather than unlimited.
    """
    config = data.get("mcp_guard_config")
    limits = config.get("limits") if isinstance(config, dict) else None
    rate = limits.get("rate", []) if isinstance(limits, dict) else []
    if not isinstance(rate, list):
        return (), [f"limits.rate is {_type(rate)}, expected a list"]
    found: list[RateDeclaration] = []
    problems: list[str] = []
    for i, d in enumerate(rate):
        decl = _declaration(d)
        if isinstance(decl, str):
            problems.append(f"limits.rate[{i}]: {decl}")
        else:
            found.append(decl)
    return tuple(found), problems


def _declaration(d: object) -> RateDeclaration | str:
    if not isinstance(d, dict):
        return f"expected an object, got {_type(d)}"
    name, by, window, actions = d.get("name"), d.get("by", []), d.get("window_s"), d.get("actions", ["tools/call"])
    if not isinstance(name, str) or not name:
        return "name must be a non-empty string"
    if not isinstance(by, list) or not all(isinstance(f, str) and f in KEY_FIELDS for f in by):
        return f"by must be a list of {', '.join(KEY_FIELDS)}"
    if not _is_number(window) or not 0 < window <= MAX_WINDOW_S:
        return "window_s must be a positive number of seconds"
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        return "actions must be a list of strings"
    return RateDeclaration(name, tuple(by), float(window), tuple(actions))


def bundle_data_of(engine: object) -> Callable[[], Mapping[str, Any]] | None:
    """Where the declarations are read: the data of the bundle an embedded engine has loaded (re-read after a
    hot reload), or None for an engine that does not hold its bundle (OPA, test engines)."""
    if not isinstance(engine, BundleHolder):
        return None

    def data() -> Mapping[str, Any]:
        loaded = getattr(engine.bundle, "data", None)
        return loaded if isinstance(loaded, Mapping) else {}

    return data


_USAGE: Final = ("context", "usage")


class UsageRead(PathRead):
    """Whether any of ``engines`` can read ``input.context.usage``: the one evaluating the call, and the shadow
    candidate that is asked the same input (:class:`~mcp_guard.policy.reads.PathRead`)."""

    def __init__(self, *engines: object) -> None:
        super().__init__(_USAGE, *engines)


class DeclaredUsage:
    """``context.usage`` for the declared keys of this call: ``{key: hits in its window now}``.

    One store read per call when the bundle declares limits for the call's action *and* can read the usage
    (``reads``: :class:`UsageRead`); none otherwise — the shipped bundle builds its obligation from the
    declarations but never reads ``context.usage``, so its calls read no counter before the decision. A
    key declared with two windows (two declarations of one name) shows the larger count. May raise
    StateError (Authorize then denies ``state_unavailable``).
    """

    def __init__(
        self, store: StateStore, data: Callable[[], Mapping[str, Any]], reads: Callable[[], bool] = lambda: True
    ) -> None:
        self._store = store
        self._data = data
        self._reads = reads
        self._seen: Mapping[str, Any] | None = None
        self._declarations: tuple[RateDeclaration, ...] = ()

    def declarations(self) -> tuple[RateDeclaration, ...]:
        """The current bundle's declarations (parsed once per loaded bundle)."""
        data = self._data()
        if data is not self._seen:
            self._declarations, problems = declared_rates(data)
            self._seen = data
            for problem in problems:
                log.warning("ratelimit.declaration_skipped", problem=problem)
        return self._declarations

    def in_use(self) -> bool:
        """Whether any call could read a counter: the bundle declares limits and its decision can read usage."""
        return bool(self.declarations()) and self._reads()

    def buckets(self, ctx: CallContext) -> dict[Bucket, str]:
        """The buckets declared for this call, each with the key the policy sees."""
        return {(d.key(ctx), d.window_s): d.key(ctx) for d in self.declarations() if d.applies_to(ctx.action)}

    async def usage(self, ctx: CallContext) -> Mapping[str, int]:
        if not self._reads():
            return {}
        wanted = self.buckets(ctx)
        if not wanted:
            return {}
        counts = await self._store.usage(list(wanted))
        usage: dict[str, int] = {}
        for bucket, key in wanted.items():
            usage[key] = max(usage.get(key, 0), counts.get(bucket, 0))
        return usage


# ---------------------------------------------------------------------- small helpers
def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[int | float]:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _type(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )


def _seconds(window_s: float) -> str:
    return str(int(window_s)) if window_s.is_integer() else f"{window_s:g}"


def _shown(v: object) -> str:
    return repr(v) if _is_number(v) else _type(v)
