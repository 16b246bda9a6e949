"""The SSM set-up the SSH-over-SSM and SSM port-forwarding tests share (in-process and agent).

`install_standin` puts the stand-in `session-manager-plugin` (tests/lab/standin_ssm_plugin.py)
first on PATH and returns the file it records each run in (`records`); `SSM_SETTINGS` is what a
lab profile gets for `transport = "ssm"` (`FORWARD_ONLY` on top: port forwarding, no bastion);
`wait_back` waits for a tunnel to carry queries again after its plugin was killed;
`swap_host_key` puts another key for the bastion's name in a known_hosts file (a man in the
middle's).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.lab.postgres import Postgres
from tests.lab.profiles import query

__all__ = [
    "FORWARD_ONLY",
    "INSTANCE",
    "STANDIN",
    "install_standin",
    "records",
    "ssm_settings",
    "swap_host_key",
    "wait_back",
]

INSTANCE = "i-0a1b2c3d4e5f67890"
STANDIN = Path(__file__).parent / "standin_ssm_plugin.py"
FORWARD_ONLY: dict[str, Any] = {"bastion": None, "identity_file": None, "known_hosts": None}
"""Written over `ssm_settings`: SSM port forwarding to the endpoint, no SSH."""


def ssm_settings(region: str) -> dict[str, Any]:
    """A lab profile's keys for SSH over SSM to the lab's sshd (the instance is `INSTANCE`)."""
    return {
        "transport": "ssm",
        "bastion_instance_id": INSTANCE,
        "region": region,
        "password": "keyring",
        "connect_timeout": 5,
    }


def install_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in plugin as `session-manager-plugin` first on PATH; returns its record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "session-manager-plugin"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    wrapper.chmod(0o755)
    record = tmp_path / "standin-record.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("STANDIN_SSM_RECORD", str(record))
    return record


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines the stand-in wrote to `path` (none yet: [])."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_back(port: int, pg: Postgres, within: float, why: Callable[[], str]) -> float:
    """Seconds until 127.0.0.1:`port` answers a query again; fails with `why()` after `within`."""
    killed = time.monotonic()
    deadline = killed + within
    while True:
        try:
            assert query(port, pg, "select 7", timeout=2) == 7
            break
        except Exception:
            assert time.monotonic() < deadline, why()
            time.sleep(0.1)
    return time.monotonic() - killed


def swap_host_key(known: Path) -> None:
    """The bastion's name with another ed25519 key: what a man in the middle would present."""
    parts = known.read_text().split()
    parts[-2:] = [
        "ssh-ed25519",
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    ]
    known.write_text(" ".join(parts) + "\n")
