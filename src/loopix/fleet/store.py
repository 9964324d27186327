"""A fleet's identities in one file: `DIR/fleet.db`, an SQLite database (0600 in a 0700 directory).

One file per identity (today's `clients/<id>/config/`) costs ~0.2 s and a few inodes each: hours
and gigabytes of small files at 100,000 identities. Here an identity is one row (name, X25519
secret, public key, optional pinned provider, ~120 bytes), and the settings the fleet shares are
one `config.toml` text in the `meta` table, the same Struct a single client reads.

A fleet is created whole into a temp file beside the target and renamed into place, so a reader
never sees half a fleet; `add` and `remove` are SQLite transactions. Keys come from the OS CSPRNG.
`load_identities` also reads the older layout (`DIR/clients/*/config`), so `run --fleet` and
`loopix.Fleet` accept both.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from loopix import config as cfg
from loopix.keys import KEY_SIZE, KeyPair, load_keypair
from loopix.wire.b64 import b64url_decode

__all__ = ["FORMAT", "STORE_FILE", "FleetError", "FleetIdentity", "FleetRows", "FleetStore", "create_fleet",
           "load_identities", "new_keys"]

STORE_FILE = "fleet.db"
FORMAT = "loopix-fleet-1"
MAX_COUNT = 10_000_000  # more is surely a typo (and ~1 GB of keys)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret BLOB NOT NULL CHECK (length(secret) = 32),
    public BLOB NOT NULL CHECK (length(public) = 32),
    provider BLOB CHECK (provider IS NULL OR length(provider) = 32)
);
"""


class FleetError(Exception):
    """A fleet directory or request that cannot be used; the text is one line for the user."""


class FleetIdentity(msgspec.Struct, frozen=True, gc=False):
    """One member: its name (unique in the fleet), keys and the provider it is pinned to, if any."""

    name: str
    keys: KeyPair
    provider: bytes | None = None


class FleetRows(msgspec.Struct, gc=False):
    """Identities as a running fleet takes them, flat: their names in order, their keys in 32-byte
    slots end to end, and the providers the few pinned ones name (by row). No object per identity
    but its name, so loading 100,000 leaves no 100,000 key-pair objects behind."""

    names: list[str]
    secrets: bytes
    publics: bytes
    pinned: dict[int, bytes] = {}  # row -> provider key

    def __len__(self) -> int:
        return len(self.names)

    @property
    def members(self) -> list[FleetIdentity]:
        """One FleetIdentity per row (for small fleets and tests: it makes the objects)."""
        k = KEY_SIZE
        return [FleetIdentity(n, KeyPair(self.secrets[i * k:(i + 1) * k], self.publics[i * k:(i + 1) * k]),
                              self.pinned.get(i)) for i, n in enumerate(self.names)]


def _rows(cursor) -> FleetRows:
    """FleetRows from (name, secret, public, provider) rows."""
    names: list[str] = []
    secrets = bytearray()
    publics = bytearray()
    pinned: dict[int, bytes] = {}
    for name, secret, public, provider in cursor:
        if provider is not None:
            pinned[len(names)] = provider
        names.append(name)
        secrets += secret
        publics += public
    return FleetRows(names, bytes(secrets), bytes(publics), pinned)


class FleetChanges(msgspec.Struct, gc=False):
    added: FleetRows
    names: set[str] | None  # every name now; None: nothing was removed since the last read
    max_seq: int
    removals: int


def check_count(count: int) -> int:
    if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise FleetError(f"count must be 1 to {MAX_COUNT:,}, got {count}")
    return count


