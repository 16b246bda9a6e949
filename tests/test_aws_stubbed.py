"""What the moto server cannot show, with botocore's Stubber and real response shapes.

moto returns no `Capacity` (so no paused Serverless v1), no `CustomEndpoints`, no Serverless v2
`SecondsUntilAutoPause`, answers HTTP 500 to DescribeDBClusterEndpoints, and never refuses or
throttles. The responses in tests/data/aws/ have the shapes of the real API (Stubber validates them
against botocore's service model); the errors are the codes and messages AWS sends. A Stubber stands
in for AWS here only because nothing real can produce these answers on this machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import paramiko
import pytest
from botocore.stub import ANY

from tests.lab.stubbed import Stubs, run_main, stubs_fixture
from tests.test_aws_lab import load_json
from tunnelman.core import aws
from tunnelman.core.errors import AWSError
from tunnelman.core.profiles import Bastion, Profile

REGION = "us-east-2"
DENIED = (
    "User: arn:aws:iam::123456789012:user/ana is not authorized to perform: "
    "rds:DescribeDBClusters on resource: arn:aws:rds:us-east-2:123456789012:cluster:* "
    "because no identity-based policy allows the rds:DescribeDBClusters action"
)


stubs = stubs_fixture()


def _profile(**values: Any) -> Profile:
    return Profile(name="geo", **values)


def _status_stubs(stubs: Stubs, clusters: str = "describe_db_clusters_v2_custom.json") -> None:
    rds = stubs("rds")
    rds.add_response(
        "describe_db_clusters", load_json(clusters), {"DBClusterIdentifier": "geo-prod"}
    )
    rds.add_response(
        "describe_db_instances",
        load_json("describe_db_instances_v2_members.json"),
        {"Filters": [{"Name": "db-cluster-id", "Values": ["geo-prod"]}]},
    )
    rds.add_response(
        "describe_db_subnet_groups",
        load_json("describe_db_subnet_groups_geo.json"),
        {"DBSubnetGroupName": "geo-subnets"},
    )


# ----------------------------------------------------------------------------- paused / resume


def test_paused_serverless_v1_needs_the_resume_timeout(stubs: Stubs) -> None:
    stubs("rds").add_response(
        "describe_db_clusters",
        load_json("describe_db_clusters_v1_paused.json"),
        {"DBClusterIdentifier": "legacy-v1"},
    )
    profile = _profile(cluster="legacy-v1", region=REGION, connect_timeout=15)
    state = aws.cluster_state(profile)
    assert state is not None
    assert (state.serverless, state.capacity, state.paused) == ("v1", 0, True)
    assert state.capacity_text == "paused (0 ACU)"
    assert aws.resume_hint(profile) == (
        "cluster 'legacy-v1' is paused (Serverless v1, 0 ACU): resuming (can take ~15–60 s)"
    )
    assert aws.needs_resume_timeout(profile) is True
    assert aws.connect_timeout_for(profile) == 60
    stubs.verify()  # one describe call for all three: the state is cached


def test_serverless_v2_custom_endpoints_and_auto_pause(stubs: Stubs) -> None:
    _status_stubs(stubs)
    stubs("rds").add_response(
        "describe_db_cluster_endpoints",
        load_json("describe_db_cluster_endpoints_geo.json"),
        {"DBClusterIdentifier": "geo-prod"},
    )
    db = aws.cluster_status(_profile(cluster="geo-prod", region=REGION))
    assert [(m.id, m.role, m.instance_class) for m in db.members] == [
        ("geo-prod-1", "writer", "db.serverless"),
        ("geo-prod-2", "reader", "db.serverless"),
    ]
    assert [(c.id, c.type) for c in db.custom_endpoints] == [("analytics", "READER")]
    assert db.custom_endpoints[0].endpoint.startswith("analytics.cluster-custom-")
    assert (db.serverless, db.acu_min, db.acu_max) == ("v2", 0, 16)
    assert (db.auto_pause, db.seconds_until_auto_pause, db.paused) == (True, 600, None)
    assert db.vpc_id == "vpc-0a1b2c3d4e5f60718"
    note, long_timeout = aws.assess(db, "geo")
    assert long_timeout is True
    assert note is not None
    assert "resuming (can take ~15–60 s)" in note
    stubs.verify()


def test_custom_endpoints_fall_back_to_the_cluster_list(stubs: Stubs) -> None:
    _status_stubs(stubs)
    stubs("rds").add_client_error(
        "describe_db_cluster_endpoints",
        service_error_code="AccessDenied",
        service_message="not authorized to perform: rds:DescribeDBClusterEndpoints",
        http_status_code=403,
    )
    db = aws.cluster_status(_profile(cluster="geo-prod", region=REGION))
    assert [(c.id, c.endpoint) for c in db.custom_endpoints] == [
        ("analytics", "analytics.cluster-custom-c9akciq32xyz.us-east-2.rds.amazonaws.com")
    ]


def test_cluster_status_command_shows_what_moto_cannot(
    stubs: Stubs, tmp_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[profiles.geo]\ncluster = "geo-prod"\nregion = "us-east-2"\n')
    _status_stubs(stubs)
    stubs("rds").add_response(
        "describe_db_cluster_endpoints",
        load_json("describe_db_cluster_endpoints_geo.json"),
        {"DBClusterIdentifier": "geo-prod"},
    )
    code, out, err = run_main(["cluster", "status", "geo"], capsys)
    assert code == 0, err
    assert "capacity  0–16 ACU, auto-pause after 600 s idle" in out
    assert (
        "custom  analytics.cluster-custom-c9akciq32xyz.us-east-2.rds.amazonaws.com:5432"
        "  analytics (READER)"
    ) in out
    assert "members   geo-prod-1  writer  db.serverless  available" in out
    assert "geo-prod-2  reader  db.serverless  available" in out


# ----------------------------------------------------------------------------- discovery


def _discovery_stubs(
    stubs: Stubs,
    *,
    ec2_error: str | None = None,
    instances: str = "describe_instances_bastion.json",
    ssm_online: str | None = None,
) -> None:
    clusters = load_json("describe_db_clusters_v1_paused.json")["DBClusters"]
    clusters += load_json("describe_db_clusters_v2_custom.json")["DBClusters"]
    rds = stubs("rds")
    rds.add_response("describe_db_clusters", {"DBClusters": clusters}, {})
    rds.add_response(
        "describe_db_instances", load_json("describe_db_instances_v2_members.json"), {}
    )
    rds.add_response(
        "describe_db_subnet_groups", load_json("describe_db_subnet_groups_geo.json"), {}
    )
    rds.add_response(
        "describe_db_cluster_endpoints", load_json("describe_db_cluster_endpoints_geo.json"), {}
    )
    rds.add_response("describe_db_proxies", {"DBProxies": []}, {})
    ec2 = stubs("ec2")
    running = {"Filters": [{"Name": "instance-state-name", "Values": ["running"]}]}
    if ec2_error:
        ec2.add_client_error(
            "describe_instances",
            service_error_code=ec2_error,
            service_message="You are not authorized to perform this operation.",
            http_status_code=403,
            expected_params=running,
        )
    else:
        ec2.add_response("describe_instances", load_json(instances), running)
    # Systems Manager's view of those instances (asked only once EC2 listed some).
    ssm = stubs("ssm")
    if not ec2_error:
        ssm.add_response(
            "describe_instance_information",
            load_json(ssm_online) if ssm_online else {"InstanceInformationList": []},
            {"Filters": [{"Key": "PingStatus", "Values": ["Online"]}]},
        )


def test_discover_with_capacity_and_custom_endpoints(stubs: Stubs) -> None:
    _discovery_stubs(stubs)
    found = aws.discover()
    by_id = {item["id"]: item for item in found.to_json()}
    legacy = by_id["legacy-v1"]
    assert (legacy["capacity"], legacy["paused"], legacy["engine_mode"]) == (0, True, "serverless")
    geo = by_id["geo-prod"]
    assert geo["custom_endpoints"] == [
        {
            "id": "analytics",
            "endpoint": "analytics.cluster-custom-c9akciq32xyz.us-east-2.rds.amazonaws.com",
            "type": "READER",
            "status": "available",
        }
    ]
    assert [m["role"] for m in geo["members"]] == ["writer", "reader"]
    assert "geo-prod-1" not in by_id  # members are not standalone instances
    jump = by_id["i-0abc1234def567890"]
    assert (jump["kind"], jump["reason"], jump["key_name"]) == (
        "bastion",
        "named 'geo-jump'",
        "aws-ec2",
    )
    assert found.warnings == []
    stubs.verify()


def test_discover_table_with_stubbed_account(
    stubs: Stubs, capsys: pytest.CaptureFixture[str]
) -> None:
    _discovery_stubs(stubs)
    code, out, err = run_main(["discover"], capsys)
    assert code == 0, err
    assert all(len(line) <= 100 for line in out.splitlines())
    assert "paused (0 ACU)" in out
    assert "analytics  custom reader" in out
    assert "--bastion ec2-user@ec2-198-51-100-7.us-east-2.compute.amazonaws.com" in out
    assert "--identity-file ~/.ssh/aws-ec2.pem" in out


def test_discover_warns_when_ec2_is_refused(stubs: Stubs) -> None:
    _discovery_stubs(stubs, ec2_error="UnauthorizedOperation")
    found = aws.discover()
    assert {d.id for d in found.databases} == {"legacy-v1", "geo-prod"}
    assert found.bastions == []
    assert found.warnings == [
        "us-east-2: bastion candidates not listed: AWS denied ec2:DescribeInstances in us-east-2"
        " (your IAM policy needs ec2:DescribeInstances)"
    ]


# ----------------------------------------------------------------------------- error mapping


def test_access_denied_names_the_action(stubs: Stubs, capsys: pytest.CaptureFixture[str]) -> None:
    stubs("rds").add_client_error(
        "describe_db_clusters",
        service_error_code="AccessDenied",
        service_message=DENIED,
        http_status_code=403,
    )
    stubs("ec2")
    code, _out, err = run_main(["discover"], capsys)
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tunnelman: error:")]
    assert lines == [
        "tunnelman: error: AWS denied rds:DescribeDBClusters in us-east-2"
        " (as arn:aws:iam::123456789012:user/ana) (your IAM policy needs rds:DescribeDBClusters)"
    ]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ExpiredTokenException", "your AWS credentials have expired (ExpiredTokenException)"),
        ("InvalidClientTokenId", "AWS rejected the credentials (InvalidClientTokenId"),
        ("Throttling", "AWS throttled rds:DescribeDBClusters in us-east-2 after several retries"),
        ("OptInRequired", "the region us-east-2 is not enabled for this account"),
        ("InternalFailure", "AWS rds:DescribeDBClusters in us-east-2 failed: InternalFailure"),
    ],
)
def test_client_errors_become_one_line(stubs: Stubs, code: str, expected: str) -> None:
    stubs("rds").add_client_error(
        "describe_db_clusters", service_error_code=code, service_message="x", http_status_code=400
    )
    with pytest.raises(AWSError) as caught:
        aws.cluster_state(_profile(cluster="geo-prod", region=REGION))
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


def test_sso_and_network_errors() -> None:
    sso = aws.map_error(
        botocore.exceptions.UnauthorizedSSOTokenError(),
        "rds:DescribeDBClusters",
        aws_profile="geo-admin",
    )
    assert sso is not None
    assert str(sso) == (
        "the AWS SSO session for profile 'geo-admin' has expired or is missing: "
        "run `aws sso login --profile geo-admin`"
    )
    loading = aws.map_error(
        botocore.exceptions.SSOTokenLoadError(error_msg="Token for geo does not exist"),
        "rds:DescribeDBClusters",
        aws_profile="geo",
    )
    assert loading is not None
    assert "aws sso login --profile geo" in str(loading)
    network = aws.map_error(
        botocore.exceptions.EndpointConnectionError(
            endpoint_url="https://rds.us-east-2.amazonaws.com/"
        ),
        "rds:DescribeDBClusters",
        region=REGION,
    )
    assert network is not None
    assert str(network).startswith("cannot reach https://rds.us-east-2.amazonaws.com/ in us-east-2")
    assert aws.map_error(ValueError("not botocore"), "x") is None


# ----------------------------------------------------------------------------- waiting


def _cluster_with(status: str) -> dict[str, Any]:
    data = load_json("describe_db_clusters_v2_custom.json")
    data["DBClusters"][0]["Status"] = status
    return dict(data)


def test_wait_reports_each_transition(stubs: Stubs) -> None:
    rds = stubs("rds")
    for status in ("stopping", "stopping", "stopped"):
        rds.add_response(
            "describe_db_clusters", _cluster_with(status), {"DBClusterIdentifier": "geo-prod"}
        )
    seen: list[str] = []
    final = aws.wait_for(
        _profile(cluster="geo-prod", region=REGION),
        "stop",
        on_status=lambda s, _t: seen.append(s),
        interval=0.01,
    )
    assert final.status == "stopped"
    assert seen == ["stopping", "stopped"]
    stubs.verify()


def test_wait_gives_up_at_the_deadline(stubs: Stubs) -> None:
    rds = stubs("rds")
    for _ in range(40):
        rds.add_response(
            "describe_db_clusters", _cluster_with("starting"), {"DBClusterIdentifier": "geo-prod"}
        )
    with pytest.raises(AWSError, match=r"still starting after \d+ s; the start continues in AWS"):
        aws.wait_for(
            _profile(cluster="geo-prod", region=REGION), "start", timeout=0.05, interval=0.01
        )


def test_wait_stops_on_a_failed_state(stubs: Stubs) -> None:
    stubs("rds").add_response(
        "describe_db_clusters",
        _cluster_with("incompatible-network"),
        {"DBClusterIdentifier": "geo-prod"},
    )
    with pytest.raises(AWSError, match="is incompatible-network"):
        aws.wait_for(_profile(cluster="geo-prod", region=REGION), "start", interval=0.01)


def test_ctrl_c_stops_waiting_not_the_action(
    stubs: Stubs,
    tmp_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[profiles.geo]\ncluster = "geo-prod"\nregion = "us-east-2"\n')
    _status_stubs(stubs)
    rds = stubs("rds")
    rds.add_response(
        "describe_db_cluster_endpoints",
        load_json("describe_db_cluster_endpoints_geo.json"),
        {"DBClusterIdentifier": "geo-prod"},
    )
    rds.add_response("stop_db_cluster", {"DBCluster": _cluster_with("stopping")["DBClusters"][0]})
    rds.add_response(
        "describe_db_clusters", _cluster_with("stopping"), {"DBClusterIdentifier": "geo-prod"}
    )

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    # the first pause between polls is where a person presses Ctrl-C
    monkeypatch.setattr(time, "sleep", interrupted)
    code, _out, err = run_main(["cluster", "stop", "geo", "--yes"], capsys)
    assert code == 130
    assert "stopping… (0 s)" in err
    assert (
        "stopped waiting; the stop of cluster 'geo-prod' continues in AWS: "
        "check with `tunnelman cluster status geo`"
    ) in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- secrets, EIC


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDeniedException", "AWS denied secretsmanager:GetSecretValue in us-east-2"),
        ("DecryptionFailure", "cannot decrypt secret 'geo/app': kms:Decrypt on its KMS key"),
        ("ResourceNotFoundException", "secret 'geo/app' not found in us-east-2"),
    ],
)
def test_secret_errors(stubs: Stubs, code: str, expected: str) -> None:
    stubs("secretsmanager").add_client_error(
        "get_secret_value", service_error_code=code, service_message="x", http_status_code=400
    )
    with pytest.raises(AWSError) as caught:
        aws.secret_login(_profile(secret="geo/app", region=REGION))
    assert str(caught.value).startswith(expected)


def test_instance_connect_pushes_the_returned_keys_public_half(stubs: Stubs) -> None:
    eic = stubs("ec2-instance-connect")
    eic.add_response(
        "send_ssh_public_key",
        {"RequestId": "e5ec6ec2-5f8a-4bd4-9d8b-3f8b1c2e8a90", "Success": True},
        {"InstanceId": "i-0abc1234def567890", "InstanceOSUser": "ubuntu", "SSHPublicKey": ANY},
    )
    sent: dict[str, Any] = {}

    def capture(params: dict[str, Any], **_: Any) -> None:
        sent.update(params)

    stubs.client("ec2-instance-connect").meta.events.register(
        "provide-client-params.ec2-instance-connect.SendSSHPublicKey", capture
    )
    profile = _profile(
        bastion=Bastion(host="ec2-198-51-100-7.us-east-2.compute.amazonaws.com", user="ubuntu"),
        bastion_instance_id="i-0abc1234def567890",
        instance_connect=True,
    )
    key = aws.instance_connect_key(profile)
    assert isinstance(key, paramiko.PKey)
    assert sent["SSHPublicKey"] == f"ssh-ed25519 {key.get_base64()} tunnelman-geo"
    stubs.verify()


def test_instance_connect_errors(stubs: Stubs) -> None:
    stubs("ec2-instance-connect").add_client_error(
        "send_ssh_public_key",
        service_error_code="EC2InstanceNotFoundException",
        service_message="Instance not found",
        http_status_code=400,
    )
    profile = _profile(
        bastion=Bastion(host="bastion.example.com", user="ec2-user"),
        bastion_instance_id="i-0000000000000dead",
        region=REGION,
    )
    with pytest.raises(AWSError, match="EC2 instance 'i-0000000000000dead' not found in us-east-2"):
        aws.instance_connect_key(profile)


def test_fixture_files_are_valid_json() -> None:
    data_dir = Path(__file__).parent / "data" / "aws"
    for path in data_dir.glob("*.json"):
        json.loads(path.read_text("utf-8"))
