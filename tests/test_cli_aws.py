"""The real `tunnelman` CLI (a subprocess, temp HOME) against the lab's moto server over HTTP:
`discover`, `profile add --cluster`, `cluster status|start|stop`, and the one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli, run_on_pty
from tests.lab.moto_server import REGION, MotoServer
from tests.test_aws_lab import (
    OTHER_REGION,
    Seeded,
    cli_env,
    cli_env_fixture,
    client,
    seeded_once_fixture,
)

seeded_once = seeded_once_fixture()


env = cli_env_fixture()


@pytest.fixture
def seeded(seeded_once: Seeded) -> Seeded:
    return seeded_once


def _config() -> Path:
    return Path(os.environ["TUNNELMAN_CONFIG"])


def _write_config(text: str) -> Path:
    path = _config()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tunnelman: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- discover


def test_discover_json_lists_each_kind(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded, moto: MotoServer
) -> None:
    result = run_cli("discover", "--json", env=env)
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)
    by_id = {item["id"]: item for item in items}
    rds = client(moto, "rds")
    clusters = {c["DBClusterIdentifier"]: c for c in rds.describe_db_clusters()["DBClusters"]}
    instances = {i["DBInstanceIdentifier"]: i for i in rds.describe_db_instances()["DBInstances"]}

    v1 = by_id[seeded.v1]
    assert v1["kind"] == "cluster"
    assert v1["engine_mode"] == "serverless"
    assert v1["endpoint"] == clusters[seeded.v1]["Endpoint"]
    assert v1["reader_endpoint"] == clusters[seeded.v1]["ReaderEndpoint"]
    assert (v1["iam_auth"], v1["secret_arn"], v1["status"]) == (False, None, "available")
    assert (v1["acu_min"], v1["acu_max"]) == (2, 8)

    geo = by_id[seeded.geo]
    assert geo["kind"] == "cluster"
    assert geo["engine_mode"] == "provisioned"
    assert geo["serverless"] == "v2"
    assert geo["endpoint"] == clusters[seeded.geo]["Endpoint"]
    assert geo["reader_endpoint"] == clusters[seeded.geo]["ReaderEndpoint"]
    assert (geo["iam_auth"], geo["secret_arn"]) == (True, seeded.geo_secret)
    assert geo["status"] == "available"
    assert (geo["acu_min"], geo["acu_max"], geo["auto_pause"]) == (0, 4, True)
    assert geo["members"] == [
        {
            "id": seeded.geo_writer,
            "role": "writer",
            "instance_class": "db.serverless",
            "status": "available",
        }
    ]

    standalone = by_id[seeded.standalone]
    assert standalone["kind"] == "instance"
    assert standalone["endpoint"] == instances[seeded.standalone]["Endpoint"]["Address"]
    assert standalone["reader_endpoint"] is None
    assert standalone["engine_mode"] is None
    assert (standalone["iam_auth"], standalone["secret_arn"]) == (False, None)
    assert standalone["status"] == "available"
    assert seeded.geo_writer not in by_id  # a cluster member is not a standalone instance

    proxy = by_id[seeded.proxy]
    assert (proxy["kind"], proxy["iam_auth"], proxy["secret_arn"]) == (
        "proxy",
        True,
        seeded.geo_secret,
    )

    bastion = by_id[seeded.bastion]
    ec2 = client(moto, "ec2")
    raw = ec2.describe_instances(InstanceIds=[seeded.bastion])["Reservations"][0]["Instances"][0]
    assert bastion["kind"] == "bastion"
    assert bastion["name"] == "bastion"
    assert bastion["public_dns"] == raw["PublicDnsName"]
    assert bastion["public_ip"] == raw["PublicIpAddress"]
    assert bastion["vpc_id"] == seeded.geo_vpc
    assert bastion["state"] == "running"
    assert seeded.worker not in by_id
    assert seeded.mysql not in by_id  # not PostgreSQL: only with --all-engines


def test_discover_table_reads_at_100_columns(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded
) -> None:
    result = run_cli("discover", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    text = result.stdout
    for title in ("Aurora clusters", "RDS instances", "RDS proxies", "Bastion candidates"):
        assert title in text
    assert "0–4 ACU, auto-pause" in text
    assert f"tunnelman profile add NAME --cluster {seeded.geo} --region {REGION}" in text
    assert "--bastion ec2-user@ec2-" in text
    assert result.stderr.startswith("Querying AWS in us-east-2")


def test_discover_several_regions(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    result = run_cli("discover", "--region", REGION, "--region", OTHER_REGION, env=env)
    assert result.returncode == 0, result.stderr
    assert all(len(line) <= 100 for line in result.stdout.splitlines())
    assert seeded.other_region_cluster in result.stdout
    assert f"  {OTHER_REGION}: 1 cluster" in result.stderr
    everything = json.loads(run_cli("discover", "--json", "--all-engines", env=env).stdout)
    assert seeded.mysql in {item["id"] for item in everything}


def test_discover_without_region(run_cli: RunCli, env: dict[str, str]) -> None:
    del env["AWS_DEFAULT_REGION"], env["AWS_REGION"]
    line = _one_error_line(run_cli("discover", env=env))
    assert line == "tunnelman: error: no region: pass --region or set AWS_DEFAULT_REGION"


def test_discover_unknown_aws_profile(run_cli: RunCli, env: dict[str, str], tmp_home: Path) -> None:
    (tmp_home / ".aws").mkdir()
    (tmp_home / ".aws" / "config").write_text("[profile geo-admin]\nregion = us-east-2\n")
    line = _one_error_line(run_cli("discover", "--aws-profile", "geo-admn", env=env))
    assert "AWS profile 'geo-admn' not found" in line
    assert "did you mean 'geo-admin'?" in line


# ----------------------------------------------------------------------------- profile add

_EXISTING = """\
# tunnelman profiles — written by hand, keep these comments
[defaults]
sslmode = "require"  # always TLS to RDS

