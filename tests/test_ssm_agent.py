"""`transport = "ssm"` held by the real agent, driven through the real CLI (and the TUI).

What is real: the CLI (a subprocess, `run_cli`), the agent it starts (another process), the
tunnels and their reconnect loop, host key checks, the lab's OpenSSH sshd and PostgreSQL, psql.
What stands in for AWS, and only for it:

- moto over HTTP for everything it implements;
- `tests.lab.ssm_front.SsmFront`, a STAND-IN for the SSM calls moto lacks (StartSession,
  DescribeInstanceInformation, TerminateSession; the real API's JSON shapes), every other call
  passed to moto. AWS_ENDPOINT_URL_SSM points botocore at it in the CLI and in the agent (which
  inherits the CLI's environment), since Stubber cannot reach another process;
- `tests/lab/standin_ssm_plugin.py`, a STAND-IN for AWS's `session-manager-plugin` (first on
  PATH), which relays to the lab's sshd (AWS-StartSSHSession) or PostgreSQL (port forwarding).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.moto_server import MotoServer, geo_cluster
from tests.lab.profiles import query
from tests.lab.ssm import (
    FORWARD_ONLY,
    INSTANCE,
    install_standin,
    records,
    ssm_settings,
    swap_host_key,
    wait_back,
)
from tests.lab.ssm_front import ManagedInstance, SsmFront
from tests.test_agent_support import (
    agent_home,  # noqa: F401 - fixture
    agent_log_tail,
    agent_pid,
    ok,
    status_json,
    up_detached,
    write_bastion_profile,
)
from tests.test_warm_path import HEAVY, importtime
from tests.tui_support import main_text, sync, wait_for
from tunnelman.core import credentials

pytestmark = pytest.mark.usefixtures("agent_home")

SSH_DOC = "AWS-StartSSHSession"
FORWARD_DOC = "AWS-StartPortForwardingSessionToRemoteHost"
MODES = ["ssh-over-ssm", "port-forwarding"]


@dataclass
class SsmLab:
    front: SsmFront
    record: Path
    region: str

    def records(self) -> list[dict[str, Any]]:
        return records(self.record)

    def ended(self) -> list[dict[str, Any]]:
        """How the stand-in plugins ended their sessions (`STANDIN_SSM_TERMINATE`)."""
        return records(self.record.with_name("standin-ended.jsonl"))

    def wait_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.records()) < count:
            assert time.monotonic() < deadline, (
                f"the stand-in plugin ran {len(found)} times, wanted {count}\n{agent_log_tail()}"
            )
            time.sleep(0.05)
        return found


@pytest.fixture
def ssm_lab(
    aws_env: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SsmLab]:
    """The front and the stand-in plugin, both in the environment the CLI (and agent) get."""
    record = install_standin(tmp_path, monkeypatch)
    # The stand-in ends its session on AWS's side as AWS's plugin would (see its docstring).
    monkeypatch.setenv("STANDIN_SSM_TERMINATE", str(tmp_path / "standin-ended.jsonl"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with SsmFront(aws_env.url, aws_env.region, [ManagedInstance(INSTANCE)]) as front:
        for key, value in front.env().items():
            monkeypatch.setenv(key, value)
        yield SsmLab(front, record, aws_env.region)


def _write(lab_profile: LabProfile, ssm_lab: SsmLab, mode: str) -> None:
    lab_profile.write(**ssm_settings(ssm_lab.region))
    if mode == "port-forwarding":
        lab_profile.write(**FORWARD_ONLY)


@pytest.fixture
def stored_password(lab_profile: LabProfile, keyring_backend: Any) -> Iterator[None]:
    credentials.keyring_set(lab_profile.name, lab_profile.password)
    try:
        yield
    finally:
        credentials.keyring_delete(lab_profile.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _document(mode: str) -> str:
    return SSH_DOC if mode == "ssh-over-ssm" else FORWARD_DOC


# ----------------------------------------------------------------------------- the agent


@pytest.mark.usefixtures("stored_password")
@pytest.mark.parametrize("mode", MODES)
def test_the_agent_holds_an_ssm_tunnel(
    mode: str, run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    """up --detach, status, psql on the warm path, the plugin killed and back, down: no orphan."""
    _write(lab_profile, ssm_lab, mode)
    pg = lab_profile.postgres
    port = up_detached("lab")

    [row] = status_json()
    assert row["name"] == "lab"
    assert row["state"] == "up", row
    assert int(row["local_port"]) == port
    assert query(port, pg) == 1

    [first] = ssm_lab.wait_records(1)
    assert first["document"] == _document(mode)
    assert first["target"] == INSTANCE
    assert first["endpoint"] == ssm_lab.front.url  # the agent's botocore went to the front
    [asked] = ssm_lab.front.asked("StartSession")
    assert asked["Target"] == INSTANCE
    assert asked["DocumentName"] == _document(mode)
    if mode == "ssh-over-ssm":
        assert asked["Parameters"] == {"portNumber": [str(lab_profile.sshd.port)]}
    else:
        assert asked["Parameters"]["host"] == [pg.host]
        assert asked["Parameters"]["portNumber"] == [str(pg.port)]
        assert first["parameters"]["localPortNumber"] == asked["Parameters"]["localPortNumber"]
    assert first["response"]["SessionId"].startswith("ana-001")
    assert "AAEAAStandInSessionToken" not in " ".join(first["argv"])

    # psql through the agent's tunnel (the warm path: no boto3 loaded, no new session or plugin).
    res, imported = importtime("psql", "lab", "-X", "-At", "-c", "select 40 + 2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "42"
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert len(ssm_lab.front.asked("StartSession")) == 1
    assert len(ssm_lab.records()) == 1

    # The stand-in plugin killed mid-session: the agent reconnects with a fresh session.
    os.kill(first["pid"], signal.SIGKILL)
    took = wait_back(port, pg, 5.0, lambda: f"not back within 5 s\n{agent_log_tail()}")
    print(f"\n[{mode}] agent tunnel back {took:.2f} s after the plugin was killed")
    assert took < 5.0
    records = ssm_lab.wait_records(2)
    second = records[-1]
    assert second["pid"] != first["pid"]
    assert second["response"]["SessionId"] != first["response"]["SessionId"]
    [row] = status_json()
    assert row["state"] == "up", row
    assert int(row["reconnects"]) >= 1, row

    ok(run_cli("down", "lab"))
    deadline = time.monotonic() + 5
    while any(_alive(r["pid"]) for r in ssm_lab.records()):
        assert time.monotonic() < deadline, "a session-manager-plugin outlived `tunnelman down`"
        time.sleep(0.05)
    assert status_json() == []
    # Ended, not SIGKILLed: the session was ended on AWS's side (TerminateSession at the front).
    ended = [body["SessionId"] for body in ssm_lab.front.asked("TerminateSession")]
    assert second["response"]["SessionId"] in ended, ended
    how = {e["session"]: e["ended"] for e in ssm_lab.ended()}
    assert first["response"]["SessionId"] not in how  # the SIGKILLed one ended nothing
    # Port forwarding: the plugin told to stop; SSH over SSM: that, or sshd closing first.
    wanted = {"sigterm"} if mode == "port-forwarding" else {"sigterm", "remote closed"}
    assert how[second["response"]["SessionId"]] in wanted, how


def test_ssh_over_ssm_in_the_agent_checks_the_host_key(
    run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    """A different host key for the bastion's name is refused by the agent, in one line."""
    _write(lab_profile, ssm_lab, "ssh-over-ssm")
    lab_profile.write(password="none")
    swap_host_key(lab_profile.known_hosts)
    res = run_cli("up", "lab", "--detach")
    assert res.returncode != 0, res.stdout
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, res.stderr
    assert "host key" in errors[0].lower()
    assert "Traceback" not in res.stderr
    assert len(ssm_lab.front.asked("StartSession")) == 1
    assert status_json() == []


