"""Identifiers and timestamps every audit row carries (mcp_guard.types)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

import mcp_guard.types as guard_types
from mcp_guard.types import new_id, utc_now


def test_new_id_is_a_random_uuid4_in_hex() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", value)
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


def test_utc_now_is_rfc3339_with_six_fraction_digits_and_z() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = utc_now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= after


@pytest.mark.parametrize(
    "ns",
    [
        0,
        999,
        1_000,
        1_764_547_200_000_000_000,  # a midnight
        1_764_547_199_999_999_999,  # the nanosecond before it
        1_764_590_000_123_456_789,
        1_709_164_800_000_001_000,  # 2024-02-29
        4_102_444_799_999_999_000,  # 2099-12-31T23:59:59.999999
    ],
)
def test_utc_now_writes_what_strftime_writes(ns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_types.time, "time_ns", lambda: ns)
    expected = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert utc_now() == expected
    assert utc_now() == expected  # the second from memory
