"""The TOML configuration (docs/architecture.md §8.2), validated by pydantic.

Unknown keys, missing files and bad values raise :class:`mcp_guard.errors.ConfigError` whose message
names the file, the dotted key and the problem. Relative paths in a config file (policy bundle, audit
database, file secrets, upstream cwd) are resolved against the directory the config file lives in, so
a config works whatever directory an agent client launches mcp-guard from. Without a config file the
built-in defaults are relative to the current directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mcp_guard.errors import ConfigError
from mcp_guard.upstream.naming import Namer

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "JWT_ALGORITHMS",
    "PRINCIPAL_PLACEHOLDER",
    "AuditSettings",
    "AuthSettings",
    "ConsoleSettings",
    "PolicySettings",
    "PoolSettings",
    "PrincipalSettings",
    "RedactionSettings",
    "SecretSettings",
    "ServerSettings",
    "Settings",
    "SigningKey",
    "SigningSettings",
    "TaskSupportSetting",
    "TelemetrySettings",
    "TokenExchangeSettings",
    "UpstreamSettings",
    "changed_keys",
    "find_config",
    "load_settings",
    "parse_settings",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    name: str = "mcp-guard"
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765
    principal: str = "local-agent"
    tool_separator: Annotated[str, Field(min_length=1, max_length=8)] = "__"
    # Extra Host/Origin values accepted by the HTTP front (DNS-rebinding protection stays on).
    allowed_hosts: list[str] = []
    allowed_origins: list[str] = []
    # Items per page in tools/list, resources/list, prompts/list answers (clients follow nextCursor).
    page_size: Annotated[int, Field(gt=0, le=10_000)] = 500
    # Largest HTTP request body accepted by the front, in bytes.
    max_request_bytes: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024
    # Require Authorization: Bearer <key> on the HTTP front (keys from [principals.*]).
    require_auth: bool = True
    # Idle MCP sessions over HTTP are closed after this many seconds.
    session_idle_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    # Serve Prometheus metrics at /metrics on the HTTP front (no credentials; /healthz and /readyz stay on).
    metrics: bool = True
    # `mcp-guard run` writes its process id here while it serves (removed at exit; a file naming another
    # live process is a start-up error); `mcp-guard reload` signals that process. Relative to the config file.
    pid_file: str | None = None
    # Slowloris bounds on the HTTP front (mcp_guard.frontend.slowloris): a connection must finish its request
    # head within http_head_timeout_s of opening (or of its previous response), idle time included; at most
    # http_max_pending_heads connections may be partway through a head (one more closes the one whose head began
    # longest ago); at most http_max_idle_connections may wait without a byte of a request sent yet, new and
    # keep-alive ones alike (one more closes the one idle longest). Keep the sum well below `ulimit -n`.
    http_head_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    http_max_pending_heads: Annotated[int, Field(gt=0)] = 64
    http_max_idle_connections: Annotated[int, Field(gt=0)] = 512

    @field_validator("tool_separator")
    @classmethod
    def _separator_charset(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", v):
            raise ValueError("must use only letters, digits, '_', '-', '.', '/'")
        return v


class SigningKey(_Strict):
    # A PEM public key file (relative to the config file) and the one algorithm tokens under it must use
    # (asymmetric only: a verifying key that could also sign would not be a public key).
    path: str
    algorithm: Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"] = (
        "RS256"
    )


class SigningSettings(_Strict):
    # [policy.signing]: bundles must carry an OPA-format .signatures.json signed by one of these keys
    # (mcp_guard.policy.signing). keyid = "pub.pem" (algorithm from the key: RSA → RS256, EC → ES256/384/512,
    # Ed25519 → EdDSA) or keyid = { path = "pub.pem", algorithm = "PS256" }.
    keys: dict[str, str | SigningKey]
    scope: str | None = None  # when set, the signature's `scope` claim must equal it

    @field_validator("keys")
    @classmethod
    def _some_keys(cls, v: dict[str, str | SigningKey]) -> dict[str, str | SigningKey]:
        if not v:
            raise ValueError("at least one key id = public key file is required")
        for keyid, key in v.items():
            if not keyid or (isinstance(key, str) and not key):
                raise ValueError(f"key {keyid!r}: an empty key id or path")
        return v


class DecisionCacheSettings(_Strict):
    # [policy.decision_cache]: remember decisions keyed on the input fields the bundle reads (mcp_guard.policy.cache);
    # a bundle whose decision depends on more than its input and data (time.now_ns, http.send, …) is never cached.
    enabled: bool = True
    size: Annotated[int, Field(ge=1, le=1_000_000)] = 4096  # decisions kept (least recently used go first)
    ttl_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0  # a decision is asked again after this long
    max_key_bytes: Annotated[int, Field(ge=256, le=1_048_576)] = 16_384  # larger keys (big arguments) are not kept


class PolicySettings(_Strict):
    engine: Literal["embedded", "opa"] = "embedded"
    bundle: str = "policies/rego"
    decision: str = "mcp_guard/decision"
    opa_url: str = "http://127.0.0.1:8181"
    timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 250
    push_bundle: bool = False  # opa: upload the bundle's policies and data.json on start
    hot_reload: bool = True  # re-load the bundle when its files change
    run_tests_on_start: bool = True  # a bundle whose test_* rules fail does not start (exit 2)
    run_tests_on_reload: bool = True  # a bundle whose test_* rules fail is rejected
    # The result policy (mcp_guard.pipeline.result_policy) asks about every tools/call result when the bundle
    # mentions "tools/result"; true asks even when it does not (OPA serving policies mcp-guard does not hold).
    result_policy: bool = False
    # The most of a result's text (and, separately, of its structuredContent as JSON) the result policy sees.
    result_max_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # Site data: JSON files deep-merged over the bundle's data.json, in order (objects merge, anything
    # else replaces); relative to the config file; checked by the bundle's data.schema.json.
    data_overlay: list[str] = []
    # A candidate bundle every call is also decided by (embedded engine), never enforced; disagreements are
    # audited as policy.shadow_diff and counted on /metrics (mcp_guard.pipeline.shadow). Read at start.
    shadow_bundle: str | None = None
    # Signed bundles: when set, a bundle (and a shadow bundle) without a valid signature is refused at start
    # and at reload (mcp_guard.policy.signing).
    signing: SigningSettings | None = None
    decision_cache: DecisionCacheSettings = DecisionCacheSettings()

    @model_validator(mode="after")
    def _signing_needs_a_loaded_bundle(self) -> PolicySettings:
        # A signature mcp-guard never checks must not read as protection: with engine = "opa" and no
        # push_bundle, OPA loads its own bundles (and verifies them with its own bundle signing config).
        if self.signing is not None and self.engine == "opa" and not self.push_bundle:
            raise ValueError(
                'signing: only applies to a bundle mcp-guard loads (engine = "embedded", or "opa" with '
                "push_bundle = true); configure signature verification in OPA's own bundle config instead"
            )
        return self


class MaskRule(_Strict):
    """One ``[audit] export_mask`` entry in table form (OPA's ``system.log.mask`` shape): ``remove`` the
    value at ``path``, or ``upsert`` it with ``value``. A plain string entry is a ``remove``."""

    op: Literal["remove", "upsert"] = "remove"
    path: str
    value: Any = None

    @field_validator("path")
    @classmethod
    def _pointer(cls, v: str) -> str:
        return mask_pointer(v)


def mask_pointer(v: str) -> str:
    # OPA masks only the decision's input and result: a JSON pointer (RFC 6901) under one of them.
    if not (v.startswith("/input/") or v.startswith("/result/") or v in ("/input", "/result")):
        raise ValueError(f"{v!r} is not a JSON pointer under /input or /result (e.g. /input/arguments/password)")
    return v


class AuditSettings(_Strict):
    # Where the audit log lives (mcp_guard.audit.open_sink / open_reader): "sqlite", the file at `path`;
    # "postgres", table audit_events in the default schema of the database `dsn` names (one hash
    # chain for every replica on it). The DSN is kept out of reprs: it may hold a password.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "mcp-guard-audit.db"
    dsn: Annotated[str | None, Field(validate_default=True, repr=False)] = None
    # Tool pins, pending definition changes and rate-limit counters (kept apart so the audit log stays
    # append-only); shared by every mcp-guard process using the same file.
    # With backend = "postgres" they live in the `dsn` database instead (shared by every replica) and this
    # file is not used.
    state_path: str = "mcp-guard-state.db"
    # Longest wait for the state store per operation; past it the call is denied (state_unavailable).
    state_timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 1000
    # A session information flow (mcp_guard.pipeline.flow) unused this long is forgotten, labels and all.
    flow_idle_ttl_s: Annotated[int, Field(gt=0, le=30 * 24 * 3600)] = 3600
    batch_max: Annotated[int, Field(gt=0)] = 256
    queue_max: Annotated[int, Field(gt=0)] = 10_000
    # Call arguments larger than this (canonical JSON, bytes) are stored as sha256 + size + a preview.
    max_arguments_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    # `audit export --format opa`: JSON pointers into each decision's input/result removed (or, in table
    # form {op = "upsert", path, value}, replaced) before it leaves (mcp_guard.audit.export).
    export_mask: list[str | MaskRule] = []

    @field_validator("export_mask")
    @classmethod
    def _mask_pointers(cls, v: list[str | MaskRule]) -> list[str | MaskRule]:
        return [mask_pointer(m) if isinstance(m, str) else m for m in v]

    @field_validator("dsn")
    @classmethod
    def _dsn_iff_postgres(cls, v: str | None, info: ValidationInfo) -> str | None:
        # Messages never quote the DSN: it may hold a password.
        backend = info.data.get("backend")
        if backend == "postgres":
            if not v:
                raise ValueError('required with backend = "postgres" (e.g. "postgresql://mcp_guard@db.example/audit")')
            # Whether libpq can parse it is the audit component's to say (mcp_guard.audit.postgres), when
            # the backend opens: settings sit below it and never import psycopg.
        elif v is not None and backend is not None:
            raise ValueError(f'only used with backend = "postgres" (backend is "{backend}")')
        return v


DEFAULT_MIN_FRAGMENT = 8
"""Runs of a secret at least this long are scrubbed wherever they appear."""
MIN_FRAGMENT_FLOOR = 6
"""The smallest ``min_fragment`` accepted: shorter runs would redact ordinary words."""


class RedactionSettings(_Strict):
    # Runs of at least this many characters of an injected secret are scrubbed too, not only whole values
    # (a truncated token in an error text or a log line); 0 turns fragments off.
    min_fragment_chars: Annotated[int, Field(ge=0)] = DEFAULT_MIN_FRAGMENT

    @field_validator("min_fragment_chars")
    @classmethod
    def _not_too_short(cls, v: int) -> int:
        if 0 < v < MIN_FRAGMENT_FLOOR:
            raise ValueError(f"must be 0 (off) or at least {MIN_FRAGMENT_FLOOR}: shorter runs match ordinary words")
        return v


# The JWS algorithms [auth] may allow: asymmetric only. "none" and HS* are never accepted (an HMAC "key"
# taken from a JWKS would be a public value), so they cannot even be configured.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _http_url(v: str, *, what: str) -> str:
    """An absolute http(s) URL; plain http only to a loopback host (tests, a local IdP)."""
    try:
        u = urlsplit(v)
        host = u.hostname
    except ValueError as e:
        raise ValueError(f"{what} is not a URL ({e})") from None
    if re.search(r'[\s"\\<>]', v):
        raise ValueError(f"{what} must not contain spaces, quotes, backslashes or angle brackets, got {v!r}")
    if u.scheme not in ("http", "https") or not host:
        raise ValueError(f"{what} must be an absolute https:// URL, got {v!r}")
    if u.scheme == "http" and host not in _LOOPBACK:
        raise ValueError(f"{what} must use https (plain http only to a loopback host), got {v!r}")
    if u.fragment:
        raise ValueError(f"{what} must not have a #fragment (RFC 8707), got {v!r}")
    return v


def _claim_path(v: str) -> str:
    if not v or any(not part for part in v.split(".")):
        raise ValueError(f"claim name must be a name or a dotted path like 'realm_access.roles', got {v!r}")
    return v


class AuthSettings(_Strict):
    """``[auth]``: the HTTP front as an OAuth 2.1 resource server for JWT access tokens of one issuer.

    API keys of ``[principals.*]`` keep working beside it (see :mod:`mcp_guard.frontend.auth`).
    """

    # The token issuer: `iss` must equal it exactly; its keys are found through
    # <issuer>/.well-known/openid-configuration (or oauth-authorization-server) unless jwks_url is given.
    issuer: str
    # mcp-guard's own resource URL as clients reach it (RFC 8707), e.g. "https://guard.example/mcp": `aud`
    # must name it, and the protected-resource metadata announces it.
    audience: str
    jwks_url: str | None = None
    # Announced in the protected-resource metadata (RFC 9728); default: [issuer].
    authorization_servers: list[str] = []
    # Claim → principal.roles (a list of strings, or one string); a dotted path reaches into objects.
    roles_claim: str = "roles"
    # Claim → principal.scopes: a space-separated string ("scope") or a list ("scp").
    scope_claim: str = "scope"
    # Claims copied into principal.attributes under the same name (absent ones are left out).
    attribute_claims: list[str] = []
    # Signature algorithms accepted (asymmetric only; a token's alg outside this list is refused).
    algorithms: list[str] = ["RS256", "PS256", "ES256", "EdDSA"]
    # Clock skew tolerated on exp, nbf and iat, in seconds.
    leeway_s: Annotated[int, Field(ge=0, le=300)] = 30
    # Accept only RFC 9068 access tokens (header typ "at+jwt").
    require_at_jwt: bool = False
    # Scopes every request's token must carry (else 403 insufficient_scope); also the 401's scope hint.
    required_scopes: list[str] = []
    # Scopes announced in the protected-resource metadata.
    scopes_supported: list[str] = []
    resource_name: str | None = None
    # Each request to the IdP (discovery, JWKS) is bounded by this.
    http_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Keys fetched longer ago than this are re-fetched before use (kept if the IdP does not answer) ...
    jwks_refresh_s: Annotated[float, Field(gt=0)] = 300.0
    # ... and dropped this long after the last successful fetch: then tokens are refused until it answers.
    jwks_max_age_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    # At most one fetch per this many seconds, whatever triggers it (an unknown kid, stale keys, failures).
    jwks_min_interval_s: Annotated[float, Field(ge=0)] = 30.0
    # A longer Authorization header is refused before it is parsed.
    max_token_bytes: Annotated[int, Field(gt=0, le=1024 * 1024)] = 16 * 1024

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        return _http_url(v, what="issuer")

    @field_validator("audience")
    @classmethod
    def _audience(cls, v: str) -> str:
        return _http_url(v, what="audience")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, what="jwks_url")

    @field_validator("authorization_servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        return [_http_url(s, what="an authorization server") for s in v]

    @field_validator("roles_claim", "scope_claim")
    @classmethod
    def _claim(cls, v: str) -> str:
        return _claim_path(v)

    @field_validator("attribute_claims")
    @classmethod
    def _claims(cls, v: list[str]) -> list[str]:
        return [_claim_path(c) for c in v]

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one algorithm")
        bad = [a for a in v if a not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(
                f"{', '.join(repr(a) for a in bad)} not allowed: asymmetric algorithms only "
                f"({', '.join(JWT_ALGORITHMS)}); 'none' and HS* are never accepted"
            )
        return v

    @field_validator("required_scopes", "scopes_supported")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        for scope in v:
            if not re.fullmatch(r"[\x21\x23-\x5B\x5D-\x7E]+", scope):
                raise ValueError(f"{scope!r} is not an OAuth scope token (RFC 6749 §3.3)")
        return v

    @field_validator("jwks_max_age_s")
    @classmethod
    def _max_age(cls, v: float, info: ValidationInfo) -> float:
        refresh = info.data.get("jwks_refresh_s")
        if refresh is not None and v < refresh:
            raise ValueError(f"must be at least jwks_refresh_s ({refresh})")
        return v


class PrincipalSettings(_Strict):
    roles: list[str] = []
    attributes: dict[str, Any] = {}
    api_key_sha256: str | None = None

    @field_validator("api_key_sha256")
    @classmethod
    def _hex64(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("must be 64 hex characters (sha256 of the API key)")
        return v.lower() if v else v


class SecretSettings(_Strict):
    provider: Literal["env", "file", "command"]
    # env: variable name; file: a path; command: argv (list) or a single string split on spaces.
    name: str | list[str]
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Principals / tools that may use this secret (empty: no restriction beyond policy obligations).
    description: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> SecretSettings:
        if self.provider == "command":
            argv = self.name if isinstance(self.name, list) else self.name.split()
            if not argv:
                raise ValueError("command secret needs a non-empty argv in 'name'")
        elif not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{self.provider} secret needs 'name' to be a non-empty string")
        return self

    @property
    def argv(self) -> list[str]:
        return self.name if isinstance(self.name, list) else self.name.split()

    @property
    def per_principal(self) -> bool:
        """Whether this secret has one value per calling principal: its ``name`` (env variable, path, or an
        argv element) contains ``{principal}`` (mcp_guard.secrets.per_principal)."""
        parts = self.name if isinstance(self.name, list) else [self.name]
        return any(PRINCIPAL_PLACEHOLDER in p for p in parts)


PRINCIPAL_PLACEHOLDER = "{principal}"
"""In a secret's ``name``: replaced by the calling principal's id (a per-principal secret)."""


class PoolSettings(_Strict):
    """``[upstreams.X] pool``: the per-principal connections of an upstream whose injected secrets are per
    principal (mcp_guard.upstream.pool). ``max`` children at once (the least recently used idle one makes
    room); a child unused for ``idle_s`` seconds is stopped."""

    max: Annotated[int, Field(gt=0, le=10_000)] = 16
    idle_s: Annotated[float, Field(gt=0)] = 300.0


class TokenExchangeSettings(_Strict):
    """``[upstreams.X] token_exchange``: each call is sent with a token the IdP issues for this upstream in exchange
    for the caller's own (RFC 8693; mcp_guard.upstream.token_exchange). ``client_secret`` names a secret of
    ``[secrets]`` (the gateway's client credential); ``token_url`` defaults to ``[auth] issuer``'s token endpoint."""

    token_url: str | None = None
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: Annotated[str, Field(min_length=1)]
    audience: Annotated[str, Field(min_length=1)]
    # Every scope a call may be given; a call asks for all of them unless obligations.upstream_scopes narrows it.
    scopes: list[str] = []
    # Each request to the IdP is bounded by this; a token is used until this long before its expiry.
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    refresh_margin_s: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, what="token_url")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not s or re.search(r"[\s\"\\]", s)]
        if bad:
            raise ValueError(f"a scope is a non-empty string without spaces or quotes, got {bad[0]!r}")
        return list(dict.fromkeys(v))


TaskSupportSetting = Literal["forbidden", "optional", "required"]
"""How a tool may run as a task: never, when the client negotiated the extension, only as a task (-32021 without)."""


class UpstreamSettings(_Strict):
    transport: Literal["stdio", "http", "sse"] = "stdio"
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    # Variables passed through from the proxy's own environment (beyond the minimal default set).
    env_passthrough: list[str] = []
    inject_env: dict[str, str] = {}  # child env var -> secret name
    url: str | None = None
    headers: dict[str, str] = {}
    inject_headers: dict[str, str] = {}  # header -> template using {secret_name}
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    startup_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    enabled: bool = True
    pinning: Literal["enforce", "warn", "off"] = "enforce"
    # A tool first seen after this upstream's first catalogue (list_changed, a restart): "review" = pending
    # like a changed definition (hidden and denied under enforce until `tools approve`); "trust" = pinned on
    # first use. The first catalogue after mcp-guard starts is always pinned on first use.
    new_tools: Literal["review", "trust"] = "review"
    # false: expose this upstream's tools, prompts and resource URIs under their own names (at most one
    # upstream; for clients that need exact names). Namespaced names win any collision.
    namespace: bool = True
    # Forward the upstream's roots/list requests to the client (declares the roots capability upstream).
    # Off by default: some servers (server-filesystem) replace their allowed directories with client roots.
    forward_roots: bool = False
    max_response_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    restart: bool = True
    restart_backoff_s: Annotated[float, Field(gt=0)] = 0.5
    restart_backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    # One connection per principal when an injected secret is per principal (set on any other: a config error).
    pool: PoolSettings = PoolSettings()
    # Which protocol era to speak to it: "auto" probes server/discover (2026-07-28) and falls back to the
    # 2025-11-25 initialize handshake; a version pins that era (a pinned 2026-07-28 that fails is a start failure).
    protocol: Literal["auto", "2025-11-25", "2026-07-28"] = "auto"
    # Send each call with a token exchanged for the caller's (streamable HTTP upstreams only).
    token_exchange: TokenExchangeSettings | None = None
    # Which of its tools mcp-guard serves as tasks (io.modelcontextprotocol/tasks) to clients that negotiated the
    # extension: unset = as each tool's definition says (execution.taskSupport, a 2025-11-25 field: a
    # 2026-07-28 upstream's tools say nothing, so none); set = every tool of this upstream; task_tools names one
    # tool (its upstream name) and wins over both. The SEP-2663 server alone decides: here, the operator.
    tasks: TaskSupportSetting | None = None
    task_tools: dict[Annotated[str, Field(min_length=1)], TaskSupportSetting] = {}

    @model_validator(mode="after")
    def _transport_fields(self) -> UpstreamSettings:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("stdio upstream needs 'command'")
            if self.url or self.headers or self.inject_headers:
                raise ValueError("stdio upstream takes no 'url', 'headers' or 'inject_headers'")
        else:
            if not self.url:
                raise ValueError(f"{self.transport} upstream needs 'url'")
            if not re.match(r"^https?://", self.url):
                raise ValueError("'url' must start with http:// or https://")
            if self.command or self.args or self.env or self.inject_env:
                raise ValueError(f"{self.transport} upstream takes no 'command', 'args', 'env' or 'inject_env'")
        if self.token_exchange is not None:
            if self.transport != "http":
                raise ValueError("token_exchange needs transport = 'http' (streamable HTTP)")
            if any(h.lower() == "authorization" for h in [*self.headers, *self.inject_headers]):
                raise ValueError("token_exchange sets Authorization itself: remove it from headers/inject_headers")
        return self


class ConsoleSettings(_Strict):
    """``[console]``: who may use the admin API (and, later, the console), and where approvals are shown.

    A principal whose roles include ``operator_role`` acts (approves, denies); ``viewer_role`` only reads.
    ``base_url`` is the public address of this mcp-guard's HTTP front, used in the link a 2026-07-28 client is
    given to an approval (default: ``http://<[server] host>:<[server] port>``). ``enabled`` serves the console
    under ``/console`` (the admin API is served either way); a console login lasts ``session_ttl_s``; at most
    ``max_event_streams`` ``GET /admin/api/events`` streams are open at once. A client address that failed
    ``login_failures_max`` console logins within ``login_failures_window_s`` is refused further attempts until
    the window has room (counted in the shared state store: every replica on one database counts together)."""

    operator_role: Annotated[str, Field(min_length=1)] = "operator"
    viewer_role: Annotated[str, Field(min_length=1)] = "viewer"
    base_url: str | None = None
    enabled: bool = True  # serve the operator console under /console on the HTTP front
    session_ttl_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 8 * 3600  # a console login lasts this long
    max_event_streams: Annotated[int, Field(ge=1, le=1000)] = 16  # concurrent GET /admin/api/events streams
    login_failures_max: Annotated[int, Field(ge=1, le=10_000)] = 10  # failed console logins per client address …
    login_failures_window_s: Annotated[float, Field(gt=0, le=86400)] = 300  # … within this many seconds

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL, e.g. https://guard.example")
        return v

    def url_base(self, server: ServerSettings) -> str:
        """Where the HTTP front is reached from outside (for links to approvals)."""
        if self.base_url is not None:
            return self.base_url.rstrip("/")
        host = f"[{server.host}]" if ":" in server.host else server.host
        return f"http://{host}:{server.port}"


class TelemetrySettings(_Strict):
    """``[telemetry]``: OpenTelemetry traces (mcp_guard.telemetry). Off unless ``traces = true`` or the
    standard ``OTEL_TRACES_EXPORTER`` variable names an exporter; the exporter itself is configured by the
    standard ``OTEL_*`` variables (endpoint, headers, sampler, batch sizes, service name)."""

    traces: bool = False
    # Time every pipeline stage (mcp_guard_stage_duration_seconds on /metrics). Off by default: the wrapper
    # around each stage costs a few microseconds per stage per call (bench/bench_stage_metrics.py).
    stage_metrics: bool = False


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    policy: PolicySettings = PolicySettings()
    audit: AuditSettings = AuditSettings()
    redaction: RedactionSettings = RedactionSettings()
    principals: dict[str, PrincipalSettings] = {}
    auth: AuthSettings | None = None
    secrets: dict[str, SecretSettings] = {}
    upstreams: dict[str, UpstreamSettings] = {}
    console: ConsoleSettings = ConsoleSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    # Where the config came from (set by load_settings; not a TOML key).
    source: str | None = Field(default=None, exclude=True)
    base_dir: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_refs(self) -> Settings:
        sep = self.server.tool_separator
        for table in ("upstreams", "principals", "secrets"):
            for name in getattr(self, table):
                if not re.match(_NAME, name):
                    raise ValueError(f"{table}.{name}: name must match {_NAME}")
        bare = [n for n, u in self.upstreams.items() if not u.namespace and u.enabled]
        if len(bare) > 1:
            raise ValueError(f"upstreams: at most one upstream may set namespace = false (found {', '.join(bare)})")
        namer = Namer(sep)
        for name, up in self.upstreams.items():
            ambiguous = namer.ambiguity(name)
            if ambiguous is not None:
                exposed, other, tool = ambiguous
                also = f"; upstream {other!r} is configured too" if other in self.upstreams else ""
                raise ValueError(
                    f"upstreams.{name}: with the tool separator {sep!r} its tools' names are ambiguous: "
                    f"its tool 'echo' would be {exposed!r}, which reads as upstream {other!r}'s tool {tool!r}"
                    f"{also}. The first {sep!r} in '<upstream>{sep}' must be the one the separator adds "
                    f"(so a name can neither contain it nor end with a start of it that it continues); rename "
                    f"the upstream or change [server] tool_separator"
                )
            for var, secret in up.inject_env.items():
                if secret not in self.secrets:
                    raise ValueError(f"upstreams.{name}.inject_env.{var}: unknown secret {secret!r}")
            for header, template in up.inject_headers.items():
                for ref in re.findall(r"\{([^}]*)\}", template):
                    if ref not in self.secrets:
                        raise ValueError(f"upstreams.{name}.inject_headers.{header}: unknown secret {ref!r}")
            self._check_exchange(name, up)
            # (a non-default pool: a dumped and re-parsed config carries the default table, which is harmless)
            if up.pool != PoolSettings() and not self._per_principal_injected(up):
                raise ValueError(
                    f"upstreams.{name}.pool: only an upstream that injects a per-principal secret "
                    "({principal} in the secret's name) runs one connection per principal"
                )
        return self

    def _check_exchange(self, name: str, up: UpstreamSettings) -> None:
        """``token_exchange`` names a shared secret, and has a token endpoint (its own, or ``[auth]``'s issuer)."""
        tx = up.token_exchange
        if tx is None:
            return
        key = f"upstreams.{name}.token_exchange"
        secret = self.secrets.get(tx.client_secret)
        if secret is None:
            raise ValueError(f"{key}.client_secret: unknown secret {tx.client_secret!r}")
        if secret.per_principal:
            raise ValueError(f"{key}.client_secret: the gateway's client secret cannot be per principal")
        if tx.token_url is None and self.auth is None:
            raise ValueError(f"{key}.token_url: needed without [auth] (whose issuer's token endpoint is the default)")

    def _per_principal_injected(self, up: UpstreamSettings) -> bool:
        names = set(up.inject_env.values())
        for template in up.inject_headers.values():
            names.update(re.findall(r"\{([^}]*)\}", template))
        return any(n in self.secrets and self.secrets[n].per_principal for n in names)

    def resolve_path(self, p: str) -> Path:
        """A path from the config: absolute, else relative to the config file's directory."""
        path = Path(os.path.expanduser(p))
        if path.is_absolute() or self.base_dir is None:
            return path
        return Path(os.path.normpath(Path(self.base_dir) / path))


DEFAULT_CONFIG = Path("config") / "mcp-guard.toml"
CONFIG_ENV = "MCP_GUARD_CONFIG"


def find_config(explicit: str | None) -> Path:
    """The config file to use (docs/architecture.md §8.1): ``--config``, else ``$MCP_GUARD_CONFIG``, else
    ``./config/mcp-guard.toml``.

    Raises :class:`ConfigError` saying where it looked when none of them names a file. There is no
    silent fallback to built-in defaults: they would look for ``policies/rego`` and create the audit
    database in whatever directory the command happens to run in. (``load_settings(None)`` still gives
    the defaults to code that wants them.)
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    raise ConfigError(
        f"no config file: no --config given, ${CONFIG_ENV} is not set, and {DEFAULT_CONFIG} does not exist "
        f"in {Path.cwd()}"
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-after")))


def _format_validation(file: str, err: ValidationError) -> ConfigError:
    """One line naming the file and, for every problem, the dotted key and what is wrong with it."""
    problems = []
    for e in err.errors():
        key = _loc(e["loc"])
        msg = " ".join(e["msg"].removeprefix("Value error, ").split())
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{key}: {msg}" if key else msg)
    ce = ConfigError("; ".join(problems), file=file)
    ce.key = _loc(err.errors()[0]["loc"]) or None
    return ce


def parse_settings(data: dict[str, Any], *, source: str = "<config>", base_dir: str | None = None) -> Settings:
    """Validate an already-parsed TOML document."""
    try:
        s = Settings.model_validate(data)
    except ValidationError as e:
        raise _format_validation(source, e) from None
    return s.model_copy(update={"source": source, "base_dir": base_dir})


def load_settings(path: str | Path | None) -> Settings:
    """Load and validate a config file; ``None`` means the built-in defaults."""
    if path is None:
        return Settings()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(p)) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", file=str(p)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"invalid TOML: {e}", file=str(p)) from None
    return parse_settings(data, source=str(p), base_dir=str(p.resolve().parent))


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The dotted keys whose values differ between two configs, sorted (a table added or removed is
    its own key, e.g. ``upstreams.git``). What a reload reports as waiting for a restart."""
    changed: list[str] = []

    def walk(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                key = f"{prefix}.{k}" if prefix else str(k)
                if k not in a or k not in b:
                    changed.append(key)
                else:
                    walk(key, a[k], b[k])
        elif a != b:
            changed.append(prefix)

    walk("", old.model_dump(mode="json"), new.model_dump(mode="json"))
    return changed
