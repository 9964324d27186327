"""The client's `config.toml`: one msgspec Struct, strict TOML load/save, and the home layout.

Layout (as the 2019 Go client): `$LOOPIX_HOME/clients/<id>/config/{config.toml,*.pem}`.
Loading is strict (unknown keys, wrong types and out-of-range values are errors naming the
file and the key) because a typo in a rate silently falling back to a default would quietly
change the client's anonymity properties.
"""

from __future__ import annotations

import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from loopix.fileio import write_private_file
from loopix.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, key_from_b64url, key_to_b64url

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DIRECTORY",
    "DEFAULT_DIRECTORY_PORT",
    "PACKET_SIZES",
    "TOPOLOGY_PATH",
    "AcksSection",
    "ClientConfig",
    "ClientSection",
    "ConfigError",
    "RuntimeSection",
    "TrafficSection",
    "client_dir",
    "config_dir",
    "config_path",
    "key_paths",
    "load",
    "loopix_home",
    "save",
    "validate_client_id",
    "validate_directory_url",
]

CONFIG_FILE = "config.toml"
# One default for both ends: `loopix-client testnet` serves its directory here and `init` points
# new clients at it.
DEFAULT_DIRECTORY_PORT = 9000
TOPOLOGY_PATH = "/api/presence/topology"
DEFAULT_DIRECTORY = f"http://127.0.0.1:{DEFAULT_DIRECTORY_PORT}{TOPOLOGY_PATH}"
PACKET_SIZES = (2048, 8192, 16384, 32768)

_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """config.toml is unreadable or invalid; the message names the file and the key."""


# --- validators shared by the Struct and the CLI ------------------------------------------


def validate_client_id(client_id: str) -> str:
    """Return `client_id` if it is safe as a directory name ([A-Za-z0-9_-]{1,64}), else ValueError."""
    if not isinstance(client_id, str) or not _CLIENT_ID_RE.fullmatch(client_id):
        raise ValueError(
            f"invalid client id {client_id!r}: use 1 to 64 characters from A-Z a-z 0-9 _ -"
        )
    return client_id


def validate_directory_url(url: str) -> str:
    """The topology URL for `url`, an http(s) URL with a host, else ValueError.

    A base URL (no path, or just "/", which is what `loopix-client testnet` prints) gets the
    topology path appended, so both spellings of the same directory work.
    """
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        port = parts.port if parts is not None else None  # ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"invalid directory URL {url!r}: {exc}") from None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid directory URL {url!r}: expected http://host[:port][/path]")
    if port == 0:
        raise ValueError(f"invalid directory URL {url!r}: port 0")
    if parts.path in ("", "/") and not parts.query:
        return parts._replace(path=TOPOLOGY_PATH, fragment="").geturl()
    return url


def _check_finite(struct: msgspec.Struct) -> None:
    # msgspec's ge/gt already reject NaN; infinity would turn a Poisson clock into a busy loop.
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number")


# --- the Struct ---------------------------------------------------------------------------


class ClientSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[client]`: who we are, where the directory is, which provider, which key files.

    Key names follow the Go client's config so old files read the same way.
    """

    id: str
    directory_server_topology: str = DEFAULT_DIRECTORY
    # Base64url provider key; "" = pick a provider at random on first run.
    provider_id: str = ""
    # Base64url Ed25519 key of the directory: its topology signature is checked against it.
    # "" = unpinned: the topology is taken on trust (the 2019 behaviour), with a warning.
    directory_key: str = ""
    # Relative to the config directory (the one holding config.toml), or absolute.
    priv_key_file: str = PRIVATE_KEY_FILE
    pub_key_file: str = PUBLIC_KEY_FILE

    def __post_init__(self) -> None:
        try:
            validate_client_id(self.id)
        except ValueError as exc:
            raise ValueError(f"id: {exc}") from None
        try:
            self.directory_server_topology = validate_directory_url(self.directory_server_topology)
        except ValueError as exc:
            raise ValueError(f"directory_server_topology: {exc}") from None
        if self.provider_id:
            try:
                self.provider_id = key_to_b64url(key_from_b64url(self.provider_id))
            except ValueError as exc:
                raise ValueError(f"provider_id: not a provider key ({exc})") from None
        if self.directory_key:
            try:
                self.directory_key = key_to_b64url(key_from_b64url(self.directory_key))
            except ValueError as exc:
                raise ValueError(f"directory_key: not an Ed25519 public key ({exc})") from None
        for name in ("priv_key_file", "pub_key_file"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")


class TrafficSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[traffic]`: the Loopix rates (per second, waits drawn as Exp(rate)) and packet shape.

    A rate of 0 turns that stream off.
    """

    payload_rate: NonNegative = 50.0  # λP: payload stream (real message, else cover)
    loop_rate: NonNegative = 5.0  # λL: loop cover to ourselves
    drop_rate: NonNegative = 5.0  # λD: drop cover to a random client
    mean_hop_delay_ms: NonNegative = 50.0  # mean of the Exp per-hop delay we pick
    fetch_rate: NonNegative = 1.0  # pulls from our provider (with delivery = "pull")
    # How stored messages reach us: pushed over the persistent connection (acknowledged), or
    # Loopix pulls at fetch_rate, answered with a fixed number of fixed-size slots.
    delivery: Literal["push", "pull"] = "push"
    # What the payload stream sends when no real message is queued: Loopix sends a drop,
    # the Nym variant a loop.
    payload_stream_cover: Literal["drop", "loop"] = "drop"
    packet_size: Literal[2048, 8192, 16384, 32768] = 2048

    def __post_init__(self) -> None:
        _check_finite(self)


class RuntimeSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[runtime]`: how the client uses this machine, not what it looks like on the wire."""

    workers: Annotated[int, msgspec.Meta(ge=0)] = 0  # packet builders; 0 = number of cores
    # sender processes, each owning a share of the identities (several only when identities >= workers);
    # 0 = one per 8 workers (docs/client-stages.md)
    senders: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    # the sender's coalescing window: packets due within it after the next one go out together with the
    # last of them, one wake-up and one write, each at most this much late; a lone packet goes on time.
    # 0 = wake at each due packet (docs/client-stages.md: a wake-up costs ~25 µs of CPU on a VM)
    sender_coalesce_us: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 300
    # the older knob, kept so configs written with it load and behave as before: wake-ups at least this
    # far apart (each packet up to this late, alone or not); 0 = off
    sender_min_gap_us: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    topology_refresh_s: Positive = 5.0

    def __post_init__(self) -> None:
        _check_finite(self)


class AcksSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[acks]`: when an unacknowledged fragment is sent again (client/acks.py). Its timer starts
    when the packet leaves and lasts (sampled delays of its route and of its ack's route) x
    `wait_multiplier` + `wait_addition_s`; Nym's defaults. `max_retransmissions` 0 = no limit."""

    wait_multiplier: NonNegative = 1.5
    wait_addition_s: Positive = 1.5
    max_retransmissions: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        _check_finite(self)


class ClientConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole `config.toml`."""

    client: ClientSection
    traffic: TrafficSection = msgspec.field(default_factory=TrafficSection)
    runtime: RuntimeSection = msgspec.field(default_factory=RuntimeSection)
    acks: AcksSection = msgspec.field(default_factory=AcksSection)


# --- paths --------------------------------------------------------------------------------


def loopix_home() -> Path:
    """`$LOOPIX_HOME`, or `~/.loopix` when unset or empty."""
    env = os.environ.get("LOOPIX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".loopix"


def client_dir(client_id: str, home: Path | None = None) -> Path:
    """`<home>/clients/<id>`; the id is validated so it can never escape the home."""
    return (home if home is not None else loopix_home()) / "clients" / validate_client_id(client_id)


def config_dir(client_id: str, home: Path | None = None) -> Path:
    """`<home>/clients/<id>/config`: config.toml and the key files."""
    return client_dir(client_id, home) / "config"


def config_path(client_id: str, home: Path | None = None) -> Path:
    """`<home>/clients/<id>/config/config.toml`."""
    return config_dir(client_id, home) / CONFIG_FILE


def key_paths(config: ClientConfig, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(private, public) key file paths, resolved against the config's directory."""
    directory = Path(directory)
    return directory / config.client.priv_key_file, directory / config.client.pub_key_file


# --- load / save --------------------------------------------------------------------------

_AT_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_MSG_RE = re.compile(r"^(?P<field>[A-Za-z_]\w*): (?P<msg>.*)$", re.DOTALL)


def _num(text: str) -> str:
    return text[:-2] if text.endswith(".0") else text


def _allowed_values(path: list[str]) -> tuple[Any, ...] | None:
    """The Literal choices of the field at `path`, for a friendlier enum error."""
    tp: Any = ClientConfig
    for name in path:
        hints = typing.get_type_hints(tp) if isinstance(tp, type) else {}
        if name not in hints:
            return None
        tp = hints[name]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _explain(error: msgspec.ValidationError) -> str:
    """Turn msgspec's `Expected ... - at `$.a.b`` into `a.b: must be ...`."""
    m = _AT_RE.match(str(error))
    assert m is not None  # the pattern matches any string
    msg = m["msg"]
    path = [p for p in (m["path"] or "").split(".") if p]
    if fm := _FIELD_MSG_RE.match(msg):  # from a __post_init__: "field: problem"
        path.append(fm["field"])
        msg = fm["msg"]
    elif um := re.match(r"Object contains unknown field `(.*)`$", msg):
        path.append(um[1])
        msg = "unknown key"
    elif mm := re.match(r"Object missing required field `(.*)`$", msg):
        path.append(mm[1])
        msg = "missing required key"
    elif bm := re.match(r"Expected `\w+` (?P<op>[<>]=?) (?P<n>\S+)$", msg):
        msg = f"must be {bm['op']} {_num(bm['n'])}"
    elif tm := re.match(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$", msg):
        want = {"object": "table"}.get(tm["want"], tm["want"])
        got = {"object": "table"}.get(tm["got"], tm["got"])
        msg = f"expected {want}, got {got}"
    elif em := re.match(r"Invalid enum value (.*)$", msg):
        allowed = _allowed_values(path)
        msg = f"invalid value {em[1]}"
        if allowed:
            msg += ": must be one of " + ", ".join(repr(v) for v in allowed)
    return f"{'.'.join(path) or '(top level)'}: {msg}"


def load(path: str | os.PathLike[str]) -> ClientConfig:
    """Read and validate a config.toml; any problem is a ConfigError naming file and key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data, type=ClientConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(exc)}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


_HEADER = (
    b"# loopix client configuration. Rates are per second (0 turns a stream off);\n"
    b"# key files are relative to this file's directory.\n\n"
)


def save(config: ClientConfig, path: str | os.PathLike[str]) -> None:
    """Write `config` atomically (temp file + rename), mode 0600."""
    write_private_file(path, _HEADER + msgspec.toml.encode(config))
