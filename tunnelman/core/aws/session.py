"""AWS sessions, clients and error mapping: the ground floor of `tunnelman.core.aws`.

Called by the package's other modules only (the CLI and the TUI go through `tunnelman.core.aws`).
boto3 is imported inside functions, never at module level, so importing this module costs nothing:
`tunnelman ls`, `up` and `psql` on a profile without AWS settings never load boto3 (≈0.6 s).

Every boto3 failure a person can fix becomes one `AWSError` line that says what to do: configure
credentials, log in to SSO again, ask for an IAM action, fix a region name.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from tunnelman.core.errors import AWSError

if TYPE_CHECKING:
    import boto3
    from botocore.config import Config
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2_instance_connect import EC2InstanceConnectClient
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_rds_data import RDSDataServiceClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_ssm import SSMClient

    from tunnelman.core.profiles import Profile

log = logging.getLogger(__name__)

NO_REGION = "no region: pass --region or set AWS_DEFAULT_REGION"
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
# `db.cluster-abc.us-east-2.rds.amazonaws.com`, `ec2-3-1-2-3.us-east-2.compute.amazonaws.com`
_HOST_REGION_RE = re.compile(
    r"\.([a-z]{2}(?:-[a-z]+)+-\d{1,2})\.(?:rds|compute)\.amazonaws\.com(?:\.cn)?$"
)

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30
MAX_ATTEMPTS = 5


def session_for(
    profile: Profile | None = None, *, region: str | None = None, aws_profile: str | None = None
) -> boto3.Session:
    """A boto3 session on the standard chain (env, shared config/credentials, SSO, IMDS).

    `region` / `aws_profile` win over the profile's own settings; with neither, boto3's defaults
    (`AWS_PROFILE`, `AWS_DEFAULT_REGION`, `~/.aws/config`) apply. `AWS_ENDPOINT_URL` is honoured
    by botocore itself.
    """
    import boto3
    import botocore.exceptions

    name = aws_profile or (profile.aws_profile if profile is not None else None)
    wanted = region or (profile.region if profile is not None else None)
    try:
        return boto3.Session(profile_name=name, region_name=wanted)
    except botocore.exceptions.ProfileNotFound as exc:
        raise _profile_not_found(exc, name) from None


def resolve_region(
    session: boto3.Session, profile: Profile | None = None, *, hosts: tuple[str | None, ...] = ()
) -> str:
    """The region to use: the session's (from --region / the profile / AWS config), else one read
    from an AWS host name (an RDS endpoint or an EC2 public DNS name), else an `AWSError`."""
    if session.region_name:
        return session.region_name
    for host in hosts:
        found = region_from_host(host)
        if found:
            return found
    if profile is not None:
        raise AWSError(
            NO_REGION.replace("pass --region", f"add region = \"…\" to profile '{profile.name}'")
        )
    raise AWSError(NO_REGION)


def region_from_host(host: str | None) -> str | None:
    """The region in an RDS endpoint or EC2 public DNS name, else None."""
    if not host:
        return None
    match = _HOST_REGION_RE.search(host.lower())
    return match.group(1) if match else None


def region_from_arn(arn: str | None) -> str | None:
    """The region field of an ARN (`arn:aws:secretsmanager:REGION:…`), else None."""
    if not arn or not arn.startswith("arn:"):
        return None
    parts = arn.split(":")
    return (parts[3] or None) if len(parts) > 4 else None


@functools.cache
def known_regions() -> frozenset[str]:
    """Every region botocore knows, in every partition (from its small partitions.json: asking
    per service would parse the whole RDS model, ≈0.3 s)."""
    import botocore.session

    regions: set[str] = set()
    with contextlib.suppress(Exception):  # an odd botocore must not break the check
        data = botocore.session.get_session().get_data("partitions")
        for partition in data.get("partitions", []):
            regions.update(r for r in partition.get("regions", {}) if not r.endswith("-global"))
    return frozenset(regions)


def check_region(region: str) -> None:
    """Refuse a region name that is malformed or a near-miss of a known one (`us-est-2`).

    A well-formed name botocore does not know yet is let through: AWS opens regions faster than
    botocore releases.
    """
    known = known_regions()
    if not known or region in known:
        return
    guess = difflib.get_close_matches(region, sorted(known), n=2, cutoff=0.8)
    if guess or not _REGION_RE.match(region):
        tip = " (did you mean " + " or ".join(f"'{g}'" for g in guess) + "?)" if guess else ""
        raise AWSError(f"unknown AWS region '{region}'{tip}", hint="e.g. us-east-2, eu-west-1")


def client_config() -> Config:
    """Retries with backoff for throttling and transient errors, and short network timeouts."""
    from botocore.config import Config

    return Config(
        retries={"mode": "adaptive", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        user_agent_extra="tunnelman",
    )


def make_client(session: boto3.Session, service: str, region: str) -> Any:
    """A botocore client for `service` in `region`. Tests replace this to hand out Stubber clients.

    Create clients in one thread and share them: boto3 sessions are not thread-safe, clients are.
    """
    check_region(region)
    try:
        return session.client(service, region_name=region, config=client_config())  # type: ignore[call-overload]
    except Exception as exc:
        mapped = map_error(exc, f"{service}:CreateClient", region=region, session=session)
        if mapped is None:
            raise
        raise mapped from None


def rds_client(session: boto3.Session, region: str) -> RDSClient:
    return cast("RDSClient", make_client(session, "rds", region))


def ec2_client(session: boto3.Session, region: str) -> EC2Client:
    return cast("EC2Client", make_client(session, "ec2", region))


def secrets_client(session: boto3.Session, region: str) -> SecretsManagerClient:
    return cast("SecretsManagerClient", make_client(session, "secretsmanager", region))


def ssm_client(session: boto3.Session, region: str) -> SSMClient:
    return cast("SSMClient", make_client(session, "ssm", region))


def data_api_client(session: boto3.Session, region: str) -> RDSDataServiceClient:
    return cast("RDSDataServiceClient", make_client(session, "rds-data", region))


def instance_connect_client(session: boto3.Session, region: str) -> EC2InstanceConnectClient:
    return cast("EC2InstanceConnectClient", make_client(session, "ec2-instance-connect", region))


# ----------------------------------------------------------------------------- errors

_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess"}
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_REJECTED = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "InvalidSignatureException",
    "IncompleteSignature",
}
_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
}
_NO_CREDENTIALS = (
    "no AWS credentials found: run `aws configure` (access keys) or `aws sso login --profile P`"
    " (SSO), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
)


def _profile_name(session: boto3.Session | None, fallback: str | None = None) -> str:
    if fallback:
        return fallback
    if session is not None:
        with contextlib.suppress(Exception):
            return str(session.profile_name)
    return "default"


def _profile_not_found(exc: Exception, name: str | None) -> AWSError:
    import botocore.session

    missing = name or getattr(exc, "kwargs", {}).get("profile") or "?"
    try:
        available = list(botocore.session.Session().available_profiles)
    except Exception:  # a broken config file: the name is the useful part
        available = []
    guess = difflib.get_close_matches(str(missing), available, n=1)
    tip = f" (did you mean '{guess[0]}'?)" if guess else ""
    known = ", ".join(available) if available else "none"
    return AWSError(
        f"AWS profile '{missing}' not found in your AWS config{tip}",
        hint=f"profiles: {known}; add one with `aws configure --profile {missing}`",
    )


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message") or "").strip()
    return str(exc).strip()


def map_error(
    exc: BaseException,
    action: str,
    *,
    region: str | None = None,
    session: boto3.Session | None = None,
    aws_profile: str | None = None,
) -> AWSError | None:
    """One actionable `AWSError` for a botocore failure, or None when it is not botocore's.

    `action` is the IAM action (`rds:DescribeDBClusters`) so a refusal names what to ask for.
    """
    import botocore.exceptions as be
    from botocore.parsers import ResponseParserError

    where = f" in {region}" if region else ""
    if isinstance(exc, be.NoCredentialsError):
        return AWSError(_NO_CREDENTIALS)
    if isinstance(exc, be.PartialCredentialsError):
        return AWSError(f"incomplete AWS credentials: {exc}", hint="run `aws configure`")
    if isinstance(exc, be.ProfileNotFound):
        return _profile_not_found(exc, aws_profile)
    if isinstance(exc, be.UnauthorizedSSOTokenError | be.SSOTokenLoadError | be.SSOError):
        name = _profile_name(session, aws_profile)
        return AWSError(
            f"the AWS SSO session for profile '{name}' has expired or is missing: "
            f"run `aws sso login --profile {name}`"
        )
    if isinstance(exc, be.TokenRetrievalError):
        name = _profile_name(session, aws_profile)
        return AWSError(
            f"could not refresh AWS credentials ({exc}): run `aws sso login --profile {name}`"
        )
    if isinstance(exc, be.CredentialRetrievalError):
        return AWSError(f"could not get AWS credentials: {exc}")
    if isinstance(exc, be.NoRegionError):
        return AWSError(NO_REGION)
    if isinstance(exc, be.EndpointConnectionError | be.ConnectTimeoutError):
        url = getattr(exc, "kwargs", {}).get("endpoint_url", "AWS")
        return AWSError(
            f"cannot reach {url}{where}: check the network, a proxy, and the region name"
        )
    if isinstance(exc, be.ReadTimeoutError | be.ConnectionClosedError):
        return AWSError(f"AWS did not answer {action}{where} in time; try again")
    if isinstance(exc, be.ClientError):
        return _client_error(exc, action, where, session, aws_profile)
    if isinstance(exc, be.ParamValidationError):
        return AWSError(f"bad request for {action}: {exc}")
    if isinstance(exc, ResponseParserError):
        # e.g. an emulator that does not implement the call answers with an HTML error page
        return AWSError(f"AWS {action}{where} failed: the answer could not be read")
    if isinstance(exc, be.BotoCoreError):
        return AWSError(f"AWS {action}{where} failed: {exc}")
    return None


def _client_error(
    exc: BaseException,
    action: str,
    where: str,
    session: boto3.Session | None,
    aws_profile: str | None,
) -> AWSError:
    code = error_code(exc) or "Error"
    message = error_message(exc)
    if code in _DENIED:
        who = re.search(
            r"(arn:aws[\w-]*:(?:iam|sts)::\d+:\S+?)(?: is not authorized|\s|$)", message
        )
        as_who = f" (as {who.group(1)})" if who else ""
        return AWSError(
            f"AWS denied {action}{where}{as_who}",
            hint=f"your IAM policy needs {action}",
        )
    if code in _EXPIRED:
        name = _profile_name(session, aws_profile)
        return AWSError(
            f"your AWS credentials have expired ({code}): refresh them, "
            f"e.g. `aws sso login --profile {name}` or a new session token"
        )
    if code in _REJECTED:
        return AWSError(
            f"AWS rejected the credentials ({code}: {message or 'invalid'})",
            hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile's keys",
        )
    if code in _THROTTLED:
        return AWSError(f"AWS throttled {action}{where} after several retries; try again shortly")
    if code == "OptInRequired":
        return AWSError(f"the region{where.replace(' in', '')} is not enabled for this account")
    detail = f"{code}: {message}" if message else code
    return AWSError(f"AWS {action}{where} failed: {detail}")


@contextlib.contextmanager
def calling(
    action: str,
    *,
    region: str | None = None,
    session: boto3.Session | None = None,
    aws_profile: str | None = None,
) -> Iterator[None]:
    """Run boto3 calls, turning botocore failures into one-line `AWSError`s naming `action`."""
    try:
        yield
    except AWSError:
        raise
    except Exception as exc:
        mapped = map_error(exc, action, region=region, session=session, aws_profile=aws_profile)
        if mapped is None:
            raise
        log.debug("%s failed: %r", action, exc)
        raise mapped from None
