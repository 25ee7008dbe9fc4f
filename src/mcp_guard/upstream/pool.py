"""One connection per principal for an upstream whose injected secrets are per principal.

When an upstream's ``inject_env`` / ``inject_headers`` use a per-principal secret
(mcp_guard.secrets.per_principal), one shared child cannot serve everyone: it would hold one user's
credential and act with it for all. :class:`UpstreamPool` instead runs one
:class:`~mcp_guard.upstream.connection.UpstreamConnection` per principal, started on demand with that
principal's injections only — alice's child never holds bob's token, and bob's calls are never sent to
alice's child (a lease is always for the caller's own child).

Bounds: at most ``pool.max`` children; when full, the least recently used child with no call in flight is
stopped to make room (``evicted``), and if every child is busy the call fails (``upstream_unavailable``)
rather than queue without bound. A child unused for ``pool.idle_s`` is stopped (``idle``). Each start and
stop is told to the hooks as ``upstream.pool_start`` / ``upstream.pool_stop`` with the principal — never a
credential.

The pool's catalogue (what listings show) is the one its most recently (re)started or refreshed child
listed; the registry checks every child's listing against the same tool pins, so a child whose definitions
differ from the approved ones is flagged (``tool.pin_changed``) and, under ``pinning = "enforce"``, hidden.
Upstream→client traffic of a child (sampling, elicitation, log messages) is offered only to sessions of the
child's own principal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

import anyio
import httpx2
import mcp_types as types
import structlog
from anyio.abc import TaskGroup

from mcp_guard.channel import Ask, Notice
from mcp_guard.errors import SecretError, UpstreamError
from mcp_guard.settings import UpstreamSettings
from mcp_guard.types import EventKind
from mcp_guard.upstream.connection import Catalog, Injections, UpstreamConnection
from mcp_guard.upstream.era import EraMemory
from mcp_guard.upstream.stdio import StderrTail

__all__ = ["PoolHooks", "UpstreamPool"]

log = structlog.get_logger("mcp_guard.upstream")

StopReason = Literal["idle", "evicted", "exited"]
_ALL_KINDS = frozenset({"tools", "resources", "prompts"})
_MAX_REAP_INTERVAL_S = 5.0


class PoolHooks(Protocol):
    """What a pool reports to (the registry): like UpstreamHooks, with the principal of the child."""

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None: ...
    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None: ...
    async def to_client_of(
        self, upstream: str, principal: str, message: Ask | Notice
    ) -> dict[str, Any] | types.ErrorData | None:
        """Upstream→client traffic of ``principal``'s child: only that principal's sessions may get it."""
        ...


class _ChildTail(StderrTail):
    """A child's own stderr tail that also feeds its pool's ring, each line there labelled with the principal.

    The pool's ring outlives the children: the lines of a child stopped (idle, evicted, crashed) are still there
    to explain why. The lines arrive already scrubbed (the transport scrubs before it appends).
    """

    def __init__(self, pool_tail: StderrTail, principal: str) -> None:
        super().__init__()
        self._pool_tail = pool_tail
        self._principal = principal

    def append(self, line: str) -> None:
        super().append(line)
        self._pool_tail.append(f"[{self._principal}] {line}")


@dataclass(eq=False)
class _Child:
    principal: str
    conn: UpstreamConnection
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    last_used: float = 0.0
    busy: int = 0  # calls in flight
    listed: bool = False  # its catalogue has been handed to the registry


class _ChildHooks:
    """The hooks of one child: its events carry its principal, its traffic goes to that principal only."""

    def __init__(self, pool: UpstreamPool, principal: str) -> None:
        self._pool = pool
        self._principal = principal

    async def catalog_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        await self._pool.child_listed(self._principal, kinds)

    async def state_changed(self, upstream: str, kind: EventKind, details: dict[str, Any]) -> None:
        await self._pool.hooks.state_changed(upstream, kind, {**details, "principal": self._principal})

    @overload
    async def to_client(self, upstream: str, message: Ask) -> dict[str, Any] | types.ErrorData: ...
    @overload
    async def to_client(self, upstream: str, message: Notice) -> None: ...
    async def to_client(self, upstream: str, message: Ask | Notice) -> dict[str, Any] | types.ErrorData | None:
        return await self._pool.hooks.to_client_of(upstream, self._principal, message)


class UpstreamPool:
    """The per-principal children of one upstream (see the module docstring)."""

    def __init__(
        self,
        name: str,
        settings: UpstreamSettings,
        hooks: PoolHooks,
        *,
        injections: Callable[[str], Awaitable[Injections]],
        scrub: Callable[[str], str] = lambda s: s,
        cwd: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        auth: httpx2.Auth | None = None,
        eras: EraMemory | None = None,
    ) -> None:
        self.name = name
        self._auth = auth
        self._eras = eras  # shared by the children: what the upstream speaks does not depend on the principal
        self.settings = settings
        self.hooks = hooks
        self._injections = injections
        self._scrub = scrub
        self._cwd = cwd
        self._clock = clock
        # "ready" once some child has listed the upstream's catalogue (kept while children come and go).
        self.state: Literal["starting", "ready"] = "starting"
        self.catalog = Catalog()
        self._children: dict[str, _Child] = {}
        # The last stderr lines of every child, labelled "[principal] …" (health); restarts and the last error of
        # children that are gone are folded into the two numbers below, so the pool's totals never go down.
        self.stderr_tail = StderrTail()
        self._gone_restarts = 0
        self._last_failure: str | None = None
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._stopped = False  # stop() ran: the reaper ends

    # ------------------------------------------------------------------ what the registry asks
    @property
    def principals(self) -> tuple[str, ...]:
        """The principals with a running child (for diagnostics and tests)."""
        return tuple(self._children)

    @property
    def restarts(self) -> int:
        """Restarts of every child since start (those stopped included)."""
        return self._gone_restarts + sum(c.conn.restarts for c in self._children.values())

    @property
    def last_failure(self) -> str | None:
        """Why a running child last went down, else why a stopped one did (None: never)."""
        failed = [c.conn.last_failure for c in self._children.values() if c.conn.last_failure]
        return failed[-1] if failed else self._last_failure

    def children_health(self) -> dict[str, tuple[str, int, str | None]]:
        """principal → (state, restarts, last failure) of each running child."""
        return {p: (c.conn.state, c.conn.restarts, c.conn.last_failure) for p, c in self._children.items()}

    def child(self, principal: str) -> UpstreamConnection | None:
        c = self._children.get(principal)
        return c.conn if c is not None else None

    async def credential_problem(self, principal: str) -> str | None:
        """Why ``principal`` cannot have a child here (its credential is missing), or None."""
        if principal in self._children:
            return None  # its running child was started with its credential
        try:
            await self._injections(principal)
        except SecretError as e:
            return str(e)
        return None

    @contextlib.asynccontextmanager
    async def lease(self, principal: str) -> AsyncIterator[UpstreamConnection]:
        """``principal``'s own ready connection, started on demand, marked busy while the caller uses it.

        Raises UpstreamError when it cannot start (within ``startup_timeout_s``) or the pool is full of busy
        children.
        """
        child = await self._acquire(principal)  # counted busy from here: neither reaped nor evicted
        try:
            await self._wait_ready(child)
            yield child.conn
        finally:
            child.busy -= 1
            child.last_used = self._clock()

    async def ensure(self, principal: str) -> None:
        """Start ``principal``'s child if it has none, and wait until it is ready (for a listing)."""
        async with self.lease(principal):
            pass

    # ------------------------------------------------------------------ lifecycle
    def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        tg.start_soon(self._reap, name=f"upstream-pool:{self.name}")

    def stop(self) -> None:
        """Stop every child (shutdown, or a reload removed the upstream): no audit rows; the reaper ends."""
        self._stopped = True
        for child in list(self._children.values()):
            child.conn.stop()
            child.scope.cancel()
        self._children.clear()

    async def child_listed(self, principal: str, kinds: frozenset[str]) -> None:
        """A child (re)listed its catalogue: it becomes the pool's, and the registry rebuilds and re-pins."""
        child = self._children.get(principal)
        if child is None:
            return
        child.listed = True
        self.catalog = child.conn.catalog
        self.state = "ready"
        await self.hooks.catalog_changed(self.name, kinds)

    # ------------------------------------------------------------------ internals
    async def _acquire(self, principal: str) -> _Child:
        """``principal``'s child (spawned if it has none), counted busy."""
        async with self._lock:
            child = self._children.get(principal)
            if child is None:
                child = await self._spawn(principal)
            child.busy += 1
            child.last_used = self._clock()
        return child

    async def _wait_ready(self, child: _Child) -> None:
        conn = child.conn
        if not await conn.wait_ready(self.settings.startup_timeout_s):
            raise UpstreamError(
                f"upstream {self.name!r} (connection of principal {child.principal!r}) is {conn.state}: "
                f"{conn.last_error or 'not ready'}",
                upstream=self.name,
            )
        if not child.listed:
            # Ready is signalled before the connection reports its catalogue: make sure the caller's listing
            # (or call) sees the tools of its own child.
            await self.child_listed(child.principal, _ALL_KINDS)

    async def _spawn(self, principal: str) -> _Child:
        if self._tg is None:
            raise UpstreamError(f"upstream {self.name!r} is not running", upstream=self.name)
        if len(self._children) >= self.settings.pool.max:
            idle = [c for c in self._children.values() if c.busy == 0]
            if not idle:
                raise UpstreamError(
                    f"upstream {self.name!r}: all {self.settings.pool.max} per-principal connections are busy "
                    "(pool.max)",
                    upstream=self.name,
                )
            await self._stop_child(min(idle, key=lambda c: c.last_used), "evicted")
        conn = UpstreamConnection(
            self.name,
            self.settings,
            _ChildHooks(self, principal),
            injections=lambda: self._injections(principal),
            scrub=self._scrub,
            cwd=self._cwd,
            auth=self._auth,
            stderr_tail=_ChildTail(self.stderr_tail, principal),
            eras=self._eras,
        )
        conn.attach_task_group(self._tg)
        child = self._children[principal] = _Child(principal, conn, last_used=self._clock())
        self._tg.start_soon(self._run_child, child, name=f"upstream:{self.name}:{principal}")
        log.info("upstream.pool_start", upstream=self.name, principal=principal, children=len(self._children))
        await self.hooks.state_changed(
            self.name, EventKind.UPSTREAM_POOL_START, {"principal": principal, "children": len(self._children)}
        )
        return child

    async def _run_child(self, child: _Child) -> None:
        with child.scope:
            await child.conn.run()
        # run() returned by itself (restart = false and the child exited): it is no longer in the pool.
        if not child.scope.cancel_called and self._children.get(child.principal) is child:
            await self._forget(child, "exited")

    async def _stop_child(self, child: _Child, reason: StopReason) -> None:
        child.conn.stop()
        child.scope.cancel()
        await self._forget(child, reason)

    async def _forget(self, child: _Child, reason: StopReason) -> None:
        if self._children.get(child.principal) is child:
            del self._children[child.principal]
            self._gone_restarts += child.conn.restarts
            self._last_failure = child.conn.last_failure or self._last_failure
        log.info("upstream.pool_stop", upstream=self.name, principal=child.principal, reason=reason)
        await self.hooks.state_changed(
            self.name,
            EventKind.UPSTREAM_POOL_STOP,
            {"principal": child.principal, "reason": reason, "children": len(self._children)},
        )

    async def _reap(self) -> None:
        """Stop the children idle for ``pool.idle_s`` (checked a few times per idle period)."""
        idle_s = self.settings.pool.idle_s
        while not self._stopped:
            await anyio.sleep(min(idle_s / 4, _MAX_REAP_INTERVAL_S))
            now = self._clock()
            async with self._lock:
                for child in list(self._children.values()):
                    if child.busy == 0 and now - child.last_used >= idle_s:
                        try:
                            await self._stop_child(child, "idle")
                        except Exception as e:  # the reaper must outlive one failed report
                            log.warning("upstream.pool_reap_failed", upstream=self.name, error=str(e))
