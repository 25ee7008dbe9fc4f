"""Core value types shared by every stage: who is calling, what they ask, what policy decided.

All of them are frozen; a stage that changes a call builds a new value with ``dataclasses.replace``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from mcp_guard.urlhost import url_table

__all__ = [
    "Action",
    "AuditEvent",
    "AuthFailure",
    "AuthInfo",
    "AuthMethod",
    "Decision",
    "EventKind",
    "PolicyInput",
    "Principal",
    "ReasonCode",
    "SessionInfo",
    "SubjectToken",
    "ToolInfo",
    "new_id",
    "utc_now",
]

Action = Literal[
    "tools/call",
    "tools/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "prompts/get",
    "prompts/list",
    "completion/complete",
    "resources/subscribe",
    "tools/result",  # a tools/call result, asked about by the result policy (mcp_guard.pipeline.result_policy)
    "resources/unsubscribe",
]


class ReasonCode(StrEnum):
    """Why mcp-guard itself denied a call (fail closed). One enum, used wherever such a deny is made.

    Each one is :attr:`Decision.code` and the first entry of :attr:`Decision.reasons` when it applies; a
    policy-made deny has no code. docs/architecture.md lists them with the stage that makes each.
    """

    ENGINE_ERROR = "engine_error"  # engine unreachable, or a builtin raised
    TIMEOUT = "timeout"  # engine slower than policy.timeout_ms
    POLICY_UNDEFINED = "policy_undefined"  # the decision rule was undefined for this input
    RESULT_INVALID = "result_invalid"  # decision not an object, or allow not a boolean
    AUDIT_UNAVAILABLE = "audit_unavailable"  # the audit store cannot record the call
    TOOL_CHANGED = "tool_changed"  # a pinned tool definition changed and is not approved
    UNKNOWN_TARGET = "unknown_target"  # no such upstream/tool/resource/prompt
    SECRET_NOT_GRANTED = "secret_not_granted"  # the upstream's injected credentials are not all granted
    OBLIGATION_UNKNOWN = "obligation_unknown"  # the decision carries an obligation no handler knows
    OBLIGATION_INVALID = "obligation_invalid"  # a known obligation whose value is malformed
    # A re-decision on an input round's answers (mcp_guard.pipeline.redecide) allows with an obligation the call's
    # first allow did not carry: obligations are enforced before the call is forwarded, never mid-call.
    OBLIGATION_MID_CALL = "obligation_mid_call"
    RATE_LIMITED = "rate_limited"  # a limit of obligations.rate_limit has no room ("retry after N s")
    STATE_UNAVAILABLE = "state_unavailable"  # the state store (rate-limit counters, flows) cannot answer
    FLOW_LIMIT = "flow_limit"  # the call's flow cannot take it: too many live flows or labels (state.FlowBounds)
    APPROVAL_PENDING = "approval_pending"  # the call waits for a human approval that has not been given (yet)
    APPROVAL_DENIED = "approval_denied"  # an approver denied the call's approval
    APPROVAL_EXPIRED = "approval_expired"  # the call's approval was not decided before its expiry
    APPROVAL_USED = "approval_used"  # the approval was consumed by another identical call first
    RESULT_WITHHELD = "result_withheld"  # the result policy denied a tools/call result (the call ran)
    CREDENTIAL_MISSING = "credential_missing"  # a per-principal secret of the upstream has no value for the caller
    SUBJECT_TOKEN_MISSING = "subject_token_missing"  # a token-exchanging upstream, a caller with no access token
    TOKEN_EXCHANGE_FAILED = "token_exchange_failed"  # the IdP refused the exchange or could not be reached in time
    UPSTREAM_SCOPE_NOT_ALLOWED = (
        "upstream_scope_not_allowed"  # obligations.upstream_scopes outside token_exchange.scopes
    )


class AuthFailure(StrEnum):
    """Why the HTTP front refused a request's credentials (the ``reasons`` of an ``auth.reject`` row).

    The client is told none of this (every refusal is the same 401; a missing required scope is a 403 scope
    challenge); the audit row and the log are.
    """

    MISSING_KEY = "missing_key"  # no Authorization header where credentials are required
    MALFORMED_AUTHORIZATION = "malformed_authorization"  # an Authorization header that is not "Bearer <value>"
    INVALID_KEY = "invalid_key"  # a bearer that is no configured API key (and not a JWT mcp-guard accepts)
    OVERSIZED = "oversized"  # the Authorization header is longer than [auth] max_token_bytes
    MALFORMED = "malformed"  # not a well-formed JWS, or its header/claims have the wrong shape
    ALG_NOT_ALLOWED = "alg_not_allowed"  # "none", HS*, or any algorithm outside [auth] algorithms
    UNKNOWN_KID = "unknown_kid"  # no key of the issuer's JWKS (even after a refresh) has this kid
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify with the issuer's key
    BAD_TYPE = "bad_type"  # typ is not at+jwt while [auth] require_at_jwt is set
    EXPIRED = "expired"  # exp is past (beyond the leeway)
    NOT_YET_VALID = "not_yet_valid"  # nbf or iat is in the future (beyond the leeway)
    BAD_ISSUER = "bad_issuer"  # iss is not [auth] issuer
    BAD_AUDIENCE = "bad_audience"  # aud does not name [auth] audience (a token for another resource)
    MISSING_CLAIM = "missing_claim"  # exp, iss, aud or sub is absent, or sub is not a usable id
    IDP_UNREACHABLE = "idp_unreachable"  # no usable key: the issuer's JWKS cannot be fetched and none is cached
    INSUFFICIENT_SCOPE = "insufficient_scope"  # a valid token without every scope of [auth] required_scopes (403)


class EventKind(StrEnum):
    """Every kind of audit row (docs/architecture.md §6, ``kind``). Rows are built in :mod:`mcp_guard.audit.events`."""

    CONFIG_LOAD = "config.load"
    CONFIG_RELOAD = "config.reload"
    POLICY_LOAD = "policy.load"
    POLICY_RELOAD_FAILED = "policy.reload_failed"
    SESSION_START = "session.start"
    SESSION_END = "session.end"
    TOOLS_LIST = "tools.list"
    CALL_DECISION = "call.decision"
    CALL_RESULT = "call.result"
    CALL_ERROR = "call.error"
    CALL_CANCELLED = "call.cancelled"  # cancelled after its decision (client cancel, session end, shutdown)
    AUTH_REJECT = "auth.reject"
    UPSTREAM_START = "upstream.start"
    UPSTREAM_RESTART = "upstream.restart"
    UPSTREAM_CRASH = "upstream.crash"
    UPSTREAM_START_FAILED = "upstream.start_failed"
    UPSTREAM_POOL_START = "upstream.pool_start"  # a per-principal connection of a pooled upstream started
    UPSTREAM_POOL_STOP = "upstream.pool_stop"  # … and stopped (idle, evicted to make room, or exited)
    TOOL_PINNED = "tool.pinned"
    TOOL_PIN_CHANGED = "tool.pin_changed"
    TOOL_PIN_APPROVED = "tool.pin_approved"
    APPROVAL_REQUESTED = "approval.requested"  # a call parked for a human approval
    APPROVAL_GRANTED = "approval.granted"
    APPROVAL_DENIED = "approval.denied"
    APPROVAL_EXPIRED = "approval.expired"
    APPROVAL_EXECUTED = "approval.executed"  # the approved call was let through (the approval consumed)
    POLICY_SHADOW_DIFF = "policy.shadow_diff"  # the shadow bundle decided a call differently (never enforced)
    POLICY_ROLLBACK = "policy.rollback"  # an operator pinned an earlier bundle revision (or cleared the pin)
    CONSOLE_LOGIN = "console.login"  # a console login opened a session (principal, method, role)
    CONSOLE_LOGIN_FAILED = "console.login_failed"  # a console login was refused (why; never the key or token)
    CONSOLE_LOGOUT = "console.logout"  # a console session was ended by its holder


def new_id() -> str:
    """A fresh opaque identifier (uuid4 hex) for sessions, decisions and events.

    The version and variant bits are set by hand on 16 random bytes: the same value ``uuid.uuid4().hex``
    gives, at a third of its cost (a call makes four of them)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


