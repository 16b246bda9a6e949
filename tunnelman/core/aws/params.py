"""SSM Parameter Store references in profiles: `secret = "ssm:/NAME"` and `cluster = "ssm:/NAME"`.

Deployments often publish the database's secret ARN or cluster ARN as SSM parameters instead of
handing them out. A profile may name the parameter; `auth.secret_id_for` and `rds.lookup` resolve
it here (GetParameter with decryption, so SecureString works) and check that the value is usable:
a Secrets Manager ARN or name, an RDS cluster/instance id or ARN. Each parameter is read once per
command (cached for a few minutes, for the long-lived TUI).

A parameter's value never reaches an error line or a log unless it has the shape of an ARN or an
id: someone may have stored a password where an ARN was expected.
"""

from __future__ import annotations

import re
import threading
import time
from typing import TYPE_CHECKING, Literal, NamedTuple

from tunnelman.core.aws.session import (
    calling,
    error_code,
    error_message,
    region_from_arn,
    ssm_client,
)
from tunnelman.core.errors import AWSError

if TYPE_CHECKING:
    import boto3

PREFIX = "ssm:"
Key = Literal["secret", "cluster"]

_SECRET_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]+"
)
_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9/_+=.@!-]{1,512}")  # RDS names its own "rds!…"
_RDS_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:rds:(?P<region>[a-z0-9-]+):\d{12}:(?:cluster|db):(?P<id>[A-Za-z][A-Za-z0-9-]*)"
)
_RDS_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")
_CACHE_TTL = 300.0
_cache: dict[tuple[str, str, str | None], tuple[float, str]] = {}
_cache_lock = threading.Lock()


def is_reference(value: str | None) -> bool:
    """Whether a profile value names an SSM parameter (`ssm:/NAME`)."""
    return bool(value) and str(value).startswith(PREFIX)


def parameter_name(value: str) -> str:
    """The parameter name in `ssm:NAME`."""
    return value[len(PREFIX) :] if value.startswith(PREFIX) else value


def clear_cache() -> None:
    """Forget every parameter read (between tests, or after a change made elsewhere)."""
    with _cache_lock:
        _cache.clear()


def get_parameter(
    name: str, *, session: boto3.Session, region: str, key: Key, profile_name: str | None = None
) -> str:
    """The parameter's value (decrypted), cached; one AWSError line when it cannot be read."""
    region = region_from_arn(name) or region
    cache_key = (name, region, _profile_of(session))
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(cache_key)
    if hit is not None and now - hit[0] < _CACHE_TTL:
        return hit[1]
    where = f" in profile '{profile_name}'" if profile_name else ""
    client = ssm_client(session, region)
    with calling("ssm:GetParameter", region=region, session=session):
        try:
            answer = client.get_parameter(Name=name, WithDecryption=True)
        except Exception as exc:
            mapped = _parameter_error(exc, name, region, key, where)
            if mapped is None:
                raise
            raise mapped from None
    value = answer.get("Parameter", {}).get("Value")
    if not isinstance(value, str) or not value.strip():
        raise AWSError(
            f"SSM parameter '{name}' is empty",
            hint=f"it should hold the {_WANTED[key]}; fix it or `{key}`{where}",
        )
    with _cache_lock:
        _cache[cache_key] = (now, value.strip())
    return value.strip()


_WANTED: dict[Key, str] = {
    "secret": "ARN (or name) of a Secrets Manager secret",
    "cluster": "id or ARN of an RDS cluster or instance",
}


def _profile_of(session: boto3.Session) -> str | None:
    try:
        return str(session.profile_name)
    except Exception:  # a session without a profile name is still a session
        return None


def _parameter_error(
    exc: Exception, name: str, region: str, key: Key, where: str
) -> AWSError | None:
    code = error_code(exc)
    message = error_message(exc)
    if code == "ParameterNotFound":
        return AWSError(
            f"SSM parameter '{name}' not found in {region}",
            hint=f"check `{key}`{where} and its region: aws ssm get-parameter --name {name}",
        )
    if code == "ParameterVersionNotFound":
        return AWSError(f"SSM parameter '{name}': no such version in {region}")
    if code in ("InvalidKeyId", "KMSAccessDeniedException") or (
        code in ("AccessDeniedException", "AccessDenied") and "kms" in message.lower()
    ):
        return AWSError(
            f"cannot decrypt SSM parameter '{name}' (a SecureString): kms:Decrypt on its KMS key "
            "was refused",
            hint="your IAM policy needs kms:Decrypt for the parameter's key",
        )
    if code in ("AccessDeniedException", "AccessDenied"):
        return AWSError(
            f"AWS denied ssm:GetParameter on '{name}' in {region}",
            hint="your IAM policy needs ssm:GetParameter on the parameter "
            "(and kms:Decrypt on its key for a SecureString)",
        )
    return None


class ClusterRef(NamedTuple):
    """A cluster or instance id read from a parameter, and the region its ARN names (if any)."""

    ident: str
    region: str | None


def rds_ident(value: str) -> ClusterRef | None:
    """An RDS id or cluster/instance ARN as (id, ARN region); None for anything else."""
    match = _RDS_ARN_RE.fullmatch(value)
    if match:
        return ClusterRef(match.group("id"), match.group("region"))
    if _RDS_ID_RE.fullmatch(value):
        return ClusterRef(value, None)
    return None


def _unusable(name: str, key: Key, where: str, value: str) -> AWSError:
    # The value itself stays out of the message: it may be something that should not be shown.
    return AWSError(
        f"SSM parameter '{name}' does not hold the {_WANTED[key]} "
        f"(its value, {len(value)} characters, is not shown)",
        hint=f"store the {_WANTED[key]} in it, or set `{key}`{where} directly",
    )


def resolve_cluster(
    ref: str, *, session: boto3.Session, region: str, profile_name: str | None = None
) -> ClusterRef:
    """The cluster (or instance) an `ssm:` reference names."""
    name = parameter_name(ref)
    value = get_parameter(
        name, session=session, region=region, key="cluster", profile_name=profile_name
    )
    found = rds_ident(value)
    if found is None:
        where = f" in profile '{profile_name}'" if profile_name else ""
        raise _unusable(name, "cluster", where, value)
    return found


def resolve_secret(
    ref: str, *, session: boto3.Session, region: str, profile_name: str | None = None
) -> str:
    """The Secrets Manager ARN (or name) an `ssm:` reference names."""
    name = parameter_name(ref)
    value = get_parameter(
        name, session=session, region=region, key="secret", profile_name=profile_name
    )
    if _SECRET_ARN_RE.fullmatch(value) or _SECRET_NAME_RE.fullmatch(value):
        return value
    where = f" in profile '{profile_name}'" if profile_name else ""
    raise _unusable(name, "secret", where, value)


def describe_secret(secret_id: str, ref: str | None) -> str:
    """How error lines name a secret: its ARN, or the parameter it came from (a plain name read
    from a parameter is not shown: it might be the password itself)."""
    if ref is None or _SECRET_ARN_RE.fullmatch(secret_id):
        return f"'{secret_id}'"
    return f"from SSM parameter '{parameter_name(ref)}'"
