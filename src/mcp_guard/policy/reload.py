"""Hot reload: watch the bundle directory and swap in a new bundle when it changes.

Every ``interval`` seconds the watcher re-reads the bundle (a handful of small files) and the site's
``data_overlay`` files, merges and schema-checks them (:func:`~mcp_guard.policy.bundle.load_bundle`), and
compares the revision with the active one: an edited overlay is a new revision like an edited policy.
A changed bundle is loaded, its tests are run (``[policy] run_tests_on_reload``) and only then handed
to the engine; a bundle that does not parse, whose data (overlays included) its schema rejects, whose
tests fail, or that the engine rejects is refused — the last good bundle stays active — and the same broken
revision is not retried until the files change again — except when the engine could not be reached
(OPA down, :class:`~mcp_guard.policy.base.EngineUnavailable`): that is not a verdict on the bundle, so
the same revision is tried again on the next look. Every outcome is logged (``policy.reload``) and
passed to an optional listener (the composition root audits it as ``policy.load``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import structlog

from mcp_guard.errors import PolicyError
from mcp_guard.policy.base import EngineUnavailable
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.runner import gate_tests

__all__ = ["BundleWatcher", "ReloadEvent", "ReloadListener"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    status: Literal["loaded", "rejected"]
    bundle: str
    revision: str | None  # the new bundle's revision (None when it could not even be read)
    active_revision: str  # the revision in force after the event
    error: str | None = None


ReloadListener = Callable[[ReloadEvent], Awaitable[None]]
Apply = Callable[[Bundle], Awaitable[None]]


class BundleWatcher:
    def __init__(
        self,
        root: Path,
        apply: Apply,
        *,
        active_revision: str,
        interval: float = 1.0,
        run_tests: bool = True,
        embedded: bool = True,
        listener: ReloadListener | None = None,
        load: Callable[[Path], Bundle] = load_bundle,
        before_check: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._root = root
        self._load = load  # load_bundle, or with [policy.signing] the loader that also verifies the signature
        self._before_check = before_check  # e.g. re-read the pinned revision (policy/history.PinnedSource)
        self._apply = apply
        self._active = active_revision
        self._interval = interval
        self._run_tests = run_tests
        self._embedded = embedded
        self._listener = listener
        self._last_rejected: str | None = None
        self._last_read_error: str | None = None
        self._last_unavailable: tuple[str, str] | None = None

    @property
    def active_revision(self) -> str:
        return self._active

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            await self.check()

    async def check(self) -> ReloadEvent | None:
        """Look once; returns the event if something was loaded or refused."""
        if self._before_check is not None:
            await self._before_check()
        try:
            bundle = self._load(self._root)
        except PolicyError as e:
            if str(e) == self._last_read_error:
                return None
            self._last_read_error = str(e)
            return await self._emit(ReloadEvent("rejected", str(self._root), None, self._active, str(e)))
        self._last_read_error = None
        if bundle.revision in (self._active, self._last_rejected):
            return None
        try:
            if self._run_tests and bundle.tests:
                gate_tests(bundle, embedded=self._embedded)
            await self._apply(bundle)
        except EngineUnavailable as e:
            # not the bundle's fault: try this revision again next time, but report it once
            if self._last_unavailable == (bundle.revision, str(e)):
                return None
            self._last_unavailable = (bundle.revision, str(e))
            return await self._emit(ReloadEvent("rejected", str(self._root), bundle.revision, self._active, str(e)))
        except PolicyError as e:
            self._last_rejected = bundle.revision
            return await self._emit(ReloadEvent("rejected", str(self._root), bundle.revision, self._active, str(e)))
        self._active = bundle.revision
        self._last_unavailable = None
        return await self._emit(ReloadEvent("loaded", str(self._root), bundle.revision, self._active))

    async def _emit(self, event: ReloadEvent) -> ReloadEvent:
        if event.status == "loaded":
            log.info("policy.reload", status="loaded", bundle=event.bundle, revision=event.revision)
        else:
            log.warning(
                "policy.reload",
                status="rejected",
                bundle=event.bundle,
                revision=event.revision,
                active_revision=event.active_revision,
                error=event.error,
            )
        if self._listener is not None:
            await self._listener(event)
        return event
