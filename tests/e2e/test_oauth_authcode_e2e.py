"""A person's agent signs in: the MCP SDK's own OAuth client runs the authorization-code flow with PKCE and a
resource indicator (RFC 8707) against the real IdP (tests/e2e/oidc_idp.mjs, npm `oidc-provider`) and calls
tools through `mcp-guard run --transport http`.

The client starts with nothing: mcp-guard's 401 names its protected-resource metadata, that names the IdP,
the client registers itself there (RFC 7591), sends the user to the authorization endpoint, and exchanges the
code for a JWT access token whose audience is mcp-guard's /mcp. The "user" is `_Person`: an httpx2 client with
a cookie jar that follows the authorization URL and submits the IdP's login and consent forms, then hands the
code, state and issuer from the redirect back to the SDK — what a browser and a person would do.

The stack, policy and recorder upstream are those of test_oauth_e2e.py: group `support` (alice) sees every
recorder tool, `analyst` (bob) only `echo`; `add` needs the `math:write` scope (a 403 step-up).
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Iterator
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata
from test_oauth_e2e import AGENT_APP, REDIRECT_URI, Stack, _Memory, _recorded_calls, _text, oauth_stack

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MAX_HOPS = 12  # redirects and forms between the authorization URL and the callback; a loop is a failure

_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"')
_PROMPT = re.compile(r'name="prompt"\s+value="([^"]+)"')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("authcode")) as s:
        yield s


class _Person:
    """Plays the user at the IdP for the SDK's redirect and callback handlers: a cookie jar (the IdP's session
    survives between authorizations, as in a browser), the login form answered with `login`, the consent form
    accepted. Records every authorization URL the SDK sent it to, to check what the client asked for."""

    def __init__(self, login: str) -> None:
        self.login = login
        self.browser = httpx2.AsyncClient(timeout=10, follow_redirects=False)
        self.authorization_urls: list[str] = []
        self.forms: list[str] = []  # the prompts answered, in order: "login", "consent"
        self.refusals: list[dict[str, list[str]]] = []  # error redirects from the IdP, e.g. invalid_scope
        self._result: AuthorizationCodeResult | None = None

    async def redirect(self, authorization_url: str) -> None:
        self.authorization_urls.append(authorization_url)
        response = await self.browser.get(authorization_url)
        for _ in range(MAX_HOPS):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if target.startswith(REDIRECT_URI):
                    self._result = self._code_result(target)
                    return
                response = await self.browser.get(target)
            elif response.status_code == 200:
                response = await self._submit(response)
            else:
                raise AssertionError(f"the IdP answered {response.status_code}: {response.text[:300]}")
        raise AssertionError(f"no redirect to {REDIRECT_URI} within {MAX_HOPS} hops")

    async def _submit(self, page: httpx2.Response) -> httpx2.Response:
        action, prompt = _FORM_ACTION.search(page.text), _PROMPT.search(page.text)
        assert action and prompt, f"not a login or consent page: {page.text[:300]}"
        fields = {"prompt": prompt.group(1)}
        if fields["prompt"] == "login":
            fields |= {"login": self.login, "password": "not checked by the dev interactions"}
        self.forms.append(fields["prompt"])
        return await self.browser.post(urljoin(str(page.url), unescape(action.group(1))), data=fields)

    def _code_result(self, redirect: str) -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(redirect).query)
        if "error" in query:
            self.refusals.append(query)
            raise _Refused(query["error"][0])
        iss = query.get("iss", [None])[0]
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0], iss=iss)

    async def callback(self) -> AuthorizationCodeResult:
        result, self._result = self._result, None
        assert result is not None, "the callback ran before the IdP redirected back"
        return result

    async def aclose(self) -> None:
        await self.browser.aclose()


class _Refused(Exception):
    """The IdP redirected back with an error instead of a code."""


def _signed_in_client(
    stack: Stack, person: _Person, seen: list[httpx2.Response], *, preregistered: bool = False
) -> tuple[Client, _Memory]:
    """An MCP client as an agent is built: the SDK's OAuthClientProvider on an httpx2 client, no token stored;
    it registers itself at the IdP, or (`preregistered`) holds the IdP's public client AGENT_APP."""
    storage = _Memory()
    if preregistered:
        storage.client = OAuthClientInformationFull(
            client_id=str(AGENT_APP["client_id"]),
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        )
    auth = OAuthClientProvider(
        server_url=stack.url,
        client_metadata=OAuthClientMetadata(
            client_name=f"e2e agent of {person.login}",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=person.redirect,
        callback_handler=person.callback,
    )

    async def record(r: httpx2.Response) -> None:
        seen.append(r)

    http = httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30.0), event_hooks={"response": [record]})
    return Client(streamable_http_client(stack.url, http_client=http), mode="legacy"), storage


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT (the test reads what the IdP issued; mcp-guard verifies it)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_a_user_signs_in_with_pkce_and_calls_through(stack: Stack) -> None:
    alice = _Person("alice")
    seen: list[httpx2.Response] = []
    client, storage = _signed_in_client(stack, alice, seen)
    try:
        async with client as c:
            assert "rec__add" in {t.name for t in (await c.list_tools()).tools}
            assert _text(await c.call_tool("rec__echo", {"text": "signed in"})) == "signed in"
    finally:
        await alice.aclose()
    assert storage.tokens is not None and storage.client is not None
    stack.tokens.append(storage.tokens.access_token)
    # What the client asked the IdP for: a code, PKCE S256, and a token for mcp-guard's resource.
    asked = parse_qs(urlsplit(alice.authorization_urls[0]).query)
    assert asked["response_type"] == ["code"] and asked["code_challenge_method"] == ["S256"]
    assert asked["resource"] == [stack.url] and asked["scope"] == ["tools:read"]
    assert alice.forms == ["login", "consent"]
    # What it got: a JWT access token for that resource, for alice, through the client it registered.
    claims = _claims(storage.tokens.access_token)
    assert claims["aud"] == stack.url and claims["sub"] == "alice" and claims["iss"] == stack.issuer
    assert claims["client_id"] == storage.client.client_id and claims["groups"] == ["support"]
    # The path through mcp-guard: 401, its metadata, the IdP's, registration, the token, then the calls.
    paths = [(r.request.url.path, r.status_code) for r in seen]
    assert paths[0] == ("/mcp", 401)
    assert ("/.well-known/oauth-protected-resource/mcp", 200) in paths
    assert ("/reg", 201) in paths and ("/token", 200) in paths
    # Who mcp-guard says called: the user, by the IdP, through the registered client.
    starts = [json.loads(r["details"]) for r in await stack.wait_rows("session.start") if r["principal"] == "alice"]
    assert starts, "no session.start row for alice"
    auth = starts[-1]["auth"]
    assert auth["method"] == "jwt" and auth["issuer"] == stack.issuer
    assert auth["client_id"] == storage.client.client_id
    calls = [r for r in stack.rows("call.decision") if r["tool"] == "echo" and r["principal"] == "alice"]
    assert calls and calls[-1]["decision"] == "allow"


