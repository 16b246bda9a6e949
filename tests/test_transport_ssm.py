"""`transport = "ssm"`: SSH over Session Manager and SSM port forwarding, end to end on the lab.

What is real here: tunnelman (its CLI in-process, its tunnels, the reconnect loop, the host key
check), the lab's OpenSSH sshd and PostgreSQL, psql, and a child process started exactly as AWS's
plugin is started. What stands in, and why:

- StartSession / DescribeInstanceInformation: moto implements neither, so botocore's Stubber
  answers them with the real API's response shapes (Stubber validates requests and responses
  against botocore's service model);
- `session-manager-plugin`: a STAND-IN (tests/lab/standin_ssm_plugin.py), since AWS's plugin needs
  the real SSM service. It takes the real plugin's argv, reads the session token from the
  environment as the real one does, records what it was given, and relays to the lab's real sshd
  (AWS-StartSSHSession) or real PostgreSQL (port forwarding), as the instance's SSM agent would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.postgres import Postgres
from tests.lab.profiles import make_profile, query
from tests.lab.sshd import Sshd
from tests.lab.ssm import (
    FORWARD_ONLY,
    INSTANCE,
    install_standin,
    ssm_settings,
    swap_host_key,
    wait_back,
)
from tests.lab.ssm import (
    records as _records,
)
from tests.lab.stubbed import Stubs, run_main, stubs_fixture
from tunnelman.core import aws, credentials
from tunnelman.core.errors import ConfigError, HostKeyError
from tunnelman.core.profiles import with_overrides
from tunnelman.core.transport import ssm
from tunnelman.core.tunnel import TunnelState, open_tunnel

REGION = "us-east-2"
TOKEN = "AAEAAdQ1ODYyNzk1LXN0YW5kLWluLXNlc3Npb24tdG9rZW4tbm90LXJlYWw="


def _response(n: int) -> dict[str, Any]:
    """A StartSession answer with the real API's shape (ids as AWS makes them)."""
    session_id = f"ana-0{n:02d}f3c1d2e4b5a6978"
    return {
        "SessionId": session_id,
        "TokenValue": f"{TOKEN}{n}",
        "StreamUrl": (
            f"wss://ssmmessages.{REGION}.amazonaws.com/v1/data-channel/{session_id}"
            "?role=publish_subscribe&cell-number=AAEAAQ"
        ),
    }


stubs = stubs_fixture(keys=True)


def _expect_sessions(stubs: Stubs, document: str, params: dict[str, Any], count: int) -> None:
    for n in range(count):
        stubs("ssm").add_response(
            "start_session",
            _response(n),
            {"Target": INSTANCE, "DocumentName": document, "Parameters": params},
        )


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in plugin as `session-manager-plugin` first on PATH; returns its record file."""
    return install_standin(tmp_path, monkeypatch)


def _wait_records(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := _records(path)) < count:
        assert time.monotonic() < deadline, f"the stand-in plugin ran {len(found)} times"
        time.sleep(0.05)
    return found


def _assert_plugin_input(entry: dict[str, Any], document: str) -> None:
    """What the stand-in was given: the real plugin's argv, the token only in its environment."""
    argv = entry["argv"]
    assert argv[0] == "AWS_SSM_START_SESSION_RESPONSE" == entry["response_env"]
    assert argv[1:3] == [REGION, "StartSession"]
    assert argv[5] == f"https://ssm.{REGION}.amazonaws.com"
    assert entry["response"]["TokenValue"].startswith(TOKEN)
    assert entry["response"]["SessionId"].startswith("ana-0")
    assert not any(TOKEN in arg for arg in argv), "the session token reached argv"
    assert entry["target"] == INSTANCE
    assert entry["document"] == document
    assert entry["region"] == REGION


# ----------------------------------------------------------------------------- SSH over SSM


def _ssh_over_ssm(lab_profile: LabProfile) -> None:
    lab_profile.write(**ssm_settings(REGION))
    credentials.keyring_set(lab_profile.name, lab_profile.password)


