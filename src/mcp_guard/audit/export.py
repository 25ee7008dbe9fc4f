"""``mcp-guard audit export``: the audit trail as JSON Lines, for shipping to a SIEM.

One object per line with every column (``seq``, ``prev_hash`` and ``hash`` included, so the
receiving side can re-verify the chain) and the JSON columns decoded. ``after_seq`` makes
incremental shipping simple: remember the last ``seq`` exported and pass it next time.
"""

from __future__ import annotations

import json
from typing import TextIO

from mcp_guard.audit.reader import AuditReader, Filters, row_to_dict

__all__ = ["FORMATS", "export"]

FORMATS = ("jsonl",)


def export(reader: AuditReader, out: TextIO, *, filters: Filters | None = None, fmt: str = "jsonl") -> int:
    """Write the matching events ``reader`` sees to ``out``; return how many."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    count = 0
    with reader.snapshot():  # one consistent snapshot, even while the proxy writes
        for row in reader.rows(filters):
            out.write(json.dumps(row_to_dict(row), ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    out.flush()
    return count
