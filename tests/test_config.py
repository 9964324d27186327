"""config.toml: defaults, round trip, and errors that name the file and the key."""

import stat
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix import config as cfg
from loopix import keys
from loopix.client.api import runtime_options
from loopix.config import ClientConfig, ClientSection, ConfigError, RuntimeSection, TrafficSection

PROVIDER = keys.key_to_b64url(bytes(range(32)))


def minimal(**client) -> ClientConfig:
    return ClientConfig(client=ClientSection(id="alice", **client))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        cfg.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    return message[len(str(path)) + 2 :]


def test_defaults():
    c = minimal()
    assert c.client.directory_server_topology == "http://127.0.0.1:9000/api/presence/topology"
    assert c.client.provider_id == ""
    assert (c.client.priv_key_file, c.client.pub_key_file) == ("private_key.pem", "public_key.pem")
    t = c.traffic
    assert (t.payload_rate, t.loop_rate, t.drop_rate) == (50.0, 5.0, 5.0)
    assert t.mean_hop_delay_ms == 50.0
    assert t.fetch_rate == 1.0
    assert t.payload_stream_cover == "drop"
    assert t.packet_size == 2048
    assert c.runtime.workers == 0
    assert c.runtime.topology_refresh_s > 0


def test_save_load_round_trip(tmp_path):
    c = ClientConfig(
        client=ClientSection(
            id="bob_2", provider_id=PROVIDER, directory_server_topology="https://d.example/t"
        ),
        traffic=TrafficSection(loop_rate=0.5, payload_stream_cover="loop", packet_size=32768),
        runtime=RuntimeSection(workers=3, topology_refresh_s=1.5),
    )
    path = tmp_path / "config.toml"
    cfg.save(c, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cfg.load(path) == c
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temp file left


def test_saved_file_is_plain_toml_with_sections(tmp_path):
    path = tmp_path / "config.toml"
    cfg.save(minimal(), path)
    text = path.read_text()
    for section in ("[client]", "[traffic]", "[runtime]"):
        assert section in text
    assert 'id = "alice"' in text


@settings(deadline=None, max_examples=50)
@given(
    rates=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=5, max_size=5),
    cover=st.sampled_from(["drop", "loop"]),
    size=st.sampled_from(cfg.PACKET_SIZES),
    workers=st.integers(0, 1024),
    refresh=st.floats(1e-3, 1e6),
)
def test_round_trip_property(tmp_path_factory, rates, cover, size, workers, refresh):
    c = ClientConfig(
        client=ClientSection(id="p"),
        traffic=TrafficSection(
            payload_rate=rates[0],
            loop_rate=rates[1],
            drop_rate=rates[2],
            mean_hop_delay_ms=rates[3],
            fetch_rate=rates[4],
            payload_stream_cover=cover,
            packet_size=size,
        ),
        runtime=RuntimeSection(workers=workers, topology_refresh_s=refresh),
    )
    path = tmp_path_factory.mktemp("c") / "config.toml"
    cfg.save(c, path)
    assert cfg.load(path) == c


def test_minimal_file_and_int_for_float(tmp_path):
    c = cfg.load(write(tmp_path, '[client]\nid = "alice"\n[traffic]\nloop_rate = 3\n'))
    assert c.traffic.loop_rate == 3.0 and isinstance(c.traffic.loop_rate, float)
    assert c.traffic.payload_rate == 50.0


def test_a_config_written_before_the_coalescing_window_still_loads(tmp_path):
    """`init` writes every runtime key: files from the release with `sender_min_gap_us` load, the
    knob keeps its meaning, and the new window takes its default."""
    text = '[client]\nid = "a"\n[runtime]\nworkers = 0\nsenders = 0\nsender_min_gap_us = 200\n'
    c = cfg.load(write(tmp_path, text))
    assert c.runtime.sender_min_gap_us == 200 and c.runtime.sender_coalesce_us == 300
    opts = runtime_options(c)
    assert (opts.sender_min_gap_us, opts.sender_coalesce_us) == (200, 300)


def test_provider_key_is_normalised_to_padded(tmp_path):
    c = cfg.load(write(tmp_path, f'[client]\nid = "a"\nprovider_id = "{PROVIDER.rstrip("=")}"\n'))
    assert c.client.provider_id == PROVIDER


def test_negative_rate_message(tmp_path):
    msg = load_error(tmp_path, '[client]\nid = "a"\n[traffic]\nloop_rate = -1.0\n')
    assert msg == "traffic.loop_rate: must be >= 0"


