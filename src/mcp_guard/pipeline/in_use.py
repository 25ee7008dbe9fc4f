"""Which stages a call runs through now: only the ones in use, recomposed when what decides that changes.

Several stages are pass-throughs unless a feature is in use (``TrackFlow``: the bundle uses flows;
``ShadowPolicy``: a ``[policy] shadow_bundle`` candidate) or can be narrowed (``Authorize`` without its usage
source when no declared limit can be read; ``EnforceObligations`` with the ``labels`` handler not run on every
call when the bundle does not use flows). A pass-through is not free: every stage is a frame and an awaitable
per call. So the pipeline (:class:`InUsePipeline`) composes the full stage list
(:func:`mcp_guard.pipeline.build.pipeline_stages`, in its documented order) down to what is in use, and composes
it again when that may have changed.

**Each stage answers for itself** (:class:`AsUsed`): ``as_used()`` is the stage as the current bundle and
upstreams need it — itself, a narrower copy, or None (not needed). The reasons live with the stages (their
``FlowUse``, ``DeclaredUsage``, the candidate), so this module keeps no list of
stages or features. A stage without ``as_used`` is always kept as it is.

**What decides, and why a per-call check rather than pushed rebuilds.** Every answer depends only on

* the engine's loaded bundle — by identity: the engine swaps its ``bundle`` object on every activation
  (``BundleWatcher.check``: SIGHUP and ``mcp-guard reload``, the watcher's poll, a ``policy rollback`` or
  ``--clear`` pin once the watcher sees it; the embedded engine's ``reload``, OPA's ``install`` with
  ``push_bundle``), and ``FlowUse``, ``ResultUse`` and ``DeclaredUsage`` already key on it;
* settings fixed for the Guard's life (the shadow candidate, ``[policy] result_policy``: a config reload
  applies only ``[upstreams]``, ``[principals]`` and ``[secrets]``, :mod:`mcp_guard.config_diff`).

Pushing a rebuild from every path that changes the bundle would need a hook in both engines and the watcher —
and a path added later without one (or a test swapping a bundle) would leave a stale chain silently: a bundle
that now reads ``context.flow`` deciding on a missing flow. Checking at each call instead costs one property
read and an identity compare (``bundle is seen``), and cannot miss a path: whoever swapped the bundle, the next
call composes anew. The composition itself (a few ``as_used()`` calls and ``build_chain``) runs once per change.

An engine whose bundle mcp-guard does not hold (OPA serving its own policy, test engines) has no bundle to
watch: its stages answer as they always have (flows assumed used, results assumed absent unless forced; no
declarations to read usage for), so nothing that engine could need is dropped.

A call keeps the chain it entered: a reload during a call takes effect at the next one, as a stage that
checked its feature at the call's start already did. So only a stage that answers at the call's start may be
left out; one that asks later stays composed and asks then: ``ExchangeToken`` (a config reload can make an
upstream a ``token_exchange`` one while a call to it waits, e.g. for approval), ``ResultPolicy`` (a bundle with a
result rule can be activated while a call is out: its result is judged by it), ``Redecide`` (whether a call has
input rounds is known only when its upstream answers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import structlog

from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome
from mcp_guard.policy.base import BundleHolder

__all__ = ["AsUsed", "InUsePipeline", "stages_in_use"]

log = structlog.get_logger("mcp_guard.pipeline")


@runtime_checkable
class AsUsed(Protocol):
    """A stage that can be left out or narrowed when its feature is not in use."""

    def as_used(self) -> Interceptor | None:
        """The stage as calls need it now: itself, a narrower copy, or None (not needed at all)."""
        ...


def stages_in_use(stages: Sequence[Interceptor]) -> list[Interceptor]:
    """``stages`` (outermost first) as calls need them now: each :class:`AsUsed` one asked, order kept."""
    out: list[Interceptor] = []
    for stage in stages:
        used = stage.as_used() if isinstance(stage, AsUsed) else stage
        if used is not None:
            out.append(used)
    return out


class InUsePipeline:
    """The pipeline as a ``CallNext``: :func:`stages_in_use` of ``stages``, wrapped by ``wrap`` (stage timers,
    tracing), ending in ``terminal`` — composed again before a call when the engine's bundle changed (the module
    docstring says why that is all that can change)."""

    def __init__(
        self,
        stages: Sequence[Interceptor],
        terminal: CallNext,
        *,
        engine: object,
        wrap: Callable[[list[Interceptor]], list[Interceptor]] = list,
    ) -> None:
        self._all = tuple(stages)
        self._terminal = terminal
        self._wrap = wrap
        # Asked once: an isinstance against a runtime-checkable Protocol costs microseconds.
        self._holder = engine if isinstance(engine, BundleHolder) else None
        self._bundle: object = None
        self._stages: list[Interceptor] = []
        self._chain: CallNext = terminal
        self._compose(logged=False)  # the first composition: flow.tracking and result_policy.enabled say what is on

    @property
    def stages(self) -> list[Interceptor]:
        """The stages calls run through now (before wrapping), outermost first."""
        if self._stale():
            self._compose()
        return list(self._stages)

    def __call__(self, ctx: CallContext) -> Awaitable[Outcome]:
        # The chain's own awaitable, not a coroutine awaiting it: no extra frame per call (as chain._bind).
        if self._stale():
            self._compose()
        return self._chain(ctx)

    def _stale(self) -> bool:
        holder = self._holder
        return holder is not None and holder.bundle is not self._bundle

    def _compose(self, *, logged: bool = True) -> None:
        # What is read first is what the composition answers for: a change after it is seen by the next call.
        self._bundle = self._holder.bundle if self._holder is not None else None
        self._stages = stages_in_use(self._all)
        self._chain = build_chain(self._wrap(list(self._stages)), self._terminal)
        if logged:
            log.info(
                "pipeline.recomposed",
                stages=[type(s).__name__ for s in self._stages],
                revision=getattr(self._bundle, "revision", None),
            )
