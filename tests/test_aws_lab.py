"""Seeding the lab's moto server (tests/lab/moto_server.py, the `moto` fixture) like a real account,
for the AWS tests (test_aws*, test_cli_aws*).

boto3 reaches it over HTTP through AWS_ENDPOINT_URL, exactly as tunnelman would reach AWS: no in-process
mocking. The seed: an Aurora Serverless v1 cluster, an Aurora PostgreSQL cluster with an
RDS-managed master secret, IAM auth and a Serverless v2 writer, a standalone RDS PostgreSQL
instance, a MySQL cluster (hidden unless --all-engines), an RDS proxy, and EC2 instances: a
bastion (Name=bastion, public IP), a public app server in the cluster's VPC, a private worker, and
a second region with one more cluster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.moto_server import REGION, MotoServer

OTHER_REGION = "eu-west-1"
REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "aws"


def client(moto: MotoServer, service: str, region: str = REGION) -> Any:
    """A boto3 client on the moto server, for seeding and checking (not tunnelman's own)."""
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=region,
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def cli_env(moto: MotoServer | None) -> dict[str, str]:
    """The environment for a `tunnelman` subprocess: the test's (HOME etc. from `tmp_home`, AWS_*
    scrubbed) plus, with `moto`, the variables pointing boto3 at it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no 1 s wait for an instance-metadata service
    if moto is not None:
        env.update(moto.env())
    return env


@dataclass(frozen=True)
class Seeded:
    v1: str
    geo: str
    geo_writer: str
    geo_secret: str
    geo_vpc: str
    standalone: str
    mysql: str
    proxy: str
    bastion: str
    app: str
    worker: str
    other_region_cluster: str


def seed(moto: MotoServer) -> Seeded:
    rds = client(moto, "rds")
    ec2 = client(moto, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in ((1, "a"), (2, "b"))
    ]
    rds.create_db_subnet_group(
        DBSubnetGroupName="geo-subnets", DBSubnetGroupDescription="geo", SubnetIds=subnets
    )
    rds.create_db_cluster(
        DBClusterIdentifier="legacy-v1",
        Engine="aurora-postgresql",
        EngineMode="serverless",
        MasterUsername="postgres",
        MasterUserPassword="legacy-password",
        ScalingConfiguration={"MinCapacity": 2, "MaxCapacity": 8, "AutoPause": True},
    )
    geo = rds.create_db_cluster(
        DBClusterIdentifier="geo-prod",
        Engine="aurora-postgresql",
        EngineVersion="15.4",
        MasterUsername="geoadmin",
        ManageMasterUserPassword=True,
        DatabaseName="geo",
        EnableIAMDatabaseAuthentication=True,
        DBSubnetGroupName="geo-subnets",
        ServerlessV2ScalingConfiguration={"MinCapacity": 0, "MaxCapacity": 4},
    )["DBCluster"]
    rds.create_db_instance(
        DBInstanceIdentifier="geo-prod-1",
        DBClusterIdentifier="geo-prod",
        Engine="aurora-postgresql",
        DBInstanceClass="db.serverless",
    )
    rds.create_db_instance(
        DBInstanceIdentifier="reports",
        Engine="postgres",
        DBInstanceClass="db.t4g.micro",
        MasterUsername="reporter",
        MasterUserPassword="reports-password",
        AllocatedStorage=20,
        DBName="reports",
        DBSubnetGroupName="geo-subnets",
    )
    rds.create_db_cluster(
        DBClusterIdentifier="shop",
        Engine="aurora-mysql",
        MasterUsername="admin",
        MasterUserPassword="shop-password",
    )
    rds.create_db_proxy(
        DBProxyName="geo-proxy",
        EngineFamily="POSTGRESQL",
        Auth=[
            {
                "AuthScheme": "SECRETS",
                "SecretArn": geo["MasterUserSecret"]["SecretArn"],
                "IAMAuth": "REQUIRED",
            }
        ],
        RoleArn="arn:aws:iam::123456789012:role/geo-proxy",
        VpcSubnetIds=subnets,
    )
    image = "ami-0a1b2c3d4e5f67890"  # moto runs any AMI id; describe_images would cost seconds

    def run(name: str | None, public: bool, tags: dict[str, str] | None = None) -> str:
        all_tags = dict(tags or {})
        if name:
            all_tags["Name"] = name
        kwargs: dict[str, Any] = {
            "ImageId": image,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "t3.micro",
            "NetworkInterfaces": [
                {"DeviceIndex": 0, "SubnetId": subnets[0], "AssociatePublicIpAddress": public}
            ],
        }
        if all_tags:
            kwargs["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()],
                }
            ]
        return str(ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])

    bastion = run("bastion", True)
    app = run("app-1", True)
    worker = run("worker", False)
    other = client(moto, "rds", OTHER_REGION)
    other.create_db_cluster(
        DBClusterIdentifier="eu-geo",
        Engine="aurora-postgresql",
        MasterUsername="postgres",
        MasterUserPassword="eu-password",
    )
    return Seeded(
        v1="legacy-v1",
        geo="geo-prod",
        geo_writer="geo-prod-1",
        geo_secret=geo["MasterUserSecret"]["SecretArn"],
        geo_vpc=vpc,
        standalone="reports",
        mysql="shop",
        proxy="geo-proxy",
        bastion=bastion,
        app=app,
        worker=worker,
        other_region_cluster="eu-geo",
    )


def seeded_once_fixture() -> Callable[..., Seeded]:
    """The `seeded_once` fixture of a module: `seed` once for the module's tests (a test that
    changes state, stopping or starting something, puts it back)."""

    @pytest.fixture(scope="module", name="seeded_once")
    def seeded_once(moto: MotoServer) -> Seeded:
        moto.reset()
        return seed(moto)

    return seeded_once


def cli_env_fixture() -> Callable[..., dict[str, str]]:
    """The `env` fixture of a module: `cli_env` over the seeded moto server, in the test's home."""

    @pytest.fixture(name="env")
    def env(moto: MotoServer, seeded_once: Seeded, tmp_home: Path) -> dict[str, str]:
        return cli_env(moto)

    return env


def load_json(name: str) -> Any:
    return json.loads((DATA / name).read_text("utf-8"))


def test_seed_is_visible_over_http(moto: MotoServer) -> None:
    moto.reset()
    seeded = seed(moto)
    rds = client(moto, "rds")
    ids = {c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]}
    assert {seeded.v1, seeded.geo, seeded.mysql} <= ids
