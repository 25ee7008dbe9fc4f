"""Signed bundles: verify an OPA-format ``.signatures.json`` before a bundle is ever compiled.

The format is OPA's (``opa sign``): ``{"signatures": ["<JWS compact token>"]}`` — exactly one token —
whose payload lists every file of the bundle with its digest::

    {"files": [{"name": "p.rego", "hash": "<hex>", "algorithm": "SHA-256"}, …], "keyid": "k1", "scope": "prod"}

With ``[policy.signing]`` configured (:class:`~mcp_guard.settings.SigningSettings`), a bundle is accepted
only when **all** of this holds, and refused with a :class:`~mcp_guard.errors.PolicyError` naming the
bundle, the file or the key otherwise — nothing is accepted because a field is missing:

* ``.signatures.json`` exists and holds exactly one token;
* the token names a configured key (payload ``keyid``, else header ``kid``; with neither, the one
  configured key if there is exactly one — the signature is still checked with it), its ``alg`` is that
  key's algorithm (never what the token asks for), and the signature verifies;
* with ``scope`` configured, the payload's ``scope`` equals it;
* the ``files`` list names every file of the bundle once, with a matching digest (SHA-256, -384 or -512;
  ``algorithm`` defaults to SHA-256 as in OPA) — a changed file, a file not listed (added) and a listed
  file that is not there (removed) are each a refusal.

"Every file of the bundle" is every regular file under the directory except ``.signatures.json``
itself and hidden files (which mcp-guard never loads) other than ``.manifest``. The policies and
``data.json`` files are hashed from the exact text :func:`~mcp_guard.policy.bundle.load_bundle` read —
the bytes that are compiled are the bytes that were verified. Like OPA, a ``.json`` file (and
``.manifest``) is hashed in canonical form (keys sorted, no whitespace, numbers as written,
U+2028/2029 escaped — checked against ``opa sign``), so a re-indented ``data.json`` keeps its signature;
every other file by its bytes.

HMAC (``HS256``) is not supported on purpose: a key that verifies could also sign.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from mcp_guard.errors import ConfigError, PolicyError
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.overlay import configured_overlays
from mcp_guard.settings import Settings, SigningKey, SigningSettings

__all__ = [
    "SIGNATURES_FILE",
    "BundleLoader",
    "BundleVerifier",
    "VerifiedKey",
    "bundle_files",
    "bundle_loader",
    "canonical_json_hash",
    "load_verifier",
]

SIGNATURES_FILE = ".signatures.json"
MANIFEST_FILE = ".manifest"
_HASHES = {"SHA-256": hashlib.sha256, "SHA-384": hashlib.sha384, "SHA-512": hashlib.sha512}
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_MAX_SIGNATURES_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    keyid: str
    algorithm: str
    key: Any  # a cryptography public key object


class _Number(str):
    """A JSON number kept as written (OPA hashes numbers by their literal text)."""


def _number(text: str) -> _Number:
    return _Number(text)


def _go_escape(text: str) -> str:
    # OPA's encoder escapes these two line separators inside strings (not <, >, &: checked against opa sign).
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _canonical(value: Any) -> str:
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{_canonical(k)}:{_canonical(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return _go_escape(json.dumps(value, ensure_ascii=False))


def canonical_json_hash(raw: bytes, algorithm: str) -> str:
    """The digest OPA computes for a JSON file: of its canonical form. Raises ValueError for non-JSON."""
    doc = json.loads(raw.decode("utf-8"), parse_int=_number, parse_float=_number)
    return _HASHES[algorithm](_canonical(doc).encode("utf-8")).hexdigest()


def _file_hash(name: str, raw: bytes, algorithm: str) -> str:
    if name.endswith(".json") or name.rsplit("/", 1)[-1] == MANIFEST_FILE:
        try:
            return canonical_json_hash(raw, algorithm)
        except (ValueError, UnicodeDecodeError):
            pass  # not JSON: hashed as bytes, so it can only match a signer that did the same
    return _HASHES[algorithm](raw).hexdigest()


def _default_algorithm(key: Any) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVES.get(key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return None


def _compatible(key: Any, algorithm: str) -> bool:
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey) and _CURVES.get(key.curve.name) == algorithm
    return isinstance(key, ed25519.Ed25519PublicKey)


def _load_key(settings: Settings, keyid: str, spec: str | SigningKey) -> VerifiedKey:
    key_name = f"policy.signing.keys.{keyid}"
    path = settings.resolve_path(spec if isinstance(spec, str) else spec.path)
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read the public key: {e.strerror}", file=settings.source, key=key_name
        ) from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM public key", file=settings.source, key=key_name) from None
    algorithm = _default_algorithm(key) if isinstance(spec, str) else spec.algorithm
    if algorithm is None or not _compatible(key, algorithm):
        kind = type(key).__name__.removeprefix("_")
        raise ConfigError(
            f"{path}: a {kind} key cannot verify {algorithm or 'any supported algorithm'}",
            file=settings.source,
            key=key_name,
        )
    return VerifiedKey(keyid, algorithm, key)


def load_verifier(settings: Settings) -> BundleVerifier | None:
    """The verifier ``[policy.signing]`` asks for (keys read and checked now), or None without it."""
    signing = settings.policy.signing
    if signing is None:
        return None
    keys = {keyid: _load_key(settings, keyid, spec) for keyid, spec in signing.keys.items()}
    return BundleVerifier(keys, signing)


BundleLoader = Callable[[Path], Bundle]


def bundle_loader(settings: Settings) -> BundleLoader:
    """How every bundle of this configuration is read — at start, at each reload, the shadow bundle: with
    ``[policy.signing]``, :func:`~mcp_guard.policy.bundle.load_bundle` then :meth:`BundleVerifier.verify`,
    so no path can load a bundle without its signature check. Keys are read (and their errors raised) now.
    Every load also merges the site's ``[policy] data_overlay`` files (re-read each time, so an edited overlay
    is a new revision); a signature covers the bundle's own files, never the overlays."""
    verifier = load_verifier(settings)
    overlays = configured_overlays(settings)

    def load(root: Path) -> Bundle:
        return load_bundle(root, overlays=overlays)

    if verifier is None:
        return load

    def load_signed(root: Path) -> Bundle:
        bundle = load(root)
        verifier.verify(bundle)
        return bundle

    return load_signed


