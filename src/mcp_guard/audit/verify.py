"""Walk the hash chain of an audit database and name the first row that does not belong.

Checks, row by row in ``seq`` order (see :mod:`mcp_guard.audit.chain` for the hash):

* the sequence has no holes and starts at 1 — a hole means rows were **deleted**;
* a row's ``hash`` matches its content — a mismatch means the row was **altered** (or rows were
  swapped or renumbered, since ``seq`` is hashed);
* a row's ``prev_hash`` is the previous row's ``hash`` — a mismatch with both rows self-consistent
  means the previous row was **replaced** by one with a recomputed hash (a forged or inserted row).

The result also carries the head ``(seq, hash)`` to anchor elsewhere: the chain cannot by itself show
that its newest rows were cut off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mcp_guard.audit import schema
from mcp_guard.audit.chain import GENESIS_HASH, canonical_json, row_hash
from mcp_guard.audit.reader import AuditReader
from mcp_guard.audit.sqlite import open_sqlite_reader

__all__ = ["VerifyResult", "verify_chain", "verify_file"]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    rows: int  # rows checked (up to and including the first bad one)
    head_seq: int | None  # the newest row in the log (None if empty)
    head_hash: str | None
    bad_seq: int | None = None  # the first row that does not belong (or the first missing seq)
    problem: str | None = None
    last_good_seq: int | None = None  # the newest row up to which the chain verified
    last_good_hash: str | None = None
    warnings: tuple[str, ...] = field(default=())


def verify_chain(reader: AuditReader) -> VerifyResult:
    """Verify the chain ``reader`` sees (one snapshot, so a live writer is fine).

    Raises :class:`~mcp_guard.errors.AuditError` if the log cannot be read.
    """
    warnings = reader.schema_warnings()
    n_body = len(schema.BODY_COLUMNS)
    with reader.snapshot():  # one snapshot for the walk and the head
        head = reader.head()
        head_seq, head_hash = (head.seq, head.hash) if head else (None, None)
        expected_seq, prev, prev_prev = 1, GENESIS_HASH, None
        checked = 0
        good: tuple[int | None, str | None] = (None, None)

        def bad(seq: int, problem: str) -> VerifyResult:
            return VerifyResult(
                ok=False,
                rows=checked,
                head_seq=head_seq,
                head_hash=head_hash,
                bad_seq=seq,
                problem=problem,
                last_good_seq=good[0],
                last_good_hash=good[1],
                warnings=warnings,
            )

        for row in reader.rows():
            checked += 1
            seq, values, stored_prev, stored_hash = row[0], row[1 : 1 + n_body], row[-2], row[-1]
            if not isinstance(seq, int) or seq < expected_seq:
                return bad(seq, f"row {seq!r} is not part of the chain (seq must count up from 1)")
            if seq > expected_seq:
                missing = str(expected_seq) if seq == expected_seq + 1 else f"{expected_seq}–{seq - 1}"
                return bad(expected_seq, f"row {missing} missing: deleted from the chain (found row {seq} next)")
            try:
                body = canonical_json(values)
                computed = row_hash(prev if stored_prev is None else str(stored_prev), seq, body)
            except (TypeError, ValueError, UnicodeError) as e:
                return bad(seq, f"row {seq} was altered: its values cannot be hashed ({e})")
            self_ok = computed == stored_hash
            if stored_prev != prev and seq > 1:
                if stored_prev == prev_prev:
                    return bad(seq - 1, f"row {seq - 1} was inserted: row {seq} links to row {seq - 2}")
                if self_ok:
                    return bad(
                        seq - 1,
                        f"row {seq - 1} was replaced (its hash recomputed): row {seq} does not link to it",
                    )
                return bad(seq, f"row {seq} was altered: its prev_hash does not link to row {seq - 1}")
            if stored_prev != prev:
                return bad(seq, f"row {seq} was altered: the first row must link to the genesis hash")
            if not self_ok:
                return bad(seq, f"row {seq} was altered: its hash does not match its content")
            prev_prev, prev = prev, stored_hash
            good = (seq, stored_hash)
            expected_seq += 1
        return VerifyResult(
            ok=True,
            rows=checked,
            head_seq=head_seq,
            head_hash=head_hash,
            last_good_seq=good[0],
            last_good_hash=good[1],
            warnings=warnings,
        )


def verify_file(path: str | Path) -> VerifyResult:
    """Open the SQLite audit file at ``path`` read-only and verify its chain."""
    with open_sqlite_reader(path) as reader:
        return verify_chain(reader)
