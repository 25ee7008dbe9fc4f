"""The ticketing system's backend: a SQLite file with tickets, comments, users and API tokens.

Everything here is synchronous (the server runs it in a worker thread) and opens one short-lived
connection per operation, so several connector processes can share one file.

Authentication models a real API: the connector holds a credential (``TICKETS_TOKEN``) and the backend
checks it on every operation. The backend either compares it with ``TICKETS_EXPECTED_TOKEN`` (when the
operator configures one) or looks its SHA-256 up in the ``api_tokens`` table. A new database enrols the
token of the process that creates it (trust on first use), so a token change later — or revoking the
row — makes every call fail with "unauthorized". The table never holds the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors._shared import ToolError, create_sqlite_atomically

__all__ = [
    "PRIORITIES",
    "STATUSES",
    "Account",
    "TicketStore",
    "Unauthorized",
    "token_fingerprint",
]

STATUSES = ("open", "in_progress", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
SCHEMA_VERSION = "1"
ALL_SCOPES = ("tickets:read", "tickets:write")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    account      TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE TABLE users (login TEXT PRIMARY KEY, name TEXT NOT NULL, team TEXT NOT NULL);
CREATE TABLE tickets (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('open', 'in_progress', 'closed')),
    priority   TEXT NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    assignee   TEXT REFERENCES users(login),
    reporter   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    closed_at  TEXT
);
CREATE TABLE comments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id  INTEGER NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    author     TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX tickets_status ON tickets(status, updated_at);
CREATE INDEX tickets_assignee ON tickets(assignee);
CREATE INDEX comments_ticket ON comments(ticket_id);
"""

USERS = [
    ("amara", "Amara Okafor", "support"),
    ("bjorn", "Bjørn Lindqvist", "support"),
    ("chen", "Chen Wei", "platform"),
    ("dolores", "Dolores Ruiz", "platform"),
    ("emeka", "Emeka Nwosu", "billing"),
    ("fatima", "Fatima Haddad", "security"),
]

# (title, body, team that usually takes it)
SAMPLE_ISSUES = [
    (
        "Login page returns 502 after deploy",
        "Since the 14:00 deploy, about 3% of logins on eu-west fail with a 502 from the edge. Retrying usually works.",
        "platform",
    ),
    (
        "Invoice PDF shows wrong VAT rate",
        "Customers in Austria see 19% VAT on their November invoice instead of "
        "20%. Totals are computed correctly; only the label is wrong.",
        "billing",
    ),
    (
        "Password reset email never arrives",
        "User reports no reset email after three attempts. Nothing in spam. Their domain uses strict DMARC.",
        "support",
    ),
    (
        "Export to CSV truncates at 10,000 rows",
        "The reports export silently stops at 10,000 rows. The UI says the export is complete.",
        "platform",
    ),
    (
        "Customer pasted credentials into a ticket",
        "The customer included what looks like an AWS key in the "
        "description: AKIAIOSFODNN7EXAMPLE. Please rotate and scrub.",
        "security",
    ),
    (
        "Dashboard charts blank in Safari 17",
        "All charts render as empty boxes in Safari 17.1. Chrome and "
        "Firefox are fine. Console shows a canvas sizing warning.",
        "platform",
    ),
    (
        "Refund requested for duplicate charge",
        "Order was charged twice on the same card within a minute. Customer wants the duplicate refunded.",
        "billing",
    ),
    (
        "SSO login loops back to the sign-in page",
        "After upgrading the SAML certificate, users are redirected to the login page in a loop.",
        "security",
    ),
    (
        "Webhook deliveries delayed by 20 minutes",
        "Webhook events arrive up to 20 minutes late since Monday. Queue depth graphs show a backlog at peak hours.",
        "platform",
    ),
    (
        "Cannot add a second admin to the workspace",
        "Clicking 'Make admin' shows a spinner that never stops. Happens for every member.",
        "support",
    ),
    (
        "API rate limit too low for nightly sync",
        "The nightly sync hits 429s after 5,000 requests. The "
        "customer is on the Business plan and expected a higher limit.",
        "platform",
    ),
    (
        "Annual plan renewal charged at monthly price",
        "Renewal went through at 12x the monthly price instead of the discounted annual price.",
        "billing",
    ),
    (
        "Two-factor codes rejected as expired",
        "TOTP codes are rejected as expired for users whose phones are a few seconds behind.",
        "security",
    ),
    (
        "Search does not find tickets by customer email",
        "Searching by the requester's email returns nothing, even for tickets they opened today.",
        "support",
    ),
    (
        "Mobile app crashes when opening attachments",
        "Android 14 app crashes when opening PDF attachments larger than 5 MB.",
        "platform",
    ),
    (
        "Audit log missing role changes",
        "Role changes made through the API do not appear in the workspace audit log.",
        "security",
    ),
    (
        "Tax ID field rejects valid Swiss numbers",
        "The billing form rejects CHE-123.456.789 MWST as invalid.",
        "billing",
    ),
    ("Onboarding checklist stuck at 80%", "The onboarding widget stays at 80% although every step is done.", "support"),
]

