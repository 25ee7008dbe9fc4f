"""The OPA engine: decisions from a real Open Policy Agent server over its REST API.

Uses ``opa-python-client``'s :class:`AsyncOpaClient` (aiohttp) with one session, so the TCP
connection to OPA is kept alive between decisions. Every query is
``POST /v1/data/<package>/<rule>?strict-builtin-errors=true`` — with strict builtin errors a failing
builtin is an HTTP error (``engine_error``), not a silently undefined expression that could turn a
deny rule off. Each query is bounded by ``timeout_ms`` (``anyio.fail_after``); the client's own
retries are disabled so the budget is the whole story. Fail closed:

* OPA unreachable / connection reset / HTTP error  → ``engine_error``
* slower than ``timeout_ms``                         → ``timeout``
* HTTP 200 without ``result`` (undefined, or no such package/rule) → ``policy_undefined``
* a result that is not a decision object            → ``result_invalid``

With ``[policy] push_bundle = true`` the bundle's policies are uploaded (``PUT /v1/policies/mcp-guard/
<file>``) and each top-level key of its data (``PUT /v1/data/<key>``) on start and on every hot
reload; policies a previous push left behind under the ``mcp-guard/`` id prefix are removed. Policies
are sent exactly as written (Rego v1), never through the client's v0→v1 rewriting. Without a push the
engine uses whatever OPA already serves, and the revision is a hash of the policies OPA reports.

**OPA down is not a crash.** The engine has a readiness state (:attr:`OpaEngine.ready`,
:attr:`OpaEngine.problem`). If OPA cannot be reached at start, or a query finds the connection refused
or reset, the engine is *not ready*: every evaluation is an ``engine_error`` deny naming the problem,
without waiting on the network, and :meth:`OpaEngine.maintain` (a task for the engine's lifetime)
reconnects with backoff — pushing the bundle again when it is configured to, since a restarted OPA has
lost it — and the engine is ready again with no restart. OPA *rejecting* the bundle is not an outage:
at start it is a :class:`~mcp_guard.errors.PolicyError`, like a bundle the embedded engine refuses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import structlog
from opa_client.errors import DeletePolicyError, RegoParseError
from opa_client.opa_async import AsyncOpaClient

from mcp_guard.errors import PolicyError
from mcp_guard.policy.base import EngineUnavailable, decision_from_result
from mcp_guard.policy.bundle import Bundle, BundleFile, rule_ref
from mcp_guard.types import Decision, PolicyInput, ReasonCode

__all__ = [
    "POLICY_ID_PREFIX",
    "RECONNECT_MAX_S",
    "RECONNECT_MIN_S",
    "OpaEngine",
    "OpaUnavailable",
    "connect",
    "push_bundle",
    "remote_revision",
]

log = structlog.get_logger(__name__)

POLICY_ID_PREFIX = "mcp-guard/"
_QUERY_PARAMS = {"strict-builtin-errors": "true"}
_SETUP_TIMEOUT_S = 30.0
# Reconnection backoff while OPA is unreachable (module attributes so tests can shorten them).
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 5.0


class OpaUnavailable(EngineUnavailable):
    """OPA could not be reached (refused, reset, DNS, no answer within the setup timeout)."""


def _split_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"policy.opa_url: {url!r} is not an http(s)://host:port URL")
    if parts.path not in ("", "/"):
        raise PolicyError(f"policy.opa_url: {url!r}: a path prefix is not supported, give scheme://host:port")
    tls = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if tls else 80), tls


@asynccontextmanager
async def connect(url: str, *, timeout_s: float = _SETUP_TIMEOUT_S) -> AsyncIterator[AsyncOpaClient]:
    """An open :class:`AsyncOpaClient` for ``url`` (no retries: callers bound every request)."""
    host, port, tls = _split_url(url)
    async with AsyncOpaClient(host=host, port=port, ssl=tls, retries=0, timeout=timeout_s) as client:
        yield client


def _error_text(e: RegoParseError) -> str:
    if e.errors:
        out = []
        for err in e.errors:
            loc = err.get("location") or {}
            where = f"{loc.get('file') or ''}:{loc.get('row', '?')}:{loc.get('col', '?')}: " if loc else ""
            out.append(f"{where}{err.get('message', '')}")
        return "; ".join(out)
    return str(e.message)


async def _put_policies(client: AsyncOpaClient, files: list[tuple[str, BundleFile]]) -> None:
    """Upload policies in an order OPA accepts: a file may call a function another file defines, and
    OPA compiles each upload against what it already has, so failed uploads are retried while others
    make progress."""
    pending = list(files)
    while pending:
        failed: list[tuple[tuple[str, BundleFile], RegoParseError]] = []
        for policy_id, f in pending:
            try:
                await client.update_policy_from_string(f.text, policy_id, rego_compat=False)
            except RegoParseError as e:
                failed.append(((policy_id, f), e))
        if len(failed) == len(pending):
            (_, first), error = failed[0]
            raise PolicyError(f"{first.path}: OPA rejected the policy: {_error_text(error)}")
        pending = [item for item, _ in failed]


async def push_bundle(
    client: AsyncOpaClient, bundle: Bundle, *, include_tests: bool = False, prefix: str = POLICY_ID_PREFIX
) -> None:
    """Upload the bundle's data and policies to OPA and delete stale ``prefix`` policies."""
    try:
        with anyio.fail_after(_SETUP_TIMEOUT_S):
            for key, value in bundle.data.items():
                if not isinstance(value, dict):
                    raise PolicyError(f"{bundle.root}: data key {key!r} must be an object to be pushed to OPA")
                await client.update_or_create_data(value, key)
            files = bundle.policies + (bundle.tests if include_tests else ())
            wanted = [(prefix + f.rel, f) for f in files]
            await _put_policies(client, wanted)
            keep = {pid for pid, _ in wanted}
            stale = [pid for pid in await client.get_policies_list() if pid.startswith(prefix) and pid not in keep]
            await _delete_policies(client, stale)
    except TimeoutError:
        raise OpaUnavailable(f"OPA did not accept the bundle within {_SETUP_TIMEOUT_S:.0f}s") from None
    except (aiohttp.ClientError, OSError) as e:
        raise OpaUnavailable(f"cannot push the bundle to OPA at {client.root_url}: {e}") from None