async def test_two_users_get_their_own_principals_and_the_policy_denies_bob(stack: Stack) -> None:
    """Two people sign in through their own agents: each call is theirs, with their own groups' tools."""
    tools: dict[str, set[str]] = {}
    subjects: dict[str, str] = {}
    for login in ("alice", "bob"):
        person = _Person(login)
        client, storage = _signed_in_client(stack, person, [])
        try:
            async with client as c:
                tools[login] = {t.name for t in (await c.list_tools()).tools}
                assert _text(await c.call_tool("rec__echo", {"text": f"from {login}"})) == f"from {login}"
                if login == "bob":
                    denied = await c.call_tool("rec__add", {"a": 1, "b": 2})
                    assert denied.is_error and "no group of this principal grants it" in _text(denied)
        finally:
            await person.aclose()
        assert storage.tokens is not None
        stack.tokens.append(storage.tokens.access_token)
        subjects[login] = _claims(storage.tokens.access_token)["sub"]
    assert subjects == {"alice": "alice", "bob": "bob"}
    assert {"rec__echo", "rec__add"} <= tools["alice"] and tools["bob"] == {"rec__echo"}
    echoes = [(r["principal"], r["decision"]) for r in stack.rows("call.decision") if r["tool"] == "echo"]
    assert ("alice", "allow") in echoes and ("bob", "allow") in echoes
    bobs_add = [r for r in stack.rows("call.decision") if r["tool"] == "add" and r["principal"] == "bob"]
    assert [r["decision"] for r in bobs_add] == ["deny"]
    assert "step_up" not in json.loads(bobs_add[0]["details"]).get("obligations", {})  # a plain deny
    bob_starts = [json.loads(r["details"]) for r in stack.rows("session.start") if r["principal"] == "bob"]
    assert bob_starts and bob_starts[-1]["roles"] == ["analyst"] and bob_starts[-1]["auth"]["issuer"] == stack.issuer


