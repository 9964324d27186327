"""The flat bookkeeping a large fleet runs on: names as numbers, keys in 32-byte slots, the sender's
key index and registered flags, the keystore's change polling and key generation."""

from __future__ import annotations

import os

import pytest
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from loopix import config as cfg
from loopix import sphinx
from loopix.client.identities import Identity, IdentityTable
from loopix.client.sender import KeyIndex, RegisteredKeys
from loopix.fleet.names import NameIndex
from loopix.fleet.store import FleetStore, create_fleet, new_keys
from loopix.keys import generate_keypair
from loopix.wire.provider.client import _shared_secret


def test_names_keep_numbers_flat_and_other_names_apart():
    names = NameIndex()
    assert names.extend(["0", "1", "2"]) == range(0, 3)
    assert names.extend(["b", "a"]) == range(3, 5)  # not numbers: the dicts
    assert names.extend(["9", "5"]) == range(5, 7)  # out of order: 5 goes to the dicts
    assert [names.get(n) for n in ["0", "1", "2", "b", "a", "9", "5"]] == list(range(7))
    assert names.get("3") is None and names.get("01") is None and names.get("-1") is None
    names.remove(1)
    names.remove(6)
    assert len(names) == 5 and "1" not in names and "5" not in names
    assert names.names() == ["0", "2", "b", "a", "9"]
    assert names.name(1) == "1"  # an index that left keeps its name
    assert names.append("5") == 7 and names.get("5") == 7  # a name may come back, as a new index
    with pytest.raises(ValueError, match="already"):
        names.append("0")


def test_key_index_finds_every_key_through_growth():
    publics = b""
    index = KeyIndex()
    for batch in (1, 700, 5000):  # grows the table twice
        first = len(publics) // 32
        publics += os.urandom(32 * batch)
        index.add(publics, range(first, len(publics) // 32))
    n = len(publics) // 32
    assert all(index.get(publics[i * 32:(i + 1) * 32]) == i for i in range(n))
    assert index.get(os.urandom(32)) is None
    publics += publics[:32]  # the same key again: the later identity has it
    index.add(publics, range(n, n + 1))
    assert index.get(publics[:32]) == n


def test_registered_keys_is_a_set_of_keys_kept_as_flags():
    publics = b"".join(os.urandom(32) for _ in range(4))
    index = KeyIndex()
    index.add(publics, range(4))
    keys = [publics[i * 32:(i + 1) * 32] for i in range(4)]
    registered = RegisteredKeys(index, 2)  # fewer flags than keys: grows on demand
    stranger = os.urandom(32)
    for key in (keys[0], keys[3], stranger):
        registered.add(key)
    registered.add(keys[0])
    assert len(registered) == 3 and keys[0] in registered and keys[3] in registered and stranger in registered
    assert keys[1] not in registered
    registered.difference_update([keys[0], stranger])
    registered.discard(keys[2])  # not there: nothing happens
    assert len(registered) == 1 and keys[0] not in registered and keys[3] in registered


def test_identity_table_keeps_what_identities_said():
    pinned = os.urandom(32)
    given = [Identity(generate_keypair(), None, 1.0, 2.0, 3.0), Identity(generate_keypair(), pinned, 1.0, 2.0, 3.0),
             Identity(generate_keypair(), None, 4.0, 0.0, 0.0)]
    table = IdentityTable.of(given)
    assert list(table) == given and table[-1] == given[-1]
    assert len(table.rate_classes) == 2 and table.total_rate() == pytest.approx(16.0)
    more = IdentityTable()
    more.extend(b"\x01" * 64, b"\x02" * 64, (4.0, 0.0, 0.0), {1: pinned})
    assert table.extend_table(more) == range(3, 5)
    assert table.rates(3) == (4.0, 0.0, 0.0) and table.rate_class(3) == table.rate_class(2)
    assert table.pinned(3) is None and table.pinned(4) == pinned and table.public(4) == b"\x02" * 32
    with pytest.raises(ValueError):
        table.extend(b"\x01" * 31, b"\x02" * 31, (1.0, 1.0, 1.0))


def test_new_keys_are_x25519_pairs_whatever_the_threads():
    for threads in (1, 2):
        secrets, publics = new_keys(2500, threads=threads)
        assert len(secrets) == len(publics) == 2500 * 32
        for i in range(0, 2500, 97):
            secret = secrets[i * 32:(i + 1) * 32]
            assert publics[i * 32:(i + 1) * 32] == crypto_scalarmult_base(secret)
    assert len({secrets[i * 32:(i + 1) * 32] for i in range(2500)}) == 2500


def test_registration_secret_matches_crypto_scalarmult():
    _, provider = sphinx.keypair()
    for _ in range(20):
        secret = os.urandom(32)
        assert _shared_secret(secret, provider) == crypto_scalarmult(secret, provider)


def _config() -> cfg.ClientConfig:
    return cfg.ClientConfig(client=cfg.ClientSection(id="fleet", directory_server_topology="http://127.0.0.1:1/t"))


def test_keystore_polls_read_new_rows_and_look_for_removals_only_after_one(tmp_path):
    root = tmp_path / "f"
    create_fleet(root, 3, _config())
    with FleetStore(root) as running, FleetStore(root) as other:
        rows, top, removals = running.snapshot()
        assert rows.names == ["0", "1", "2"] and top == 2 and removals == 0
        assert other.add(2) == ["3", "4"]
        changes = running.changes_since(top, removals)
        assert changes.added.names == ["3", "4"] and changes.names is None and changes.max_seq == 4
        assert changes.added.publics == b"".join(m.keys.public for m in other.identities(["3", "4"]))
        other.remove(["4"])
        gone = running.changes_since(changes.max_seq, changes.removals)
        assert not len(gone.added) and gone.names == {"0", "1", "2", "3"} and gone.removals == 1
        assert other.add(1) == ["5"]  # the removed highest name is not given again
        assert running.changes_since(gone.max_seq, gone.removals).added.names == ["5"]
