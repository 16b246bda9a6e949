"""`tunnelman query PROFILE "SQL" [--json|--csv]`: one statement through the RDS Data API.

Against the lab's moto server over HTTP: moto's rds-data backend runs no SQL, it answers with
results queued at `/moto-api/static/rds-data/statement-results` (real ExecuteStatement shapes), so
the rows, the three output formats and the request tunnelman sends are checked end to end with the
real CLI. What moto cannot answer — a cluster whose HTTP endpoint is not enabled, an SQL error from
the database — comes from botocore's Stubber with the codes and messages AWS sends (said where).
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.lab.moto_server import REGION, MotoServer
from tests.lab.stubbed import Stubs, run_main, stubs_fixture
from tests.test_aws_lab import (
    Seeded,
    cli_env_fixture,
    client,
    load_json,
    seeded_once_fixture,
)
from tunnelman.core import aws
from tunnelman.core.aws import dataapi
from tunnelman.core.aws import session as aws_session
from tunnelman.core.errors import AWSError, ConfigError
from tunnelman.core.profiles import Profile

_COLUMNS = [
    {"name": "id", "label": "id", "typeName": "int4", "nullable": 0},
    {"name": "name", "label": "name", "typeName": "text", "nullable": 1},
    {"name": "area_km2", "label": "area_km2", "typeName": "float8", "nullable": 1},
    {"name": "active", "label": "active", "typeName": "bool", "nullable": 1},
]
_RECORDS = [
    [{"longValue": 1}, {"stringValue": "Zürich"}, {"doubleValue": 87.88}, {"booleanValue": True}],
    [{"longValue": 12}, {"isNull": True}, {"isNull": True}, {"booleanValue": False}],
]


seeded_once = seeded_once_fixture()


env = cli_env_fixture()


def _queue(moto: MotoServer, *results: dict[str, Any]) -> None:
    """Queue Data API answers in moto (it hands out the last one queued first)."""
    body = json.dumps({"region": REGION, "results": list(results)}).encode()
    request = urllib.request.Request(
        f"{moto.url}/moto-api/static/rds-data/statement-results",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201


def _rows() -> dict[str, Any]:
    return {"records": _RECORDS, "columnMetadata": _COLUMNS, "numberOfRecordsUpdated": 0}


def _write_config(seeded: Seeded, extra: str = "") -> Path:
    path = Path(os.environ["TUNNELMAN_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""\
[profiles.geo]
cluster = "{seeded.geo}"
region = "{REGION}"
database = "geo"

[profiles.legacy]
cluster = "{seeded.v1}"
region = "{REGION}"

[profiles.reports]
cluster = "{seeded.standalone}"
region = "{REGION}"

[profiles.local]
endpoint = "db.example.com"
{extra}""",
        "utf-8",
    )
    return path


def _one_error_line(result: Any) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tunnelman: error: ")
    return str(lines[0])


# ----------------------------------------------------------------------------- the three formats


def test_table_json_and_csv(
    run_cli: RunCli, env: dict[str, str], seeded_once: Seeded, moto: MotoServer
) -> None:
    _write_config(seeded_once)
    sql = "SELECT id, name, area_km2, active FROM towns ORDER BY id"
    _queue(moto, _rows())
    shown = run_cli("query", "geo", sql, env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        " id |  name  | area_km2 | active",
        "----+--------+----------+--------",
        "  1 | Zürich |    87.88 | t",
        " 12 |        |          | f",
        "(2 rows)",
    ]
    as_json = run_cli("query", "geo", sql, "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {"id": 1, "name": "Zürich", "area_km2": 87.88, "active": True},
        {"id": 12, "name": None, "area_km2": None, "active": False},
    ]
    as_csv = run_cli("query", "geo", sql, "--csv", env=env)
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout.splitlines() == [
        "id,name,area_km2,active",
        "1,Zürich,87.88,t",
        "12,,,f",
    ]


