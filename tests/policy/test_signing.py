"""Signed bundles: OPA-format .signatures.json verified with configured keys; a bundle signed by real `opa sign`
or by our own signer is accepted, and every way of being unsigned or mis-signed is refused, at start and at reload."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcp_guard.errors import ConfigError, PolicyError
from mcp_guard.policy import open_engine
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.reload import BundleWatcher
from mcp_guard.policy.signing import bundle_loader, canonical_json_hash
from mcp_guard.settings import Settings, parse_settings

pytestmark = pytest.mark.anyio

OPA = Path("/root/.cache/mcp-guard/bin/opa")
POLICY = 'package mcp_guard\nimport rego.v1\ndecision := {"allow": input.tool != data.blocked}\n'


def write_key(tmp: Path, name: str, key: Any) -> tuple[Path, Path]:
    """(private PEM, public PEM) files for ``key``."""
    private = tmp / f"{name}.key.pem"
    public = tmp / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_bundle(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "p.rego").write_text(POLICY)
    (root / "data.json").write_text('{"blocked": "rm", "roles": {"b": 1, "a": [1, 2.50, "<&>"]}}\n')
    (root / "sub").mkdir()
    (root / "sub" / "data.json").write_text('{"x": 1}')
    return root


def opa_sign(root: Path, private: Path, *, alg: str = "RS256", claims: dict[str, Any] | None = None) -> None:
    cmd = [str(OPA), "sign", "--signing-key", str(private), "--signing-alg", alg, "--bundle", ".", "-o", "."]
    if claims is not None:
        (root.parent / "claims.json").write_text(json.dumps(claims))
        cmd += ["--claims-file", str(root.parent / "claims.json")]
    subprocess.run(cmd, cwd=root, check=True, capture_output=True, timeout=60)


def own_sign(root: Path, key: Any, *, alg: str = "RS256", skip: str | None = None, **claims: Any) -> None:
    """Our own signer (not OPA's code): the same format, written from the spec."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel == ".signatures.json" or rel == skip:
            continue
        raw = path.read_bytes()
        digest = canonical_json_hash(raw, "SHA-256") if rel.endswith(".json") else hashlib.sha256(raw).hexdigest()
        files.append({"name": rel, "hash": digest, "algorithm": "SHA-256"})
    token = jwt.encode({"files": files, **claims}, key, algorithm=alg)
    (root / ".signatures.json").write_text(json.dumps({"signatures": [token]}))


def settings_for(tmp: Path, bundle: Path, keys: dict[str, Any], scope: str | None = None) -> Settings:
    signing: dict[str, Any] = {"keys": keys}
    if scope is not None:
        signing["scope"] = scope
    return parse_settings(
        {"policy": {"bundle": str(bundle), "signing": signing}, "upstreams": {}},
        source=str(tmp / "mcp-guard.toml"),
        base_dir=str(tmp),
    )


def load(tmp: Path, bundle: Path, keys: dict[str, Any], scope: str | None = None) -> None:
    bundle_loader(settings_for(tmp, bundle, keys, scope))(bundle)


# ------------------------------------------------------------------------------------- real `opa sign`


def test_a_bundle_signed_by_opa_sign_is_accepted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    (bundle / ".manifest").write_text('{"revision": "r1", "roots": [""]}')
    opa_sign(bundle, private)
    load(tmp_path, bundle, {"only": str(public)})  # no keyid in the token: the one configured key
    (bundle / ".manifest").write_text('{"revision": "r2", "roots": [""]}')  # the manifest is covered too
    with pytest.raises(PolicyError, match=r"\.manifest: does not match"):
        load(tmp_path, bundle, {"only": str(public)})


def test_opa_sign_with_keyid_scope_and_es256(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    private, public = write_key(tmp_path, "ec", ec_key)
    bundle = make_bundle(tmp_path / "b")
    opa_sign(bundle, private, alg="ES256", claims={"keyid": "site", "scope": "prod"})
    load(tmp_path, bundle, {"site": str(public), "other": str(public)}, scope="prod")
    with pytest.raises(PolicyError, match=r"scope is 'prod', .*requires 'staging'"):
        load(tmp_path, bundle, {"site": str(public)}, scope="staging")


def test_a_tampered_opa_signed_bundle_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    opa_sign(bundle, private)
    (bundle / "p.rego").write_text(POLICY.replace("input.tool !=", "input.tool =="))
    with pytest.raises(PolicyError, match=r"p\.rego: does not match the bundle signature"):
        load(tmp_path, bundle, {"k": str(public)})


# ------------------------------------------------------------------------------------- our own signer


def test_own_signer_round_trip_and_reformatted_json_still_verifies(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    _, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    own_sign(bundle, rsa_key, keyid="k")
    load(tmp_path, bundle, {"k": str(public)})
    text = (bundle / "data.json").read_text()
    (bundle / "data.json").write_text(text.replace(", ", ",\n    ").replace("{", "{ "))  # same JSON, other bytes
    load(tmp_path, bundle, {"k": str(public)})


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda b: (b / "data.json").write_text('{"blocked": "nothing"}'), r"data\.json: does not match"),
        (lambda b: (b / "extra.rego").write_text("package x\n"), r"extra\.rego: not covered .*added"),
        (lambda b: (b / "notes.txt").write_text("hi"), r"notes\.txt: not covered"),
        (lambda b: (b / "sub" / "data.json").unlink(), r"sub/data\.json: listed in the bundle signature but missing"),
        (lambda b: (b / ".signatures.json").unlink(), "not signed"),
        (lambda b: (b / ".signatures.json").write_text('{"signatures": []}'), "exactly one token"),
        (lambda b: (b / ".signatures.json").write_text("{"), "not JSON"),
    ],
)
def test_every_tampering_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, tamper: Any, message: str) -> None:
    _, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    own_sign(bundle, rsa_key, keyid="k")
    tamper(bundle)
    with pytest.raises(PolicyError, match=message):
        load(tmp_path, bundle, {"k": str(public)})