async def _delete_policies(client: AsyncOpaClient, ids: list[str]) -> None:
    """Delete policies in an order OPA accepts (a policy others call into can only go after them)."""
    pending = list(ids)
    while pending:
        failed: list[tuple[str, DeletePolicyError]] = []
        for pid in pending:
            try:
                await client.delete_policy(pid)
            except DeletePolicyError as e:
                failed.append((pid, e))
        if len(failed) == len(pending):
            pid, error = failed[0]
            raise PolicyError(f"OPA refused to delete policy {pid}: {error.message}")
        pending = [pid for pid, _ in failed]


async def delete_policies(client: AsyncOpaClient, prefix: str) -> None:
    """Delete every policy whose id starts with ``prefix``."""
    await _delete_policies(client, [pid for pid in await client.get_policies_list() if pid.startswith(prefix)])


async def remote_revision(client: AsyncOpaClient) -> str:
    """A hash of the policies OPA currently serves (used when the bundle is not pushed)."""
    try:
        with anyio.fail_after(_SETUP_TIMEOUT_S):
            h = hashlib.sha256()
            for pid in sorted(await client.get_policies_list()):
                policy = await client.get_policy(pid)
                raw = str((policy.get("result") or {}).get("raw", ""))
                h.update(f"{pid}\0{len(raw)}\0{raw}".encode())
            return "opa:" + h.hexdigest()
    except TimeoutError:
        raise OpaUnavailable(f"OPA at {client.root_url} did not answer within {_SETUP_TIMEOUT_S:.0f}s") from None
    except (aiohttp.ClientError, OSError) as e:
        raise OpaUnavailable(f"cannot reach OPA at {client.root_url}: {e}") from None


