"""EC2 Instance Connect Endpoints: find the one that reaches an instance, and sign its tunnel URL.

Called through `tunnelman.core.aws` by the eice transport (`tunnelman.core.transport.eice`), the
doctor's eice steps and discovery. What `aws ec2-instance-connect open-tunnel` does, step for
step: DescribeInstances for the instance's VPC, subnet and private IP; DescribeInstanceConnect
Endpoints in that VPC (usable states only; one in the instance's subnet first, else the VPC's
first); then `wss://{DnsName}/openTunnel?instanceConnectEndpointId=…&remotePort=…&
privateIpAddress=…&maxTunnelDuration=…` presigned with SigV4 (service ec2-instance-connect, the
`host` header signed, valid 60 s). The signed URL carries credentials for a minute: it is never
logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tunnelman.core.aws.session import (
    _NO_CREDENTIALS,
    calling,
    ec2_client,
    error_code,
    instance_connect_client,
    region_from_host,
    resolve_region,
    session_for,
)
from tunnelman.core.errors import AWSError, ConfigError

if TYPE_CHECKING:
    import boto3

    from tunnelman.core.profiles import Profile

# AWS's own limit and the CLI's default: the endpoint ends a tunnel after this many seconds.
MAX_TUNNEL_DURATION = 3600
SIGNED_URL_EXPIRES = 60
# The states in which an endpoint takes tunnels (the AWS CLI's filter).
USABLE_STATES = ("create-complete", "update-in-progress", "update-failed", "update-complete")
OPEN_TUNNEL = "ec2-instance-connect:OpenTunnel"


def create_hint(subnet_id: str | None) -> str:
    """How to make the missing endpoint (the IAM action named)."""
    return (
        "create one in the instance's subnet (EC2 console → Endpoints → EC2 Instance Connect "
        f"Endpoint, or `aws ec2 create-instance-connect-endpoint --subnet-id {subnet_id or 'subnet-…'}`"
        "; IAM action ec2:CreateInstanceConnectEndpoint) and allow port 22 from its security group "
        "in the instance's"
    )


@dataclass(frozen=True)
class ConnectEndpoint:
    """One EC2 Instance Connect Endpoint, as DescribeInstanceConnectEndpoints describes it."""

    id: str
    dns_name: str
    state: str
    vpc_id: str | None
    subnet_id: str | None
    region: str
    fips_dns_name: str | None = None

    @property
    def usable(self) -> bool:
        return self.state in USABLE_STATES

    def to_json(self) -> dict[str, Any]:
        """The `discover --json` object for it (kind "instance-connect-endpoint")."""
        return {
            "kind": "instance-connect-endpoint",
            "id": self.id,
            "region": self.region,
            "status": self.state,
            "dns_name": self.dns_name,
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
        }


def endpoint_from_api(raw: dict[str, Any], region: str) -> ConnectEndpoint:
    return ConnectEndpoint(
        id=str(raw.get("InstanceConnectEndpointId") or "?"),
        dns_name=str(raw.get("DnsName") or ""),
        state=str(raw.get("State") or "unknown"),
        vpc_id=raw.get("VpcId"),
        subnet_id=raw.get("SubnetId"),
        region=region,
        fips_dns_name=raw.get("FipsDnsName"),
    )


@dataclass(frozen=True)
class Target:
    """Where a tunnel goes: the instance (its private IP) through which endpoint, in which region."""

    instance_id: str
    private_ip: str
    vpc_id: str
    subnet_id: str | None
    endpoint: ConnectEndpoint
    region: str


def region_for(profile: Profile, session: boto3.Session) -> str:
    host = profile.bastion.host if profile.bastion is not None else None
    return profile.region or region_from_host(host) or resolve_region(session, profile)


def list_endpoints(
    ec2: Any, region: str, vpc_ids: list[str] | None = None
) -> list[ConnectEndpoint]:
    """The endpoints (in every state) in `vpc_ids` (all VPCs when None). Raises botocore errors:
    the caller wraps the call in `calling("ec2:DescribeInstanceConnectEndpoints", …)`."""
    kwargs: dict[str, Any] = {}
    if vpc_ids is not None:
        if not vpc_ids:
            return []
        kwargs["Filters"] = [{"Name": "vpc-id", "Values": list(vpc_ids)}]
    found: list[ConnectEndpoint] = []
    for page in ec2.get_paginator("describe_instance_connect_endpoints").paginate(**kwargs):
        found.extend(
            endpoint_from_api(dict(raw), region) for raw in page.get("InstanceConnectEndpoints", [])
        )
    return found


def _instance(ec2: Any, instance_id: str, region: str) -> dict[str, Any]:
    try:
        answer = ec2.describe_instances(InstanceIds=[instance_id])
    except Exception as exc:
        if error_code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
            raise AWSError(
                f"EC2 instance '{instance_id}' not found in {region}",
                hint="check bastion_instance_id and region in the profile",
            ) from None
        raise
    for reservation in answer.get("Reservations", []):
        for raw in reservation.get("Instances", []):
            return dict(raw)
    raise AWSError(
        f"EC2 instance '{instance_id}' not found in {region}",
        hint="check bastion_instance_id and region in the profile",
    )


def find_target(profile: Profile, *, session: boto3.Session | None = None) -> Target:
    """The profile's instance and the Instance Connect Endpoint that reaches it (AWSError if none)."""
    instance_id = profile.bastion_instance_id
    if not instance_id:
        raise ConfigError(
            f"profile '{profile.name}' has no bastion_instance_id for transport = \"eice\"",
            hint='add bastion_instance_id = "i-…"',
        )
    session = session or session_for(profile)
    region = region_for(profile, session)
    ec2 = ec2_client(session, region)
    with calling("ec2:DescribeInstances", region=region, session=session):
        raw = _instance(ec2, instance_id, region)
    state = str((raw.get("State") or {}).get("Name") or "unknown")
    vpc_id, subnet_id, private_ip = (
        raw.get("VpcId"),
        raw.get("SubnetId"),
        raw.get("PrivateIpAddress"),
    )
    if not vpc_id or not private_ip:
        raise AWSError(
            f"EC2 instance '{instance_id}' has no VPC address (state {state})",
            hint="start the instance: `aws ec2 start-instances --instance-ids " + instance_id + "`"
            if state != "running"
            else None,
        )
    with calling("ec2:DescribeInstanceConnectEndpoints", region=region, session=session):
        endpoints = list_endpoints(ec2, region, [str(vpc_id)])
    usable = [e for e in endpoints if e.usable]
    if not usable:
        others = ", ".join(f"{e.id} ({e.state})" for e in endpoints)
        raise AWSError(
            f"no EC2 Instance Connect Endpoint in {vpc_id} (the VPC of {instance_id}, {region})"
            + (f" is ready: {others}" if others else ""),
            hint=create_hint(subnet_id),
        )
    chosen = next((e for e in usable if e.subnet_id == subnet_id), usable[0])
    return Target(
        instance_id=instance_id,
        private_ip=str(private_ip),
        vpc_id=str(vpc_id),
        subnet_id=subnet_id,
        endpoint=chosen,
        region=region,
    )


