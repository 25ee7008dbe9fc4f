"""The HTTP front as an OAuth 2.1 resource server (``[auth]``): discovery document and challenges.

What a client learns, per the MCP authorization spec:

* ``GET /.well-known/oauth-protected-resource`` and its RFC 9728 path-inserted form
  ``/.well-known/oauth-protected-resource/mcp`` (and ``…/<audience path>`` when mcp-guard sits behind a
  prefix) — no credentials needed — answer the protected-resource metadata: ``resource`` (``[auth] audience``),
  ``authorization_servers``, ``scopes_supported``, ``bearer_methods_supported``;
* a request without usable credentials is answered ``401`` with
  ``WWW-Authenticate: Bearer resource_metadata="<audience origin>/.well-known/oauth-protected-resource<path>"``
  (plus ``error="invalid_token"`` when a credential was presented, and ``scope`` when ``[auth]
  required_scopes`` is set) — the same answer whatever was wrong, so a caller learns nothing from it;
* a token lacking scopes is answered ``403`` with ``error="insufficient_scope", scope="…"`` — the scopes
  ``[auth] required_scopes`` or a policy's ``obligations.step_up`` asks for (only those: the client adds what
  it already holds, per RFC 6750 §3.1 and the 2026-07-28 spec).

The token checks themselves are :class:`~mcp_guard.frontend.tokens.JwtVerifier`'s; :class:`ResourceServer`
bundles the verifier with this resource's identity.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_guard.frontend.jwks import JwksCache
from mcp_guard.frontend.tokens import JwtVerifier
from mcp_guard.settings import AuthSettings

__all__ = ["METADATA_PATH", "ResourceServer", "resource_metadata_url"]

METADATA_PATH = "/.well-known/oauth-protected-resource"


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the metadata URL of ``resource`` (the well-known path inserted before its path)."""
    u = urlsplit(resource)
    path = u.path.rstrip("/")
    return f"{u.scheme}://{u.netloc}{METADATA_PATH}{path}"


class ResourceServer:
    """``[auth]`` as the front uses it: the token verifier, the metadata document, the challenge headers."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.verifier = JwtVerifier(settings, JwksCache(settings, transport=transport, clock=clock))
        self.metadata_url = resource_metadata_url(settings.audience)

    # ------------------------------------------------------------------ discovery
    def metadata(self) -> dict[str, Any]:
        """The protected-resource metadata (RFC 9728 §2)."""
        s = self.settings
        doc: dict[str, Any] = {
            "resource": s.audience,
            "authorization_servers": s.authorization_servers or [s.issuer],
            "bearer_methods_supported": ["header"],
        }
        scopes = list(dict.fromkeys([*s.required_scopes, *s.scopes_supported]))
        if scopes:
            doc["scopes_supported"] = scopes
        if s.resource_name:
            doc["resource_name"] = s.resource_name
        return doc

    def routes(self, mcp_path: str = "/mcp") -> list[Route]:
        """The metadata at the root well-known path, its ``/mcp`` form and the audience's own path form."""
        body = json.dumps(self.metadata(), separators=(",", ":")).encode()

        async def serve(request: Request) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=_CORS)
            return Response(
                body, media_type="application/json", headers={**_CORS, "Cache-Control": "public, max-age=300"}
            )

        paths = dict.fromkeys([METADATA_PATH, METADATA_PATH + mcp_path.rstrip("/"), urlsplit(self.metadata_url).path])
        return [Route(p, serve, methods=["GET", "OPTIONS"]) for p in paths]

    # ------------------------------------------------------------------ challenges
    def unauthorized(self, *, presented: bool) -> str:
        """The ``WWW-Authenticate`` value of a 401: where the metadata is, and the baseline scopes."""
        parts = [f'resource_metadata="{self.metadata_url}"']
        if presented:
            parts.insert(0, 'error="invalid_token"')
        if self.settings.required_scopes:
            parts.append(f'scope="{" ".join(self.settings.required_scopes)}"')
        return "Bearer " + ", ".join(parts)

    def insufficient_scope(self, scopes: Sequence[str]) -> str:
        """The ``WWW-Authenticate`` value of a 403 scope challenge for ``scopes``."""
        return (
            f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}", '
            f'resource_metadata="{self.metadata_url}", error_description="additional scope required"'
        )


_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "mcp-protocol-version",
}
