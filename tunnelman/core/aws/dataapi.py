"""One SQL statement through the RDS Data API (`tunnelman query`): no bastion, no tunnel.

Called through `tunnelman.core.aws` by `cli/cmd_query.py`. The Data API runs the statement over
HTTPS against an Aurora cluster whose HTTP endpoint is enabled, logging in with a Secrets Manager
secret: the profile's `secret` (an ARN, a name, or `ssm:/NAME`), else the cluster's RDS-managed
master secret. The password never passes through tunnelman; only the secret's ARN is sent.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunnelman.core.aws import params
from tunnelman.core.aws.auth import secret_id_for
from tunnelman.core.aws.model import Database
from tunnelman.core.aws.rds import RDSContext, lookup
from tunnelman.core.aws.session import (
    calling,
    data_api_client,
    error_code,
    error_message,
    secrets_client,
)
from tunnelman.core.errors import AWSError, ConfigError, TunnelmanError

if TYPE_CHECKING:
    from tunnelman.core.profiles import Profile

ACTION = "rds-data:ExecuteStatement"


class QueryError(TunnelmanError):
    """The database refused the statement (a syntax error, a missing table, a permission)."""


@dataclass(frozen=True)
class Result:
    """What a statement returned: column names and rows (None for NULL), or a count of rows
    changed by one that returns none."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    updated: int | None = None

    def to_json(self) -> list[dict[str, Any]]:
        """A list of row objects, column name -> value."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def value_of(field: Mapping[str, Any]) -> Any:
    """A Data API `Field` as a Python value: NULL -> None; bytes as psql shows bytea (`\\x…`)."""
    if field.get("isNull"):
        return None
    for key in ("stringValue", "longValue", "doubleValue", "booleanValue"):
        if key in field:
            return field[key]
    if "blobValue" in field:
        blob = field["blobValue"]
        raw = blob if isinstance(blob, bytes) else base64.b64decode(str(blob))
        return "\\x" + raw.hex()
    if "arrayValue" in field:
        return _array(field["arrayValue"])
    return None


def _array(value: Mapping[str, Any]) -> list[Any]:
    for key in ("stringValues", "longValues", "doubleValues", "booleanValues"):
        if key in value:
            return list(value[key])
    return [_array(v) for v in value.get("arrayValues", [])]


def result_from_api(answer: Mapping[str, Any]) -> Result:
    """A `Result` from an ExecuteStatement answer (includeResultMetadata=True)."""
    metadata: Sequence[Mapping[str, Any]] = answer.get("columnMetadata") or []
    columns = tuple(
        str(c.get("label") or c.get("name") or f"?column{i}?") for i, c in enumerate(metadata)
    )
    records: Sequence[Sequence[Mapping[str, Any]]] = answer.get("records") or []
    rows = tuple(tuple(value_of(f) for f in record) for record in records)
    if rows and not columns:
        columns = tuple(f"?column{i}?" for i in range(len(rows[0])))
    updated = answer.get("numberOfRecordsUpdated")
    return Result(columns=columns, rows=rows, updated=updated if isinstance(updated, int) else None)


def _secret_arn(ctx: RDSContext, profile: Profile, db: Database) -> str:
    if profile.secret:
        secret = secret_id_for(profile)
    elif db.secret_arn:
        secret = db.secret_arn
    else:
        raise ConfigError(
            f"profile '{profile.name}' names no secret and cluster '{db.id}' has no RDS-managed "
            "master secret: the Data API logs in with a Secrets Manager secret",
            hint=f'add secret = "arn:aws:secretsmanager:…" (or "ssm:/NAME") to '
            f"[profiles.{profile.name}]",
        )
    if secret.startswith("arn:"):
        return secret
    region = db.region
    # The Data API wants the ARN; a name is looked up once, where the cluster is.
    client = secrets_client(ctx.session, region)
    with calling("secretsmanager:DescribeSecret", region=region, session=ctx.session):
        try:
            return str(client.describe_secret(SecretId=secret)["ARN"])
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                ref = profile.secret if params.is_reference(profile.secret) else None
                raise AWSError(
                    f"secret {params.describe_secret(secret, ref)} not found in {region}",
                    hint=f"check `secret` in profile '{profile.name}' (and its region)",
                ) from None
            raise


def execute(profile: Profile, sql: str) -> Result:
    """Run `sql` on the profile's cluster through the Data API, as the profile's secret's user."""
    if not sql.strip():
        raise ConfigError("no SQL statement given", hint='tunnelman query PROFILE "SELECT …"')
    if not profile.cluster:
        raise ConfigError(
            f"profile '{profile.name}' has no cluster: the Data API runs on an Aurora cluster",
            hint=f'add cluster = "ID" (or "ssm:/NAME") to [profiles.{profile.name}]',
        )
    ctx = RDSContext.create(profile)
    db = lookup(ctx, profile.cluster)
    if db.kind != "cluster" or not db.arn:
        raise AWSError(
            f"{db.kind} '{db.id}' is not an Aurora cluster: the RDS Data API works with Aurora "
            "clusters only",
            hint=f"use the tunnel instead: tunnelman psql {profile.name} -c '…'",
        )
    secret = _secret_arn(ctx, profile, db)
    client = data_api_client(ctx.session, db.region)
    with calling(ACTION, region=db.region, session=ctx.session):
        try:
            answer = client.execute_statement(
                resourceArn=db.arn,
                secretArn=secret,
                database=profile.database,
                sql=sql,
                includeResultMetadata=True,
            )
        except Exception as exc:
            mapped = _statement_error(exc, db.id, profile)
            if mapped is None:
                raise
            raise mapped from None
    return result_from_api(dict(answer))


def _statement_error(exc: Exception, cluster: str, profile: Profile) -> TunnelmanError | None:
    code = error_code(exc)
    message = " ".join(error_message(exc).split())
    lowered = message.lower()
    if code is None:
        return None
    if "httpendpoint" in lowered.replace(" ", "") and "not enabled" in lowered:
        return AWSError(
            f"cluster '{cluster}' has no Data API: its HTTP endpoint is not enabled",
            hint=f"aws rds modify-db-cluster --db-cluster-identifier {cluster} "
            "--enable-http-endpoint (or enable the RDS Data API in the console: Modify → "
            "Connectivity)",
        )
    if code == "DatabaseResumingException":
        return AWSError(
            f"cluster '{cluster}' is resuming from a pause; try again in a few seconds",
        )
    if code == "StatementTimeoutException":
        return QueryError(
            "the statement ran longer than the Data API allows (45 s)",
            hint=f"run long statements through the tunnel: tunnelman psql {profile.name}",
        )
    if code == "DatabaseNotFoundException":
        return AWSError(
            f"no database '{profile.database}' on cluster '{cluster}'",
            hint=f"check `database` in profile '{profile.name}'",
        )
    if code in ("BadRequestException", "DatabaseErrorException") and message:
        if lowered.startswith("error fetching secret"):
            return AWSError(f"the Data API could not use the secret: {message}")
        return QueryError(message)
    if code == "ForbiddenException":
        return AWSError(
            f"AWS denied {ACTION} on cluster '{cluster}': {message or 'forbidden'}",
            hint=f"your IAM policy needs {ACTION} and secretsmanager:GetSecretValue on the secret",
        )
    return None
