"""Which protocol era an upstream is spoken to in, and what of a client's request envelope reaches it.

Two eras exist (mcp 2.3.0 speaks both): the 2025-11-25 *handshake* era (``initialize`` once, capabilities
fixed for the session, server→client requests on a back channel) and the 2026-07-28 *stateless* era
(``server/discover``, every request carrying its own ``_meta`` envelope — protocolVersion, clientInfo,
clientCapabilities — and a server that needs input answering with an ``InputRequiredResult``).

:func:`negotiate` picks the era per ``[upstreams.X] protocol``: ``auto`` probes ``server/discover`` and
falls back to the handshake on anything that is not positive evidence of a 2026 server (the SDK's own
``Client(mode="auto")`` policy, here on the public ``ClientSession`` methods); a pinned version speaks
only that era.

:class:`EnvelopeDispatcher` makes a 2026 upstream see the *client's* capabilities on each request: the
SDK stamps every modern request with the session's fixed capability ad, which would let an upstream ask
a client for something it never declared (and would hide from it that it may not, SEP-2575). The client's
``clientCapabilities`` ride the forwarded request's ``_meta`` to :func:`split_envelope`, which lifts them
out; the dispatcher puts them in place of the session's ad, after the SDK's stamp and before the wire.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import mcp_types as types
import structlog
from mcp.client.session import ClientSession
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

__all__ = [
    "RESERVED_META_PREFIX",
    "EnvelopeDispatcher",
    "Era",
    "EraMemory",
    "era_of",
    "negotiate",
    "per_request_capabilities",
    "split_envelope",
]

log = structlog.get_logger("mcp_guard.upstream")

Era = Literal["handshake", "stateless"]
ProtocolSetting = Literal["auto", "2025-11-25", "2026-07-28"]
RESERVED_META_PREFIX = "io.modelcontextprotocol/"
"""The protocol's own ``_meta`` keys: a 2026 request envelope. They describe one hop, never forwarded as is."""

_CAPABILITIES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "mcp_guard_upstream_client_capabilities", default=None
)


class EraMemory:
    """The version an ``auto`` upstream was last found to speak, by upstream name, for its next restarts.

    A crashed upstream comes back as the same program, so a handshake-era one need not be probed with
    ``server/discover`` again on every restart (the probe is a refused round trip and a log line each time):
    :func:`negotiate` goes straight to ``initialize``. A stateless upstream's probe *is* its connect, so
    remembering changes nothing there. The registry holds one memory for all its upstreams (a pool's
    children share their upstream's) and clears it on a config reload; a connect with a remembered era that
    fails forgets it, so the next attempt probes afresh (an upstream upgraded in place is found then).
    """

    def __init__(self) -> None:
        self._versions: dict[str, str] = {}

    def get(self, upstream: str) -> str | None:
        return self._versions.get(upstream)

    def remember(self, upstream: str, version: str) -> None:
        self._versions[upstream] = version

    def forget(self, upstream: str) -> None:
        self._versions.pop(upstream, None)

    def clear(self) -> None:
        self._versions.clear()


def era_of(version: str | None) -> Era:
    """The era a negotiated protocol version belongs to."""
    return "stateless" if version in MODERN_PROTOCOL_VERSIONS else "handshake"


async def negotiate(
    session: ClientSession, protocol: ProtocolSetting, *, upstream: str = "", remembered: str | None = None
) -> str:
    """Connect ``session`` in the era ``protocol`` asks for; the negotiated version.

    ``auto``: one ``server/discover`` probe (the SDK retries once at a mutual version on ``-32022``); an
    error answer, an unparseable result or no mutual 2026 version falls back to ``initialize``. A network
    failure is not an era verdict: it propagates (the connection's restart loop handles it). ``remembered``
    (:class:`EraMemory`: what this upstream spoke before a restart) in the handshake era skips the probe.
    """
    if protocol == "auto" and remembered is not None and era_of(remembered) == "handshake":
        log.info("upstream.era_remembered", upstream=upstream, protocol_version=remembered)
        return (await session.initialize()).protocol_version
    if protocol == "2025-11-25":
        return (await session.initialize()).protocol_version
    if protocol == "2026-07-28":
        await session.discover()
        return _version(session)
    try:
        await session.discover()
    except (MCPError, ValidationError, RuntimeError) as e:
        log.info("upstream.discover_declined", upstream=upstream, reason=_why(e))
        return (await session.initialize()).protocol_version
    return _version(session)


def _version(session: ClientSession) -> str:
    version = session.protocol_version
    if version is None:  # pragma: no cover - discover()/initialize() always adopt a version
        raise RuntimeError("no protocol version was negotiated")
    return version


def _why(e: BaseException) -> str:
    if isinstance(e, MCPError):
        return f"error {e.error.code}"
    return type(e).__name__


def split_envelope(meta: Mapping[str, Any] | None, era: Era) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A forwarded request's ``_meta`` without the protocol's reserved keys (a stateless upstream keeps the
    log level), and the client capabilities it carried (for a stateless upstream only: a handshake upstream
    fixed its capabilities at initialize)."""
    if not meta:
        return None, None
    caps = meta.get(types.CLIENT_CAPABILITIES_META_KEY) if era == "stateless" else None
    # The log level a request opts in to is the request's own in the 2026-07-28 era (the SDK keeps it).
    passed = (types.LOG_LEVEL_META_KEY,) if era == "stateless" else ()
    kept = {k: v for k, v in meta.items() if not k.startswith(RESERVED_META_PREFIX) or k in passed}
    return (kept or None), (caps if isinstance(caps, dict) else None)


@contextlib.contextmanager
def per_request_capabilities(caps: dict[str, Any] | None) -> Iterator[None]:
    """Requests sent in this block carry ``caps`` as their clientCapabilities (None: the session's ad)."""
    token = _CAPABILITIES.set(caps)
    try:
        yield
    finally:
        _CAPABILITIES.reset(token)


class EnvelopeDispatcher(JSONRPCDispatcher):
    """The SDK's JSON-RPC dispatcher, writing the calling request's client capabilities into its envelope.

    ``send_raw_request`` runs in the task of the request being forwarded (after the SDK's modern stamp),
    so the context variable set by :func:`per_request_capabilities` is that request's own.
    """

    async def send_raw_request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        opts: CallOptions | None = None,
        *,
        _related_request_id: int | str | None = None,
    ) -> dict[str, Any]:
        caps = _CAPABILITIES.get()
        if caps is not None and params is not None:
            meta = params.get("_meta")
            if isinstance(meta, Mapping) and types.CLIENT_CAPABILITIES_META_KEY in meta:
                params = {**params, "_meta": {**meta, types.CLIENT_CAPABILITIES_META_KEY: caps}}
        return await super().send_raw_request(method, params, opts, _related_request_id=_related_request_id)
