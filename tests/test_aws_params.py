"""`secret = "ssm:/NAME"` and `cluster = "ssm:/NAME"`: SSM Parameter Store references, resolved
against the lab's moto server over HTTP (String and SecureString parameters, ARNs and ids, a
missing parameter, a value that is not an ARN), the profile schema's checks, and the real CLI.

moto never refuses a call, so the two denials (ssm:GetParameter, and kms:Decrypt for a
SecureString) are answered by botocore's Stubber with the codes and messages AWS sends; the test
says so where it does.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import RunCli
from tests.lab.moto_server import REGION, MotoServer
from tests.lab.stubbed import Stubs, stubs_fixture
from tests.test_aws_lab import OTHER_REGION, Seeded, cli_env, client, seeded_once_fixture
from tunnelman.core import aws
from tunnelman.core import profiles as prof
from tunnelman.core.errors import AWSError, ConfigError
from tunnelman.core.profiles import Profile

seeded_once = seeded_once_fixture()


@pytest.fixture
def seeded(
    moto: MotoServer, seeded_once: Seeded, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Seeded]:
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    aws.clear_cache()
    yield seeded_once
    aws.clear_cache()


@pytest.fixture
def ssm(moto: MotoServer, seeded: Seeded) -> Iterator[Any]:
    made: dict[tuple[str, str], Any] = {}

    class Params:
        def put(self, name: str, value: str, *, secure: bool = False, region: str = REGION) -> str:
            target = client(moto, "ssm", region)
            target.put_parameter(
                Name=name, Value=value, Type="SecureString" if secure else "String", Overwrite=True
            )
            made[(region, name)] = target
            return f"ssm:{name}"

    yield Params()
    for (_, name), target in made.items():
        target.delete_parameters(Names=[name])  # no error for one a test deleted already


def _profile(**values: Any) -> Profile:
    return Profile(name="geo", **values)


def _cluster_arn(moto: MotoServer, ident: str, region: str = REGION) -> str:
    rds = client(moto, "rds", region)
    return str(rds.describe_db_clusters(DBClusterIdentifier=ident)["DBClusters"][0]["DBClusterArn"])


# ----------------------------------------------------------------------------- secret


def test_secret_from_a_string_and_a_securestring_parameter(
    seeded: Seeded, moto: MotoServer, ssm: Any
) -> None:
    arn = client(moto, "secretsmanager").create_secret(
        Name="geo/ssm-app", SecretString='{"username": "gis_app", "password": "pw from sm"}'
    )["ARN"]
    plain = ssm.put("/geo/secret-arn", arn)
    secure = ssm.put("/geo/secret-arn-secure", arn, secure=True)
    for ref in (plain, secure):
        profile = _profile(secret=ref, region=REGION, password="secretsmanager")
        assert aws.secret_id_for(profile) == arn
        assert aws.secret_login(profile) == aws.Login("gis_app", "pw from sm")
    by_name = ssm.put("/geo/secret-name", "geo/ssm-app")
    assert aws.secret_login(_profile(secret=by_name, region=REGION)).username == "gis_app"


def test_secret_parameter_is_read_once(seeded: Seeded, moto: MotoServer, ssm: Any) -> None:
    ref = ssm.put("/geo/once", seeded.geo_secret)
    profile = _profile(secret=ref, region=REGION)
    assert aws.secret_id_for(profile) == seeded.geo_secret
    client(moto, "ssm").delete_parameter(Name="/geo/once")
    assert aws.secret_id_for(profile) == seeded.geo_secret  # cached: AWS is not asked again
    aws.clear_cache()
    with pytest.raises(AWSError, match="SSM parameter '/geo/once' not found in us-east-2"):
        aws.secret_id_for(profile)


def test_missing_parameter_is_one_line(seeded: Seeded) -> None:
    with pytest.raises(AWSError) as caught:
        aws.secret_login(_profile(secret="ssm:/geo/nope", region=REGION))
    assert caught.value.message == "SSM parameter '/geo/nope' not found in us-east-2"
    assert "`secret` in profile 'geo'" in str(caught.value.hint)
    assert "aws ssm get-parameter --name /geo/nope" in str(caught.value.hint)


@pytest.mark.parametrize(
    "value", ['{"username": "u", "password": "hunter2"}', "pass word with spaces"]
)
def test_a_value_that_is_no_secret_is_refused_and_not_shown(
    seeded: Seeded, ssm: Any, value: str
) -> None:
    ref = ssm.put("/geo/oops", value, secure=True)
    with pytest.raises(AWSError) as caught:
        aws.secret_login(_profile(secret=ref, region=REGION))
    text = str(caught.value)
    assert "SSM parameter '/geo/oops' does not hold the ARN (or name) of a Secrets Manager" in text
    assert "hunter2" not in text
    assert "spaces" not in text
    assert f"{len(value)} characters, is not shown" in text


def test_a_plain_name_from_a_parameter_is_not_echoed(seeded: Seeded, ssm: Any) -> None:
    # Someone stored a password where the secret's name belongs: AWS finds no such secret, and the
    # error names the parameter, not the value.
    ref = ssm.put("/geo/pw", "Hunter2Hunter2", secure=True)
    with pytest.raises(AWSError) as caught:
        aws.secret_login(_profile(secret=ref, region=REGION))
    assert str(caught.value).startswith(
        "secret from SSM parameter '/geo/pw' not found in us-east-2"
    )
    assert "Hunter2" not in str(caught.value)


# ----------------------------------------------------------------------------- cluster


def test_cluster_from_a_parameter_holding_an_arn_or_an_id(
    seeded: Seeded, moto: MotoServer, ssm: Any
) -> None:
    by_arn = ssm.put("/geo/cluster-arn", _cluster_arn(moto, seeded.geo))
    by_id = ssm.put("/geo/cluster-id", seeded.geo, secure=True)
    for ref in (by_arn, by_id):
        db = aws.cluster_status(_profile(cluster=ref, region=REGION))
        assert (db.kind, db.id, db.region) == ("cluster", seeded.geo, REGION)
        assert db.members
    # the managed secret is found through the parameter too
    managed = _profile(cluster=by_arn, region=REGION, password="secretsmanager")
    assert aws.secret_id_for(managed) == seeded.geo_secret
    assert aws.find(by_id, region=REGION).id == seeded.geo


def test_cluster_arn_in_another_region_is_looked_up_there(
    seeded: Seeded, moto: MotoServer, ssm: Any
) -> None:
    ref = ssm.put("/geo/eu-cluster", _cluster_arn(moto, seeded.other_region_cluster, OTHER_REGION))
    db = aws.cluster_status(_profile(cluster=ref, region=REGION))
    assert (db.id, db.region) == (seeded.other_region_cluster, OTHER_REGION)


def test_a_cluster_parameter_that_names_no_cluster(seeded: Seeded, ssm: Any) -> None:
    ref = ssm.put("/geo/bad-cluster", "arn:aws:secretsmanager:us-east-2:123456789012:secret:x")
    with pytest.raises(AWSError) as caught:
        aws.cluster_status(_profile(cluster=ref, region=REGION))
    assert "SSM parameter '/geo/bad-cluster' does not hold the id or ARN of an RDS cluster" in str(
        caught.value
    )
    with pytest.raises(AWSError, match="SSM parameter '/geo/no-cluster' not found in us-east-2"):
        aws.cluster_status(_profile(cluster="ssm:/geo/no-cluster", region=REGION))


def test_a_parameter_naming_a_missing_cluster_says_did_you_mean(seeded: Seeded, ssm: Any) -> None:
    ref = ssm.put("/geo/typo", "geo-prd")
    with pytest.raises(AWSError, match=r"no RDS cluster or instance 'geo-prd'.*'geo-prod'"):
        aws.cluster_status(_profile(cluster=ref, region=REGION))


# ----------------------------------------------------------------------------- denials (Stubber)


stubs = stubs_fixture()


_SSM_DENIED = (
    "User: arn:aws:iam::123456789012:user/ana is not authorized to perform: ssm:GetParameter on "
    "resource: arn:aws:ssm:us-east-2:123456789012:parameter/geo/secret-arn because no "
    "identity-based policy allows the ssm:GetParameter action"
)
_KMS_DENIED = (
    "User: arn:aws:iam::123456789012:user/ana is not authorized to perform: kms:Decrypt on "
    "resource: arn:aws:kms:us-east-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab "
    "because no identity-based policy allows the kms:Decrypt action "
    "(Service: AWSKMS; Status Code: 400; Error Code: AccessDeniedException)"
)


@pytest.mark.parametrize(
    ("message", "expected", "hint"),
    [
        (
            _SSM_DENIED,
            "AWS denied ssm:GetParameter on '/geo/secret-arn' in us-east-2",
            "ssm:GetParameter",
        ),
        (
            _KMS_DENIED,
            "cannot decrypt SSM parameter '/geo/secret-arn' (a SecureString): kms:Decrypt",
            "kms:Decrypt",
        ),
    ],
    ids=["ssm", "kms"],
)
def test_denials_name_the_iam_action(stubs: Stubs, message: str, expected: str, hint: str) -> None:
    # Stubber: moto does not enforce IAM; these are the code and messages AWS answers with.
    stubs("ssm").add_client_error(
        "get_parameter",
        service_error_code="AccessDeniedException",
        service_message=message,
        http_status_code=400,
        expected_params={"Name": "/geo/secret-arn", "WithDecryption": True},
    )
    with pytest.raises(AWSError) as caught:
        aws.secret_login(_profile(secret="ssm:/geo/secret-arn", region=REGION))
    assert caught.value.message.startswith(expected)
    assert hint in str(caught.value.hint)
    stubs.verify()


# ----------------------------------------------------------------------------- profile schema


def _load(tmp_path: Path, body: str) -> prof.ProfileSet:
    path = tmp_path / "profiles.toml"
    path.write_text(f'[profiles.geo]\nendpoint = "db.example.com"\n{body}\n', "utf-8")
    return prof.load(path)


@pytest.mark.parametrize(
    "body",
    [
        'secret = "ssm:/geo/secret-arn"\npassword = "secretsmanager"',
        'cluster = "ssm:/geo/cluster"',
        'cluster = "ssm:geo-cluster:3"',
        'secret = "ssm:arn:aws:ssm:us-east-2:123456789012:parameter/geo/secret"\npassword = "secretsmanager"',
    ],
)
def test_schema_accepts_ssm_references(tmp_path: Path, body: str) -> None:
    profile = _load(tmp_path, body).get("geo")
    assert aws.is_reference(profile.secret) or aws.is_reference(profile.cluster)
    assert profile.uses_aws


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('secret = "ssm:"', 'profiles.geo.secret: names no SSM parameter; expected "ssm:/NAME"'),
        ('cluster = "ssm:/a?b"', "profiles.geo.cluster: 'ssm:/a?b' is not an SSM parameter name"),
    ],
)
def test_schema_refuses_a_bad_reference(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("?", r"\?")):
        _load(tmp_path, body)


# ----------------------------------------------------------------------------- the CLI


def _write_config(text: str) -> Path:
    import os

    path = Path(os.environ["TUNNELMAN_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def test_cli_cluster_status_through_a_parameter(
    run_cli: RunCli, seeded: Seeded, moto: MotoServer, ssm: Any
) -> None:
    ref = ssm.put("/geo/cluster-arn", _cluster_arn(moto, seeded.geo), secure=True)
    _write_config(
        f'[profiles.geo]\nendpoint = "geo.example.com"\ncluster = "{ref}"\nregion = "{REGION}"\n'
        '[profiles.gone]\nendpoint = "geo.example.com"\ncluster = "ssm:/geo/gone"\n'
        f'region = "{REGION}"\n'
    )
    env = cli_env(moto)
    shown = run_cli("cluster", "status", "geo", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{seeded.geo}  (cluster in {REGION}, profile geo)")
    missing = run_cli("cluster", "status", "gone", env=env)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        "tunnelman: error: SSM parameter '/geo/gone' not found in us-east-2 "
        "(check `cluster` and its region: aws ssm get-parameter --name /geo/gone)"
    ]


def test_cli_profile_add_keeps_the_reference(
    run_cli: RunCli, seeded: Seeded, moto: MotoServer, ssm: Any
) -> None:
    ref = ssm.put("/geo/cluster-id", seeded.geo)
    path = _write_config("")
    added = run_cli("profile", "add", "geo", "--cluster", ref, env=cli_env(moto))
    assert added.returncode == 0, added.stderr
    saved = tomllib.loads(path.read_text("utf-8"))["profiles"]["geo"]
    assert saved["cluster"] == "ssm:/geo/cluster-id"  # read again at each use, not frozen
    assert saved["secret"] == seeded.geo_secret
    assert saved["endpoint"].startswith(f"{seeded.geo}.cluster-")
