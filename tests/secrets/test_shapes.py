"""Credential shapes: what is masked, what is not, and the kinds reported."""

from __future__ import annotations

import pytest

from mcp_guard.secrets import shapes
from mcp_guard.secrets.shapes import field_kind, looks_random, mask, mask_text

# Well-formed but fake credentials (documentation examples or random, never real).
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HcIpKa\n"
    "-----END RSA PRIVATE KEY-----"
)
GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GH_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
WEBHOOK = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (AWS, "aws_access_key"),
        ("ASIA" + "Y" * 16, "aws_access_key"),
        (JWT, "jwt"),
        (PEM, "private_key"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC (truncated", "private_key"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "private_key",
        ),
        (GHP, "github_token"),
        (GH_PAT, "github_token"),
        ("ghs_" + "Z9" * 18, "github_token"),
        (SLACK, "slack_token"),
        ("xapp-1-A0123456789-0123456789012-abcdef0123", "slack_token"),
        (WEBHOOK, "slack_webhook"),
    ],
)
def test_shapes_are_masked_anywhere_in_text(value: str, kind: str) -> None:
    text = f"note: use {value} then stop"
    out, kinds = mask_text(text)
    assert kinds == {kind}
    assert out == f"note: use [REDACTED:{kind}] then stop" or (
        kind == "private_key" and out == "note: use [REDACTED:private_key]"  # truncated PEM runs to the end
    )
    masked, found = mask({"description": text, "list": [text]})
    assert found == (kind,)
    assert value not in str(masked)


@pytest.mark.parametrize(
    "text",
    [
        "AKIAIOSFODNN7EXAMPLEX",  # 21 characters: not an access key id
        "the token is in the vault",
        "eyJhbGciOi is only half a JWT",
        "ghp_short",
        "xoxb-short",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "https://hooks.slack.com.evil.example/",
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    assert mask_text(text) == (text, set())
    assert mask({"body": text}) == ({"body": text}, ())


def test_password_fields_are_masked_whatever_the_entropy() -> None:
    args = {"username": "bob", "password": "hunter2", "db": {"passwd": "x"}, "Pass": "", "pwd": ["a", "b"]}
    masked, kinds = mask(args)
    assert masked == {
        "username": "bob",
        "password": "[REDACTED:password]",
        "db": {"passwd": "[REDACTED:password]"},
        "Pass": "",
        "pwd": ["[REDACTED:password]", "[REDACTED:password]"],
    }
    assert kinds == ("password",)


def test_high_entropy_strings_in_credential_fields() -> None:
    args = {
        "api_key": "q8Zr2LpX0vN7cKt4Wm9B",
        "apiKey": "Bearer 0f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "client_secret": "s3cr3t_Qm9ZbEx2Tn8rPa1V",
        "X-Auth-Token": "7c1d2e3f4a5b6c7d8e9f0a1b",
        "token": "short1",  # too short
        "secret": "this is not random at all",  # has spaces
        "auth": "aaaaaaaaaaaaaaaaaaaaaaaa1",  # low entropy
        "next_page_token": "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA0",  # pagination, by name
        "secret_name": "prod-db-credentials-2024",  # names a secret, does not hold one
        "max_tokens": "4096",
        "query": "q8Zr2LpX0vN7cKt4Wm9B",  # random, but not a credential field
    }
    masked, kinds = mask(args)
    assert kinds == ("high_entropy",)
    for key in ("api_key", "apiKey", "client_secret", "X-Auth-Token"):
        assert masked[key] == "[REDACTED:high_entropy]", key
    for key in ("token", "secret", "auth", "next_page_token", "secret_name", "max_tokens", "query"):
        assert masked[key] == args[key], key


def test_kinds_are_sorted_and_unique_and_input_is_not_mutated() -> None:
    args = {"a": f"{JWT} {AWS}", "b": [AWS, {"password": "p"}], "c": 3, "d": None, "e": True}
    original = {"a": args["a"], "b": [AWS, {"password": "p"}], "c": 3, "d": None, "e": True}
    masked, kinds = mask(args)
    assert kinds == ("aws_access_key", "jwt", "password")
    assert masked["a"] == "[REDACTED:jwt] [REDACTED:aws_access_key]"
    assert masked["b"] == ["[REDACTED:aws_access_key]", {"password": "[REDACTED:password]"}]
    assert masked["c"] == 3 and masked["d"] is None and masked["e"] is True
    assert args == original


def test_field_names_and_randomness() -> None:
    assert field_kind("DB_PASSWORD") == "password"
    assert field_kind("passphrase") == "password"
    assert field_kind("GITHUB_TOKEN") == "credential"
    assert field_kind("aws_secret_access_key") == "credential"
    assert field_kind("Authorization") == "credential"
    assert field_kind("admin_token") == "credential"  # "min" inside a word is not the word "min"
    assert field_kind("author") is None
    assert field_kind("token_type") is None
    assert field_kind("nextPageToken") is None
    assert looks_random("q8Zr2LpX0vN7cKt4Wm9B")
    assert not looks_random("abcdefghijklmnop")  # letters only
    assert not looks_random("2024-01-01T00:00:00")  # few distinct characters


def test_field_kind_remembered_is_the_judged_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    # The memo answers as judging does, for names asked again, after it was emptied for being full, and for a
    # name too long to keep (judged every time, never stored).
    monkeypatch.setattr(shapes, "_KIND_OF", {})
    monkeypatch.setattr(shapes, "_KIND_OF_MAX", 8)
    names = ["password", "apiKey", "token_type", "text", "x" * 300 + "_token", "nextPageToken", "Authorization"]
    names += [f"field{i}" for i in range(20)] + [f"secret{i}" for i in range(5)]
    for _ in range(3):
        for name in names:
            assert field_kind(name) == shapes._judge(name), name
            assert len(shapes._KIND_OF) <= 8
    assert not any(len(k) > shapes._KIND_OF_KEY_CHARS for k in shapes._KIND_OF)
    assert field_kind("db_password") == "password" and shapes._KIND_OF["db_password"] == "password"
