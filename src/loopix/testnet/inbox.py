"""A provider's inboxes and registered clients in SQLite, so both survive a restart.

WAL mode with `synchronous=NORMAL`: a commit survives the provider process being killed at any
point; only a power loss can take back the last few commits (the testnet runs on one machine, and
a message a client never ACKed is still in flight end to end, so that trade buys throughput).
Every read and delete is keyed by the recipient, so one client can never see or remove another
client's messages: the provider passes the key the connection proved it owns.
"""

from __future__ import annotations

import os
import sqlite3
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
    message BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, id);
CREATE TABLE IF NOT EXISTS clients (
    key BLOB PRIMARY KEY
) WITHOUT ROWID;
"""


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
        if self.path.exists():
            os.chmod(self.path, 0o600)  # messages are for their owners only

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- clients ---

    def register_client(self, key: bytes) -> bool:
        """Remember a client that proved its key; True if it is new."""
        cur = self._db.execute("INSERT OR IGNORE INTO clients (key) VALUES (?)", (bytes(key),))
        return cur.rowcount > 0

    def register_clients(self, keys: Iterable[bytes]) -> int:
        """Remember many clients in one transaction (a fleet's read batch: one commit, not one
        per key); returns how many were new."""
        with self._transaction():
            cur = self._db.executemany(
                "INSERT OR IGNORE INTO clients (key) VALUES (?)", [(bytes(k),) for k in keys]
            )
        return max(cur.rowcount, 0)

    def clients(self) -> list[bytes]:
        return [row[0] for row in self._db.execute("SELECT key FROM clients ORDER BY key")]

    # --- messages ---

    def store(self, recipient: bytes, message: bytes) -> int:
        """Keep one message; returns its id (ids only grow, also across restarts)."""
        cur = self._db.execute(
            "INSERT INTO messages (recipient, message) VALUES (?, ?)", (bytes(recipient), message)
        )
        return int(cur.lastrowid or 0)

    def store_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[int]:
        """Keep many messages in one transaction (one commit per batch, not per message)."""
        ids = []
        with self._transaction():
            for recipient, message in items:
                ids.append(self.store(recipient, message))
        return ids

    def keep_many(self, items: list[tuple[bytes, bytes]]) -> int:
        """`store_many` without the ids: one statement for the batch (the provider's hot path:
        ~10 µs a message less than an INSERT each). Returns how many were kept."""
        with self._transaction():
            self._db.executemany("INSERT INTO messages (recipient, message) VALUES (?, ?)", items)
        return len(items)

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
        """Delete those of `ids` whose recipient is in `owners`; returns how many went.

        A fleet connection ACKs ids of many identities in one message; ids of anyone else (say, a
        key another connection took over) are ignored, so no connection deletes others' mail."""
        wanted = list({i for i in ids if 0 <= i < 1 << 63})
        owned: list[tuple[int]] = []
        with self._transaction():
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                rows = self._db.execute(
                    f"SELECT id, recipient FROM messages WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                owned += [(i,) for i, recipient in rows if recipient in owners]
            if owned:
                self._db.executemany("DELETE FROM messages WHERE id = ?", owned)
        return len(owned)

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
