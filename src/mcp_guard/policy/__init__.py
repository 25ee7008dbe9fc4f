"""Policy: every request is decided by Rego, in-process (regorus) or by a real OPA server.

``open_engine(settings)`` is the one entry point the proxy uses::

    async with open_engine(settings) as engine:
        decision = await engine.evaluate(policy_input)   # never raises for a policy problem
        decision.revision                                # the bundle revision that decided
        engine.ready, engine.problem                     # EngineHealth, for /readyz

``[policy] engine`` picks :class:`EmbeddedEngine` (behind the decision cache, :class:`CachedEngine`, unless
``[policy.decision_cache] enabled = false``) or :class:`OpaEngine`; ``[policy] bundle`` is the
bundle directory (``.rego`` files and ``data.json``), ``[policy] data_overlay`` the site's JSON merged
over its data (:mod:`mcp_guard.policy.overlay`). Start-up refuses, with a one-line
:class:`~mcp_guard.errors.PolicyError` naming the file (and rule, or test):

* data that the bundle's ``data.schema.json`` rejects, naming the file and the key;
* a bundle that does not parse, or that fails the static check OPA's compiler would fail
  (:mod:`mcp_guard.policy.lint`; embedded engine — OPA checks a pushed bundle itself);
* a bundle whose ``test_*`` rules fail, with ``run_tests_on_start`` (the bundle mcp-guard loads:
  embedded, or pushed to OPA);
* a bundle OPA rejects when it is pushed;
* with ``[policy.signing]``, a bundle whose ``.signatures.json`` does not verify
  (:mod:`mcp_guard.policy.signing`; at every reload too).

A revision pinned by ``mcp-guard policy rollback`` is loaded instead of the bundle directory until the pin
is cleared (:mod:`mcp_guard.policy.history`, ``source=``).

OPA being unreachable is *not* a start-up failure: the engine starts not ready, denies with
``engine_error``, and reconnects by itself (:meth:`OpaEngine.maintain`). With ``hot_reload`` the
bundle is watched and re-loaded on change (:mod:`mcp_guard.policy.reload`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import structlog

from mcp_guard.policy.base import (
    EngineHealth,
    EngineUnavailable,
    PolicyEngine,
    RegoEngine,
    decision_from_result,
)
from mcp_guard.policy.bundle import Bundle, load_bundle, rule_ref
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.history import PinnedSource
from mcp_guard.policy.opa import OpaEngine, OpaUnavailable, connect
from mcp_guard.policy.reload import BundleWatcher, ReloadEvent, ReloadListener
from mcp_guard.policy.runner import gate_tests
from mcp_guard.policy.signing import bundle_loader
from mcp_guard.settings import Settings

__all__ = [
    "Bundle",
    "BundleWatcher",
    "CachedEngine",
    "EmbeddedEngine",
    "EngineHealth",
    "EngineUnavailable",
    "OpaEngine",
    "PolicyEngine",
    "RegoEngine",
    "ReloadEvent",
    "ReloadListener",
    "decision_from_result",
    "load_bundle",
    "open_engine",
    "rule_ref",
]

log = structlog.get_logger(__name__)

RELOAD_INTERVAL_S = 1.0

ActivateListener = Callable[[Bundle], Awaitable[None]]


def _recording(
    apply: Callable[[Bundle], Awaitable[None]], on_activate: ActivateListener | None
) -> Callable[[Bundle], Awaitable[None]]:
    """``apply``, then ``on_activate`` with the bundle it made active (not called when apply refused it)."""
    if on_activate is None:
        return apply

    async def apply_and_record(bundle: Bundle) -> None:
        await apply(bundle)
        await on_activate(bundle)

    return apply_and_record


def open_engine(
    settings: Settings,
    *,
    on_reload: ReloadListener | None = None,
    watch: bool | None = None,
    on_watcher: Callable[[BundleWatcher], None] | None = None,
    run_tests: bool | None = None,
    source: PinnedSource | None = None,
    on_activate: ActivateListener | None = None,
) -> AbstractAsyncContextManager[RegoEngine]:
    """The engine ``[policy]`` asks for, as an async context manager.

    ``on_reload`` is awaited after every hot-reload attempt (loaded or rejected), and when an OPA that
    was unreachable has the policy again; ``watch`` overrides ``[policy] hot_reload`` and ``run_tests``
    ``[policy] run_tests_on_start`` (one-shot commands such as ``policy eval`` pass ``False`` for both).
    ``on_watcher`` receives the engine's :class:`BundleWatcher` when the engine can take a new bundle
    (embedded, or OPA with ``push_bundle``), polling or not, so a caller can ask for a reload now
    (``BundleWatcher.check``, e.g. on SIGHUP).

    ``source`` (:class:`~mcp_guard.policy.history.PinnedSource`) substitutes a pinned revision's files for the
    bundle directory (a rollback); it is refreshed before the first load and before every reload look.
    ``on_activate`` is awaited with each bundle a reload made active (the composition root keeps it in the
    bundle history).
    """
    return _open_engine(
        settings,
        on_reload=on_reload,
        watch=watch,
        on_watcher=on_watcher,
        run_tests=run_tests,
        source=source,
        on_activate=on_activate,
    )


@asynccontextmanager
async def _open_engine(
    settings: Settings,
    *,
    on_reload: ReloadListener | None,
    watch: bool | None,
    on_watcher: Callable[[BundleWatcher], None] | None = None,
    run_tests: bool | None = None,
    source: PinnedSource | None = None,
    on_activate: ActivateListener | None = None,
) -> AsyncIterator[RegoEngine]:
    p = settings.policy
    root = settings.resolve_path(p.bundle)
    gate = p.run_tests_on_start if run_tests is None else run_tests
    load_dir = bundle_loader(settings)  # with [policy.signing], every load verifies the bundle's signature
    if source is not None:
        await source.refresh()

    def load(where: Path) -> Bundle:
        return load_dir(source.root_for(where) if source is not None else where)

    engine: RegoEngine
    apply: Callable[[Bundle], Awaitable[None]]
    maintain: Callable[[], Coroutine[Any, Any, None]] | None = None
    async with AsyncExitStack() as stack:
        if p.engine == "embedded":
            bundle = load(root)
            embedded = EmbeddedEngine(bundle, decision=p.decision, timeout_ms=p.timeout_ms)
            if gate and bundle.tests:
                gate_tests(bundle)
            # [policy.decision_cache]: decisions keyed on the input fields the bundle reads (policy/cache.py)
            local: EmbeddedEngine | CachedEngine = (
                CachedEngine(embedded, p.decision_cache) if p.decision_cache.enabled else embedded
            )

            async def apply_embedded(new: Bundle) -> None:
                local.reload(new)

            engine, revision, apply = local, bundle.revision, apply_embedded
        else:
            client = await stack.enter_async_context(connect(p.opa_url))
            pushed = load(root) if p.push_bundle else None
            if pushed is not None and gate and pushed.tests:
                gate_tests(pushed, embedded=False)
            opa = OpaEngine(
                client,
                decision=p.decision,
                timeout_ms=p.timeout_ms,
                revision=pushed.revision if pushed else "",
                bundle=pushed,
                ready=False,
            )
            try:
                await opa.connect()
            except OpaUnavailable as e:
                log.warning("policy.start_not_ready", engine="opa", problem=str(e))

            async def recovered() -> None:
                if on_reload is not None:
                    source = str(root) if pushed is not None else p.opa_url
                    await on_reload(ReloadEvent("loaded", source, opa.revision, opa.revision))

            engine, revision, apply = opa, opa.revision, opa.install
            maintain = partial(opa.maintain, recovered)  # reconnects whenever OPA has gone away
        stack.push_async_callback(engine.aclose)
        apply = _recording(apply, on_activate)
        reloadable = p.engine == "embedded" or p.push_bundle
        watching = (p.hot_reload if watch is None else watch) and reloadable
        async with anyio.create_task_group() as tg:
            if maintain is not None:
                tg.start_soon(maintain)
            if watching or (reloadable and on_watcher is not None):
                watcher = BundleWatcher(
                    root,
                    apply,
                    active_revision=revision,
                    interval=RELOAD_INTERVAL_S,
                    run_tests=p.run_tests_on_reload,
                    embedded=p.engine == "embedded",
                    listener=on_reload,
                    load=load,
                    before_check=source.refresh if source is not None else None,
                )
                if on_watcher is not None:
                    on_watcher(watcher)
                if watching:
                    tg.start_soon(watcher.run)
            try:
                yield engine
            finally:
                tg.cancel_scope.cancel()