COMMENT_LINES = [
    "Reproduced on staging; attaching the request ids.",
    "Customer confirmed the workaround helps for now.",
    "Escalating: this affects more than one enterprise account.",
    "Root cause identified, fix is in review.",
    "Waiting on the customer for a HAR file.",
    "Deployed the fix to canary; monitoring error rates.",
    "Could not reproduce with a fresh account; asked for more details.",
    "Linked to the incident from last Tuesday.",
]

BASE_TIME = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> str:
    return _ts(datetime.now(UTC))


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_fingerprint(token: str) -> str:
    """A short, non-reversible label for a token (safe to show and log)."""
    return "sha256:" + token_sha256(token)[:12]


class Unauthorized(Exception):
    """The credential was missing, unknown, revoked or lacks the scope an operation needs."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    scopes: tuple[str, ...]
    auth: str  # "expected_token" | "token_table"


def _build(conn: sqlite3.Connection, *, enrol_token: str | None) -> None:
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (now(),))
    if enrol_token is not None:
        conn.execute(
            "INSERT INTO api_tokens VALUES (?, 'agent-service', ?, ?, NULL)",
            (token_sha256(enrol_token), " ".join(ALL_SCOPES), now()),
        )
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", USERS)
    rng = random.Random(20260302)
    by_team: dict[str, list[str]] = {}
    for login, _, team in USERS:
        by_team.setdefault(team, []).append(login)
    reporters = ["customer:acme-corp", "customer:globex", "customer:initech", "customer:umbrella", "amara"]
    t = BASE_TIME
    for n in range(42):
        title, body, team = SAMPLE_ISSUES[n % len(SAMPLE_ISSUES)]
        if n >= len(SAMPLE_ISSUES):
            title = f"{title} (again)" if n < 2 * len(SAMPLE_ISSUES) else f"{title} (reopened)"
        t += timedelta(hours=rng.randint(2, 30), minutes=rng.randint(0, 59))
        status = rng.choices(STATUSES, weights=(5, 3, 4))[0]
        priority = rng.choices(PRIORITIES, weights=(2, 5, 3, 1))[0]
        assignee = None if status == "open" and rng.random() < 0.4 else rng.choice(by_team[team])
        updated = t + timedelta(hours=rng.randint(0, 48))
        closed = _ts(updated) if status == "closed" else None
        cur = conn.execute(
            "INSERT INTO tickets (title, body, status, priority, assignee, reporter, created_at, updated_at,"
            " closed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (title, body, status, priority, assignee, rng.choice(reporters), _ts(t), _ts(updated), closed),
        )
        ticket_id = cur.lastrowid
        for k in range(rng.randint(0, 3)):
            author = assignee or rng.choice(by_team[team])
            conn.execute(
                "INSERT INTO comments (ticket_id, author, text, created_at) VALUES (?, ?, ?, ?)",
                (ticket_id, author, rng.choice(COMMENT_LINES), _ts(t + timedelta(hours=k + 1))),
            )


class TicketStore:
    """Operations on one tickets database, each authenticated with the connector's credential."""

    def __init__(self, path: Path, token: str, *, expected_token: str | None = None) -> None:
        self.path = path
        self._token = token
        self._expected = expected_token

    # -- lifecycle ---------------------------------------------------------------------------------

    def ensure(self) -> bool:
        """Create the database with sample data if missing; True if this call created it.

        Without an expected token configured, the creating process's token is enrolled.
        """
        enrol = None if self._expected else self._token
        return create_sqlite_atomically(self.path, lambda c: _build(c, enrol_token=enrol))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    # -- auth --------------------------------------------------------------------------------------

    def authenticate(self, scope: str) -> Account:
        """The account behind the credential; :class:`Unauthorized` if rejected or out of scope."""
        if self._expected is not None:
            if not hmac.compare_digest(token_sha256(self._token), token_sha256(self._expected)):
                raise Unauthorized("the credential does not match the configured API token")
            account = Account("agent-service", ALL_SCOPES, "expected_token")
        else:
            with self._connect() as conn:
                row = conn.execute(
                    "SELECT account, scopes, revoked_at FROM api_tokens WHERE token_sha256 = ?",
                    (token_sha256(self._token),),
                ).fetchone()
            if row is None:
                raise Unauthorized("the credential is not a known API token")
            if row["revoked_at"] is not None:
                raise Unauthorized("the credential was revoked")
            account = Account(row["account"], tuple(row["scopes"].split()), "token_table")
        if scope not in account.scopes:
            raise Unauthorized(f"the credential lacks scope {scope}")
        return account

    def revoke_all(self) -> int:
        """Revoke every enrolled token (used by tests and operators); returns how many."""
        with self._connect() as conn:
            return conn.execute("UPDATE api_tokens SET revoked_at = ? WHERE revoked_at IS NULL", (now(),)).rowcount

    # -- reads -------------------------------------------------------------------------------------

    @staticmethod
    def _summary(row: sqlite3.Row) -> dict[str, Any]:
        return {k: row[k] for k in ("id", "title", "status", "priority", "assignee", "updated_at")}

    @staticmethod
    def _full(row: sqlite3.Row) -> dict[str, Any]:
        keys = (
            "id",
            "title",
            "body",
            "status",
            "priority",
            "assignee",
            "reporter",
            "created_at",
            "updated_at",
            "closed_at",
            "comment_count",
        )
        return {k: row[k] for k in keys}

    _FULL_SELECT = (
        "SELECT t.*, (SELECT COUNT(*) FROM comments c WHERE c.ticket_id = t.id) AS comment_count"
        " FROM tickets t WHERE t.id = ?"
    )

    def list_tickets(self, *, status: str | None, assignee: str | None, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT * FROM tickets WHERE 1=1"
        params: list[Any] = []
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if assignee is not None:
            if assignee == "unassigned":
                sql += " AND assignee IS NULL"
            else:
                sql += " AND assignee = ?"
                params.append(assignee)
        sql += " ORDER BY updated_at DESC, id DESC LIMIT ?"
        params.append(limit)
        with self._connect() as conn:
            return [self._summary(r) for r in conn.execute(sql, params)]

    def search(self, query: str, *, limit: int) -> list[dict[str, Any]]:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT DISTINCT t.* FROM tickets t LEFT JOIN comments c ON c.ticket_id = t.id"
                " WHERE t.title LIKE ?1 ESCAPE '\\' OR t.body LIKE ?1 ESCAPE '\\' OR c.text LIKE ?1 ESCAPE '\\'"
                " ORDER BY t.updated_at DESC, t.id DESC LIMIT ?2",
                (pattern, limit),
            )
            return [self._summary(r) for r in rows]

    def get(self, ticket_id: int) -> dict[str, Any]:
        with self._connect() as conn:
            row = conn.execute(self._FULL_SELECT, (ticket_id,)).fetchone()
            if row is None:
                raise ToolError(f"ticket {ticket_id} not found")
            comments = [
                dict(c)
                for c in conn.execute(
                    "SELECT id, author, text, created_at FROM comments WHERE ticket_id = ? ORDER BY id",
                    (ticket_id,),
                )
            ]
        return {"ticket": self._full(row), "comments": comments}

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        return self.list_tickets(status=None, assignee=None, limit=limit)

    # -- writes ------------------------------------------------------------------------------------

    def create(self, *, title: str, body: str, priority: str, reporter: str) -> dict[str, Any]:
        stamp = now()
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO tickets (title, body, status, priority, assignee, reporter, created_at,"
                " updated_at) VALUES (?, ?, 'open', ?, NULL, ?, ?, ?)",
                (title, body, priority, reporter, stamp, stamp),
            )
            row = conn.execute(self._FULL_SELECT, (cur.lastrowid,)).fetchone()
        return self._full(row)

    def comment(self, ticket_id: int, *, text: str, author: str) -> dict[str, Any]:
        stamp = now()
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM tickets WHERE id = ?", (ticket_id,)).fetchone() is None:
                raise ToolError(f"ticket {ticket_id} not found")
            cur = conn.execute(
                "INSERT INTO comments (ticket_id, author, text, created_at) VALUES (?, ?, ?, ?)",
                (ticket_id, author, text, stamp),
            )
            conn.execute("UPDATE tickets SET updated_at = ? WHERE id = ?", (stamp, ticket_id))
        return {"id": cur.lastrowid, "ticket_id": ticket_id, "author": author, "text": text, "created_at": stamp}

    def close(self, ticket_id: int, *, resolution: str | None, author: str) -> tuple[dict[str, Any], bool]:
        """Close a ticket; returns (ticket, was_already_closed)."""
        stamp = now()
        with self._connect() as conn:
            row = conn.execute("SELECT status FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
            if row is None:
                raise ToolError(f"ticket {ticket_id} not found")
            already = row["status"] == "closed"
            if not already:
                conn.execute(
                    "UPDATE tickets SET status = 'closed', closed_at = ?, updated_at = ? WHERE id = ?",
                    (stamp, stamp, ticket_id),
                )
                if resolution:
                    conn.execute(
                        "INSERT INTO comments (ticket_id, author, text, created_at) VALUES (?, ?, ?, ?)",
                        (ticket_id, author, f"Resolution: {resolution}", stamp),
                    )
            full = conn.execute(self._FULL_SELECT, (ticket_id,)).fetchone()
        return self._full(full), already

    def delete(self, ticket_id: int) -> dict[str, Any]:
        with self._connect() as conn:
            row = conn.execute("SELECT title FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
            if row is None:
                raise ToolError(f"ticket {ticket_id} not found")
            conn.execute("DELETE FROM tickets WHERE id = ?", (ticket_id,))
        return {"deleted": ticket_id, "title": row["title"]}