def _psql_40_plus_2(
    lab_profile: LabProfile, capfd: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """psql in-process through the profile (its password stored by `_ssh_over_ssm`), which is
    taken out of the keyring afterwards."""
    try:
        return run_main(["psql", "lab", "-X", "-Atc", "select 40 + 2"], capfd)
    finally:
        credentials.keyring_delete(lab_profile.name)


def test_psql_over_ssh_over_ssm(
    lab_profile: LabProfile,
    keyring_backend: Any,
    stubs: Stubs,
    standin: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _ssh_over_ssm(lab_profile)
    port = str(lab_profile.sshd.port)
    _expect_sessions(stubs, "AWS-StartSSHSession", {"portNumber": [port]}, 1)
    code, out, err = _psql_40_plus_2(lab_profile, capfd)
    assert code == 0, err
    assert out.strip() == "42"
    [entry] = _records(standin)
    _assert_plugin_input(entry, "AWS-StartSSHSession")
    assert entry["parameters"] == {"portNumber": [port]}
    assert TOKEN not in out + err
    stubs.verify()


def test_ssh_over_ssm_checks_the_bastions_host_key(
    tmp_path: Path, sshd: Sshd, postgres: Postgres, stubs: Stubs, standin: Path
) -> None:
    """The host key is checked end to end: a different key for the bastion's name is refused."""
    profile = make_profile(
        sshd, postgres, tmp_path, transport="ssm", bastion_instance_id=INSTANCE, region=REGION
    )
    swap_host_key(profile.known_hosts)
    _expect_sessions(stubs, "AWS-StartSSHSession", {"portNumber": [str(sshd.port)]}, 1)
    with pytest.raises(HostKeyError):
        open_tunnel(profile, local_port=0).start()
    assert len(_records(standin)) == 1


# ----------------------------------------------------------------------------- port forwarding


def _forward_params(pg: Postgres) -> dict[str, Any]:
    return {"host": ["127.0.0.1"], "portNumber": [str(pg.port)], "localPortNumber": ANY}


def test_psql_over_ssm_port_forwarding(
    lab_profile: LabProfile,
    keyring_backend: Any,
    stubs: Stubs,
    standin: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _ssh_over_ssm(lab_profile)
    lab_profile.write(**FORWARD_ONLY)
    _expect_sessions(
        stubs,
        "AWS-StartPortForwardingSessionToRemoteHost",
        _forward_params(lab_profile.postgres),
        1,
    )
    code, out, err = _psql_40_plus_2(lab_profile, capfd)
    assert code == 0, err
    assert out.strip() == "42"
    [entry] = _records(standin)
    _assert_plugin_input(entry, "AWS-StartPortForwardingSessionToRemoteHost")
    params = entry["parameters"]
    assert params["host"] == ["127.0.0.1"]
    assert params["portNumber"] == [str(lab_profile.postgres.port)]
    assert 0 < int(params["localPortNumber"][0]) < 65536
    stubs.verify()


# ----------------------------------------------------------------------------- reconnect


@pytest.mark.parametrize("mode", ["ssh-over-ssm", "port-forwarding"])
def test_killing_the_plugin_reconnects_within_5_s(
    mode: str, tmp_path: Path, sshd: Sshd, postgres: Postgres, stubs: Stubs, standin: Path
) -> None:
    profile = make_profile(
        sshd,
        postgres,
        tmp_path,
        transport="ssm",
        bastion_instance_id=INSTANCE,
        region=REGION,
        password="none",
    )
    if mode == "port-forwarding":
        profile = with_overrides(profile, bastion=None)
        _expect_sessions(
            stubs, "AWS-StartPortForwardingSessionToRemoteHost", _forward_params(postgres), 3
        )
    else:
        _expect_sessions(stubs, "AWS-StartSSHSession", {"portNumber": [str(sshd.port)]}, 3)
    states: list[TunnelState] = []
    tunnel = open_tunnel(
        profile, local_port=0, supervise=True, on_status=lambda s: states.append(s.state)
    )
    port = tunnel.start()
    try:
        assert query(port, postgres) == 1
        [first] = _wait_records(standin, 1)
        os.kill(first["pid"], signal.SIGKILL)
        took = wait_back(port, postgres, 5.0, lambda: f"not back within 5 s: {tunnel.status}")
        records = _wait_records(standin, 2)
        assert records[1]["pid"] != first["pid"]
        assert records[1]["response"]["SessionId"] != first["response"]["SessionId"]
        assert tunnel.status.state == TunnelState.UP
        assert tunnel.status.reconnects >= 1
        assert TunnelState.RECONNECTING in states
        assert took < 5.0
    finally:
        tunnel.stop()


# ----------------------------------------------------------------------------- the plugin


def test_a_missing_plugin_is_one_line(
    run_cli: RunCli, lab_profile: LabProfile, tmp_path: Path
) -> None:
    lab_profile.write(transport="ssm", bastion_instance_id=INSTANCE, region=REGION, password="none")
    if shutil.which(ssm.PLUGIN) or any(os.path.exists(p) for p in ssm.plugin_places()):
        pytest.skip("AWS's session-manager-plugin is installed on this machine")
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    for argv in (["up", "lab"], ["psql", "lab", "-c", "select 1"]):
        res = run_cli(*argv, env=env, timeout=30)
        assert res.returncode != 0
        errors = [line for line in res.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, res.stderr
        assert errors[0].startswith("tunnelman: error: AWS's session-manager-plugin was not found")
        assert ssm.INSTALL_URL in errors[0]
        assert "Traceback" not in res.stderr


def test_plugin_search_order(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if not any(os.path.exists(p) for p in ssm.plugin_places("linux")):
        with pytest.raises(ConfigError) as caught:
            ssm.find_plugin(path=str(bin_dir), platform="linux")
        assert ssm.INSTALL_URL in (caught.value.hint or "")
    plugin = bin_dir / "session-manager-plugin"
    plugin.write_text("#!/bin/sh\necho 1.2.707.0\n")
    plugin.chmod(0o755)
    assert ssm.find_plugin(path=str(bin_dir)) == str(plugin)
    assert ssm.plugin_version(str(plugin)) == "1.2.707.0"
    assert ssm.plugin_places("win32", {"ProgramFiles": r"C:\Program Files"}) == [
        r"C:\Program Files\Amazon\SessionManagerPlugin\bin\session-manager-plugin.exe"
    ]
    assert "/usr/local/sessionmanagerplugin/bin/session-manager-plugin" in ssm.plugin_places(
        "darwin"
    )


def test_openssh_engine_is_refused_with_one_line(
    tmp_path: Path, sshd: Sshd, postgres: Postgres
) -> None:
    profile = make_profile(
        sshd, postgres, tmp_path, transport="ssm", bastion_instance_id=INSTANCE, engine="openssh"
    )
    with pytest.raises(ConfigError, match='engine = "openssh" cannot use transport = "ssm"'):
        open_tunnel(profile, local_port=0).start()


# ----------------------------------------------------------------------------- check


def _instance_info(ping: str = "Online") -> dict[str, Any]:
    """A DescribeInstanceInformation answer with the real API's shape."""
    import datetime as dt

    return {
        "InstanceInformationList": [
            {
                "InstanceId": INSTANCE,
                "PingStatus": ping,
                "LastPingDateTime": dt.datetime(2026, 12, 1, 18, 0, tzinfo=dt.UTC),
                "AgentVersion": "3.3.1142.0",
                "IsLatestVersion": False,
                "PlatformType": "Linux",
                "PlatformName": "Amazon Linux",
                "PlatformVersion": "2023",
                "ResourceType": "EC2Instance",
                "IPAddress": "10.0.1.23",
                "ComputerName": "ip-10-0-1-23.us-east-2.compute.internal",
            }
        ]
    }


def _expect_instance(stubs: Stubs, answer: dict[str, Any]) -> None:
    stubs("ssm").add_response(
        "describe_instance_information",
        answer,
        {"Filters": [{"Key": "InstanceIds", "Values": [INSTANCE]}]},
    )


def _check(capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code, out, err = run_main(["check", "lab"], capfd)
    return code, out.splitlines() + err.splitlines()


@pytest.mark.parametrize("mode", ["ssh-over-ssm", "port-forwarding"])
def test_check_shows_the_transports_steps(
    mode: str,
    lab_profile: LabProfile,
    keyring_backend: Any,
    stubs: Stubs,
    standin: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _ssh_over_ssm(lab_profile)
    _expect_instance(stubs, _instance_info())
    if mode == "port-forwarding":
        lab_profile.write(**FORWARD_ONLY)
        _expect_sessions(
            stubs,
            "AWS-StartPortForwardingSessionToRemoteHost",
            _forward_params(lab_profile.postgres),
            1,
        )
    else:
        port = str(lab_profile.sshd.port)
        _expect_sessions(stubs, "AWS-StartSSHSession", {"portNumber": [port]}, 1)
    try:
        code, lines = _check(capfd)
    finally:
        credentials.keyring_delete(lab_profile.name)
    assert code == 0, "\n".join(lines)
    marks = [line[:22].rstrip() for line in lines if line[:1] in "✓✗-"]
    expected = ["✓ config", "✓ AWS credentials", "✓ SSM instance", "✓ SSM plugin"]
    if mode == "ssh-over-ssm":
        expected += ["✓ key", "✓ reach bastion", "✓ host key", "✓ log in to bastion"]
    expected += ["✓ open forward", "✓ log in to database", "✓ server version", "✓ PostGIS"]
    assert marks == expected
    text = "\n".join(lines)
    assert f"{INSTANCE} is SSM-managed and online (agent 3.3.1142.0, Amazon Linux 2023)" in text
    assert "(version 1.2.0.0-standin)" in text
    assert "All checks passed." in text
    assert TOKEN not in text
    stubs.verify()


def test_check_names_the_iam_action_when_startsession_is_denied(
    lab_profile: LabProfile, stubs: Stubs, standin: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lab_profile.write(transport="ssm", bastion_instance_id=INSTANCE, region=REGION, password="none")
    _expect_instance(stubs, _instance_info())
    stubs("ssm").add_client_error(
        "start_session",
        service_error_code="AccessDeniedException",
        service_message=(
            "User: arn:aws:iam::123456789012:user/ana is not authorized to perform: "
            f"ssm:StartSession on resource: arn:aws:ec2:{REGION}:123456789012:instance/{INSTANCE}"
        ),
        http_status_code=400,
    )
    code, lines = _check(capfd)
    assert code == 1
    text = "\n".join(lines)
    assert "✗ reach bastion" in text
    assert (
        "AWS denied ssm:StartSession in us-east-2 (as arn:aws:iam::123456789012:user/ana)" in text
    )
    assert "fix: your IAM policy needs ssm:StartSession" in text
    assert "- host key" in text
    assert _records(standin) == []


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ({"InstanceInformationList": []}, "is not managed by Systems Manager in us-east-2"),
        (_instance_info("ConnectionLost"), "is ConnectionLost, last ping 2026-12-01 18:00 UTC"),
    ],
)
def test_check_says_when_the_instance_is_not_online(
    answer: dict[str, Any],
    said: str,
    lab_profile: LabProfile,
    stubs: Stubs,
    standin: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    lab_profile.write(transport="ssm", bastion_instance_id=INSTANCE, region=REGION)
    _expect_instance(stubs, answer)
    code, lines = _check(capfd)
    assert code == 1
    failed = [line for line in lines if line.startswith("✗")]
    assert len(failed) == 1
    assert failed[0].startswith("✗ SSM instance")
    assert said in failed[0]
    assert "- SSM plugin" in "\n".join(lines)


# ----------------------------------------------------------------------------- discover


def test_discover_lists_ssm_managed_instances(
    stubs: Stubs, capfd: pytest.CaptureFixture[str]
) -> None:
    from tests.test_aws_stubbed import _discovery_stubs

    def stub() -> None:
        _discovery_stubs(
            stubs,
            instances="describe_instances_ssm.json",
            ssm_online="describe_instance_information_online.json",
        )

    stub()
    found = aws.discover()
    by_id = {b.id: b for b in found.bastions}
    # The private instance with an online agent is listed; the one without an agent is not.
    assert set(by_id) == {"i-0abc1234def567890", "i-0fed9876cba543210"}
    app = by_id["i-0fed9876cba543210"]
    assert (app.ssm_online, app.reason, app.public_ip) == (True, "SSM agent online", None)
    assert by_id["i-0abc1234def567890"].ssm_online is False
    assert app.to_json()["ssm_online"] is True
    assert found.warnings == []
    stubs.verify()
    stub()
    code, out, err = run_main(["discover"], capfd)
    assert code == 0, err
    assert "SSM agent online" in out
    stubs.verify()


# ----------------------------------------------------------------------------- the TUI and imports


def test_the_detail_pane_shows_the_transport() -> None:
    from tunnelman.core.profiles import Bastion, Endpoint, Profile
    from tunnelman.tui.format import profile_text

    forward = Profile(
        name="geo",
        endpoint=Endpoint("db.internal"),
        transport="ssm",
        bastion_instance_id=INSTANCE,
    )
    plain = profile_text(forward).plain
    assert f"\ntransport   ssm: port forwarding through {INSTANCE}'s SSM agent\n" in plain
    over = with_overrides(forward, bastion=Bastion("10.0.1.23", "ec2-user"))
    text = profile_text(over).plain
    assert f"ssm: SSH to ec2-user@10.0.1.23 over Session Manager ({INSTANCE})" in text
    ssh = profile_text(Profile(name="p", bastion=Bastion("b"), endpoint=Endpoint("d"))).plain
    assert "transport" not in ssh


def test_the_transport_package_loads_no_boto3() -> None:
    import subprocess

    code = (
        "import sys, tunnelman.core.transport, tunnelman.core.transport.ssm, "
        "tunnelman.core.tunnel.ssm_engine; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_no_orphan_plugin_when_tunnelman_is_killed(standin: Path, tmp_path: Path) -> None:
    """SIGKILL of the process holding an SSM port-forwarding session ends the plugin too
    (the pipe watchdog), so no session or loopback listener outlives tunnelman."""
    import subprocess

    from tunnelman.core.tunnel.ports import free_local_port

    port = free_local_port()
    holder = tmp_path / "holder.py"
    holder.write_text(
        "import json, sys, time\n"
        "from tunnelman.core.transport import ssm\n"
        "request = {'Target': 'i-0a1b2c3d4e5f67890', "
        "'DocumentName': 'AWS-StartPortForwardingSessionToRemoteHost', "
        f"'Parameters': {{'host': ['127.0.0.1'], 'portNumber': ['9'], 'localPortNumber': ['{port}']}}}}\n"
        "session = ssm.Session('ana-0f', request['Target'], 'us-east-2', "
        "'https://ssm.us-east-2.amazonaws.com', json.dumps(request), '', "
        "json.dumps(dict(SessionId='ana-0f', TokenValue='t0k', StreamUrl='wss://x')))\n"
        "ssm.PluginProcess(ssm.find_plugin(), session, stdio=False)\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, str(holder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        [entry] = _wait_records(standin, 1)
        plugin_pid = entry["pid"]
        child.kill()
        child.wait(timeout=5)
        deadline = time.monotonic() + 5.0
        while _alive(plugin_pid):
            assert time.monotonic() < deadline, "the plugin outlived the process that started it"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
        for entry in _records(standin):
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry["pid"], signal.SIGKILL)  # only when the test failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def test_an_endpoint_the_instance_cannot_reach_fails_at_start(
    tmp_path: Path, sshd: Sshd, postgres: Postgres, stubs: Stubs, standin: Path
) -> None:
    from tunnelman.core.errors import ForwardingFailed
    from tunnelman.core.profiles import Endpoint
    from tunnelman.core.tunnel.ports import free_local_port

    closed = free_local_port()  # nothing listens there
    profile = make_profile(
        sshd,
        postgres,
        tmp_path,
        transport="ssm",
        bastion_instance_id=INSTANCE,
        region=REGION,
        bastion=None,
        endpoint=Endpoint("127.0.0.1", closed),
    )
    params = {"host": ["127.0.0.1"], "portNumber": [str(closed)], "localPortNumber": ANY}
    _expect_sessions(stubs, "AWS-StartPortForwardingSessionToRemoteHost", params, 1)
    tunnel = open_tunnel(profile, local_port=0)
    with pytest.raises(ForwardingFailed, match=f"instance {INSTANCE} cannot reach the database"):
        tunnel.start()
    assert tunnel.status.state == TunnelState.FAILED
    [entry] = _records(standin)
    deadline = time.monotonic() + 3
    while _alive(entry["pid"]):  # the session ended with the failed start
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["ssh-over-ssm", "port-forwarding"])
def test_a_session_the_plugin_cannot_open_is_one_error_with_its_words(
    mode: str,
    tmp_path: Path,
    sshd: Sshd,
    postgres: Postgres,
    stubs: Stubs,
    standin: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunnelman.core.errors import BastionUnreachable

    said = "Encountered error while initiating handshake. Handshake timed out."
    monkeypatch.setenv("STANDIN_SSM_FAIL", said)
    profile = make_profile(
        sshd, postgres, tmp_path, transport="ssm", bastion_instance_id=INSTANCE, region=REGION
    )
    if mode == "port-forwarding":
        profile = with_overrides(profile, bastion=None)
        _expect_sessions(
            stubs, "AWS-StartPortForwardingSessionToRemoteHost", _forward_params(postgres), 1
        )
    else:
        _expect_sessions(stubs, "AWS-StartSSHSession", {"portNumber": [str(sshd.port)]}, 1)
    started = time.monotonic()
    with pytest.raises(BastionUnreachable) as raised:
        open_tunnel(profile, local_port=0).start()
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert f"the Session Manager session to {INSTANCE} ended before" in message
    assert f"(session-manager-plugin exit 1: {said})" in message
    assert "\n" not in message


def test_the_account_s_maximum_session_length_is_the_ssm_cap(stubs: Stubs) -> None:
    """SSH over SSM renews before the account's maxSessionDuration (its Session Manager
    preferences document); none set, or no ssm:GetDocument, is no known cap."""
    from tunnelman.core import transport as transports
    from tunnelman.core.profiles import Profile

    profile = Profile(name="p", transport="ssm", bastion_instance_id=INSTANCE, region=REGION)
    wanted = {"Name": "SSM-SessionManagerRunShell", "DocumentFormat": "JSON"}
    content = {"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": {}}
    for minutes in ("60", "", None):
        inputs = (
            {} if minutes is None else {"maxSessionDuration": minutes, "idleSessionTimeout": "20"}
        )
        stubs("ssm").add_response(
            "get_document",
            {"Name": wanted["Name"], "DocumentFormat": "JSON",
             "Content": json.dumps({**content, "inputs": inputs})},
            wanted,
        )  # fmt: skip
    stubs("ssm").add_client_error("get_document", "AccessDeniedException", "not allowed", 400)
    assert transports.lifetime(profile) == 3600.0
    assert transports.lifetime(profile) is None  # set to nothing
    assert transports.lifetime(profile) is None  # not in the document
    assert transports.lifetime(profile) is None  # not allowed to read it
    stubs.verify()
    assert transports.renew_after(3600.0) == 3300.0  # five minutes before the hour
    assert transports.renew_after(600.0) == 540.0  # a tenth of a shorter cap


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_port_forwarding_renews_before_the_maximum_session_length(
    tmp_path: Path,
    sshd: Sshd,
    postgres: Postgres,
    stubs: Stubs,
    standin: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Make-before-break: the next session opens before the limit; an open connection keeps the
    old one, which ends with it. Here the "maximum session length" is 6 s, renewed at 3 s."""
    import psycopg

    from tunnelman.core import transport as transports

    monkeypatch.setattr(transports, "lifetime", lambda profile: 6.0)
    monkeypatch.setattr(transports, "RENEW_MARGIN", 3.0)
    monkeypatch.setattr(transports, "RENEW_FRACTION", 0.5)
    profile = make_profile(
        sshd, postgres, tmp_path,
        transport="ssm", bastion_instance_id=INSTANCE, region=REGION, password="none",
    )  # fmt: skip
    profile = with_overrides(profile, bastion=None)
    _expect_sessions(
        stubs, "AWS-StartPortForwardingSessionToRemoteHost", _forward_params(postgres), 4
    )
    states: list[TunnelState] = []
    tunnel = open_tunnel(
        profile, local_port=0, supervise=True, on_status=lambda s: states.append(s.state)
    )
    port = tunnel.start()
    try:
        with psycopg.connect(postgres.dsn(host="127.0.0.1", port=port)) as held:
            assert held.execute("select 1").fetchone() == (1,)
            [first] = _wait_records(standin, 1)
            started = time.monotonic()
            _wait_records(standin, 2, timeout=8)
            assert 2.0 <= time.monotonic() - started <= 5.0
            assert held.execute("select 2").fetchone() == (2,)  # still on the old session
            assert query(port, postgres) == 1  # a new client: the new session
            assert _running(first["pid"])
        deadline = time.monotonic() + 2.5
        while _running(first["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(first["pid"])  # the replaced session ended with its last client
        assert query(port, postgres, "select 3") == 3
        assert tunnel.status.reconnects == 0
        assert TunnelState.RECONNECTING not in states
    finally:
        tunnel.stop()
