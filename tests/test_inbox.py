"""The SQLite inbox: owner-only reads and deletes, durability across reopen."""

from __future__ import annotations

import stat

from loopix.testnet.inbox import Inbox, StoredMessage

ALICE, BOB = b"a" * 32, b"b" * 32


def test_store_pending_delete_by_owner_only(tmp_path):
    with Inbox(tmp_path / "inbox.sqlite") as inbox:
        a1 = inbox.store(ALICE, b"one")
        b1 = inbox.store(BOB, b"bob's")
        a2, a3 = inbox.store_many([(ALICE, b"two"), (ALICE, b"three")])
        assert a1 < a2 < a3
        assert inbox.pending(ALICE, 10) == [
            StoredMessage(a1, b"one"),
            StoredMessage(a2, b"two"),
            StoredMessage(a3, b"three"),
        ]
        assert inbox.pending(ALICE, 1, after_id=a1) == [StoredMessage(a2, b"two")]
        assert inbox.pending(b"c" * 32, 10) == []
        # Bob cannot delete Alice's messages, even knowing their ids.
        assert inbox.delete(BOB, [a1, a2]) == 0
        assert inbox.count(ALICE) == 3
        assert inbox.delete(ALICE, [a1, b1, 1 << 70, -1]) == 1
        assert inbox.count(BOB) == 1
        assert inbox.count() == 3


def test_survives_reopen_and_ids_keep_growing(tmp_path):
    path = tmp_path / "inbox.sqlite"
    with Inbox(path) as inbox:
        first = inbox.store(ALICE, b"kept")
        inbox.delete(ALICE, [inbox.store(ALICE, b"gone")])
        assert inbox.register_client(ALICE) is True
        assert inbox.register_client(ALICE) is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Inbox(path) as inbox:
        assert inbox.pending(ALICE, 10) == [StoredMessage(first, b"kept")]
        assert inbox.clients() == [ALICE]
        assert inbox.store(ALICE, b"new") > first + 1  # a deleted id is never reused


def test_keep_many_stores_a_batch_in_one_statement(tmp_path):
    """The provider's batch insert keeps every message, in order, with ids after the earlier ones."""
    with Inbox(tmp_path / "inbox.sqlite") as inbox:
        first = inbox.store(ALICE, b"zero")
        assert inbox.keep_many([(ALICE, b"one"), (ALICE, b"two"), (ALICE, b"three")]) == 3
        got = inbox.pending(ALICE, 10)
        assert [m.message for m in got] == [b"zero", b"one", b"two", b"three"]
        assert got[0].id == first and [m.id for m in got] == sorted({m.id for m in got})
