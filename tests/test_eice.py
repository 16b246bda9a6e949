"""The eice transport (EC2 Instance Connect Endpoint) end to end, with two STAND-INS.

AWS cannot run here. What stands in for it, and only for it:
- moto over HTTP for EC2 (the VPC, subnet and instance: DescribeInstances) and SendSSHPublicKey;
- `tests.lab.eice_standin.Ec2Front` for DescribeInstanceConnectEndpoints, which moto lacks
  (AWS's XML shape, vpc-id and state filters honoured), every other EC2 call passed to moto;
- `tests.lab.eice_standin.EiceStandIn`, a STAND-IN for the endpoint itself: a TLS websocket server
  on loopback that checks the signed URL (SigV4 recomputed from moto's credentials) and relays
  to the lab's real sshd. TUNNELMAN_EICE_CONNECT (test-only) sends the TCP connection there.
The rest is real: the websocket client, SSH with the host key checked, the tunnel, PostgreSQL,
the engine's reconnect loop, the CLI.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.cli import RunCli
from tests.conftest import LabProfile
from tests.lab.eice_standin import Ec2Front, EiceStandIn, FrontEndpoint, sigv4_problems
from tests.lab.moto_server import MotoServer, geo_cluster
from tests.lab.postgres import Postgres
from tests.lab.profiles import make_profile, query
from tests.lab.sshd import Sshd
from tunnelman.core import aws
from tunnelman.core.aws.eice import ConnectEndpoint, Target
from tunnelman.core.errors import AWSError, BastionUnreachable
from tunnelman.core.profiles import Profile
from tunnelman.core.transport import eice
from tunnelman.core.tunnel import TunnelState, TunnelStatus, open_tunnel

ENDPOINT_ID = "eice-0a1b2c3d4e5f67890"


def _dns(region: str) -> str:
    return f"{ENDPOINT_ID}.c1a2b3c4.ec2-instance-connect-endpoint.{region}.amazonaws.com"


@dataclass
class EiceLab:
    moto: MotoServer
    front: Ec2Front
    standin: EiceStandIn
    instance_id: str
    private_ip: str
    vpc_id: str
    subnet_id: str

    def profile(self, sshd: Sshd, postgres: Postgres, directory: Path, **changes: Any) -> Profile:
        keys: dict[str, Any] = {
            "transport": "eice",
            "bastion_instance_id": self.instance_id,
            "region": self.moto.region,
            **changes,
        }
        return make_profile(sshd, postgres, directory, **keys)

    def env(self) -> dict[str, str]:
        return {
            **self.standin.env(),
            "AWS_ENDPOINT_URL_EC2": self.front.url,
            "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT": self.front.url,
        }


@pytest.fixture
def eice_lab(
    aws_env: MotoServer, sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EiceLab]:
    region = aws_env.region
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=aws_env.url)
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24")["Subnet"]["SubnetId"]
    instance = ec2.run_instances(
        ImageId="ami-0a1b2c3d4e5f67890",
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        SubnetId=subnet,
    )["Instances"][0]
    endpoints = [FrontEndpoint(ENDPOINT_ID, _dns(region), vpc, subnet)]
    with (
        Ec2Front(aws_env.url, endpoints) as front,
        EiceStandIn(
            directory=tmp_path / "eice",
            relay_to=(sshd.host, sshd.port),
            endpoint_id=ENDPOINT_ID,
            dns_name=_dns(region),
            private_ip=instance["PrivateIpAddress"],
            region=region,
        ) as standin,
    ):
        lab = EiceLab(
            aws_env,
            front,
            standin,
            instance["InstanceId"],
            instance["PrivateIpAddress"],
            vpc,
            subnet,
        )
        for key, value in lab.env().items():
            monkeypatch.setenv(key, value)
        yield lab


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[TunnelStatus] = []
        self._cond = threading.Condition()

    def __call__(self, status: TunnelStatus) -> None:
        with self._cond:
            self.statuses.append(status)
            self._cond.notify_all()

    def wait_for(self, state: TunnelState, after: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(s.state == state for s in self.statuses[after:]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {state} within {timeout} s")
                self._cond.wait(remaining)


# ----------------------------------------------------------------------------- the signed URL


def _target(region: str = "us-east-2") -> Target:
    endpoint = ConnectEndpoint(
        ENDPOINT_ID, _dns(region), "create-complete", "vpc-1", "subnet-1", region
    )
    return Target("i-0123456789abcdef0", "10.7.1.20", "vpc-1", "subnet-1", endpoint, region)


def test_the_signed_url_is_the_aws_clis(monkeypatch: pytest.MonkeyPatch, tmp_home: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token/with+odd=chars")
    target = _target()
    profile = Profile(name="p", transport="eice", bastion_instance_id=target.instance_id)
    url = aws.eice.signed_url(profile, target)
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", _dns("us-east-2"), "/openTunnel")
    params = dict(urllib.parse.parse_qsl(parts.query))
    assert params["instanceConnectEndpointId"] == ENDPOINT_ID
    assert params["remotePort"] == "22"
    assert params["privateIpAddress"] == "10.7.1.20"
    assert params["maxTunnelDuration"] == "3600"
    assert params["X-Amz-Expires"] == "60"
    assert params["X-Amz-Credential"].startswith("AKIDEXAMPLE/")
    assert params["X-Amz-Credential"].endswith("/us-east-2/ec2-instance-connect/aws4_request")
    check: dict[str, Any] = {
        "access_key": "AKIDEXAMPLE",
        "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "token": "token/with+odd=chars",
        "region": "us-east-2",
    }
    assert sigv4_problems(parts.path, params, parts.netloc, **check) == []
    # The check can fail: another secret, a changed parameter, a stale date.
    assert sigv4_problems(parts.path, params, parts.netloc, **{**check, "secret_key": "x"})
    assert sigv4_problems(parts.path, {**params, "remotePort": "23"}, parts.netloc, **check)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    assert "the signed URL has expired" in sigv4_problems(
        parts.path, params, parts.netloc, now=later, **check
    )


def test_no_credentials_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_home: Path) -> None:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_home / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_home / "none"))
    target = _target()
    with pytest.raises(AWSError, match="no AWS credentials found"):
        aws.eice.signed_url(Profile(name="p", region="us-east-2"), target)


# ----------------------------------------------------------------------------- end to end


def test_psql_over_eice(eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path) -> None:
    profile = eice_lab.profile(sshd, postgres, tmp_path)
    with open_tunnel(profile, local_port=0) as tunnel:
        assert tunnel.local_port is not None
        assert query(tunnel.local_port, postgres, "select 40 + 2") == 42
    assert len(eice_lab.standin.seen) == 1
    seen = eice_lab.standin.seen[0]
    assert seen.problems == []
    assert seen.params["privateIpAddress"] == eice_lab.private_ip
    assert seen.params["X-Amz-Security-Token"] == "testing"
    # The endpoint was looked up in the instance's VPC, in usable states only.
    form = eice_lab.front.calls[-1]
    assert form["Filter.1.Name"] == ["vpc-id"]
    assert form["Filter.1.Value.1"] == [eice_lab.vpc_id]


def test_dropped_tunnel_reconnects_within_5_s(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    recorder = Recorder()
    profile = eice_lab.profile(sshd, postgres, tmp_path, keepalive=2)
    tunnel = open_tunnel(profile, local_port=0, supervise=True, on_status=recorder)
    try:
        port = tunnel.start()
        assert query(port, postgres) == 1
        mark = len(recorder.statuses)
        started = time.monotonic()
        eice_lab.standin.drop()  # as at the endpoint's 1-hour cap, or a crash of the endpoint
        recorder.wait_for(TunnelState.RECONNECTING, after=mark, timeout=5)
        recorder.wait_for(TunnelState.UP, after=mark, timeout=5)
        assert query(port, postgres) == 1
        assert time.monotonic() - started < 5
        assert tunnel.status.reconnects == 1
        assert len(eice_lab.standin.seen) == 2  # a freshly signed URL for the new tunnel
        assert len(eice_lab.front.calls) == 1  # the endpoint found a moment ago is reused
        assert all(not s.problems for s in eice_lab.standin.seen)
    finally:
        tunnel.stop()


def test_the_tunnel_renews_before_the_endpoint_s_cap(
    eice_lab: EiceLab,
    sshd: Sshd,
    postgres: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The endpoint ends each websocket after maxTunnelDuration (an hour): the tunnel opens the
    next one 5 minutes before, make-before-break. Here the "hour" is 6 s and the margin 3 s."""
    import psycopg

    from tunnelman.core import transport as transports

    monkeypatch.setattr(transports, "lifetime", lambda profile: 6.0)
    monkeypatch.setattr(transports, "RENEW_MARGIN", 3.0)
    monkeypatch.setattr(transports, "RENEW_FRACTION", 0.5)
    recorder = Recorder()
    profile = eice_lab.profile(sshd, postgres, tmp_path, keepalive=2)
    tunnel = open_tunnel(profile, local_port=0, supervise=True, on_status=recorder)
    try:
        port = tunnel.start()
        with psycopg.connect(postgres.dsn(host="127.0.0.1", port=port)) as held:
            assert held.execute("select 1").fetchone() == (1,)
            started = time.monotonic()
            while len(eice_lab.standin.seen) < 2 and time.monotonic() - started < 10:
                time.sleep(0.05)
            renewed_after = time.monotonic() - started
            assert len(eice_lab.standin.seen) == 2, "no second websocket before the cap"
            assert 2.0 <= renewed_after <= 5.0, renewed_after
            assert held.execute("select 2").fetchone() == (2,)  # kept its old websocket
            assert query(port, postgres) == 1  # a new client goes over the new one
            assert eice_lab.standin.live == 2
        deadline = time.monotonic() + 2.5
        while eice_lab.standin.live != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eice_lab.standin.live == 1  # the old one closed with its last client
        assert tunnel.status.reconnects == 0  # a renewal is no reconnect: nobody saw a gap
        assert all(s.state is not TunnelState.RECONNECTING for s in recorder.statuses)
        assert all(not s.problems for s in eice_lab.standin.seen)
    finally:
        tunnel.stop()