def bundle_files(root: Path) -> list[str]:
    """Every file a signature must cover (module docstring), ``/``-separated and relative to ``root``."""
    names: list[str] = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if not path.is_file() or parts == (SIGNATURES_FILE,):
            continue
        if any(p.startswith(".") for p in parts) and parts != (MANIFEST_FILE,):
            continue
        names.append("/".join(parts))
    return names


def _normalize(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class BundleVerifier:
    """Checks a loaded bundle against its ``.signatures.json`` (module docstring)."""

    def __init__(self, keys: Mapping[str, VerifiedKey], settings: SigningSettings) -> None:
        self._keys = dict(keys)
        self._scope = settings.scope

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, bundle: Bundle) -> str:
        """Raise :class:`PolicyError` unless ``bundle`` is validly signed; return the key id that signed it."""
        where = bundle.root / SIGNATURES_FILE
        token = self._token(where)
        key = self._key(where, token)
        try:
            payload = jwt.decode(
                token, key.key, algorithms=[key.algorithm], options={"verify_aud": False, "verify_iss": False}
            )
        except jwt.InvalidAlgorithmError:
            header = jwt.get_unverified_header(token)
            raise PolicyError(
                f"{where}: signed with {header.get('alg')!r}, but key {key.keyid!r} verifies only {key.algorithm}"
            ) from None
        except jwt.InvalidTokenError as e:
            raise PolicyError(f"{where}: the signature does not verify with key {key.keyid!r} ({e})") from None
        if self._scope is not None and payload.get("scope") != self._scope:
            raise PolicyError(
                f"{where}: signature scope is {payload.get('scope')!r}, [policy.signing] scope requires {self._scope!r}"
            )
        self._check_files(bundle, where, payload.get("files"))
        return key.keyid

    def _token(self, where: Path) -> str:
        try:
            raw = where.read_bytes()[: _MAX_SIGNATURES_BYTES + 1]
        except FileNotFoundError:
            raise PolicyError(f"{where}: the bundle is not signed, and [policy.signing] requires a signature") from None
        except OSError as e:
            raise PolicyError(f"{where}: cannot read: {e.strerror}") from None
        if len(raw) > _MAX_SIGNATURES_BYTES:
            raise PolicyError(f"{where}: larger than {_MAX_SIGNATURES_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise PolicyError(f"{where}: not JSON") from None
        signatures = doc.get("signatures") if isinstance(doc, dict) else None
        if not isinstance(signatures, list) or len(signatures) != 1 or not isinstance(signatures[0], str):
            raise PolicyError(f"{where}: 'signatures' must be a list of exactly one token")
        return signatures[0]

    def _key(self, where: Path, token: str) -> VerifiedKey:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as e:
            raise PolicyError(f"{where}: the signature is not a JWS token ({e})") from None
        keyid = claims.get("keyid") or header.get("kid")
        if keyid is None:
            if len(self._keys) != 1:
                raise PolicyError(
                    f"{where}: the signature names no key id and [policy.signing] has {len(self._keys)} keys"
                )
            return next(iter(self._keys.values()))
        key = self._keys.get(str(keyid))
        if key is None:
            raise PolicyError(f"{where}: signed with key {keyid!r}, which [policy.signing] keys does not hold")
        return key

    def _check_files(self, bundle: Bundle, where: Path, files: object) -> None:
        if not isinstance(files, list) or not files:
            raise PolicyError(f"{where}: the signature lists no files")
        listed: dict[str, tuple[str, str]] = {}
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise PolicyError(f"{where}: a 'files' entry without a name")
            name = _normalize(entry["name"])
            algorithm = entry.get("algorithm", "SHA-256")
            if algorithm not in _HASHES:
                raise PolicyError(f"{where}: {name}: digest algorithm {algorithm!r} is not accepted (SHA-256/384/512)")
            if not isinstance(entry.get("hash"), str):
                raise PolicyError(f"{where}: {name}: no hash")
            if name in listed:
                raise PolicyError(f"{where}: {name} is listed twice")
            listed[name] = (entry["hash"].lower(), algorithm)
        loaded = {f.rel: f.text.encode("utf-8") for f in bundle.files}
        present = bundle_files(bundle.root)
        for name in present:
            if name not in listed:
                raise PolicyError(f"{bundle.root / name}: not covered by the bundle signature (a file was added)")
        for name, (digest, algorithm) in listed.items():
            raw = loaded.get(name)
            if raw is None:
                if name not in present:
                    raise PolicyError(f"{bundle.root / name}: listed in the bundle signature but missing")
                raw = (bundle.root / name).read_bytes()
            if _file_hash(name, raw, algorithm) != digest:
                raise PolicyError(f"{bundle.root / name}: does not match the bundle signature (the file was changed)")
