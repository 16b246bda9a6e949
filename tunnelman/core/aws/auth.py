"""Credentials from AWS: RDS IAM auth tokens, Secrets Manager logins, EC2 Instance Connect keys.

Called through `tunnelman.core.aws` by `core.credentials.resolve_password` (password = "iam" /
"secretsmanager") and by the tunnel engine (`instance_connect = true`). Nothing here is stored or
logged: tokens, passwords and private keys go back to the caller only.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, NamedTuple

from tunnelman.core.aws import params
from tunnelman.core.aws.rds import RDSContext, lookup
from tunnelman.core.aws.session import (
    calling,
    error_code,
    instance_connect_client,
    rds_client,
    region_from_arn,
    region_from_host,
    resolve_region,
    secrets_client,
    session_for,
)
from tunnelman.core.errors import AWSError, ConfigError, CredentialError

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Profile

_LOOPBACK = ("127.", "localhost", "::1", "0.0.0.0")


class Login(NamedTuple):
    """A database user and password read from Secrets Manager."""

    username: str
    password: str


def _db_host_port(profile: Profile) -> tuple[str, int]:
    if profile.endpoint is not None:
        return profile.endpoint.host, profile.endpoint.port
    if profile.cluster:
        db = lookup(RDSContext.create(profile), profile.cluster)
        if db.endpoint and db.port:
            return db.endpoint, db.port
        raise AWSError(f"{db.kind} '{db.id}' has no endpoint yet (status {db.status})")
    raise ConfigError(
        f"profile '{profile.name}' has no endpoint",
        hint='add endpoint = "HOST[:PORT]" or cluster = "ID"',
    )


def iam_token(profile: Profile) -> str:
    """An RDS IAM auth token (valid 15 min) for the profile's user at the real endpoint and port.

    Signed on this machine for the endpoint the bastion forwards to, never for 127.0.0.1: the
    server checks the host it was signed for. Use it with sslmode require or stricter.
    """
    host, port = _db_host_port(profile)
    if host.lower().startswith(_LOOPBACK):
        raise CredentialError(
            f"an IAM token must be signed for the database's real endpoint, not {host}",
            hint=f"set endpoint to the RDS host name in profile '{profile.name}'",
        )
    session = session_for(profile)
    region = profile.region or region_from_host(host) or resolve_region(session, profile)
    rds = rds_client(session, region)
    with calling("rds-db:connect", region=region, session=session):
        return rds.generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=profile.user, Region=region
        )


def secret_id_for(profile: Profile) -> str:
    """The profile's `secret` (read from SSM Parameter Store for `ssm:/NAME`), else its cluster's
    (or instance's) managed MasterUserSecret ARN."""
    if profile.secret and params.is_reference(profile.secret):
        session = session_for(profile)
        hosts = (profile.endpoint.host,) if profile.endpoint else ()
        return params.resolve_secret(
            profile.secret,
            session=session,
            region=resolve_region(session, profile, hosts=hosts),
            profile_name=profile.name,
        )
    if profile.secret:
        return profile.secret
    if not profile.cluster:
        raise ConfigError(
            f"profile '{profile.name}' uses Secrets Manager but names no secret and no cluster",
            hint='add secret = "arn:aws:secretsmanager:…" or cluster = "ID"',
        )
    db = lookup(RDSContext.create(profile), profile.cluster)
    if not db.secret_arn:
        raise CredentialError(
            f"{db.kind} '{db.id}' has no RDS-managed master secret",
            hint=f'set secret = "arn:…" in profile \'{profile.name}\' or use password = "keyring"',
        )
    return db.secret_arn


def secret_login(profile: Profile) -> Login:
    """Username and password from the secret's JSON (`{"username": …, "password": …}`)."""
    secret_id = secret_id_for(profile)
    ref = profile.secret if params.is_reference(profile.secret) else None
    shown = params.describe_secret(secret_id, ref)
    session = session_for(profile)
    region = region_from_arn(secret_id) or resolve_region(session, profile)
    client = secrets_client(session, region)
    with calling("secretsmanager:GetSecretValue", region=region, session=session):
        try:
            value = client.get_secret_value(SecretId=secret_id)
        except Exception as exc:
            code = error_code(exc)
            if code == "ResourceNotFoundException":
                raise AWSError(
                    f"secret {shown} not found in {region}",
                    hint=f"check `secret` in profile '{profile.name}' (and its region)",
                ) from None
            if code == "DecryptionFailure":
                raise AWSError(
                    f"cannot decrypt secret {shown}: kms:Decrypt on its KMS key was refused",
                    hint="your IAM policy needs kms:Decrypt for the secret's key",
                ) from None
            raise
    text = value.get("SecretString")
    if text is None:
        raise CredentialError(f"secret {shown} holds binary data, not JSON text")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CredentialError(
            f"secret {shown} is not JSON",
            hint='expected {"username": "…", "password": "…"}',
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("password"), str):
        raise CredentialError(
            f'secret {shown} has no "password" string',
            hint='expected {"username": "…", "password": "…"}',
        )
    username = data.get("username")
    return Login(
        username=username if isinstance(username, str) and username else profile.user,
        password=data["password"],
    )


def ephemeral_key() -> paramiko.PKey:
    """A fresh ed25519 key pair, in memory only."""
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    # paramiko cannot generate ed25519 keys itself; cryptography can, in OpenSSH format.
    pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem))


def instance_connect_key(profile: Profile) -> paramiko.PKey:
    """Push an ephemeral public key to the bastion with EC2 Instance Connect; return the private key.

    The key is accepted by the instance for 60 seconds: connect right away. No file is written.
    """
    instance_id = profile.bastion_instance_id
    if not instance_id:
        raise ConfigError(
            f"profile '{profile.name}' has no bastion_instance_id for EC2 Instance Connect",
            hint='add bastion_instance_id = "i-…"',
        )
    if profile.bastion is None:
        raise ConfigError(
            f"profile '{profile.name}' has no bastion",
            hint='add bastion = "ec2-user@HOST"',
        )
    os_user = profile.bastion.login
    session = session_for(profile)
    region = profile.region or region_from_host(profile.bastion.host)
    region = region or resolve_region(session, profile)
    key = ephemeral_key()
    public = f"{key.get_name()} {key.get_base64()} tunnelman-{profile.name}"
    client = instance_connect_client(session, region)
    with calling("ec2-instance-connect:SendSSHPublicKey", region=region, session=session):
        try:
            answer = client.send_ssh_public_key(
                InstanceId=instance_id, InstanceOSUser=os_user, SSHPublicKey=public
            )
        except Exception as exc:
            code = error_code(exc)
            if code == "EC2InstanceNotFoundException":
                raise AWSError(f"EC2 instance '{instance_id}' not found in {region}") from None
            if code == "EC2InstanceStateInvalidException":
                raise AWSError(f"EC2 instance '{instance_id}' is not running") from None
            if code == "EC2InstanceUnavailableException":
                raise AWSError(
                    f"EC2 instance '{instance_id}' cannot take an Instance Connect key now",
                    hint="is ec2-instance-connect installed on it? try again in a minute",
                ) from None
            raise
    if not answer.get("Success", False):
        raise AWSError(f"EC2 Instance Connect did not accept the key for '{instance_id}'")
    return key