def test_stand_in_killed_and_back_reconnects(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    recorder = Recorder()
    profile = eice_lab.profile(sshd, postgres, tmp_path, keepalive=2)
    tunnel = open_tunnel(profile, local_port=0, supervise=True, on_status=recorder)
    try:
        port = tunnel.start()
        mark = len(recorder.statuses)
        eice_lab.standin.stop()
        recorder.wait_for(TunnelState.RECONNECTING, after=mark, timeout=5)
        started = time.monotonic()
        eice_lab.standin.start()
        recorder.wait_for(TunnelState.UP, after=mark, timeout=5)
        assert time.monotonic() - started < 5
        assert query(port, postgres) == 1
    finally:
        tunnel.stop()


def test_instance_connect_key_over_eice(
    eice_lab: EiceLab,
    make_sshd: Callable[..., Sshd],
    sshd: Sshd,
    postgres: Postgres,
    tmp_path: Path,
) -> None:
    bastion = make_sshd()  # its own: the pushed keys are authorised on it
    eice_lab.standin.relay_to = (bastion.host, bastion.port)
    pushed: list[dict[str, Any]] = []

    def authorise(request: dict[str, Any]) -> None:
        pushed.append(request)
        bastion.authorize(request["SSHPublicKey"])

    eice_lab.front.on_key = authorise
    profile = eice_lab.profile(bastion, postgres, tmp_path, instance_connect=True)
    with open_tunnel(profile, local_port=0) as tunnel:
        assert tunnel.local_port is not None
        assert query(tunnel.local_port, postgres) == 1
    assert len(pushed) == 1
    assert pushed[0]["InstanceId"] == eice_lab.instance_id
    assert pushed[0]["InstanceOSUser"] == bastion.user
    assert pushed[0]["SSHPublicKey"].startswith("ssh-ed25519 ")
    assert "tunnelman-lab" in pushed[0]["SSHPublicKey"]


def test_closing_our_end_closes_the_websocket(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    sock = eice.open_socket(eice_lab.profile(sshd, postgres, tmp_path), timeout=5)
    sock.settimeout(5)
    assert sock.recv(64).startswith(b"SSH-2.0-")  # sshd's banner, through the websocket
    deadline = time.monotonic() + 3
    while eice_lab.standin.live != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert eice_lab.standin.live == 1
    sock.close()
    deadline = time.monotonic() + 3
    while eice_lab.standin.live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert eice_lab.standin.live == 0


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (403, AWSError, "AWS denied ec2-instance-connect:OpenTunnel on " + ENDPOINT_ID),
        (500, BastionUnreachable, "refused the tunnel to i-"),
    ],
)
def test_a_refused_handshake_is_one_line(
    eice_lab: EiceLab,
    sshd: Sshd,
    postgres: Postgres,
    tmp_path: Path,
    status: int,
    error: type[Exception],
    words: str,
) -> None:
    eice_lab.standin.refuse = status
    with pytest.raises(error) as caught:
        eice.open_socket(eice_lab.profile(sshd, postgres, tmp_path), timeout=5)
    text = str(caught.value)
    assert words in text
    assert f"HTTP {status}" in text
    assert "\n" not in text
    assert "X-Amz-Signature" not in text  # the signed URL is a credential for a minute


