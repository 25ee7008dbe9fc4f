"""Identifiers and timestamps every audit row carries (mcp_guard.types)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from mcp_guard.types import new_id, utc_now


def test_new_id_is_a_random_uuid4_in_hex() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


def test_utc_now_is_rfc3339_with_six_fraction_digits_and_z() -> None:
    before = datetime.now(UTC)
    stamp = utc_now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= after
