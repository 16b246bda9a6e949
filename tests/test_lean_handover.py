"""The warm path's fallback (`tunnelman.cli.lean` → the full CLI) reads the profile file once.

The lean path loads the profile before it asks the agent; when the agent does not hold the
tunnel (the cold one-shot), the full CLI runs the command in the same process and takes that
reading instead of parsing the file again. What it prints and its exit status stay the full
CLI's own (compared with a TUNNELMAN_NO_LEAN=1 run in a subprocess).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.lab.ports import free_port
from tests.lab.toml_profile import write_profile
from tunnelman.cli import lean
from tunnelman.core import profiles

PROFILE = {
    "bastion": "ec2-user@bastion.example.com",
    "endpoint": "db.example.com",
    "database": "geo",
    "user": "analyst",
    "password": "none",
}


def reads_of(monkeypatch: pytest.MonkeyPatch, config: Path) -> list[Path]:
    """A list that grows by one each time the profile file is read from disk."""
    reads: list[Path] = []
    real: Callable[..., Any] = profiles._read_profile_file

    def counting(path: Path, *args: Any) -> Any:
        if Path(path) == config:
            reads.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(profiles, "_read_profile_file", counting)
    return reads


def in_process(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        lean.main(argv)
    out, err = capfd.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 1), out, err


def no_lean(run_cli: RunCli, argv: list[str]) -> tuple[int, str, str]:
    done = run_cli(*argv, env={**os.environ, "TUNNELMAN_NO_LEAN": "1"})
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("local_port", [True, False])
def test_cold_env_reads_the_profile_file_once(
    tmp_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    run_cli: RunCli,
    local_port: bool,
) -> None:
    config = Path(os.environ["TUNNELMAN_CONFIG"])
    keys = {**PROFILE, "local_port": free_port()} if local_port else dict(PROFILE)
    write_profile(config, "geo", **keys)
    reads = reads_of(monkeypatch, config)

    code, out, err = in_process(["env", "geo"], capfd)

    assert reads == [config], "lean read it; the full CLI took that reading"
    assert (code, out, err) == no_lean(run_cli, ["env", "geo"])
    if local_port:
        assert code == 0
        assert f"PGPORT={keys['local_port']}" in out or f"PGPORT='{keys['local_port']}'" in out
    else:
        assert code != 0
        assert "no port for 'geo'" in err
    assert not lean._handed, "nothing is kept for a later command"


def test_a_different_config_is_read_by_the_full_cli(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The handed-over reading is only for the file it came from."""
    config = Path(os.environ["TUNNELMAN_CONFIG"])
    write_profile(config, "geo", **PROFILE, local_port=free_port())
    other = tmp_home / "other.toml"
    write_profile(other, "geo", **PROFILE, local_port=free_port())
    loaded = profiles.load(config, missing_ok=False)
    lean._handed[:] = [loaded]
    try:
        assert lean.loaded_profiles(str(other)) is None
        assert not lean._handed, "handed over once, whether used or not"
        lean._handed[:] = [loaded]
        assert lean.loaded_profiles(None) is loaded  # $TUNNELMAN_CONFIG names the same file
        assert lean.loaded_profiles(None) is None
    finally:
        lean._handed.clear()
