"""A provider's inboxes and registered clients in SQLite, so both survive a restart.

WAL mode with `synchronous=NORMAL`: a commit survives the provider process being killed at any
point; only a power loss can take back the last few commits (the testnet runs on one machine, and
a message a client never ACKed is still in flight end to end, so that trade buys throughput).
Every read and delete is keyed by the recipient, so one client can never see or remove another
client's messages: the provider passes the key the connection proved it owns.

Each message keeps the wall-clock time it was stored and each client the time it was last seen
(registered, or its connection ended), so the provider's age and idle limits (client_limits.py)
hold across restarts. Files from before these columns get them on open, set to that moment.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import msgspec

__all__ = ["Inbox", "StoredMessage"]

_CHUNK = 500
"""Bound parameters per statement, well under SQLite's limit (32766; 999 before 3.32)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient BLOB NOT NULL,
    message BLOB NOT NULL,
    stored_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, id);
CREATE TABLE IF NOT EXISTS clients (
    key BLOB PRIMARY KEY,
    last_seen REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""
_AGE_INDEX = "CREATE INDEX IF NOT EXISTS messages_by_age ON messages (stored_at)"


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


class StoredMessage(msgspec.Struct, frozen=True, gc=False):
    id: int
    message: bytes


class Inbox:
    """All inboxes of one provider (one SQLite file). Not thread-safe: one event loop owns it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._db.execute(_AGE_INDEX)
        if self.path.exists():
            os.chmod(self.path, 0o600)  # messages are for their owners only

    def _add_missing_columns(self) -> None:
        """A file from before the age columns: add them, dated now (a constant SQL default)."""
        stamp = repr(time.time())
        for table, column in (("messages", "stored_at"), ("clients", "last_seen")):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(
                    f"ALTER TABLE {table} ADD COLUMN {column} REAL NOT NULL DEFAULT {stamp}"
                )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- clients ---

    def register_client(self, key: bytes, now: float | None = None) -> bool:
        """Remember a client that proved its key (seen `now`); True if it is new."""
        return self.register_clients([key], now) > 0

    def register_clients(self, keys: Iterable[bytes], now: float | None = None) -> int:
        """Remember many clients, seen `now`, in one transaction (a fleet's read batch: one
        commit, not one per key); returns how many were new."""
        t = _now(now)
        rows = [(bytes(k), t) for k in keys]
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO clients (key, last_seen) VALUES (?, ?)", rows
            )
            new = self._db.total_changes - before
            self._db.executemany(
                "UPDATE clients SET last_seen = ? WHERE key = ?", [(t, k) for k, _ in rows]
            )
        return new

    def touch_clients(self, keys: Iterable[bytes], now: float | None = None) -> None:
        """These clients were seen `now` (their connection ended): one transaction."""
        t = _now(now)
        with self._transaction():
            self._db.executemany(
                "UPDATE clients SET last_seen = ? WHERE key = ?", [(t, bytes(k)) for k in keys]
            )

    def clients(self) -> list[bytes]:
        return [row[0] for row in self._db.execute("SELECT key FROM clients ORDER BY key")]

    def clients_seen(self) -> list[tuple[bytes, float]]:
        """Every registered client and when it was last seen."""
        return [(k, t) for k, t in self._db.execute("SELECT key, last_seen FROM clients")]

    def forget_clients(self, keys: Sequence[bytes]) -> int:
        """End these registrations and delete their stored messages; returns the messages gone."""
        gone = 0
        with self._transaction():
            for start in range(0, len(keys), _CHUNK):
                chunk = [bytes(k) for k in keys[start : start + _CHUNK]]
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM clients WHERE key IN ({marks})", chunk)
                cur = self._db.execute(f"DELETE FROM messages WHERE recipient IN ({marks})", chunk)
                gone += max(cur.rowcount, 0)
        return gone

    def usage(self) -> list[tuple[bytes, int, int]]:
        """(recipient, messages, bytes) of every inbox that holds something."""
        rows = self._db.execute(
            "SELECT recipient, COUNT(*), SUM(length(message)) FROM messages GROUP BY recipient"
        )
        return [(r, int(n), int(b or 0)) for r, n, b in rows]

    # --- messages ---

    def store(self, recipient: bytes, message: bytes, now: float | None = None) -> int:
        """Keep one message, stored `now`; returns its id (ids only grow, also across restarts)."""
        cur = self._db.execute(
            "INSERT INTO messages (recipient, message, stored_at) VALUES (?, ?, ?)",
            (bytes(recipient), message, _now(now)),
        )
        return int(cur.lastrowid or 0)

    def store_many(
        self, items: Iterable[tuple[bytes, bytes]], now: float | None = None
    ) -> list[int]:
        """Keep many messages in one transaction (one commit per batch, not per message)."""
        ids = []
        t = _now(now)
        with self._transaction():
            for recipient, message in items:
                ids.append(self.store(recipient, message, t))
        return ids

    def keep_many(self, items: list[tuple[bytes, bytes]], now: float | None = None) -> int:
        """`store_many` without the ids: one statement for the batch (the provider's hot path:
        an INSERT per message cost ~10 µs more). Returns how many were kept."""
        t = _now(now)
        with self._transaction():
            self._db.executemany(
                "INSERT INTO messages (recipient, message, stored_at) VALUES (?, ?, ?)",
                [(recipient, message, t) for recipient, message in items],
            )
        return len(items)

    def expire(self, before: float) -> list[tuple[bytes, int]]:
        """Delete the messages stored before `before`; returns (recipient, size) of each."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT recipient, length(message) FROM messages WHERE stored_at < ?", (before,)
            ).fetchall()
            if rows:
                self._db.execute("DELETE FROM messages WHERE stored_at < ?", (before,))
        return [(r, int(n)) for r, n in rows]

    def pending(self, recipient: bytes, limit: int, after_id: int = 0) -> list[StoredMessage]:
        """Up to `limit` of `recipient`'s messages with id > `after_id`, oldest first."""
        rows = self._db.execute(
            "SELECT id, message FROM messages WHERE recipient = ? AND id > ? ORDER BY id LIMIT ?",
            (bytes(recipient), after_id, limit),
        )
        return [StoredMessage(i, m) for i, m in rows]

    def delete(self, recipient: bytes, ids: Sequence[int]) -> int:
        """Delete those of `ids` that belong to `recipient`; returns how many went."""
        key = bytes(recipient)
        with self._transaction():
            cur = self._db.executemany(
                "DELETE FROM messages WHERE recipient = ? AND id = ?",
                [(key, i) for i in ids if 0 <= i < 1 << 63],
            )
        return cur.rowcount

    def delete_owned(self, ids: Sequence[int], owners: Collection[bytes]) -> int:
        """Delete those of `ids` whose recipient is in `owners`; returns how many went."""
        return len(self.delete_owned_sized(ids, owners))

    def delete_owned_sized(
        self, ids: Sequence[int], owners: Collection[bytes]
    ) -> list[tuple[bytes, int]]:
        """Delete those of `ids` whose recipient is in `owners`; returns (recipient, size) of each.

        A fleet connection ACKs ids of many identities in one message; ids of anyone else (say, a
        key another connection took over) are ignored, so no connection deletes others' mail."""
        wanted = list({i for i in ids if 0 <= i < 1 << 63})
        owned: list[tuple[int]] = []
        sizes: list[tuple[bytes, int]] = []
        with self._transaction():
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                rows = self._db.execute(
                    "SELECT id, recipient, length(message) FROM messages "
                    f"WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for i, recipient, size in rows:
                    if recipient in owners:
                        owned.append((i,))
                        sizes.append((recipient, int(size)))
            if owned:
                self._db.executemany("DELETE FROM messages WHERE id = ?", owned)
        return sizes

    def recipients_with_mail(self, keys: Sequence[bytes]) -> set[bytes]:
        """Those of `keys` with at least one stored message (one indexed query per 500 keys), so
        a fleet's registration looks up only the identities that have something to push."""
        found: set[bytes] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = [bytes(k) for k in keys[start : start + _CHUNK]]
            rows = self._db.execute(
                "SELECT DISTINCT recipient FROM messages "
                f"WHERE recipient IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update(row[0] for row in rows)
        return found

    def count(self, recipient: bytes | None = None) -> int:
        if recipient is None:
            row = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE recipient = ?", (bytes(recipient),)
            ).fetchone()
        return int(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK on error (autocommit mode otherwise)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