async def test_step_up_reauthorizes_the_user_with_the_larger_scope(stack: Stack) -> None:
    """`add` needs math:write: the SDK client sees mcp-guard's 403 insufficient_scope, sends the user back to
    the IdP for tools:read + math:write (the session cookie spares the login: only the new consent), and the
    retried call goes through — forwarded once, after the step-up. The client is the IdP's pre-registered
    public app (see the next test for why not a self-registered one)."""
    alice = _Person("alice")
    seen: list[httpx2.Response] = []
    client, storage = _signed_in_client(stack, alice, seen, preregistered=True)
    before = _recorded_calls(stack).count("add")
    try:
        async with client as c:
            await c.list_tools()
            first = storage.tokens
            assert first is not None and first.scope == "tools:read"
            result = await c.call_tool("rec__add", {"a": 20, "b": 22})
            assert result.structured_content == {"sum": 42}
    finally:
        await alice.aclose()
    assert storage.tokens is not None
    stack.tokens += [first.access_token, storage.tokens.access_token]
    _assert_one_scope_challenge(seen)
    assert not any(r.request.url.path == "/reg" for r in seen)  # the pre-registered client, as stored
    assert len(alice.authorization_urls) == 2 and alice.forms == ["login", "consent", "consent"]
    again = parse_qs(urlsplit(alice.authorization_urls[1]).query)
    assert set(again["scope"][0].split()) == {"tools:read", "math:write"} and again["resource"] == [stack.url]
    stepped_up = _claims(storage.tokens.access_token)
    assert stepped_up["sub"] == "alice" and stepped_up["client_id"] == AGENT_APP["client_id"]
    assert set(stepped_up["scope"].split()) == {"tools:read", "math:write"}
    assert _recorded_calls(stack).count("add") == before + 1
    decisions = [r for r in stack.rows("call.decision") if r["tool"] == "add" and r["principal"] == "alice"]
    assert [d["decision"] for d in decisions][-2:] == ["deny", "allow"]
    assert json.loads(decisions[-2]["details"])["obligations"] == {"step_up": {"scopes": ["math:write"]}}


async def test_a_self_registered_client_cannot_step_up_past_its_registered_scope(stack: Stack) -> None:
    """An interop limit, pinned so a change shows: the SDK registers itself (RFC 7591) with the scope of the
    first 401 challenge (mcp-guard's `required_scopes`), and oidc-provider holds a client to its registered
    `scope`. So at the 403 step-up the SDK asks for math:write, the IdP answers invalid_scope, and the call
    fails — still never forwarded. Deployments that step up with self-registering clients leave
    `required_scopes` unset (the client then asks for all of `scopes_supported` at once) or use an IdP that
    does not narrow registered clients (README, identity)."""
    alice = _Person("alice")
    seen: list[httpx2.Response] = []
    client, storage = _signed_in_client(stack, alice, seen)
    before = _recorded_calls(stack).count("add")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's flow error, raised through the client's task group
            async with client as c:
                await c.list_tools()
                await c.call_tool("rec__add", {"a": 1, "b": 1})
    finally:
        await alice.aclose()
    assert storage.tokens is not None and storage.client is not None
    stack.tokens.append(storage.tokens.access_token)
    assert storage.client.scope == "tools:read"  # what the SDK registered with
    _assert_one_scope_challenge(seen)
    assert [q["error"] for q in alice.refusals] == [["invalid_scope"]]
    assert alice.refusals[0]["scope"] == ["math:write"]
    assert _recorded_calls(stack).count("add") == before


def _assert_one_scope_challenge(seen: list[httpx2.Response]) -> None:
    refused = [r for r in seen if r.request.url.path == "/mcp" and r.status_code == 403]
    assert len(refused) == 1
    challenge = refused[0].headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="math:write", resource_metadata="')


async def test_no_signed_in_users_token_reaches_the_audit_or_the_log(stack: Stack) -> None:
    """A sign-in and a call of its own, then every token this module's sign-ins were issued so far is looked for
    (all of them when it runs last, as in file order; its own whatever the order)."""
    alice = _Person("alice")
    client, storage = _signed_in_client(stack, alice, [])
    try:
        async with client as c:  # both rows of the call are committed before its answer
            assert _text(await c.call_tool("rec__echo", {"text": "token hunt"})) == "token hunt"
    finally:
        await alice.aclose()
    assert storage.tokens is not None
    stack.tokens.append(storage.tokens.access_token)
    with sqlite3.connect(stack.audit) as db:
        dump = "\n".join(repr(row) for row in db.execute("SELECT * FROM audit_events"))
    log = stack.guard_log.read_text()
    for token in stack.tokens:
        for part in token.split("."):  # neither the token nor its payload or signature
            if len(part) > 20:
                assert part not in dump and part not in log