[profiles.staging]
# the old bastion, until the migration
bastion = "ec2-user@old-bastion.example.com"
endpoint = "staging.cluster-abc.us-east-2.rds.amazonaws.com"
local_port = 5434
"""


def test_profile_add_from_cluster_keeps_the_file(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded, moto: MotoServer
) -> None:
    path = _write_config(_EXISTING)
    result = run_cli(
        "profile",
        "add",
        "geo",
        "--cluster",
        seeded.geo,
        "--bastion",
        "ec2-user@bastion.example.com",
        "--identity-file",
        "~/.ssh/geo.pem",
        "--local-port",
        "5433",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    text = path.read_text("utf-8")
    assert text.startswith(_EXISTING)  # comments, defaults and the other profile untouched
    data = tomllib.loads(text)
    endpoint = client(moto, "rds").describe_db_clusters(DBClusterIdentifier=seeded.geo)[
        "DBClusters"
    ][0]["Endpoint"]
    assert data["profiles"]["geo"] == {
        "bastion": "ec2-user@bastion.example.com",
        "identity_file": "~/.ssh/geo.pem",
        "endpoint": endpoint,
        "database": "geo",
        "user": "geoadmin",
        "local_port": 5433,
        "password": "secretsmanager",
        "secret": seeded.geo_secret,
        "cluster": seeded.geo,
        "region": REGION,
    }
    assert data["profiles"]["staging"]["local_port"] == 5434
    listed = json.loads(run_cli("ls", "--json", env=env).stdout)
    assert [p["name"] for p in listed] == ["staging", "geo"]
    again = run_cli("profile", "add", "geo", "--cluster", seeded.geo, env=env)
    assert "a profile of that name exists" in _one_error_line(again)
    assert "Looking up" not in again.stderr  # refused before asking AWS


def test_profile_add_from_instance_id(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    result = run_cli("profile", "add", "reports", "--cluster", seeded.standalone, env=env)
    assert result.returncode == 0, result.stderr
    geo = tomllib.loads(_config().read_text("utf-8"))["profiles"]["reports"]
    assert geo["endpoint"].startswith("reports.")
    assert (geo["database"], geo["user"], geo["cluster"]) == ("reports", "reporter", "reports")
    assert "secret" not in geo
    assert "password" not in geo


def test_profile_add_unknown_cluster(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    line = _one_error_line(run_cli("profile", "add", "x", "--cluster", "geo-prd", env=env))
    assert "no RDS cluster or instance 'geo-prd' in us-east-2 (did you mean 'geo-prod'?)" in line
    assert not _config().exists()


def test_profile_add_reader_endpoint(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded, moto: MotoServer
) -> None:
    result = run_cli("profile", "add", "geo-ro", "--cluster", seeded.geo, "--reader", env=env)
    assert result.returncode == 0, result.stderr
    reader = client(moto, "rds").describe_db_clusters(DBClusterIdentifier=seeded.geo)["DBClusters"][
        0
    ]["ReaderEndpoint"]
    saved = tomllib.loads(_config().read_text("utf-8"))["profiles"]["geo-ro"]
    assert saved["endpoint"] == reader
    assert (saved["cluster"], saved["database"], saved["user"]) == (seeded.geo, "geo", "geoadmin")
    assert saved["secret"] == seeded.geo_secret
    # the seeded cluster has a writer only
    assert f"Note: cluster '{seeded.geo}' has no reader instance yet" in result.stderr


def test_profile_add_reader_of_an_instance(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded
) -> None:
    added = run_cli("profile", "add", "r", "--cluster", seeded.standalone, "--reader", env=env)
    line = _one_error_line(added)
    assert "instance 'reports' is not an Aurora cluster: it has no reader endpoint" in line
    assert not _config().exists()


def test_profile_add_proxy_endpoint(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded, moto: MotoServer
) -> None:
    added = run_cli(
        "profile", "add", "geo-px", "--cluster", seeded.geo, "--proxy", seeded.proxy, env=env
    )
    assert added.returncode == 0, added.stderr
    proxy = client(moto, "rds").describe_db_proxies(DBProxyName=seeded.proxy)["DBProxies"][0]
    saved = tomllib.loads(_config().read_text("utf-8"))["profiles"]["geo-px"]
    assert saved["endpoint"] == proxy["Endpoint"]
    assert saved["cluster"] == seeded.geo
    # the seeded proxy requires IAM authentication: passwords would be refused, tokens need TLS
    assert (saved["password"], saved["sslmode"]) == ("iam", "require")
    assert "secret" not in saved


def test_profile_add_unknown_proxy_lists_the_proxies(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded
) -> None:
    added = run_cli("profile", "add", "x", "--cluster", seeded.geo, "--proxy", "geo-prxy", env=env)
    line = _one_error_line(added)
    assert line == (
        "tunnelman: error: no RDS proxy 'geo-prxy' in us-east-2 (did you mean 'geo-proxy'?) "
        "(proxies there: geo-proxy)"
    )
    assert not _config().exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cluster", "geo-prod", "--reader", "--proxy", "p"], "--reader and --proxy cannot"),
        (["--endpoint", "db.example.com", "--reader"], "--reader needs --cluster ID"),
        (
            ["--cluster", "geo-prod", "--endpoint", "db.example.com", "--proxy", "p"],
            "--proxy sets the endpoint: do not pass --endpoint too",
        ),
    ],
)
def test_profile_add_reader_proxy_usage(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded, args: list[str], expected: str
) -> None:
    added = run_cli("profile", "add", "x", *args, env=env)
    assert added.returncode == 2
    assert expected in _one_error_line(added)
    assert "Looking up" not in added.stderr
    assert not _config().exists()


# ----------------------------------------------------------------------------- cluster


def _cluster_profiles(seeded: Seeded) -> None:
    _write_config(
        f"""\