def new_keys(count: int, threads: int | None = None) -> tuple[bytes, bytes]:
    """`count` key pairs as (secrets, publics), each `count` 32-byte slots end to end: one CSPRNG
    read for every secret, and the public keys from the C core's fixed-base X25519 (libsodium's
    Edwards tables behind a table of the base point: about half the cost of crypto_scalarmult_base,
    and no Python object per key), split over `threads` (default: one per CPU; cffi releases the
    GIL during each call)."""
    from loopix.sphinx._sphinx_c import ffi, lib

    secrets = os.urandom(KEY_SIZE * count)
    out = ffi.new("uint8_t[]", KEY_SIZE * count)
    src = ffi.from_buffer(secrets)
    base = lib.lx_x25519_base

    def part(first: int, stop: int) -> bool:
        for off in range(first * KEY_SIZE, stop * KEY_SIZE, KEY_SIZE):
            if base(out + off, src + off) != 0:  # only for a scalar that is 0 mod the group order
                return False
        return True

    threads = max(1, min(threads or os.cpu_count() or 1, count // 1000 or 1))
    if threads == 1:
        ok = [part(0, count)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            bounds = [count * t // threads for t in range(threads + 1)]
            ok = list(pool.map(part, bounds[:-1], bounds[1:]))
    if not all(ok):
        raise FleetError("key generation failed")
    return secrets, ffi.buffer(out)[:]


def _pairs(secrets: bytes, publics: bytes):
    for off in range(0, len(secrets), KEY_SIZE):
        yield secrets[off:off + KEY_SIZE], publics[off:off + KEY_SIZE]


def _mkdir_0700(path: Path) -> None:
    missing = [d for d in (path, *path.parents) if not d.exists()]
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
        os.chmod(d, 0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_fleet(root: str | Path, count: int, config: cfg.ClientConfig, *, force: bool = False) -> FleetStore:
    """Make `root/fleet.db` with `count` identities named 0..count-1 sharing `config`.

    Written into a temp file beside it, fsynced and renamed: all or nothing. An existing fleet
    (either layout) is an error unless `force` (then the old keystore is replaced atomically).
    """
    check_count(count)
    root = Path(root)
    target = root / STORE_FILE
    if not force and (target.exists() or (root / "clients").is_dir()):
        raise FleetError(f"{root} already holds a fleet (use --force to replace its keystore)")
    try:
        _mkdir_0700(root)
        tmp = root / f".{STORE_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(tmp, 0o600)  # SQLite gives its journal the database file's mode
    except OSError as exc:
        raise FleetError(f"cannot write in {root}: {exc.strerror or exc}") from None
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = OFF")  # a temp file: the rename is the commit
            db.execute("PRAGMA synchronous = OFF")
            db.executescript(_SCHEMA)
            db.execute("BEGIN")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", FORMAT), ("config", msgspec.toml.encode(config).decode())])
            db.executemany("INSERT INTO identities (seq, name, secret, public) VALUES (?, ?, ?, ?)",
                           ((i, str(i), s, p) for i, (s, p) in enumerate(_pairs(*new_keys(count)))))
            db.execute("COMMIT")
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(root)
    except OSError as exc:
        raise FleetError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return FleetStore(root)


class FleetStore:
    """An open `DIR/fleet.db`: the shared config, and the identities to read, add or remove."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / STORE_FILE
        if not self.path.is_file():
            raise FleetError(f"{self.root}: no {STORE_FILE} (create a fleet with "
                             f"`loopix-client init --fleet {self.root} --count N`)")
        mode = self.path.stat().st_mode
        if mode & 0o077:
            raise FleetError(f"{self.path}: permissions {mode & 0o777:04o} are too open for secret keys "
                             "(run: chmod 600 on it)")
        try:
            self._db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, isolation_level=None,
                                       timeout=10.0)
            rows = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            raise FleetError(f"{self.path}: not a loopix fleet keystore ({exc})") from None
        if rows.get("format") != FORMAT:
            raise FleetError(f"{self.path}: not a loopix fleet keystore (format {rows.get('format')!r}, "
                             f"expected {FORMAT!r})")
        try:
            self.config = msgspec.toml.decode(rows["config"].encode(), type=cfg.ClientConfig)
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FleetError(f"{self.path}: its shared config is invalid: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def identities(self, names: Iterable[str] | None = None) -> list[FleetIdentity]:
        """Every member (in the order they were added), or those named (unknown: FleetError)."""
        if names is None:
            rows = self._db.execute("SELECT name, secret, public, provider FROM identities ORDER BY seq")
            return [FleetIdentity(n, KeyPair(s, p), pr) for n, s, p, pr in rows]
        names = list(names)
        found = {}
        for chunk in range(0, len(names), 500):
            part = names[chunk:chunk + 500]
            q = f"SELECT name, secret, public, provider FROM identities WHERE name IN ({','.join('?' * len(part))})"
            for n, s, p, pr in self._db.execute(q, part):
                found[n] = FleetIdentity(n, KeyPair(s, p), pr)
        unknown = [n for n in names if n not in found]
        if unknown:
            raise FleetError(f"no identity {unknown[0]!r} in the fleet {self.root}"
                             + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))
        return [found[n] for n in names]

    def _meta_int(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _top_seq(self) -> int:
        top = self._db.execute("SELECT max(seq) FROM identities").fetchone()[0]
        return max(-1 if top is None else top, self._meta_int("top_seq", -1))

    def snapshot(self) -> tuple[FleetRows, int, int]:
        """(every member, the highest sequence number given, the removal count), in one read."""
        self._db.execute("BEGIN")
        try:
            rows = _rows(self._db.execute("SELECT name, secret, public, provider FROM identities ORDER BY seq"))
            return rows, self._top_seq(), self._meta_int("removals", 0)
        finally:
            self._db.execute("COMMIT")

    def changes_since(self, seq: int, removals: int) -> FleetChanges:
        """What changed since a read that saw sequence numbers up to `seq` and `removals` removals:
        the members added after it, and every name now only if some were removed since (so a
        poll costs the new rows, not a pass over the whole fleet)."""
        self._db.execute("BEGIN")
        try:
            added = _rows(self._db.execute("SELECT name, secret, public, provider FROM identities WHERE seq > ? "
                                           "ORDER BY seq", (seq,)))
            now = self._meta_int("removals", 0)
            names = None
            if now != removals:
                names = {n for (n,) in self._db.execute("SELECT name FROM identities")}
            return FleetChanges(added, names, max(seq, self._top_seq()), now)
        finally:
            self._db.execute("COMMIT")

    def data_version(self) -> int:
        """Changes when another connection commits (SQLite's PRAGMA data_version): cheap to poll."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def names(self) -> list[str]:
        return [n for (n,) in self._db.execute("SELECT name FROM identities ORDER BY seq")]

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM identities").fetchone()[0]

    def add(self, count: int, keys: tuple[bytes, bytes] | None = None) -> list[str]:
        """`count` new identities, named on from the highest sequence number; one transaction.
        `keys`: their key pairs as new_keys gives them (made here if not given)."""
        check_count(count)
        if keys is None:
            keys = new_keys(count)
        elif len(keys[0]) != KEY_SIZE * count or len(keys[1]) != KEY_SIZE * count:
            raise ValueError(f"keys for {count} identities expected")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            start = self._top_seq() + 1  # past every name ever given: a removed name is never reused
            names = [str(start + i) for i in range(count)]
            while db.execute("SELECT 1 FROM identities WHERE name = ?", (names[0],)).fetchone():
                start += count  # a name taken by hand-made rows: move past it
                names = [str(start + i) for i in range(count)]
            db.executemany("INSERT INTO identities (seq, name, secret, public) VALUES (?, ?, ?, ?)",
                           ((start + i, names[i], s, p) for i, (s, p) in enumerate(_pairs(*keys))))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('top_seq', ?)", (str(start + count - 1),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return names

    def remove(self, names: Iterable[str]) -> None:
        """Delete the named identities (their keys are gone); all or none if one is unknown."""
        names = list(dict.fromkeys(names))
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self.identities(names)  # raises for an unknown name, inside the transaction
            db.executemany("DELETE FROM identities WHERE name = ?", ((n,) for n in names))
            # counted, so a running fleet's poll knows to look for who left (changes_since)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('removals', ?)",
                       (str(self._meta_int("removals", 0) + 1),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


# --- either layout ----------------------------------------------------------------------------------


class FleetContents(msgspec.Struct):
    """What a fleet directory holds, whichever layout: the members and the settings they share."""

    root: str
    rows: FleetRows
    config: cfg.ClientConfig
    layout: str  # "keystore" or "directories"
    max_seq: int = -1  # keystore: the highest sequence number read (identities added later are newer)
    removals: int = 0  # keystore: removals counted when it was read

    @property
    def members(self) -> list[FleetIdentity]:
        return self.rows.members


def load_identities(root: str | Path) -> FleetContents:
    """The fleet under `root`: `root/fleet.db`, else `root/clients/*/config` (one dir per identity)."""
    root = Path(root)
    if (root / STORE_FILE).exists():
        with FleetStore(root) as store:
            rows, top, removals = store.snapshot()
            if not len(rows):
                raise FleetError(f"fleet {root} has no identities (add some: loopix-client fleet add {root} --count N)")
            return FleetContents(str(root), rows, store.config, "keystore", top, removals)
    base = root / "clients"
    if not root.is_dir():
        raise FleetError(f"no fleet directory {root}")
    if not base.is_dir():
        raise FleetError(f"{root} is not a fleet directory: neither {STORE_FILE} nor clients/ in it "
                         f"(create one with `loopix-client init --fleet {root} --count N`)")
    members, configs = [], []
    for conf_dir in sorted(p for p in base.glob("*/config") if (p / cfg.CONFIG_FILE).exists()):
        conf = cfg.load(conf_dir / cfg.CONFIG_FILE)
        keys = load_keypair(conf_dir, private_name=conf.client.priv_key_file, public_name=conf.client.pub_key_file)
        provider = b64url_decode(conf.client.provider_id) if conf.client.provider_id else None
        members.append(FleetIdentity(conf_dir.parent.name, keys, provider))
        configs.append(conf)
    if not members:
        raise FleetError(f"{base}: no initialised identity found")
    _check_shared(root, [m.name for m in members], configs)
    rows = FleetRows([m.name for m in members], b"".join(m.keys.secret for m in members),
                     b"".join(m.keys.public for m in members),
                     {i: m.provider for i, m in enumerate(members) if m.provider is not None})
    return FleetContents(str(root), rows, configs[0], "directories")


def _check_shared(root: Path, names: list[str], configs: list[cfg.ClientConfig]) -> None:
    first = configs[0]
    shared = {
        "directory": lambda c: c.client.directory_server_topology,
        "packet size": lambda c: c.traffic.packet_size,
        "mean hop delay": lambda c: c.traffic.mean_hop_delay_ms,
        "payload stream cover": lambda c: c.traffic.payload_stream_cover,
    }
    for what, get in shared.items():
        for name, conf in zip(names, configs, strict=True):
            if get(conf) != get(first):
                raise FleetError(f"fleet {root}: {name} has {what} {get(conf)!r} but "
                                 f"{names[0]} has {get(first)!r}; a fleet shares it")