def test_an_offline_instance_is_one_line_from_the_agent(
    run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    _write(lab_profile, ssm_lab, "port-forwarding")
    lab_profile.write(password="none")
    ssm_lab.front.instances[0].ping_status = "ConnectionLost"
    res = run_cli("up", "lab", "--detach")
    assert res.returncode != 0, res.stdout
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, res.stderr
    assert f"instance {INSTANCE} is not connected to Systems Manager" in errors[0]
    assert "Traceback" not in res.stderr
    assert ssm_lab.records() == []


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_agent_leaves_no_plugin_behind(
    mode: str, run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    _write(lab_profile, ssm_lab, mode)
    lab_profile.write(password="none")
    up_detached("lab")
    [entry] = ssm_lab.wait_records(1)
    assert _alive(entry["pid"])
    pid = agent_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(entry["pid"]):
        assert time.monotonic() < deadline, "the plugin outlived the agent (SIGKILL) by 5 s"
        time.sleep(0.05)


def test_start_session_refused_while_reconnecting_then_allowed(
    run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    """The agent keeps trying; status says why (the IAM action); it is back once allowed."""
    _write(lab_profile, ssm_lab, "port-forwarding")
    lab_profile.write(password="none")
    pg = lab_profile.postgres
    port = up_detached("lab")
    [first] = ssm_lab.wait_records(1)
    ssm_lab.front.deny = {"StartSession"}
    os.kill(first["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        [row] = status_json()
        if row["state"] != "up" and "ssm:StartSession" in (row.get("error") or ""):
            break
        assert time.monotonic() < deadline, f"no StartSession error in status: {row}"
        time.sleep(0.1)
    assert len(ssm_lab.front.asked("StartSession")) >= 2
    ssm_lab.front.deny = set()
    took = wait_back(port, pg, 15.0, lambda: f"not back\n{agent_log_tail()}")
    print(f"\nback {took:.2f} s after StartSession was allowed again")
    [row] = status_json()
    assert row["state"] == "up", row


def test_an_agent_started_without_aws_settings_says_so(
    run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    """The agent outlives the shell that started it: an AWS failure names what differs."""
    write_bastion_profile("plain", lab_profile.sshd, lab_profile.postgres)
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    ok(run_cli("up", "plain", "--detach", env=bare))  # the agent starts with no AWS settings
    _write(lab_profile, ssm_lab, "port-forwarding")
    lab_profile.write(password="none")
    res = run_cli("up", "lab", "--detach")
    assert res.returncode != 0, res.stdout
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("tunnelman: error: no AWS credentials found"), errors[0]
    assert "makes its AWS calls with the environment it was started with" in errors[0]
    differ = errors[0].split("differs from this shell's (", 1)[1].split(")", 1)[0].split(", ")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_SSM"} <= set(differ)
    print("\n" + errors[0])
    assert "testing" not in errors[0]  # moto's keys: never sent, never shown
    assert ssm_lab.records() == []
    # The same agent, the same shell: no note when nothing differs.
    ok(run_cli("down", "plain"))
    ok(run_cli("agent", "stop"))
    ok(run_cli("up", "plain", "--detach", env=bare))
    res = run_cli("up", "lab", "--detach", env=bare)
    assert res.returncode != 0
    assert "no AWS credentials found" in res.stderr
    assert "started with" not in res.stderr


# ----------------------------------------------------------------------------- check


@pytest.mark.usefixtures("stored_password")
@pytest.mark.parametrize("mode", MODES)
def test_check_runs_its_ssm_steps_through_the_front(
    mode: str, run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    _write(lab_profile, ssm_lab, mode)
    res = run_cli("check", "lab")
    lines = (res.stdout + res.stderr).splitlines()
    assert res.returncode == 0, "\n".join(lines)
    marks = [line[:22].rstrip() for line in lines if line[:1] in "✓✗-"]
    assert marks[:4] == ["✓ config", "✓ AWS credentials", "✓ SSM instance", "✓ SSM plugin"]
    assert "✓ open forward" in marks
    text = "\n".join(lines)
    assert f"{INSTANCE} is SSM-managed and online (agent 3.3.1142.0, Amazon Linux 2023)" in text
    assert "(version 1.2.0.0-standin)" in text
    assert "All checks passed." in text
    [described] = ssm_lab.front.asked("DescribeInstanceInformation")
    assert {"Key": "InstanceIds", "Values": [INSTANCE]} in described["Filters"]
    [started] = ssm_lab.front.asked("StartSession")
    assert started["DocumentName"] == _document(mode)
    [entry] = ssm_lab.records()
    assert not _alive(entry["pid"]), "check left its session-manager-plugin running"
    ended = [body["SessionId"] for body in ssm_lab.front.asked("TerminateSession")]
    assert ended == [entry["response"]["SessionId"]]


@pytest.mark.usefixtures("stored_password")
def test_check_while_the_agent_holds_the_tunnel(
    run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    """check makes its own session beside the agent's; the agent's tunnel is untouched."""
    _write(lab_profile, ssm_lab, "ssh-over-ssm")
    port = up_detached("lab")
    res = run_cli("check", "lab")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "All checks passed." in res.stdout + res.stderr
    records = ssm_lab.records()
    assert len(records) == 2
    assert _alive(records[0]["pid"])
    assert not _alive(records[1]["pid"])
    assert query(port, lab_profile.postgres) == 1
    assert [row["state"] for row in status_json()] == ["up"]


def test_check_names_the_action_when_start_session_is_denied(
    run_cli: RunCli, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    _write(lab_profile, ssm_lab, "ssh-over-ssm")
    lab_profile.write(password="none")
    ssm_lab.front.deny = {"StartSession"}
    res = run_cli("check", "lab")
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "ssm:StartSession" in text, text
    assert "Traceback" not in text
    assert ssm_lab.records() == []


# ----------------------------------------------------------------------------- the TUI


@sync
async def _tui_shows_the_transport(lab_profile: LabProfile, mode: str, held_before: bool) -> None:
    from tunnelman.agent.client import AgentClient
    from tunnelman.tui.app import make_app
    from tunnelman.tui.hosts import AgentHost

    host = AgentHost(AgentClient())
    if held_before:
        await asyncio.to_thread(up_detached, "lab")
    app = make_app(lab_profile.config, initial_profile="lab", host=host)
    async with app.run_test(size=(160, 45)) as pilot:
        if not held_before:
            await pilot.press("enter")  # the TUI asks the agent to open it
        await wait_for(pilot, lambda: app.state_of("lab")[0] == "up", 30, "the agent's tunnel")
        port = app.state_of("lab")[1]
        assert port is not None
        assert await asyncio.to_thread(query, port, lab_profile.postgres) == 1
        line = next(
            row
            for row in main_text(app, "#profile-info").splitlines()
            if row.startswith("transport")
        )
        if mode == "ssh-over-ssm":
            want = f"ssm: SSH to {lab_profile.keys['bastion']} over Session Manager ({INSTANCE})"
        else:
            want = f"ssm: port forwarding through {INSTANCE}'s SSM agent"
        assert line.split(None, 1)[1] == want, line
    # The tunnel is the agent's: it outlives the TUI.
    assert [row["state"] for row in status_json()] == ["up"]


@pytest.mark.parametrize(
    ("mode", "held_before"), [("ssh-over-ssm", False), ("port-forwarding", True)]
)
def test_the_tui_on_the_agent_shows_the_transport(
    mode: str, held_before: bool, lab_profile: LabProfile, ssm_lab: SsmLab
) -> None:
    _write(lab_profile, ssm_lab, mode)
    lab_profile.write(password="none")
    _tui_shows_the_transport(lab_profile, mode, held_before)
    [entry] = ssm_lab.records()
    assert entry["document"] == _document(mode)


# ----------------------------------------------------------------------------- discover


def test_discover_lists_the_ssm_online_instance(run_cli: RunCli, ssm_lab: SsmLab) -> None:
    """EC2 from moto, the SSM agent's ping status from the front: only the online one is listed."""
    import boto3

    region = ssm_lab.region
    url = ssm_lab.front.moto_url
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=url)
    rds = boto3.client("rds", region_name=region, endpoint_url=url)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{n}.0/24", AvailabilityZone=f"{region}{z}")[
            "Subnet"
        ]["SubnetId"]
        for n, z in ((1, "a"), (2, "b"))
    ]
    geo_cluster(rds, subnets)
    made = ec2.run_instances(
        ImageId="ami-0a1b2c3d4e5f67890",
        MinCount=2,
        MaxCount=2,
        InstanceType="t3.micro",
        SubnetId=subnets[0],
    )["Instances"]
    online, lost = (i["InstanceId"] for i in made)
    ssm_lab.front.instances = [
        ManagedInstance(online),
        ManagedInstance(lost, ping_status="ConnectionLost"),
    ]
    result = run_cli("discover", "--json")
    assert result.returncode == 0, result.stderr
    found = [o for o in json.loads(result.stdout) if o["kind"] == "bastion"]
    assert [(o["id"], o["ssm_online"], o["reason"]) for o in found] == [
        (online, True, "SSM agent online")
    ], found
    [described] = ssm_lab.front.asked("DescribeInstanceInformation")
    assert {"Key": "PingStatus", "Values": ["Online"]} in described["Filters"]
    text = run_cli("discover")
    assert text.returncode == 0, text.stderr
    assert online in text.stdout
    assert lost not in text.stdout
    assert f"--transport ssm --bastion-instance {online}" in text.stdout


# ----------------------------------------------------------------------------- the agent's AWS note


def test_aws_settings_send_no_secret_and_the_note_names_only_aws_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunnelman.agent import protocol
    from tunnelman.agent.server import _with_aws_env_note
    from tunnelman.core.errors import AWSError

    env = {
        "AWS_PROFILE": "prod",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0001",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLETOKEN",
        "AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:1",
        "HOME": "/home/ana",
    }
    sent = protocol.aws_settings(env)
    text = json.dumps(sent)
    for secret in ("AKIAEXAMPLEKEYID0001", "wJalrXUtnFEMI", "IQoJb3JpZ2luX2Vj"):
        assert secret not in text
    assert sent["AWS_SECRET_ACCESS_KEY"] == sent["AWS_SESSION_TOKEN"] == "set"
    assert sent["AWS_ACCESS_KEY_ID"].startswith("sha256:")
    assert "HOME" not in sent
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_PROFILE", "prod")
    same = AWSError("denied", hint="fix it")
    assert _with_aws_env_note(same, {"AWS_PROFILE": "prod"}) is same
    assert _with_aws_env_note(same, "not a dict") is same
    noted = _with_aws_env_note(same, {"AWS_PROFILE": "dev", "AWS_\x1b[2J": "x", "PATH": "/x"})
    assert type(noted) is AWSError
    assert noted.message == "denied"
    assert noted.hint is not None
    assert noted.hint.startswith("fix it; the background agent")
    assert "(AWS_PROFILE)" in noted.hint
    assert "\x1b" not in noted.hint
    assert "dev" not in noted.hint
