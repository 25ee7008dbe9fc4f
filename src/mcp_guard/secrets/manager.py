"""The secrets of one configuration: resolved per upstream, injected only there, scrubbed everywhere.

:class:`SecretManager` is built from :class:`~mcp_guard.settings.Settings`. It owns one provider per
``[secrets.<name>]`` table and knows which upstream uses which secret:

* a stdio upstream gets ``inject_env = {VAR = "secret"}`` as variables of its child's environment;
* an HTTP/SSE upstream gets ``inject_headers = {Header = "Bearer {secret}"}``, each ``{name}``
  replaced by that secret's value.

:meth:`SecretManager.injections_for` resolves exactly the secrets of the upstream asked for — never
another's — and is what an :class:`~mcp_guard.upstream.connection.UpstreamConnection` calls on each
(re)start, so a rotated file or command secret is picked up on restart.

Every value resolved so far (including values a secret had before it rotated) feeds one
:class:`~mcp_guard.secrets.redact.Scrubber` (:attr:`SecretManager.scrubber`), rebuilt whenever a new
value appears; the redact stage, the log processor and the stderr forwarder all use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import anyio
import structlog
from pydantic import SecretStr

from mcp_guard.errors import SecretError
from mcp_guard.secrets.per_principal import PerPrincipalProvider
from mcp_guard.secrets.providers import SecretProvider, SecretRef, build_provider
from mcp_guard.secrets.redact import Scrubber
from mcp_guard.settings import Settings, UpstreamSettings
from mcp_guard.upstream.connection import Injections

__all__ = ["TEMPLATE_REF", "SecretManager"]

log = structlog.get_logger("mcp_guard.secrets")

TEMPLATE_REF = re.compile(r"\{([^}]*)\}")  # the same syntax settings.py validates
_MAX_OLD_VALUES = 8  # rotated-out values of one secret still scrubbed
_GRACE_S = 5.0  # on top of a secret's own timeout_s, for the whole resolve


class SecretManager:
    def __init__(self, settings: Settings, *, providers: Mapping[str, SecretProvider] | None = None) -> None:
        self._settings = settings
        cwd = settings.base_dir
        self._providers: dict[str, SecretProvider] = {
            name: build_provider(s, resolve_path=settings.resolve_path, cwd=cwd, scrub=self.scrub_text)
            for name, s in settings.secrets.items()
            if not s.per_principal
        }
        # {principal} in the name: one value per calling principal (mcp_guard.secrets.per_principal).
        self._per_principal: dict[str, PerPrincipalProvider] = {
            name: PerPrincipalProvider(s, resolve_path=settings.resolve_path, cwd=cwd, scrub=self.scrub_text)
            for name, s in settings.secrets.items()
            if s.per_principal
        }
        if providers:
            self._providers.update(providers)
        # (secret, principal or None) -> values seen, newest last: every principal's value stays scrubbed.
        self._values: dict[tuple[str, str | None], list[str]] = {}
        self._min_fragment = settings.redaction.min_fragment_chars
        self._scrubber = Scrubber()

    # ------------------------------------------------------------------ which secret goes where
    def secret_names_for(self, upstream: str) -> set[str]:
        """The secrets injected into ``upstream`` (empty for an unknown upstream or one without any)."""
        up = self._settings.upstreams.get(upstream)
        return _secret_names(up) if up is not None else set()

    def pooled_upstreams(self) -> frozenset[str]:
        """The enabled upstreams that run one connection per principal: an injected secret is per principal."""
        return frozenset(
            name
            for name, up in self._settings.upstreams.items()
            if up.enabled and _secret_names(up) & self._per_principal.keys()
        )

    # ------------------------------------------------------------------ resolving
    async def resolve(self, secret: str, *, upstream: str | None = None, principal: str | None = None) -> SecretStr:
        """The current value of one secret (``principal``'s own for a per-principal secret). Raises
        SecretError naming the secret (and upstream)."""
        ref = SecretRef(secret, upstream)
        shared = self._providers.get(secret)
        per_principal = self._per_principal.get(secret)
        if per_principal is not None and principal is None:
            raise ref.error("is per principal ({principal} in its name): it has a value only for a calling principal")
        if shared is None and per_principal is None:
            raise ref.error("no such secret is configured")
        settings = self._settings.secrets.get(secret)
        limit = (settings.timeout_s if settings else 10.0) + _GRACE_S
        with anyio.move_on_after(limit):
            if per_principal is not None and principal is not None:
                value = await per_principal.resolve_for(ref, principal)
                self._remember((secret, principal), value.get_secret_value())
            else:
                assert shared is not None
                value = await shared.resolve(ref)
                self._remember((secret, None), value.get_secret_value())
            return value
        raise ref.error(f"resolving took longer than {limit:g}s")

    async def _resolve_many(
        self, names: set[str], upstream: str | None, principal: str | None = None
    ) -> tuple[dict[str, SecretStr], dict[str, SecretError]]:
        values: dict[str, SecretStr] = {}
        errors: dict[str, SecretError] = {}

        async def one(name: str) -> None:
            try:
                values[name] = await self.resolve(name, upstream=upstream, principal=principal)
            except SecretError as e:
                errors[name] = e

        async with anyio.create_task_group() as tg:
            for name in sorted(names):
                tg.start_soon(one, name)
        return values, errors

    async def injections_for(self, upstream: str) -> Injections:
        """The env vars (stdio) or headers (HTTP) carrying ``upstream``'s secrets, and nothing else.

        Raises SecretError (naming the secret and the upstream) if one of them cannot be resolved
        or cannot be carried (a NUL in an env value, a line break in a header value).
        """
        return await self._injections(upstream, None)

    async def injections_for_principal(self, upstream: str, principal: str) -> Injections:
        """:meth:`injections_for` for ``principal``'s own connection: its value of each per-principal secret
        (and the shared value of the others). Raises SecretError when ``principal`` has none."""
        return await self._injections(upstream, principal)

    async def _injections(self, upstream: str, principal: str | None) -> Injections:
        up = self._settings.upstreams.get(upstream)
        if up is None:
            raise SecretError(f"unknown upstream {upstream!r}", upstream=upstream)
        values, errors = await self._resolve_many(_secret_names(up), upstream, principal)
        if errors:
            raise errors[min(errors)]
        env: dict[str, str] = {}
        for var, name in up.inject_env.items():
            value = values[name].get_secret_value()
            if "\0" in value:
                raise SecretRef(name, upstream).error(f"value contains a NUL byte and cannot be put in ${var}")
            env[var] = value
        headers: dict[str, str] = {}
        for header, template in up.inject_headers.items():
            for name in TEMPLATE_REF.findall(template):
                value = values[name].get_secret_value()
                if any(c in value for c in "\r\n\0"):
                    raise SecretRef(name, upstream).error(
                        f"value contains a line break or NUL and cannot be put in header {header}"
                    )
            headers[header] = TEMPLATE_REF.sub(lambda m: values[m.group(1)].get_secret_value(), template)
        return Injections(env=env, headers=headers)

    async def check(self) -> dict[str, str]:
        """Resolve the secrets of every enabled upstream; ``{upstream: problem}`` for those that fail.

        Each secret is resolved once even if several upstreams use it. Secrets no enabled upstream
        uses are not resolved.
        """
        # A per-principal secret has no value until a principal calls: it is checked then (credential_missing).
        wanted = {
            name: _secret_names(up) - self._per_principal.keys()
            for name, up in self._settings.upstreams.items()
            if up.enabled
        }
        all_names = set().union(*wanted.values()) if wanted else set()
        _, errors = await self._resolve_many(all_names, None)
        problems: dict[str, str] = {}
        for upstream, names in sorted(wanted.items()):
            failed = sorted(names & errors.keys())
            if failed:
                problems[upstream] = "; ".join(_for_upstream(errors[n], upstream) for n in failed)
        for upstream, problem in problems.items():
            log.warning("secrets.unavailable", upstream=upstream, problem=problem)
        return problems

    # ------------------------------------------------------------------ reload (docs/architecture.md §10)
    def reconfigured(self, settings: Settings) -> SecretManager:
        """A manager for ``settings`` that has resolved nothing yet: the candidate of a config reload,
        checked with :meth:`resolve_used` before :meth:`adopt` makes it live. Its providers scrub what they
        report (a command's stderr) with this manager's scrubber, which knows every value seen so far."""
        providers = {
            name: build_provider(s, resolve_path=settings.resolve_path, cwd=settings.base_dir, scrub=self.scrub_text)
            for name, s in settings.secrets.items()
        }
        return SecretManager(settings, providers=providers)

    async def resolve_used(self) -> dict[str, str]:
        """Resolve every secret an enabled upstream injects; ``{secret: problem}`` for those that fail
        (a reload is refused when one does: an upstream would start without its credential). Per-principal
        secrets are not among them: each is resolved for its principal when that principal's connection
        starts (mcp_guard.upstream.pool), and a missing one is that principal's ``credential_missing``."""
        names: set[str] = set()
        for up in self._settings.upstreams.values():
            if up.enabled:
                names |= _secret_names(up)
        names -= self._per_principal.keys()
        _, errors = await self._resolve_many(names, None)
        return {name: str(err) for name, err in sorted(errors.items())}

    def rotated(self, candidate: SecretManager) -> frozenset[str]:
        """Secrets whose newest value in ``candidate`` differs from the newest value here (for a per-principal
        secret: any principal's)."""
        return frozenset(
            key[0]
            for key, values in candidate._values.items()
            if values and self._values.get(key, [None])[-1] != values[-1]
        )

    def adopt(self, candidate: SecretManager) -> None:
        """Serve ``candidate``'s configuration from now on. Values resolved before stay scrubbed (a rotated
        secret's old value may still be echoed by a tool), the candidate's are added."""
        self._settings = candidate._settings
        self._providers = dict(candidate._providers)
        self._per_principal = dict(candidate._per_principal)
        for key, values in candidate._values.items():
            for value in values:
                self._remember(key, value)

    # ------------------------------------------------------------------ scrubbing
    def _remember(self, key: tuple[str, str | None], value: str) -> None:
        seen = self._values.setdefault(key, [])
        if seen and seen[-1] == value:
            return
        if value in seen:
            seen.remove(value)
        seen.append(value)
        del seen[:-_MAX_OLD_VALUES]
        self._scrubber = Scrubber(
            ((name, v) for (name, _), vs in sorted(self._values.items(), key=_key_order) for v in vs),
            min_fragment=self._min_fragment,
        )
        if self._scrubber.skipped:
            log.warning("secrets.too_short_to_scrub", secrets=list(self._scrubber.skipped))

    @property
    def scrubber(self) -> Scrubber:
        """A scrubber over every secret value resolved so far (replaced, never mutated)."""
        return self._scrubber

    def scrub_text(self, text: str) -> str:
        """``text`` with every known secret value (in any encoding) replaced by ``[REDACTED:<name>]``."""
        return self._scrubber.scrub_text(text)

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._providers))

    def provider(self, secret: str) -> SecretProvider | None:
        return self._providers.get(secret)


def _key_order(item: tuple[tuple[str, str | None], list[str]]) -> tuple[str, str]:
    (secret, principal), _ = item
    return secret, principal or ""


def _secret_names(up: UpstreamSettings) -> set[str]:
    names = set(up.inject_env.values())
    for template in up.inject_headers.values():
        names.update(TEMPLATE_REF.findall(template))
    return names


def _for_upstream(err: SecretError, upstream: str) -> str:
    """``err``'s message, re-worded to name the upstream that needs the secret."""
    message = str(err)
    if err.secret is not None and err.upstream is None:
        prefix = SecretRef(err.secret).describe()
        if message.startswith(prefix):
            return SecretRef(err.secret, upstream).describe() + message[len(prefix) :]
    return message