_SECOND: tuple[int, str] = (-1, "")  # the last whole second utc_now() formatted, and its text


def utc_now() -> str:
    """The current time as RFC3339 UTC with microseconds, e.g. 2026-11-25T06:31:00.123456Z.

    The clock ``datetime.now`` reads, truncated to the microsecond as it truncates; the date and time of day
    are formatted once per second and reused, so a call (every audit row has a time) pays for an integer
    split and one f-string instead of a ``strftime``."""
    global _SECOND
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    second, text = _SECOND
    if second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _SECOND = (seconds, text)
    return f"{text}.{micros:06d}Z"


# How a principal proved who it is: an HTTP API key, a JWT access token from [auth] issuer, the stdio launcher,
# or nothing (HTTP with require_auth = false, a principal named on the command line).
AuthMethod = Literal["api_key", "jwt", "stdio", "none"]


class SubjectToken:
    """The caller's validated access token, carried to the token-exchange stage (RFC 8693 ``subject_token``).

    Its text is reachable only through :meth:`reveal`: ``str``/``repr`` say ``<subject token>``, so no log line,
    error message or dump of a principal can carry it. ``sha256`` keys caches without the token."""

    __slots__ = ("_value", "sha256")

    def __init__(self, value: str) -> None:
        self._value = value
        self.sha256 = hashlib.sha256(value.encode()).hexdigest()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<subject token>"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """How the principal of a request authenticated (policy input ``principal.auth``).

    ``token_id_sha256`` (sha256 of the access token's ``jti``) lets an auditor correlate the rows of one
    token without the token; it is audit-only and not part of the policy input.
    """

    method: AuthMethod = "none"
    issuer: str | None = None
    client_id: str | None = None  # the OAuth client the token was issued to (azp, else client_id)
    token_id_sha256: str | None = None
    expires_at: int | None = None  # the token's exp (how long mcp-guard may remember it verified)
    # The validated access token itself, only as the subject of a token exchange (never policy input, audit or
    # a log line: see SubjectToken). None for API keys, stdio, and a principal not built by the HTTP front.
    subject_token: SubjectToken | None = field(default=None, repr=False, compare=False)

    def to_policy(self) -> dict[str, Any]:
        return {"method": self.method, "issuer": self.issuer, "client_id": self.client_id}

    def to_audit(self) -> dict[str, Any]:
        doc = self.to_policy()
        if self.token_id_sha256 is not None:
            doc["token_id_sha256"] = self.token_id_sha256
        return doc


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: its id, roles and free-form attributes, the OAuth scopes its token carries, and how it
    authenticated (docs/architecture.md §8.3, ``principal``)."""

    id: str
    roles: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()
    auth: AuthInfo = field(default_factory=AuthInfo)

    def to_policy(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "roles": list(self.roles),
            "attributes": dict(self.attributes),
            "scopes": list(self.scopes),
            "auth": self.auth.to_policy(),
        }


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One client connection (an MCP session) to mcp-guard.

    ``stateless``: a 2026-07-28 client, each of whose requests is a session of its own (so a flow is not
    the session: :mod:`mcp_guard.pipeline.flow`)."""

    id: str
    transport: Literal["stdio", "http", "memory"]
    client_name: str | None = None
    client_version: str | None = None
    stateless: bool = False

    def to_policy(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "transport": self.transport,
            "client": {"name": self.client_name, "version": self.client_version},
        }


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """What the policy is told about the targeted tool (docs/architecture.md §8.3, ``tool_info``)."""

    annotations: Mapping[str, Any] = field(default_factory=dict)
    definition_sha256: str | None = None
    pinned: bool = False  # the definition is the approved (pinned) one
    suspicious: tuple[str, ...] = ()  # kinds of invisible/control characters in the definition
    changed: bool = False  # the definition differs from the approved one (awaiting `tools approve`)

    def to_policy(self) -> dict[str, Any]:
        return {
            "annotations": dict(self.annotations),
            "definition_sha256": self.definition_sha256,
            "pinned": self.pinned,
            "changed": self.changed,
            "suspicious": list(self.suspicious),
        }


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """The input document a policy is evaluated on (docs/architecture.md §8.3). ``to_dict`` is the wire form."""

    action: Action
    principal: Principal
    session: SessionInfo
    server: str | None = None
    tool: str | None = None  # tool name, prompt name or resource URI (upstream-local)
    arguments: Mapping[str, Any] = field(default_factory=dict)
    tool_info: ToolInfo | None = None
    time: str = field(default_factory=utc_now)
    secrets_seen: tuple[str, ...] = ()  # kinds of secret-looking values found in the arguments
    # Rate-limit key → hits in its window now, for the keys the bundle declares (mcp_guard.pipeline.ratelimit).
    usage: Mapping[str, int] = field(default_factory=dict)
    # The call's information flow ({id, labels, labeled_by, history}); None when the bundle does not use
    # flows, and for listings (mcp_guard.pipeline.flow).
    flow: Mapping[str, Any] | None = None
    # For action "tools/result": {is_error, content, structured_content, truncated} of the upstream's (scrubbed,
    # bounded) result (mcp_guard.pipeline.result_policy); None for every other action.
    result: Mapping[str, Any] | None = None
    # The client's answers to the questions an upstream asked mid-call (elicitation, sampling, roots results),
    # keyed as the upstream keyed its requests: set when the policy is asked again before a retry carries them
    # to the upstream (mcp_guard.pipeline.redecide); None at a call's first decision and for every other action.
    input_responses: Mapping[str, Any] | None = None
    # Input paths left out because no decision can read them (dotted: "context.flow.history"); not part of the
    # document — the decision row lists them, so a replay knows what the row cannot answer (mcp_guard.policy.replay).
    omitted: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "action": self.action,
            "principal": self.principal.to_policy(),
            "session": self.session.to_policy(),
            "server": self.server,
            "tool": self.tool,
            "arguments": dict(self.arguments),
            "context": {
                "time": self.time,
                "secrets_seen": list(self.secrets_seen),
                "usage": dict(self.usage),
                # Every URL-looking string argument → its WHATWG parse (mcp_guard.urlhost): hosts for the policy.
                "urls": url_table(self.arguments),
            },
        }
        if self.flow is not None:
            doc["context"]["flow"] = dict(self.flow)
        if self.tool_info is not None:
            doc["tool_info"] = self.tool_info.to_policy()
        if self.result is not None:
            doc["result"] = dict(self.result)
        if self.input_responses is not None:
            doc["input_responses"] = dict(self.input_responses)
        return doc


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy decision. A deny is a value, never an exception.

    ``reasons`` are human-readable strings the agent sees; for fail-closed denies the first one is
    a :class:`ReasonCode` (e.g. ``"timeout"``), optionally followed by detail.
    """

    allow: bool
    reasons: tuple[str, ...] = ()
    obligations: Mapping[str, Any] = field(default_factory=dict)
    revision: str | None = None  # the policy bundle revision (hash) that decided
    decision_id: str = field(default_factory=new_id)
    code: ReasonCode | None = None  # fail-closed reason code, None for a policy-made decision

    @classmethod
    def deny(cls, code: ReasonCode, detail: str | None = None, *, revision: str | None = None) -> Decision:
        """A fail-closed deny with a reason code (and optional detail for the agent)."""
        reasons = (str(code),) if detail is None else (str(code), detail)
        return cls(allow=False, reasons=reasons, revision=revision, code=code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "obligations": dict(self.obligations),
            "revision": self.revision,
            "decision_id": self.decision_id,
            "code": self.code,
        }


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the audit trail (docs/architecture.md §6), before it gets its seq and hashes.

    Built by the constructors in :mod:`mcp_guard.audit.events`, which fill every column a kind has.
    """

    kind: EventKind
    session_id: str | None = None
    decision_id: str | None = None
    principal: str | None = None
    server: str | None = None
    tool: str | None = None
    decision: Literal["allow", "deny"] | None = None
    reasons: tuple[str, ...] | None = None
    arguments: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None
    duration_ms: float | None = None
    policy_revision: str | None = None
    details: Mapping[str, Any] | None = None  # kind-specific extras (client info, hashes, errors…)
    event_id: str = field(default_factory=new_id)
    ts: str = field(default_factory=utc_now)