def test_a_bad_signature_is_refused_by_the_stand_in(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    eice_lab.standin.secret_key = "not-the-one-boto3-signs-with"
    with pytest.raises(AWSError, match=r"HTTP 403: .*SignatureDoesNotMatch"):
        eice.open_socket(eice_lab.profile(sshd, postgres, tmp_path), timeout=5)


def test_no_endpoint_in_the_vpc(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    eice_lab.front.endpoints[0].vpc_id = "vpc-elsewhere"
    with pytest.raises(AWSError) as caught:
        eice.open_socket(eice_lab.profile(sshd, postgres, tmp_path), timeout=5)
    assert f"no EC2 Instance Connect Endpoint in {eice_lab.vpc_id}" in caught.value.message
    assert "ec2:CreateInstanceConnectEndpoint" in str(caught.value.hint)


def test_the_endpoint_in_the_instances_subnet_is_preferred(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = eice_lab.profile(sshd, postgres, tmp_path)
    other = FrontEndpoint(
        "eice-0aaaaaaaaaaaaaaaa", "other.example", eice_lab.vpc_id, "subnet-other"
    )
    eice_lab.front.endpoints.insert(0, other)
    assert aws.eice.find_target(profile).endpoint.id == ENDPOINT_ID
    eice_lab.front.endpoints.pop()  # only the other subnet's: the VPC's first one is used
    target = aws.eice.find_target(profile)
    assert (target.endpoint.id, target.endpoint.dns_name) == (other.id, "other.example")
    assert (target.private_ip, target.vpc_id) == (eice_lab.private_ip, eice_lab.vpc_id)


def test_an_endpoint_being_created_is_not_used(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    eice_lab.front.endpoints[0].state = "create-in-progress"
    with pytest.raises(AWSError, match="no EC2 Instance Connect Endpoint in vpc-"):
        eice.open_socket(eice_lab.profile(sshd, postgres, tmp_path), timeout=5)


def test_describe_denied_names_the_action(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    eice_lab.front.deny = True
    with pytest.raises(AWSError) as caught:
        eice.open_socket(eice_lab.profile(sshd, postgres, tmp_path), timeout=5)
    assert "AWS denied ec2:DescribeInstanceConnectEndpoints" in caught.value.message


def test_unknown_instance(
    eice_lab: EiceLab, sshd: Sshd, postgres: Postgres, tmp_path: Path
) -> None:
    profile = eice_lab.profile(sshd, postgres, tmp_path, bastion_instance_id="i-0fffffffffffffff0")
    with pytest.raises(AWSError, match="EC2 instance 'i-0fffffffffffffff0' not found"):
        eice.open_socket(profile, timeout=5)


def test_cancel_stops_a_stalled_handshake(
    eice_lab: EiceLab,
    sshd: Sshd,
    postgres: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from tunnelman.core.errors import Cancelled

    # A listener that accepts and never answers the TLS handshake.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv(eice.CONNECT_ENV, f"127.0.0.1:{silent.getsockname()[1]}")
    cancel = threading.Event()
    profile = eice_lab.profile(sshd, postgres, tmp_path)
    target = aws.eice.find_target(profile)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            eice.open_websocket(profile, target, timeout=10, cancel=cancel)
    finally:
        silent.close()
    assert time.monotonic() - started < 1.5  # not the 10 s timeout


# ----------------------------------------------------------------------------- the CLI


@contextlib.contextmanager
def _eice_profile(run_cli: RunCli, eice_lab: EiceLab, lab_profile: LabProfile) -> Iterator[None]:
    """The lab profile over the EICE stand-in, its password in the keyring for the block."""
    lab_profile.write(
        transport="eice", bastion_instance_id=eice_lab.instance_id, region=eice_lab.moto.region
    )
    res = run_cli("password", "set", "lab", "--stdin", input=lab_profile.password + "\n")
    assert res.returncode == 0, res.stderr
    try:
        yield
    finally:
        run_cli("password", "delete", "lab")


def test_cli_psql_over_eice(
    run_cli: RunCli, eice_lab: EiceLab, lab_profile: LabProfile, keyring_backend: Any
) -> None:
    with _eice_profile(run_cli, eice_lab, lab_profile):
        result = run_cli("psql", "lab", "-At", "-c", "select 'through eice'")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "through eice"
        assert [s.problems for s in eice_lab.standin.seen] == [[]]

        eice_lab.standin.refuse = 403
        result = run_cli("psql", "lab", "-c", "select 1")
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "ec2-instance-connect:OpenTunnel" in lines[0]
        assert "HTTP 403" in lines[0]


def test_check_shows_the_eice_steps(
    run_cli: RunCli, eice_lab: EiceLab, lab_profile: LabProfile, keyring_backend: Any
) -> None:
    with _eice_profile(run_cli, eice_lab, lab_profile):
        result = run_cli("check", "lab")
        print(result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        labels = [line.split()[1] for line in lines if line.startswith(("✓", "✗", "-"))]
        assert labels[:5] == ["config", "key", "AWS", "EICE", "EICE"], lines
        text = result.stdout
        assert f"{ENDPOINT_ID} (create-complete) in {eice_lab.vpc_id}" in text
        assert "opened (HTTP 101)" in text
        assert f"through {ENDPOINT_ID}" in text  # "reach bastion" ran over the websocket
        assert len(eice_lab.standin.seen) == 1

        eice_lab.front.endpoints.clear()
        result = run_cli("check", "lab")
        print(result.stdout)
        assert result.returncode != 0
        assert "no EC2 Instance Connect Endpoint in" in result.stdout
        assert "ec2:CreateInstanceConnectEndpoint" in result.stdout


def test_discover_lists_the_endpoints_in_the_database_vpc(
    run_cli: RunCli, eice_lab: EiceLab
) -> None:
    rds = boto3.client("rds", region_name=eice_lab.moto.region, endpoint_url=eice_lab.moto.url)
    ec2 = boto3.client("ec2", region_name=eice_lab.moto.region, endpoint_url=eice_lab.moto.url)
    second = ec2.create_subnet(
        VpcId=eice_lab.vpc_id, CidrBlock="10.7.2.0/24", AvailabilityZone="us-east-2b"
    )["Subnet"]["SubnetId"]
    geo_cluster(rds, [eice_lab.subnet_id, second])
    # One endpoint elsewhere: not listed (another VPC than the database's).
    eice_lab.front.endpoints.append(
        FrontEndpoint("eice-0fedcba9876543210", "x.example", "vpc-elsewhere", "subnet-x")
    )
    result = run_cli("discover", "--json")
    assert result.returncode == 0, result.stderr
    found = [o for o in json.loads(result.stdout) if o["kind"] == "instance-connect-endpoint"]
    assert found == [
        {
            "kind": "instance-connect-endpoint",
            "id": ENDPOINT_ID,
            "region": eice_lab.moto.region,
            "status": "create-complete",
            "dns_name": _dns(eice_lab.moto.region),
            "vpc_id": eice_lab.vpc_id,
            "subnet_id": eice_lab.subnet_id,
        }
    ]
    text = run_cli("discover")
    assert text.returncode == 0, text.stderr
    assert "EC2 Instance Connect Endpoints" in text.stdout
    assert ENDPOINT_ID in text.stdout
    assert "eice-0fedcba9876543210" not in text.stdout


# ----------------------------------------------------------------------------- real response shapes


def _endpoint_answer(ident: str, vpc: str, subnet: str, state: str = "create-complete") -> Any:
    """One InstanceConnectEndpoints item as AWS returns it (Stubber checks it against the model)."""
    return {
        "OwnerId": "123456789012",
        "InstanceConnectEndpointId": ident,
        "InstanceConnectEndpointArn": f"arn:aws:ec2:us-east-2:123456789012:instance-connect-endpoint/{ident}",
        "State": state,
        "StateMessage": "",
        "DnsName": f"{ident}.c1a2b3c4.ec2-instance-connect-endpoint.us-east-2.amazonaws.com",
        "FipsDnsName": f"{ident}.c1a2b3c4.fips.ec2-instance-connect-endpoint.us-east-2.amazonaws.com",
        "NetworkInterfaceIds": ["eni-0a1b2c3d4e5f67890"],
        "VpcId": vpc,
        "AvailabilityZone": "us-east-2a",
        "CreatedAt": datetime.datetime(2026, 6, 13, 8, 0, tzinfo=datetime.UTC),
        "SubnetId": subnet,
        "PreserveClientIp": False,
        "SecurityGroupIds": ["sg-0a1b2c3d4e5f67890"],
        "Tags": [],
    }


def test_endpoint_lookup_reads_every_page_stubbed(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's Stubber with AWS's response shapes: DescribeInstances, then two pages of
    DescribeInstanceConnectEndpoints filtered on the VPC; the subnet's endpoint is on page 2."""
    import botocore.session
    from botocore.stub import Stubber

    from tunnelman.core.aws import session as aws_session

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    ec2 = botocore.session.get_session().create_client("ec2", region_name="us-east-2")
    stub = Stubber(ec2)
    stub.add_response(
        "describe_instances",
        {
            "Reservations": [
                {
                    "Instances": [
                        {
                            "InstanceId": "i-0123456789abcdef0",
                            "State": {"Code": 16, "Name": "running"},
                            "VpcId": "vpc-0a1",
                            "SubnetId": "subnet-0b2",
                            "PrivateIpAddress": "10.0.1.23",
                        }
                    ]
                }
            ]
        },
        {"InstanceIds": ["i-0123456789abcdef0"]},
    )
    wanted = {"Filters": [{"Name": "vpc-id", "Values": ["vpc-0a1"]}]}
    stub.add_response(
        "describe_instance_connect_endpoints",
        {
            "InstanceConnectEndpoints": [
                _endpoint_answer("eice-0000000000000000a", "vpc-0a1", "subnet-0zz"),
                _endpoint_answer(
                    "eice-0000000000000000b", "vpc-0a1", "subnet-0b2", "create-failed"
                ),
            ],
            "NextToken": "page-2",
        },
        wanted,
    )
    stub.add_response(
        "describe_instance_connect_endpoints",
        {
            "InstanceConnectEndpoints": [
                _endpoint_answer("eice-0000000000000000c", "vpc-0a1", "subnet-0b2")
            ]
        },
        {**wanted, "NextToken": "page-2"},
    )
    stub.activate()
    monkeypatch.setattr(aws_session, "make_client", lambda session, service, region: ec2)
    profile = Profile(
        name="p", transport="eice", bastion_instance_id="i-0123456789abcdef0", region="us-east-2"
    )
    target = aws.eice.find_target(profile)
    stub.assert_no_pending_responses()
    assert target.endpoint.id == "eice-0000000000000000c"  # usable and in the instance's subnet
    assert target.private_ip == "10.0.1.23"
    assert target.endpoint.dns_name.startswith("eice-0000000000000000c.")


def test_the_doctor_lists_the_eice_steps(
    eice_lab: EiceLab, lab_profile: LabProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunnelman.core.diagnose import EICE_STEPS, STEPS, Doctor

    lab_profile.write(
        transport="eice",
        bastion_instance_id=eice_lab.instance_id,
        region=eice_lab.moto.region,
        password="none",
    )
    doctor = Doctor(lab_profile.config, "lab")
    assert list(doctor.steps) == list(STEPS)
    results = list(doctor.run())
    assert list(doctor.steps) == [*STEPS[:2], *EICE_STEPS, *STEPS[2:]]
    assert [r.step for r in results] == list(doctor.steps)
    # Up to the forward every step passed over the websocket (password none: the login fails).
    assert all(r.passed for r in results[:9]), [(r.step, r.detail) for r in results]
    deadline = time.monotonic() + 3
    while eice_lab.standin.live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert eice_lab.standin.live == 0  # the doctor closed what it opened