[profiles.geo]
endpoint = "geo.example.com"
cluster = "{seeded.geo}"
region = "{REGION}"

[profiles.reports]
endpoint = "reports.example.com"
cluster = "{seeded.standalone}"
region = "{REGION}"

[profiles.legacy]
endpoint = "legacy.example.com"
cluster = "{seeded.v1}"
region = "{REGION}"
"""
    )


def test_cluster_status_text_and_json(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    _cluster_profiles(seeded)
    text = run_cli("cluster", "status", "geo", env=env)
    assert text.returncode == 0, text.stderr
    assert "status    available" in text.stdout
    assert "serverless v2" in text.stdout
    assert "0–4 ACU, auto-pause" in text.stdout
    assert f"members   {seeded.geo_writer}  writer  db.serverless  available" in text.stdout
    assert "resuming (can take ~15–60 s)" in text.stdout
    data = json.loads(run_cli("cluster", "status", "geo", "--json", env=env).stdout)
    assert (data["profile"], data["id"], data["status"]) == ("geo", seeded.geo, "available")
    assert data["members"][0]["role"] == "writer"
    assert "resuming" in data["note"]


def test_cluster_stop_and_start(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    _cluster_profiles(seeded)
    fast = ["--yes", "--poll-interval", "0.2"]
    stopped = run_cli("cluster", "stop", "geo", *fast, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"cluster '{seeded.geo}' is stopped" in stopped.stdout
    assert "Stopping cluster 'geo-prod'; waiting for stopped" in stopped.stderr
    status = json.loads(run_cli("cluster", "status", "geo", "--json", env=env).stdout)
    assert status["status"] == "stopped"
    assert "tunnelman cluster start geo" in status["note"]
    again = run_cli("cluster", "stop", "geo", *fast, env=env)
    assert again.stdout.strip() == f"cluster '{seeded.geo}' is already stopped."
    started = run_cli("cluster", "start", "geo", "--json", *fast, env=env)
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["status"] == "available"


def test_instance_stop_and_start(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    _cluster_profiles(seeded)
    fast = ["--yes", "--poll-interval", "0.2"]
    assert "is stopped" in run_cli("cluster", "stop", "reports", *fast, env=env).stdout
    assert "is available" in run_cli("cluster", "start", "reports", *fast, env=env).stdout


def test_serverless_v1_cannot_be_stopped(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded
) -> None:
    _cluster_profiles(seeded)
    line = _one_error_line(run_cli("cluster", "stop", "legacy", "--yes", env=env))
    assert "Serverless v1: it cannot be stopped, it pauses by itself" in line


def test_stop_refuses_without_a_terminal(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded
) -> None:
    _cluster_profiles(seeded)
    line = _one_error_line(run_cli("cluster", "stop", "geo", env=env, input=""))
    assert "refusing to stop cluster 'geo-prod' without confirmation" in line
    assert "tunnelman cluster stop geo --yes" in line


def test_stop_asks_on_a_terminal(run_cli: RunCli, env: dict[str, str], seeded: Seeded) -> None:
    _cluster_profiles(seeded)
    code, output = run_on_pty(["cluster", "stop", "geo", "--poll-interval", "0.2"], env, "n")
    assert code != 0
    assert "Stop cluster 'geo-prod' in us-east-2?" in output
    assert "aborted" in output
    code, output = run_on_pty(["cluster", "stop", "geo", "--poll-interval", "0.2"], env, "y")
    assert code == 0, output
    assert "is stopped" in output
    restart = run_cli("cluster", "start", "geo", "--yes", "--poll-interval", "0.2", env=env)
    assert restart.returncode == 0, restart.stderr


# ----------------------------------------------------------------------------- no credentials


@pytest.mark.parametrize(
    "args",
    [
        ["discover", "--region", REGION],
        ["cluster", "status", "geo"],
        ["profile", "add", "geo2", "--cluster", "geo-prod", "--region", REGION],
    ],
    ids=["discover", "cluster-status", "profile-add"],
)
def test_without_credentials_one_clear_line(
    run_cli: RunCli, args: list[str], tmp_home: Path, seeded: Seeded
) -> None:
    _cluster_profiles(seeded)
    env = cli_env(None)  # empty HOME, no AWS_* at all, no instance metadata
    assert not any(k.startswith("AWS_") and k != "AWS_EC2_METADATA_DISABLED" for k in env)
    line = _one_error_line(run_cli(*args, env=env))
    assert line.startswith("tunnelman: error: no AWS credentials found: run `aws configure`")
    assert "aws sso login" in line
    assert "AWS_ACCESS_KEY_ID" in line


# ----------------------------------------------------------------------------- resume note


def test_up_and_psql_say_resuming_for_an_auto_pausing_cluster(
    run_cli: RunCli, env: dict[str, str], seeded: Seeded
) -> None:
    from tests.lab.ports import free_port

    closed = free_port()  # nothing listens: the bastion refuses, after the note was shown
    _write_config(
        f"""\
[profiles.geo]
bastion = "root@127.0.0.1:{closed}"
endpoint = "geo.example.com"
cluster = "{seeded.geo}"
region = "{REGION}"
password = "none"
"""
    )
    for args in (["up", "geo"], ["psql", "geo", "-c", "select 1"]):
        result = run_cli(*args, env=env)
        assert "can auto-pause" in result.stderr, result.stderr
        assert "resuming" in result.stderr
        assert "no identity_file" in _one_error_line(result)  # then it fails for its own reason
