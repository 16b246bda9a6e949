"""tunnelman.core.aws against a moto server over HTTP (AWS_ENDPOINT_URL): discovery, look-up,
status/start/stop, resume checks, Secrets Manager, IAM tokens, EC2 Instance Connect."""

from __future__ import annotations

import dataclasses
import threading
import urllib.parse
from pathlib import Path

import paramiko
import pytest

from tests.lab.moto_server import REGION, MotoServer
from tests.test_aws_lab import OTHER_REGION, Seeded, client, seeded_once_fixture
from tunnelman.core import aws
from tunnelman.core.errors import AWSError, ConfigError, CredentialError
from tunnelman.core.profiles import Bastion, Endpoint, Profile

seeded_once = seeded_once_fixture()


@pytest.fixture
def seeded(
    moto: MotoServer, seeded_once: Seeded, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Seeded:
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    aws.clear_cache()
    return seeded_once


def _profile(**values: object) -> Profile:
    return Profile(name="geo", **values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- discovery


def test_discover_lists_each_kind(seeded: Seeded, moto: MotoServer) -> None:
    lines: list[str] = []
    found = aws.discover(on_progress=lines.append)
    by_id = {d.id: d for d in found.databases}
    assert set(by_id) == {seeded.v1, seeded.geo, seeded.standalone, seeded.proxy}
    assert found.hidden == 1  # the MySQL cluster
    assert lines[0].startswith("Querying AWS in us-east-2")

    rds = client(moto, "rds")
    geo_raw = rds.describe_db_clusters(DBClusterIdentifier=seeded.geo)["DBClusters"][0]
    geo = by_id[seeded.geo]
    assert geo.kind == "cluster"
    assert geo.endpoint == geo_raw["Endpoint"]
    assert geo.reader_endpoint == geo_raw["ReaderEndpoint"]
    assert geo.engine_mode == "provisioned"
    assert geo.serverless == "v2"
    assert (geo.acu_min, geo.acu_max) == (0, 4)
    assert geo.iam_auth is True
    assert geo.secret_arn == seeded.geo_secret
    assert geo.status == "available"
    assert geo.vpc_id == seeded.geo_vpc
    assert [(m.id, m.role, m.instance_class) for m in geo.members] == [
        (seeded.geo_writer, "writer", "db.serverless")
    ]

    v1 = by_id[seeded.v1]
    assert (v1.kind, v1.engine_mode, v1.serverless) == ("cluster", "serverless", "v1")
    assert (v1.acu_min, v1.acu_max, v1.iam_auth, v1.secret_arn) == (2, 8, False, None)

    standalone = by_id[seeded.standalone]
    assert standalone.kind == "instance"
    assert (
        standalone.endpoint
        == rds.describe_db_instances(DBInstanceIdentifier=seeded.standalone)["DBInstances"][0][
            "Endpoint"
        ]["Address"]
    )
    assert standalone.reader_endpoint is None
    assert standalone.database == "reports"

    proxy = by_id[seeded.proxy]
    assert (proxy.kind, proxy.engine, proxy.port, proxy.iam_auth) == (
        "proxy",
        "postgres",
        5432,
        True,
    )
    assert proxy.secret_arn == seeded.geo_secret

    bastions = {b.id: b for b in found.bastions}
    assert set(bastions) == {seeded.bastion, seeded.app}  # the private worker is not one
    assert bastions[seeded.bastion].reason == "named 'bastion'"
    assert bastions[seeded.bastion].public_dns
    assert bastions[seeded.app].reason.startswith("public IP in the VPC of")
    assert found.bastions[0].id == seeded.bastion  # tagged ones first


def test_discover_all_engines_and_several_regions(seeded: Seeded) -> None:
    found = aws.discover([REGION, OTHER_REGION], all_engines=True)
    ids = {(d.region, d.id) for d in found.databases}
    assert (REGION, seeded.mysql) in ids
    assert (OTHER_REGION, seeded.other_region_cluster) in ids
    assert found.hidden == 0
    assert found.regions == [REGION, OTHER_REGION]


def test_discover_json_shape(seeded: Seeded) -> None:
    items = aws.discover().to_json()
    keys = {
        "kind",
        "id",
        "region",
        "engine",
        "engine_mode",
        "status",
        "endpoint",
        "reader_endpoint",
        "port",
        "iam_auth",
        "secret_arn",
    }
    for item in items:
        if item["kind"] == "bastion":
            assert {"id", "name", "public_dns", "public_ip", "vpc_id", "state"} <= set(item)
        else:
            assert keys <= set(item), item["id"]


def test_discover_without_region(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(AWSError, match=r"no region: pass --region or set AWS_DEFAULT_REGION"):
        aws.discover()


def test_unknown_region_is_refused(seeded: Seeded) -> None:
    with pytest.raises(AWSError, match=r"unknown AWS region 'us-est-2' \(did you mean"):
        aws.discover(["us-est-2"])


# ----------------------------------------------------------------------------- look-up


def test_find_cluster_instance_and_did_you_mean(seeded: Seeded) -> None:
    assert aws.find(seeded.geo).kind == "cluster"
    instance = aws.find(seeded.standalone)
    assert (instance.kind, instance.master_user) == ("instance", "reporter")
    with pytest.raises(AWSError) as caught:
        aws.find("geo-prd")
    assert "no RDS cluster or instance 'geo-prd' in us-east-2" in str(caught.value)
    assert "did you mean 'geo-prod'?" in str(caught.value)


def test_cluster_status_has_members_and_vpc(seeded: Seeded) -> None:
    db = aws.cluster_status(_profile(cluster=seeded.geo, region=REGION))
    assert db.members[0].role == "writer"
    assert db.vpc_id == seeded.geo_vpc
    assert db.custom_endpoints == ()  # moto has no DescribeDBClusterEndpoints: carried on


def test_cluster_status_needs_a_cluster(seeded: Seeded) -> None:
    with pytest.raises(ConfigError, match="has no cluster"):
        aws.cluster_status(_profile())


# ----------------------------------------------------------------------------- start / stop


def test_stop_then_start_cluster(seeded: Seeded) -> None:
    profile = _profile(cluster=seeded.geo, region=REGION)
    seen: list[str] = []
    aws.stop_cluster(profile)
    final = aws.wait_for(profile, "stop", on_status=lambda s, _t: seen.append(s), interval=0.05)
    assert final.status == "stopped"
    assert seen[-1] == "stopped"
    assert aws.check_action(final, "stop") is False
    note, long_timeout = aws.assess(final, "geo")
    assert note is not None
    assert "tunnelman cluster start geo" in note
    assert long_timeout is False
    aws.start_cluster(profile)
    assert aws.wait_for(profile, "start", interval=0.05).status == "available"


def test_stop_then_start_instance(seeded: Seeded) -> None:
    profile = _profile(cluster=seeded.standalone, region=REGION)
    aws.change_state(profile, "stop")
    assert aws.wait_for(profile, "stop", interval=0.05).status == "stopped"
    aws.change_state(profile, "start")
    assert aws.wait_for(profile, "start", interval=0.05).status == "available"


def test_impossible_actions_are_explained(seeded: Seeded) -> None:
    v1 = aws.find(seeded.v1)
    with pytest.raises(AWSError, match="Serverless v1: it cannot be stopped"):
        aws.check_action(v1, "stop")
    member = aws.find(seeded.geo_writer)
    with pytest.raises(AWSError, match="belongs to cluster 'geo-prod'"):
        aws.check_action(member, "stop")
    creating = dataclasses.replace(aws.find(seeded.geo), status="creating")
    with pytest.raises(AWSError, match="cannot stop cluster 'geo-prod' while it is creating"):
        aws.check_action(creating, "stop")
    assert aws.check_action(aws.find(seeded.geo), "start") is False  # already available


def test_wait_can_be_cancelled(seeded: Seeded) -> None:
    profile = _profile(cluster=seeded.geo, region=REGION)
    cancel = threading.Event()
    cancel.set()
    db = aws.wait_for(profile, "stop", cancel=cancel, interval=10)
    assert db.status == "available"  # not stopped: we only stopped waiting


# ----------------------------------------------------------------------------- resume checks


def test_resume_hint_for_v2_min_zero(seeded: Seeded) -> None:
    profile = _profile(cluster=seeded.geo, region=REGION)
    hint = aws.resume_hint(profile)
    assert hint is not None
    assert "resuming (can take ~15–60 s)" in hint
    assert aws.needs_resume_timeout(profile) is True
    assert aws.connect_timeout_for(profile) == aws.RESUME_CONNECT_TIMEOUT


def test_no_resume_hint_for_a_plain_instance_or_no_cluster(seeded: Seeded) -> None:
    instance = _profile(cluster=seeded.standalone, region=REGION, connect_timeout=15)
    assert aws.resume_hint(instance) is None
    assert aws.needs_resume_timeout(instance) is False
    assert aws.connect_timeout_for(instance) == 15
    plain = _profile(endpoint=Endpoint("db.example.com"))
    assert aws.resume_hint(plain) is None
    assert aws.needs_resume_timeout(plain) is False


def test_resume_hint_when_aws_cannot_be_asked(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    profile = _profile(cluster=seeded.geo, region=REGION)
    hint = aws.resume_hint(profile)
    assert hint is not None
    assert hint.startswith("could not check cluster 'geo-prod' (no AWS credentials found")
    assert aws.needs_resume_timeout(profile) is True


# ----------------------------------------------------------------------------- Secrets Manager


def test_secret_login_from_the_clusters_managed_secret(seeded: Seeded) -> None:
    login = aws.secret_login(_profile(cluster=seeded.geo, region=REGION, password="secretsmanager"))
    assert login.username == "admin"  # what moto puts in an RDS-managed secret
    assert login.password


def test_secret_login_from_a_named_secret(seeded: Seeded, moto: MotoServer) -> None:
    arn = client(moto, "secretsmanager").create_secret(
        Name="geo/app", SecretString='{"username": "gis_app", "password": "s3cr:et w1th space"}'
    )["ARN"]
    login = aws.secret_login(_profile(secret=arn, password="secretsmanager"))
    assert login == aws.Login("gis_app", "s3cr:et w1th space")
    by_name = aws.secret_login(_profile(secret="geo/app", region=REGION, user="fallback"))
    assert by_name.username == "gis_app"


def test_secret_login_errors(seeded: Seeded, moto: MotoServer) -> None:
    sm = client(moto, "secretsmanager")
    sm.create_secret(Name="not-json", SecretString="hunter2")
    sm.create_secret(Name="no-password", SecretString='{"username": "x"}')
    with pytest.raises(CredentialError, match="'not-json' is not JSON"):
        aws.secret_login(_profile(secret="not-json", region=REGION))
    with pytest.raises(CredentialError, match='has no "password" string'):
        aws.secret_login(_profile(secret="no-password", region=REGION))
    with pytest.raises(AWSError, match="secret 'missing' not found in us-east-2"):
        aws.secret_login(_profile(secret="missing", region=REGION))
    with pytest.raises(CredentialError, match="has no RDS-managed master secret"):
        aws.secret_login(_profile(cluster=seeded.v1, region=REGION))
    with pytest.raises(ConfigError, match="names no secret and no cluster"):
        aws.secret_login(_profile(region=REGION))


# ----------------------------------------------------------------------------- IAM tokens


def _parse_token(token: str) -> tuple[urllib.parse.SplitResult, dict[str, list[str]]]:
    assert not token.startswith("https://")
    parts = urllib.parse.urlsplit("https://" + token)
    return parts, urllib.parse.parse_qs(parts.query)


def test_iam_token_is_signed_for_the_real_endpoint(seeded: Seeded) -> None:
    endpoint = aws.find(seeded.geo).endpoint
    assert endpoint
    profile = _profile(endpoint=Endpoint(endpoint, 5432), user="gis_iam", local_port=5433)
    parts, query = _parse_token(aws.iam_token(profile))
    assert parts.hostname == endpoint
    assert parts.port == 5432
    assert query["Action"] == ["connect"]
    assert query["DBUser"] == ["gis_iam"]
    credential = query["X-Amz-Credential"][0]
    assert credential.endswith(f"/{REGION}/rds-db/aws4_request")  # region read from the host
    assert "127.0.0.1" not in parts.netloc


def test_iam_token_from_the_cluster_when_no_endpoint(seeded: Seeded) -> None:
    parts, _ = _parse_token(aws.iam_token(_profile(cluster=seeded.geo, region=REGION)))
    assert parts.hostname == aws.find(seeded.geo).endpoint


def test_iam_token_refuses_loopback(seeded: Seeded) -> None:
    with pytest.raises(CredentialError, match=r"real endpoint, not 127\.0\.0\.1"):
        aws.iam_token(_profile(endpoint=Endpoint("127.0.0.1", 5433), region=REGION))


# ----------------------------------------------------------------------------- Instance Connect


def test_instance_connect_pushes_an_ephemeral_key(seeded: Seeded) -> None:
    profile = _profile(
        bastion=Bastion(host="ec2-198-51-100-7.us-east-2.compute.amazonaws.com", user="ec2-user"),
        bastion_instance_id=seeded.bastion,
        instance_connect=True,
    )
    key = aws.instance_connect_key(profile)
    assert isinstance(key, paramiko.Ed25519Key)
    assert key.can_sign()
    other = aws.instance_connect_key(profile)
    assert other.get_base64() != key.get_base64()  # a new key every time


def test_instance_connect_needs_an_instance_id(seeded: Seeded) -> None:
    with pytest.raises(ConfigError, match="no bastion_instance_id"):
        aws.instance_connect_key(_profile(bastion=Bastion(host="b.example.com")))
