"""Policy: every request is decided by Rego, in-process (regorus) or by a real OPA server.

``open_engine(settings)`` is the one entry point the proxy uses::

    async with open_engine(settings) as engine:
        decision = await engine.evaluate(policy_input)   # never raises for a policy problem
        decision.revision                                # the bundle revision that decided

``[policy] engine`` picks :class:`EmbeddedEngine` or :class:`OpaEngine`; ``[policy] bundle`` is the
bundle directory (``.rego`` files and ``data.json``). A bundle that does not parse raises
:class:`~mcp_guard.errors.PolicyError` naming the file. With ``hot_reload`` the bundle is watched and
re-loaded on change (:mod:`mcp_guard.policy.reload`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import anyio

from mcp_guard.policy.base import (
    PolicyEngine,
    RegoEngine,
    decision_from_result,
)
from mcp_guard.policy.bundle import Bundle, load_bundle, rule_ref
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.opa import OpaEngine, connect, push_bundle, remote_revision
from mcp_guard.policy.reload import BundleWatcher, ReloadEvent, ReloadListener
from mcp_guard.settings import Settings

__all__ = [
    "Bundle",
    "BundleWatcher",
    "EmbeddedEngine",
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

RELOAD_INTERVAL_S = 1.0


def open_engine(
    settings: Settings,
    *,
    on_reload: ReloadListener | None = None,
    watch: bool | None = None,
    on_watcher: Callable[[BundleWatcher], None] | None = None,
) -> AbstractAsyncContextManager[RegoEngine]:
    """The engine ``[policy]`` asks for, as an async context manager.

    ``on_reload`` is awaited after every hot-reload attempt (loaded or rejected); ``watch`` overrides
    ``[policy] hot_reload`` (one-shot commands pass ``False``). ``on_watcher`` receives the engine's
    :class:`BundleWatcher` when the engine can take a new bundle (embedded, or OPA with ``push_bundle``),
    polling or not, so a caller can ask for a reload now (``BundleWatcher.check``, e.g. on SIGHUP).
    """
    return _open_engine(settings, on_reload=on_reload, watch=watch, on_watcher=on_watcher)


@asynccontextmanager
async def _open_engine(
    settings: Settings,
    *,
    on_reload: ReloadListener | None,
    watch: bool | None,
    on_watcher: Callable[[BundleWatcher], None] | None = None,
) -> AsyncIterator[RegoEngine]:
    p = settings.policy
    root = settings.resolve_path(p.bundle)
    engine: RegoEngine
    apply: Callable[[Bundle], Awaitable[None]]
    async with AsyncExitStack() as stack:
        if p.engine == "embedded":
            bundle = load_bundle(root)
            embedded = EmbeddedEngine(bundle, decision=p.decision, timeout_ms=p.timeout_ms)

            async def apply_embedded(new: Bundle) -> None:
                embedded.reload(new)

            engine, revision, apply = embedded, bundle.revision, apply_embedded
        else:
            client = await stack.enter_async_context(connect(p.opa_url))
            if p.push_bundle:
                pushed = load_bundle(root)
                await push_bundle(client, pushed)
                revision = pushed.revision
            else:
                revision = await remote_revision(client)
            opa = OpaEngine(client, decision=p.decision, timeout_ms=p.timeout_ms, revision=revision)

            async def apply_opa(new: Bundle) -> None:
                await push_bundle(client, new)
                opa.revision = new.revision

            engine, apply = opa, apply_opa
        stack.push_async_callback(engine.aclose)
        reloadable = p.engine == "embedded" or p.push_bundle
        watching = (p.hot_reload if watch is None else watch) and reloadable
        async with anyio.create_task_group() as tg:
            if watching or (reloadable and on_watcher is not None):
                watcher = BundleWatcher(
                    root,
                    apply,
                    active_revision=revision,
                    interval=RELOAD_INTERVAL_S,
                    run_tests=p.run_tests_on_reload,
                    listener=on_reload,
                )
                if on_watcher is not None:
                    on_watcher(watcher)
                if watching:
                    tg.start_soon(watcher.run)
            try:
                yield engine
            finally:
                tg.cancel_scope.cancel()