def test_a_statement_without_rows(
    run_cli: RunCli, env: dict[str, str], seeded_once: Seeded, moto: MotoServer
) -> None:
    _write_config(seeded_once)
    sql = "UPDATE towns SET active = true WHERE active IS NULL"
    _queue(moto, {"records": [], "numberOfRecordsUpdated": 3})
    shown = run_cli("query", "geo", sql, env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "OK, 3 rows affected\n"
    assert json.loads(run_cli("query", "geo", sql, "--json", env=env).stdout) == []
    assert run_cli("query", "geo", sql, "--csv", env=env).stdout == ""


def test_sql_from_stdin(
    run_cli: RunCli, env: dict[str, str], seeded_once: Seeded, moto: MotoServer
) -> None:
    _write_config(seeded_once)
    _queue(moto, {"records": [[{"stringValue": "3.4"}]], "columnMetadata": [{"label": "v"}]})
    shown = run_cli("query", "geo", "-", "--csv", input="SELECT postgis_version() AS v", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "v\n3.4\n"


def test_the_request_names_cluster_secret_and_database(
    seeded_once: Seeded,
    moto: MotoServer,
    tmp_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    aws.clear_cache()
    sent: list[dict[str, Any]] = []
    real_make_client = aws_session.make_client

    def recording(session: Any, service: str, region: str) -> Any:
        made = real_make_client(session, service, region)
        if service == "rds-data":
            made.meta.events.register(
                "provide-client-params.rds-data.ExecuteStatement",
                lambda params, **_: sent.append(dict(params)),
            )
        return made

    monkeypatch.setattr(aws_session, "make_client", recording)
    sql = "SELECT 1 AS one -- request shape"
    _queue(moto, {"records": [[{"longValue": 1}]], "columnMetadata": [{"label": "one"}]})
    profile = Profile(name="geo", cluster=seeded_once.geo, region=REGION, database="geo")
    result = aws.execute(profile, sql)
    assert result.to_json() == [{"one": 1}]
    cluster_arn = client(moto, "rds").describe_db_clusters(DBClusterIdentifier=seeded_once.geo)[
        "DBClusters"
    ][0]["DBClusterArn"]
    assert sent == [
        {
            "resourceArn": cluster_arn,
            "secretArn": seeded_once.geo_secret,
            "database": "geo",
            "sql": sql,
            "includeResultMetadata": True,
        }
    ]
    # A secret named (not by ARN) in an SSM parameter: the Data API is handed the secret's ARN.
    app_arn = client(moto, "secretsmanager").create_secret(
        Name="geo/query-app", SecretString='{"username": "app", "password": "pw"}'
    )["ARN"]
    client(moto, "ssm").put_parameter(
        Name="/geo/query-secret", Value="geo/query-app", Type="String"
    )
    by_ref = Profile(
        name="geo", cluster=seeded_once.geo, region=REGION, secret="ssm:/geo/query-secret"
    )
    _queue(moto, {"records": [], "numberOfRecordsUpdated": 1})
    assert aws.execute(by_ref, "DELETE FROM t WHERE id = 1").updated == 1
    assert (sent[-1]["secretArn"], sent[-1]["database"]) == (app_arn, "postgres")
    aws.clear_cache()


# ----------------------------------------------------------------------------- errors (moto)


def test_errors_a_person_can_fix(run_cli: RunCli, env: dict[str, str], seeded_once: Seeded) -> None:
    _write_config(seeded_once)
    no_secret = _one_error_line(run_cli("query", "legacy", "SELECT 1", env=env))
    assert "profile 'legacy' names no secret and cluster 'legacy-v1' has no RDS-managed" in (
        no_secret
    )
    assert 'add secret = "arn:aws:secretsmanager:…" (or "ssm:/NAME")' in no_secret
    instance = _one_error_line(run_cli("query", "reports", "SELECT 1", env=env))
    assert "instance 'reports' is not an Aurora cluster" in instance
    no_cluster = _one_error_line(run_cli("query", "local", "SELECT 1", env=env))
    assert "profile 'local' has no cluster: the Data API runs on an Aurora cluster" in no_cluster
    both = _one_error_line(run_cli("query", "geo", "SELECT 1", "--json", "--csv", env=env))
    assert "--json and --csv cannot be used together" in both
    empty = _one_error_line(run_cli("query", "geo", "  ", env=env))
    assert "no SQL statement given" in empty


def test_query_is_listed_in_help(run_cli: RunCli, env: dict[str, str]) -> None:
    shown = run_cli("--help", env=env)
    assert "query" in shown.stdout
    assert "Run one SQL statement via the Data API." in shown.stdout
    usage = run_cli("query", "--help", env=env)
    assert "--json" in usage.stdout
    assert "--csv" in usage.stdout


# ----------------------------------------------------------------------------- errors (Stubber)


stubs = stubs_fixture()


_CLUSTERS = load_json("describe_db_clusters_v2_custom.json")
_CLUSTER = _CLUSTERS["DBClusters"][0]


def _data_api_refuses(stubs: Stubs, code: str, message: str) -> None:
    stubs("rds").add_response(
        "describe_db_clusters", _CLUSTERS, {"DBClusterIdentifier": "geo-prod"}
    )
    stubs("rds-data").add_client_error(
        "execute_statement",
        service_error_code=code,
        service_message=message,
        http_status_code=400,
        expected_params={
            "resourceArn": _CLUSTER["DBClusterArn"],
            "secretArn": _CLUSTER["MasterUserSecret"]["SecretArn"],
            "database": "geo",
            "sql": "SELECT * FROM nope",
            "includeResultMetadata": True,
        },
    )


def _stub_config(tmp_home: Path) -> None:
    path = Path(os.environ["TUNNELMAN_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[profiles.geo]\ncluster = "geo-prod"\nregion = "{REGION}"\ndatabase = "geo"\n', "utf-8"
    )


def test_http_endpoint_not_enabled(
    stubs: Stubs, tmp_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stubber: moto answers every ExecuteStatement; AWS refuses it for a cluster without the
    # HTTP endpoint with this code and message.
    _data_api_refuses(
        stubs,
        "BadRequestException",
        "HttpEndpoint is not enabled for cluster geo-prod. Please refer to "
        "https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/data-api.html"
        "#data-api.troubleshooting",
    )
    _stub_config(tmp_home)
    code, out, err = run_main(["query", "geo", "SELECT * FROM nope"], capsys)
    assert code == 1
    assert out == ""
    assert err == (
        "tunnelman: error: cluster 'geo-prod' has no Data API: its HTTP endpoint is not enabled "
        "(aws rds modify-db-cluster --db-cluster-identifier geo-prod --enable-http-endpoint "
        "(or enable the RDS Data API in the console: Modify → Connectivity))\n"
    )
    stubs.verify()


def test_sql_error_is_the_databases_message(
    stubs: Stubs, tmp_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stubber: moto runs no SQL, so it cannot fail one; this is how the Data API reports it.
    _data_api_refuses(
        stubs,
        "BadRequestException",
        'ERROR: relation "nope" does not exist\n  Position: 15; SQLState: 42P01',
    )
    _stub_config(tmp_home)
    code, out, err = run_main(["query", "geo", "SELECT * FROM nope"], capsys)
    assert code == 1
    assert out == ""
    assert err == (
        'tunnelman: error: ERROR: relation "nope" does not exist Position: 15; SQLState: 42P01\n'
    )
    stubs.verify()


def test_resuming_and_denied(stubs: Stubs) -> None:
    # Stubber: a paused Serverless cluster and an IAM refusal, which moto never produces.
    profile = Profile(name="geo", cluster="geo-prod", region=REGION, database="geo")
    _data_api_refuses(stubs, "DatabaseResumingException", "The database is resuming")
    with pytest.raises(AWSError, match="cluster 'geo-prod' is resuming from a pause"):
        aws.execute(profile, "SELECT * FROM nope")
    _data_api_refuses(
        stubs,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/ana is not authorized to perform: "
        "rds-data:ExecuteStatement on resource: arn:aws:rds:us-east-2:123456789012:cluster:geo-prod",
    )
    with pytest.raises(AWSError) as caught:
        aws.execute(profile, "SELECT * FROM nope")
    assert caught.value.message.startswith("AWS denied rds-data:ExecuteStatement in us-east-2")
    stubs.verify()


# ----------------------------------------------------------------------------- values


def test_values_of_every_field_type() -> None:
    answer = {
        "columnMetadata": [{"label": c} for c in "abcdefg"],
        "records": [
            [
                {"isNull": True},
                {"stringValue": "12.50"},  # numeric arrives as text
                {"longValue": 7},
                {"doubleValue": 0.5},
                {"booleanValue": True},
                {"blobValue": b"\x00\xff"},
                {"arrayValue": {"longValues": [1, 2]}},
            ]
        ],
    }
    result = dataapi.result_from_api(answer)
    assert result.rows == ((None, "12.50", 7, 0.5, True, "\\x00ff", [1, 2]),)
    nested = {"arrayValue": {"arrayValues": [{"stringValues": ["a"]}, {"stringValues": []}]}}
    assert dataapi.value_of(nested) == [["a"], []]


def test_empty_sql_and_no_cluster_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no SQL statement"):
        aws.execute(Profile(name="geo", cluster="geo-prod"), " ")
    with pytest.raises(ConfigError, match="has no cluster"):
        aws.execute(Profile(name="geo"), "SELECT 1")
