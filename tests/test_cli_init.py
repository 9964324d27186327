"""`loopix-client init`, run as a real subprocess (`python -m loopix`), plus a few in-process cases."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from loopix import cli, keys
from loopix import config as cfg

SRC = str(Path(__file__).resolve().parents[1] / "src")
PROVIDER = keys.key_to_b64url(bytes(range(32)))


def run(home: Path | str, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOOPIX_HOME"}
    env["LOOPIX_HOME"] = str(home)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "loopix", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with file contents, to prove nothing changed."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("loopix-client")
    return lines[0]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_init_writes_files_with_exact_modes(tmp_path, umask):
    home = tmp_path / "home"
    result = run(home, "init", "--id", "alice", umask=umask)
    assert result.returncode == 0, result.stderr
    conf_dir = home / "clients" / "alice" / "config"
    assert result.stdout.splitlines() == [
        f"Saved generated private key to {conf_dir / 'private_key.pem'}",
        f"Saved generated public key to {conf_dir / 'public_key.pem'}",
        f"Saved generated config to {conf_dir / 'config.toml'}",
    ]
    assert result.stderr == ""
    for d in (home, home / "clients", home / "clients" / "alice", conf_dir):
        assert mode(d) == 0o700, d
    assert sorted(p.name for p in conf_dir.iterdir()) == [
        "config.toml",
        "private_key.pem",
        "public_key.pem",
    ]
    for name in ("private_key.pem", "public_key.pem", "config.toml"):
        assert mode(conf_dir / name) == 0o600, name
    assert sorted(p.name for p in (home / "clients" / "alice").iterdir()) == ["config"]


def test_init_round_trips_keys_and_config(tmp_path):
    result = run(tmp_path, "init", "--id", "alice")
    assert result.returncode == 0, result.stderr
    conf_dir = cfg.config_dir("alice", home=tmp_path)
    conf = cfg.load(conf_dir / "config.toml")
    assert conf.client.id == "alice"
    assert conf.client.directory_server_topology == "http://127.0.0.1:9000/api/presence/topology"
    assert conf.client.provider_id == ""
    assert conf == cfg.ClientConfig(client=cfg.ClientSection(id="alice"))
    private_path, public_path = cfg.key_paths(conf, conf_dir)
    pair = keys.load_keypair(conf_dir)
    assert keys.read_private_key(private_path) == pair.secret
    assert keys.read_public_key(public_path) == pair.public
    assert private_path.read_text().startswith("-----BEGIN SPHINX CURVE25519 PRIVATE KEY-----\n")
    assert public_path.read_text().startswith("-----BEGIN SPHINX CURVE25519 PUBLIC KEY-----\n")
    # Never print a secret, in any encoding.
    for text in (
        keys.key_to_b64url(pair.secret),
        pair.secret.hex(),
        private_path.read_text().split("\n")[1],
    ):
        assert text not in result.stdout + result.stderr


def test_init_directory_and_provider_options(tmp_path):
    unpadded = PROVIDER.rstrip("=")
    result = run(
        tmp_path,
        "init",
        "--id",
        "bob",
        "--directory",
        "http://10.0.0.1:9000/api/presence/topology",
        "--provider",
        unpadded,
    )
    assert result.returncode == 0, result.stderr
    conf = cfg.load(cfg.config_path("bob", home=tmp_path))
    assert conf.client.directory_server_topology == "http://10.0.0.1:9000/api/presence/topology"
    assert conf.client.provider_id == PROVIDER


def test_init_without_id_makes_a_random_one(tmp_path):
    result = run(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    (client,) = (tmp_path / "clients").iterdir()
    assert len(client.name) == 8 and client.name.isalpha()
    assert cfg.load(client / "config" / "config.toml").client.id == client.name


def test_existing_id_without_force_fails_and_changes_nothing(tmp_path):
    assert run(tmp_path, "init", "--id", "alice").returncode == 0
    before = snapshot(tmp_path)
    line = assert_one_line_error(run(tmp_path, "init", "--id", "alice"), 1)
    assert "already exists" in line and "--force" in line
    assert snapshot(tmp_path) == before


def test_force_replaces_atomically(tmp_path):
    assert run(tmp_path, "init", "--id", "alice", "--provider", PROVIDER).returncode == 0
    conf_dir = cfg.config_dir("alice", home=tmp_path)
    old = keys.load_keypair(conf_dir)
    result = run(tmp_path, "init", "--id", "alice", "--force")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    new = keys.load_keypair(conf_dir)
    assert new != old
    assert cfg.load(conf_dir / "config.toml").client.provider_id == ""
    assert mode(conf_dir) == 0o700
    # No temp or backup directory is left behind.
    assert sorted(p.name for p in conf_dir.parent.iterdir()) == ["config"]


@pytest.mark.parametrize("bad", ["a/b", "../x", "", "x" * 65, "a b", "\u00e9"])
def test_bad_id_is_a_usage_error(tmp_path, bad):
    line = assert_one_line_error(run(tmp_path / "h", "init", "--id", bad), 2)
    assert "invalid client id" in line
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("bad", ["xx", keys.key_to_b64url(bytes(31)), "+" * 43])
def test_bad_provider_is_a_usage_error(tmp_path, bad):
    line = assert_one_line_error(run(tmp_path / "h", "init", "--id", "a", "--provider", bad), 2)
    assert "invalid provider key" in line
    assert not (tmp_path / "h").exists()


def test_bad_directory_is_a_usage_error(tmp_path):
    line = assert_one_line_error(run(tmp_path / "h", "init", "--id", "a", "--directory", "nope"), 2)
    assert "invalid directory URL" in line


def test_usage_errors(tmp_path):
    assert_one_line_error(run(tmp_path, "init", "--bogus"), 2)
    assert_one_line_error(run(tmp_path), 2)
    assert_one_line_error(run(tmp_path, "frobnicate"), 2)


def test_help_exits_zero(tmp_path):
    result = run(tmp_path, "init", "--help")
    assert result.returncode == 0
    assert "--force" in result.stdout


def test_unwritable_home(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = assert_one_line_error(run(blocker / "sub", "init", "--id", "alice"), 1)
    assert "cannot create" in line and str(blocker) in line
    assert blocker.read_text() == "not a directory"


def test_config_errors_name_file_and_key(tmp_path):
    assert run(tmp_path, "init", "--id", "alice").returncode == 0
    path = cfg.config_path("alice", home=tmp_path)
    original = path.read_text()
    for old, new, expected in [
        ("loop_rate = 5.0", "loop_rate = -5.0", "traffic.loop_rate: must be >= 0"),
        ("loop_rate = 5.0", 'loop_rate = "fast"', "traffic.loop_rate: expected float, got str"),
        ("loop_rate = 5.0", "loop_rate = 5.0\nloop_rat = 1", "traffic.loop_rat: unknown key"),
    ]:
        path.write_text(original.replace(old, new))
        with pytest.raises(cfg.ConfigError) as info:
            cfg.load(path)
        assert str(info.value) == f"{path}: {expected}"


# --- in process: failure paths that a subprocess can't easily provoke ----------------------


def test_main_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOPIX_HOME", str(tmp_path))
    assert cli.main(["init", "--id", "carol"]) == 0
    assert capsys.readouterr().out.count("Saved generated") == 3
    assert cli.main(["init", "--id", "carol"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOPIX_HOME", str(tmp_path))

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cfg, "save", boom)
    assert cli.main(["init", "--id", "dave"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(cfg.client_dir("dave").iterdir()) == []


def test_force_failure_keeps_old_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOPIX_HOME", str(tmp_path))
    assert cli.main(["init", "--id", "erin"]) == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr(cfg, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert cli.main(["init", "--id", "erin", "--force"]) == 1
    assert snapshot(tmp_path) == before


def test_force_without_rename_exchange(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOPIX_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "_exchange", lambda a, b: False)
    assert cli.main(["init", "--id", "frank"]) == 0
    old = keys.load_keypair(cfg.config_dir("frank"))
    assert cli.main(["init", "--id", "frank", "--force"]) == 0
    assert keys.load_keypair(cfg.config_dir("frank")) != old
    assert sorted(p.name for p in cfg.client_dir("frank").iterdir()) == ["config"]


def test_exchange_swaps_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").touch()
    (b / "from_b").touch()
    if not cli._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not supported here")
    assert [p.name for p in a.iterdir()] == ["from_b"]
    assert [p.name for p in b.iterdir()] == ["from_a"]


def test_init_takes_the_local_testnets_hop_delay(tmp_path):
    """`loopix-client testnet --mean-hop-delay-ms` is the default for clients made for it."""
    url = "http://127.0.0.1:9999/api/presence/topology"
    (tmp_path / "testnet").mkdir()
    (tmp_path / "testnet" / "testnet.json").write_text(f'{{"topology": "{url}", "meanHopDelayMs": 7.5}}')
    assert run(tmp_path, "init", "--id", "near", "--directory", url).returncode == 0
    assert cfg.load(cfg.config_path("near", tmp_path)).traffic.mean_hop_delay_ms == 7.5
    other = "http://127.0.0.1:1/api/presence/topology"
    assert run(tmp_path, "init", "--id", "far", "--directory", other).returncode == 0
    assert cfg.load(cfg.config_path("far", tmp_path)).traffic.mean_hop_delay_ms == 50.0


def test_init_uses_the_testnet_running_under_the_same_home(tmp_path):
    """testnet.json names the testnet's pid: a running one is the default directory, a dead one not."""
    url = "http://127.0.0.1:45678/api/presence/topology"
    state = tmp_path / "testnet" / "testnet.json"
    state.parent.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state.write_text(f'{{"pid": {sleeper.pid}, "topology": "{url}", "meanHopDelayMs": 12}}')
        result = run(tmp_path, "init", "--id", "near")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"Using the testnet running under {tmp_path}: {url}"
        conf = cfg.load(cfg.config_path("near", tmp_path))
        assert conf.client.directory_server_topology == url and conf.traffic.mean_hop_delay_ms == 12
    finally:
        sleeper.kill()
        sleeper.wait()
    result = run(tmp_path, "init", "--id", "later")  # that testnet is gone: the default again
    assert result.returncode == 0 and "Using the testnet" not in result.stdout
    assert cfg.load(cfg.config_path("later", tmp_path)).client.directory_server_topology == cfg.DEFAULT_DIRECTORY
