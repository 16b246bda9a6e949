"""The profile file: strict loading with precise errors, defaults, and comment-keeping saves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError, ProfileNotFound

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text, "utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunnelman", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_example_file_loads_with_the_real_loader() -> None:
    sets = prof.load(REPO / "profiles.example.toml", missing_ok=False)
    prod = sets.get("prod")
    assert prod.database == "geo"
    assert prod.local_port == 5433
    assert prod.bastion is not None
    assert prod.bastion.user == "ec2-user"
    assert prod.endpoint is not None
    assert prod.endpoint.port == 5432
    assert prod.sslmode == "require"  # from [defaults]
    assert prod.identity_file == Path("~/.ssh/aws-ec2.pem").expanduser()
    iam = sets.get("prod-iam")
    assert iam.password == "iam"
    assert iam.sslmode == "verify-full"  # its own value wins over [defaults]


def test_defaults_apply_and_profile_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[defaults]\nuser = "analyst"\nlocal_port = 6000\n'
        '[profiles.a]\nendpoint = "db.example:6432"\n'
        '[profiles.b]\nendpoint = "db2"\nuser = "admin"\n',
    )
    sets = prof.load(path)
    a, b = sets.get("a"), sets.get("b")
    assert (a.user, a.local_port, a.endpoint) == (
        "analyst",
        6000,
        prof.Endpoint("db.example", 6432),
    )
    assert (b.user, b.endpoint) == ("admin", prof.Endpoint("db2", 5432))


def test_bastion_forms() -> None:
    assert prof.parse_bastion("ec2-user@host:2222") == prof.Bastion("host", "ec2-user", 2222)
    assert prof.parse_bastion("host") == prof.Bastion("host", None, 22)
    assert prof.parse_bastion("u@[::1]:23") == prof.Bastion("::1", "u", 23)
    with pytest.raises(ValueError, match="bad port"):
        prof.parse_bastion("host:99999")


def test_unknown_key_names_dotted_key_with_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.prod]\nendpoint = "db"\nlocal_prot = 5433\n')
    with pytest.raises(ConfigError) as info:
        prof.load(path)
    assert "profiles.prod.local_prot" in str(info.value)
    assert "did you mean 'local_port'" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_type_names_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.prod]\nlocal_port = "5433"\n')
    with pytest.raises(ConfigError, match=r"profiles\.prod\.local_port: must be a port number"):
        prof.load(path)


def test_bad_choice_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.p]\npassword = "keyrng"\n')
    with pytest.raises(ConfigError, match="did you mean 'keyring'"):
        prof.load(path)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '# comment\n[profiles.p]\nendpoint = "db\n')
    with pytest.raises(ConfigError) as info:
        prof.load(path)
    assert f"{path}:3:" in str(info.value)


def test_missing_profile_lists_known(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.prod]\nendpoint = "db"\n')
    with pytest.raises(ProfileNotFound, match="did you mean 'prod'"):
        prof.load(path).get("prd")


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNELMAN_CONFIG", str(tmp_path / "env.toml"))
    assert prof.config_path(None) == tmp_path / "env.toml"
    assert prof.config_path(tmp_path / "x.toml") == tmp_path / "x.toml"
    monkeypatch.delenv("TUNNELMAN_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert prof.config_path(None) == tmp_path / "cfg" / "tunnelman" / "profiles.toml"


def test_save_keeps_comments_and_other_profiles(tmp_path: Path) -> None:
    original = (
        '# my profiles\n[defaults]\nregion = "us-east-2"  # ohio\n\n'
        '[profiles.old]\n# the old one\nendpoint = "old.db"  # keep me\n'
    )
    path = write(tmp_path, original)
    prof.save_profile(path, "new", {"endpoint": "new.db:6543", "local_port": 5440})
    text = path.read_text()
    assert text.startswith(original.rstrip("\n"))
    assert "# keep me" in text
    assert "# ohio" in text
    sets = prof.load(path)
    assert sets.get("new").endpoint == prof.Endpoint("new.db", 6543)
    with pytest.raises(ConfigError, match="exists"):
        prof.save_profile(path, "new", {"endpoint": "x"})
    prof.save_profile(path, "old", {"endpoint": "changed.db"}, overwrite=True)
    assert prof.load(path).get("old").endpoint == prof.Endpoint("changed.db", 5432)
    assert "# the old one" in path.read_text()


def test_save_validates_before_writing(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.a]\nendpoint = "db"\n')
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="local_port"):
        prof.save_profile(path, "b", {"local_port": 70000})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["profiles.toml"]  # no temp file left


def test_delete_keeps_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path, '# top\n[profiles.a]\nendpoint = "a"\n\n[profiles.b]\nendpoint = "b" # bee\n'
    )
    prof.delete_profile(path, "a")
    text = path.read_text()
    assert "# top" in text
    assert "# bee" in text
    assert "profiles.a" not in text


def test_add_then_delete_restores_the_file(tmp_path: Path) -> None:
    original = '# top\n[profiles.a]\nendpoint = "a"  # x\n'
    path = write(tmp_path, original)
    prof.save_profile(path, "demo", {"endpoint": "d", "description": "sandbox"})
    prof.delete_profile(path, "demo")
    assert path.read_text() == original


def test_atomic_write_keeps_mode(tmp_path: Path) -> None:
    from tunnelman.core.files import atomic_write  # moved out of profiles; tests/test_files.py

    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o640)
    atomic_write(path, "y")
    assert path.read_text() == "y"
    assert path.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------ as a user sees it (real CLI)


def test_cli_broken_toml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.a\n")
    result = run_cli("--config", str(path), "ls")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}:1:" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_unknown_key_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.a]\nendpont = "db"\n')
    result = run_cli("--config", str(path), "ls")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "profiles.a.endpont" in result.stderr
    assert "did you mean 'endpoint'" in result.stderr


def test_cli_ls_json_shape(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.a]\nendpoint = "db"\nbastion = "u@b"\nlocal_port = 5433\n')
    result = run_cli("--config", str(path), "ls", "--json")
    assert result.returncode == 0, result.stderr
    import json

    data = json.loads(result.stdout)
    assert data[0]["name"] == "a"
    for key in ("bastion", "endpoint", "database", "user", "local_port"):
        assert key in data[0]
    assert data[0]["bastion"] == "u@b"


def test_cli_profile_add_endpoint_keeps_comments(tmp_path: Path) -> None:
    path = write(tmp_path, '# mine\n[profiles.a]\nendpoint = "db" # here\n')
    result = run_cli(
        "--config", str(path), "profile", "add", "geo",
        "--endpoint", "geo.cluster-x.rds.amazonaws.com",
        "--bastion", "ec2-user@bastion.example.com", "--local-port", "5433",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "# mine" in text
    assert "# here" in text
    assert prof.load(path).get("geo").local_port == 5433
    again = run_cli("--config", str(path), "profile", "add", "geo", "--endpoint", "x")
    assert again.returncode != 0
    assert "--force" in again.stderr