class OpaEngine:
    """:class:`~mcp_guard.policy.base.PolicyEngine` backed by an OPA server.

    ``bundle`` is the bundle this engine pushes (``push_bundle``), or None when OPA serves its own.
    An engine built with ``ready=False`` decides nothing until :meth:`connect` succeeds (directly or
    through :meth:`maintain`); the default, ``ready=True``, is for a client known to be set up.
    """

    def __init__(
        self,
        client: AsyncOpaClient,
        *,
        decision: str = "mcp_guard/decision",
        timeout_ms: int = 250,
        revision: str = "",
        bundle: Bundle | None = None,
        ready: bool = True,
    ) -> None:
        self._client = client
        self._rule = rule_ref(decision)
        package, _, name = self._rule.removeprefix("data.").rpartition(".")
        self._package, self._name = package, name
        self._timeout_s = timeout_ms / 1000
        self.revision = revision
        self._bundle = bundle
        self._ready = ready
        self._problem: str | None = None if ready else "not connected to OPA yet"
        self._lock = anyio.Lock()  # one push/reconnect at a time
        self._down = anyio.Event()  # set when the engine goes from ready to not ready

    @property
    def client(self) -> AsyncOpaClient:
        return self._client

    @property
    def rule(self) -> str:
        return self._rule

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def problem(self) -> str | None:
        return self._problem

    @property
    def bundle(self) -> Bundle | None:
        return self._bundle

    # ------------------------------------------------------------------ readiness

    async def connect(self) -> None:
        """Make OPA serve the policy: push the bundle (when this engine has one) or read the revision
        of what OPA serves. Ready afterwards. Raises :class:`OpaUnavailable` when OPA cannot be
        reached (the engine is then not ready) and :class:`PolicyError` when OPA rejects the bundle."""
        async with self._lock:
            try:
                if self._bundle is not None:
                    await push_bundle(self._client, self._bundle)
                    self.revision = self._bundle.revision
                else:
                    self.revision = await remote_revision(self._client)
            except OpaUnavailable as e:
                self.mark_unavailable(str(e))
                raise
            self._mark_ready()

    async def install(self, bundle: Bundle) -> None:
        """Push a new bundle (hot reload); it is also what a reconnection pushes from now on."""
        async with self._lock:
            try:
                await push_bundle(self._client, bundle)
            except OpaUnavailable as e:
                self.mark_unavailable(str(e))
                raise
            self._bundle, self.revision = bundle, bundle.revision
            self._mark_ready()

    def mark_unavailable(self, problem: str) -> None:
        """OPA cannot be reached: deny until :meth:`maintain` has reconnected."""
        self._problem = problem
        if self._ready:
            self._ready = False
            log.warning("policy.opa_unavailable", url=str(self._client.root_url), problem=problem)
            self._down.set()

    def _mark_ready(self) -> None:
        if not self._ready:
            log.info("policy.opa_ready", url=str(self._client.root_url), revision=self.revision)
        self._ready, self._problem = True, None

    async def maintain(self, on_recovered: Callable[[], Awaitable[None]] | None = None) -> None:
        """Keep the engine ready for as long as it runs (start it in a task): whenever OPA has become
        unreachable, reconnect with backoff (``RECONNECT_MIN_S`` doubling to ``RECONNECT_MAX_S``),
        pushing the bundle again if the engine has one. ``on_recovered`` is awaited after each
        reconnection."""
        delay = RECONNECT_MIN_S
        while True:
            if self._ready:
                down = self._down
                await down.wait()
                self._down = anyio.Event()
                delay = RECONNECT_MIN_S
                continue
            try:
                await self.connect()
            except OpaUnavailable:
                pass  # the problem is recorded; try again later
            except PolicyError as e:  # OPA is back but refuses the bundle: keep denying, say why
                self._problem = str(e)
                log.error("policy.opa_rejected_bundle", url=str(self._client.root_url), error=str(e))
            else:
                if on_recovered is not None:
                    await on_recovered()
                continue
            await anyio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def evaluate(self, input: PolicyInput) -> Decision:
        return await self.evaluate_document(input.to_dict())

    async def evaluate_document(self, document: Mapping[str, Any]) -> Decision:
        revision = self.revision
        if not self._ready:
            return Decision.deny(
                ReasonCode.ENGINE_ERROR,
                f"OPA at {self._client.root_url} is not ready: {self._problem}",
                revision=revision,
            )
        try:
            json.dumps(document, allow_nan=False)
        except (TypeError, ValueError) as e:
            return Decision.deny(ReasonCode.ENGINE_ERROR, f"policy input is not JSON: {e}", revision=revision)
        try:
            with anyio.fail_after(self._timeout_s):
                body = await self._client.query_rule(
                    input_data=dict(document),
                    package_path=self._package,
                    rule_name=self._name,
                    query_params=_QUERY_PARAMS,
                )
        except TimeoutError:
            return Decision.deny(
                ReasonCode.TIMEOUT, f"OPA did not answer within {self._timeout_s * 1000:.0f} ms", revision=revision
            )
        except aiohttp.ClientResponseError as e:
            log.warning("policy.engine_error", engine="opa", rule=self._rule, status=e.status, error=e.message)
            return Decision.deny(
                ReasonCode.ENGINE_ERROR,
                f"OPA answered HTTP {e.status} ({e.message}) for {self._rule}",
                revision=revision,
            )
        except (aiohttp.ClientConnectionError, OSError) as e:
            # refused or reset: OPA is down or restarted (and may have lost a pushed bundle)
            self.mark_unavailable(f"OPA unreachable at {self._client.root_url}: {e}")
            return Decision.deny(
                ReasonCode.ENGINE_ERROR, f"OPA unreachable at {self._client.root_url}: {e}", revision=revision
            )
        except aiohttp.ClientError as e:
            log.warning("policy.engine_error", engine="opa", rule=self._rule, error=str(e))
            return Decision.deny(ReasonCode.ENGINE_ERROR, f"OPA request failed: {e}", revision=revision)
        except ValueError as e:  # a 200 whose body is not JSON
            return Decision.deny(ReasonCode.ENGINE_ERROR, f"OPA sent an unreadable answer: {e}", revision=revision)
        if not isinstance(body, dict) or "result" not in body:
            return Decision.deny(
                ReasonCode.POLICY_UNDEFINED, f"{self._rule} is undefined for this input", revision=revision
            )
        return decision_from_result(self._rule, body["result"], revision=revision)

    async def aclose(self) -> None:
        await self._client.close_connection()