def signed_url(
    profile: Profile,
    target: Target,
    *,
    remote_port: int = 22,
    max_duration: int = MAX_TUNNEL_DURATION,
    session: boto3.Session | None = None,
) -> str:
    """The presigned `wss://…/openTunnel?…` URL (valid 60 s) for a tunnel to the target's port."""
    from botocore.signers import RequestSigner

    session = session or session_for(profile)
    client = instance_connect_client(session, target.region)
    with calling(OPEN_TUNNEL, region=target.region, session=session):
        credentials = session.get_credentials()
    if credentials is None:
        raise AWSError(_NO_CREDENTIALS)
    model = client.meta.service_model
    signer = RequestSigner(
        model.service_id,
        target.region,
        model.signing_name,
        model.signature_version,
        credentials,
        client.meta.events,
    )
    host = target.endpoint.dns_name
    query = urlencode(
        {
            "instanceConnectEndpointId": target.endpoint.id,
            "remotePort": remote_port,
            "privateIpAddress": target.private_ip,
            "maxTunnelDuration": max_duration,
        }
    )
    request = {
        "url": f"wss://{host}/openTunnel?{query}",
        "body": {},
        "headers": {"host": host},
        "method": "GET",
        "query_string": "",
        "url_path": "/",
        "context": {},
    }
    with calling(OPEN_TUNNEL, region=target.region, session=session):
        return str(
            signer.generate_presigned_url(
                request_dict=request, operation_name="openTunnel", expires_in=SIGNED_URL_EXPIRES
            )
        )