def test_wrong_key_unknown_keyid_wrong_alg_and_missing_fields(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    _, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    own_sign(bundle, other, keyid="k")
    with pytest.raises(PolicyError, match="does not verify with key 'k'"):
        load(tmp_path, bundle, {"k": str(public)})
    own_sign(bundle, rsa_key, keyid="nobody")
    with pytest.raises(PolicyError, match=r"key 'nobody', which .* does not hold"):
        load(tmp_path, bundle, {"k": str(public)})
    own_sign(bundle, rsa_key, alg="PS256", keyid="k")  # a valid PS256 signature, but the key is RS256's
    with pytest.raises(PolicyError, match="signed with 'PS256', but key 'k' verifies only RS256"):
        load(tmp_path, bundle, {"k": str(public)})
    own_sign(bundle, b"k" * 32, alg="HS256", keyid="k")  # HMAC with anything as the secret
    with pytest.raises(PolicyError, match="'HS256'"):
        load(tmp_path, bundle, {"k": str(public)})
    own_sign(bundle, rsa_key)  # no keyid, two keys configured: which one is not guessed
    with pytest.raises(PolicyError, match=r"names no key id and .* has 2 keys"):
        load(tmp_path, bundle, {"k": str(public), "j": str(public)})
    own_sign(bundle, rsa_key, keyid="k")
    with pytest.raises(PolicyError, match="scope is None"):
        load(tmp_path, bundle, {"k": str(public)}, scope="prod")
    (bundle / ".signatures.json").write_text(json.dumps({"signatures": [jwt.encode({"keyid": "k"}, rsa_key, "RS256")]}))
    with pytest.raises(PolicyError, match="lists no files"):
        load(tmp_path, bundle, {"k": str(public)})
    entry = {"name": "p.rego", "hash": hashlib.md5(POLICY.encode()).hexdigest(), "algorithm": "MD5"}
    token = jwt.encode({"keyid": "k", "files": [entry]}, rsa_key, "RS256")
    (bundle / ".signatures.json").write_text(json.dumps({"signatures": [token]}))
    with pytest.raises(PolicyError, match="'MD5' is not accepted"):
        load(tmp_path, bundle, {"k": str(public)})


def test_key_config_errors_name_the_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    bundle = make_bundle(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"policy\.signing\.keys\.k1: .*missing\.pem: cannot read"):
        load(tmp_path, bundle, {"k1": "missing.pem"})
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"policy\.signing\.keys\.k2: .*not a PEM public key"):
        load(tmp_path, bundle, {"k2": "junk.pem"})
    _, public = write_key(tmp_path, "ec", ec_key)
    with pytest.raises(ConfigError, match=r"policy\.signing\.keys\.k3: .*cannot verify RS256"):
        load(tmp_path, bundle, {"k3": {"path": str(public), "algorithm": "RS256"}})
    with pytest.raises(ConfigError, match="signing"):
        settings_for(tmp_path, bundle, {})
    opa = {"engine": "opa", "signing": {"keys": {"k": "k.pem"}}}
    with pytest.raises(ConfigError, match="only applies to a bundle mcp-guard loads"):
        parse_settings({"policy": opa, "upstreams": {}}, source="c.toml")
    parse_settings({"policy": {**opa, "push_bundle": True}, "upstreams": {}}, source="c.toml")


# ------------------------------------------------------------------------------------- start and reload


async def test_start_refuses_a_tampered_bundle_and_reload_keeps_the_good_one(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    private, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    opa_sign(bundle, private)
    settings = settings_for(tmp_path, bundle, {"k": str(public)})
    good = load_bundle(bundle).revision

    applied: list[str] = []

    async def apply(b: Any) -> None:
        applied.append(b.revision)

    watcher = BundleWatcher(bundle, apply, active_revision=good, load=bundle_loader(settings))
    (bundle / "p.rego").write_text(POLICY.replace("input.tool !=", "input.tool =="))
    event = await watcher.check()
    assert (
        event is not None
        and event.status == "rejected"
        and "does not match the bundle signature" in (event.error or "")
    )
    assert applied == [] and watcher.active_revision == good
    with pytest.raises(PolicyError, match="does not match the bundle signature"):
        async with open_engine(settings, watch=False, run_tests=False):
            pass
    (bundle / "p.rego").write_text(POLICY)  # restored: the signature holds again
    async with open_engine(settings, watch=False, run_tests=False) as engine:
        assert engine.revision == good


async def test_a_signature_that_lands_after_its_files_is_picked_up(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """A deploy writes the files, then .signatures.json: the look in between refuses, the next one loads (the
    refusal is not remembered against the revision, whose files did not change)."""
    _, public = write_key(tmp_path, "k", rsa_key)
    bundle = make_bundle(tmp_path / "b")
    own_sign(bundle, rsa_key, keyid="k")
    settings = settings_for(tmp_path, bundle, {"k": str(public)})
    applied: list[str] = []

    async def apply(b: Any) -> None:
        applied.append(b.revision)

    watcher = BundleWatcher(bundle, apply, active_revision=load_bundle(bundle).revision, load=bundle_loader(settings))
    (bundle / "p.rego").write_text(POLICY + "# v2\n")
    refused = await watcher.check()
    assert refused is not None and refused.status == "rejected" and applied == []
    own_sign(bundle, rsa_key, keyid="k")
    loaded = await watcher.check()
    assert loaded is not None and loaded.status == "loaded" and applied == [load_bundle(bundle).revision]