def test_example_message_with_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[client]\nid = "a"\n[traffic]\nloop_rate = -1\n')
    with pytest.raises(ConfigError, match=r"^config\.toml: traffic\.loop_rate: must be >= 0$"):
        cfg.load("config.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[client]\nid = "a"\nfoo = 1\n', "client.foo: unknown key"),
        ('[client]\nid = "a"\n[traffic]\nlooprate = 1\n', "traffic.looprate: unknown key"),
        ('[client]\nid = "a"\n[debug]\nx = 1\n', "debug: unknown key"),
        (
            '[client]\nid = "a"\n[traffic]\nloop_rate = "5"\n',
            "traffic.loop_rate: expected float, got str",
        ),
        ("[client]\nid = 5\n", "client.id: expected str, got int"),
        (
            '[client]\nid = "a"\n[runtime]\nworkers = 1.5\n',
            "runtime.workers: expected int, got float",
        ),
        (
            '[client]\nid = "a"\n[runtime]\nworkers = true\n',
            "runtime.workers: expected int, got bool",
        ),
        ('traffic = 3\n[client]\nid = "a"\n', "traffic: expected table, got int"),
        (
            '[client]\nid = "a"\n[traffic]\nmean_hop_delay_ms = -0.5\n',
            "traffic.mean_hop_delay_ms: must be >= 0",
        ),
        (
            '[client]\nid = "a"\n[traffic]\npayload_rate = -1\n',
            "traffic.payload_rate: must be >= 0",
        ),
        ('[client]\nid = "a"\n[traffic]\ndrop_rate = -1\n', "traffic.drop_rate: must be >= 0"),
        ('[client]\nid = "a"\n[traffic]\nfetch_rate = -1\n', "traffic.fetch_rate: must be >= 0"),
        ('[client]\nid = "a"\n[traffic]\nloop_rate = nan\n', "traffic.loop_rate: must be >= 0"),
        (
            '[client]\nid = "a"\n[traffic]\nloop_rate = inf\n',
            "traffic.loop_rate: must be a finite number",
        ),
        ('[client]\nid = "a"\n[runtime]\nworkers = -1\n', "runtime.workers: must be >= 0"),
        (
            '[client]\nid = "a"\n[runtime]\ntopology_refresh_s = 0\n',
            "runtime.topology_refresh_s: must be > 0",
        ),
        ("[traffic]\nloop_rate = 1\n", "client: missing required key"),
        ("[client]\n", "client.id: missing required key"),
    ],
)
def test_errors_name_the_key(tmp_path, text, expected):
    assert load_error(tmp_path, text) == expected


def test_enum_errors_list_the_choices(tmp_path):
    msg = load_error(tmp_path, '[client]\nid = "a"\n[traffic]\npacket_size = 4096\n')
    assert msg.startswith("traffic.packet_size: invalid value 4096")
    assert "2048, 8192, 16384, 32768" in msg
    msg = load_error(tmp_path, '[client]\nid = "a"\n[traffic]\npayload_stream_cover = "x"\n')
    assert msg.startswith("traffic.payload_stream_cover: invalid value 'x'")
    assert "'drop', 'loop'" in msg


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('id = "../evil"', "client.id"),
        ('id = ""', "client.id"),
        ('id = "a"\nprovider_id = "nope"', "client.provider_id"),
        ('id = "a"\ndirectory_server_topology = "ftp://x/y"', "client.directory_server_topology"),
        ('id = "a"\ndirectory_server_topology = "not a url"', "client.directory_server_topology"),
        ('id = "a"\npriv_key_file = ""', "client.priv_key_file"),
    ],
)
def test_semantic_errors_name_the_key(tmp_path, line, key):
    assert load_error(tmp_path, f"[client]\n{line}\n").startswith(f"{key}: ")


def test_invalid_toml_and_missing_file(tmp_path):
    assert load_error(tmp_path, "[client\n").startswith("not valid TOML")
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.load(tmp_path / "nope.toml")


def test_struct_rejects_bad_values_in_python():
    with pytest.raises(ValueError, match="id"):
        ClientSection(id="a b")
    with pytest.raises(ValueError, match="loop_rate"):
        TrafficSection(loop_rate=float("inf"))
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"client": {"id": "a"}, "traffic": {"loop_rate": -1}}, ClientConfig)


@pytest.mark.parametrize("good", ["a", "A-b_9", "x" * 64, "alice"])
def test_valid_client_ids(good):
    assert cfg.validate_client_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a/b", "..", ".", "a\n", "é", "a.b", None])
def test_invalid_client_ids(bad):
    with pytest.raises(ValueError, match="invalid client id"):
        cfg.validate_client_id(bad)


def test_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPIX_HOME", str(tmp_path / "h"))
    assert cfg.loopix_home() == tmp_path / "h"
    assert cfg.client_dir("alice") == tmp_path / "h" / "clients" / "alice"
    assert cfg.config_dir("alice") == tmp_path / "h" / "clients" / "alice" / "config"
    assert cfg.config_path("alice") == cfg.config_dir("alice") / "config.toml"
    assert cfg.client_dir("bob", home=tmp_path) == tmp_path / "clients" / "bob"
    with pytest.raises(ValueError):
        cfg.client_dir("../x")
    monkeypatch.setenv("LOOPIX_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cfg.loopix_home() == tmp_path / "home" / ".loopix"
    monkeypatch.delenv("LOOPIX_HOME")
    assert cfg.loopix_home() == tmp_path / "home" / ".loopix"


def test_key_paths(tmp_path):
    assert cfg.key_paths(minimal(), tmp_path) == (
        tmp_path / "private_key.pem",
        tmp_path / "public_key.pem",
    )
    absolute = minimal(priv_key_file="/keys/p.pem")
    assert cfg.key_paths(absolute, tmp_path)[0] == Path("/keys/p.pem")
