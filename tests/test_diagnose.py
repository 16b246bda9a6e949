"""The doctor in core (`tunnelman.core.diagnose`) and the one route check it shares with tunnels:
results are values built from the error's message and hint; nothing here needs a terminal.
These fail before any network work, so no lab service is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.toml_profile import write_profile
from tunnelman.core import profiles as prof
from tunnelman.core.diagnose import STEPS, Doctor
from tunnelman.core.errors import ConfigError
from tunnelman.core.tunnel import open_tunnel


@pytest.mark.parametrize(
    ("keys", "message", "hint"),
    [
        (
            {"bastion": "ec2-user@bastion.example.com"},
            "profile 'p' has no endpoint",
            'add endpoint = "HOST[:PORT]" (the database as the bastion sees it)',
        ),
        (
            {"endpoint": "db.example.com:5432"},
            "profile 'p' has no bastion",
            'add bastion = "user@host" to the profile',
        ),
    ],
    ids=["no-endpoint", "no-bastion"],
)
def test_config_step_and_tunnel_refuse_a_half_route_alike(
    tmp_path: Path, keys: dict[str, str], message: str, hint: str
) -> None:
    config = tmp_path / "profiles.toml"
    write_profile(config, "p", **keys)
    results = list(Doctor(config, "p").run())
    assert [r.step for r in results] == list(STEPS)
    first, *rest = results
    assert (first.outcome, first.detail, first.hint) == ("failed", message, hint)
    assert all(r.skipped for r in rest)
    # The tunnel says the very same thing, from the same check.
    with pytest.raises(ConfigError) as raised:
        open_tunnel(prof.load(config).get("p"), local_port=0).start()
    assert (raised.value.message, raised.value.hint) == (message, hint)


def test_a_missing_profile_file_is_a_failed_config_step(tmp_path: Path) -> None:
    results = list(Doctor(tmp_path / "none.toml", "p").run())
    assert results[0].failed
    assert "none.toml" in results[0].detail
    assert [r.outcome for r in results[1:]] == ["skipped"] * (len(STEPS) - 1)
