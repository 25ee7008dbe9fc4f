"""``mcp-guard audit export``: the audit trail as JSON Lines, for shipping to a SIEM.

One object per line with every column (``seq``, ``prev_hash`` and ``hash`` included, so the
receiving side can re-verify the chain) and the JSON columns decoded. ``after_seq`` makes
incremental shipping simple: remember the last ``seq`` exported and pass it next time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from mcp_guard.audit.reader import Filters, connect_readonly, iter_rows, row_to_dict

__all__ = ["FORMATS", "export"]

FORMATS = ("jsonl",)


def export(path: str | Path, out: TextIO, *, filters: Filters | None = None, fmt: str = "jsonl") -> int:
    """Write the matching events of the database at ``path`` to ``out``; return how many."""
    filters = filters if filters is not None else Filters()
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    conn = connect_readonly(path)
    count = 0
    try:
        conn.execute("BEGIN")  # one consistent snapshot, even while the proxy writes
        for row in iter_rows(conn, filters):
            out.write(json.dumps(row_to_dict(row), ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
        conn.rollback()
    finally:
        conn.close()
    out.flush()
    return count
