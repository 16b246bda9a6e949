"""What tunnelman knows about AWS databases and bastions, as plain frozen dataclasses.

Built from describe_* responses by pure functions (no boto3 here), so discovery, `cluster status`,
`profile add --cluster` and the TUI share one view and one JSON shape (`to_json`, the `discover
--json` contract in ARCHITECTURE.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["cluster", "instance", "proxy"]
Serverless = Literal["v1", "v2"]
POSTGRES_ENGINES = frozenset({"postgres", "aurora-postgresql"})
_BASTION_RE = re.compile(r"bastion|jump", re.IGNORECASE)


@dataclass(frozen=True)
class Member:
    """An instance of an Aurora cluster and its role."""

    id: str
    role: Literal["writer", "reader"]
    instance_class: str | None = None
    status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "instance_class": self.instance_class,
            "status": self.status,
        }


@dataclass(frozen=True)
class CustomEndpoint:
    """An Aurora custom endpoint (describe_db_cluster_endpoints, EndpointType CUSTOM)."""

    id: str
    endpoint: str
    type: str | None = None  # READER | ANY
    status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "type": self.type, "status": self.status}


@dataclass(frozen=True)
class Database:
    """An Aurora cluster, a standalone RDS instance or an RDS proxy."""

    kind: Kind
    id: str
    region: str
    engine: str | None = None
    engine_version: str | None = None
    engine_mode: str | None = None  # clusters: provisioned | serverless (= Serverless v1) | …
    status: str | None = None
    endpoint: str | None = None
    reader_endpoint: str | None = None
    port: int | None = None
    iam_auth: bool = False
    secret_arn: str | None = None
    database: str | None = None
    master_user: str | None = None
    vpc_id: str | None = None
    serverless: Serverless | None = None
    capacity: float | None = None  # Serverless v1: current ACU, 0 = paused
    acu_min: float | None = None
    acu_max: float | None = None
    auto_pause: bool | None = None
    seconds_until_auto_pause: int | None = None
    members: tuple[Member, ...] = ()
    custom_endpoints: tuple[CustomEndpoint, ...] = ()
    instance_class: str | None = None
    cluster: str | None = None  # an instance's cluster
    arn: str | None = None

    @property
    def is_postgres(self) -> bool:
        return (self.engine or "") in POSTGRES_ENGINES

    @property
    def paused(self) -> bool | None:
        """True: Serverless v1 at 0 ACU. None: cannot tell from the API (v2 reports no pause)."""
        if self.serverless == "v1":
            return None if self.capacity is None else self.capacity == 0
        if self.serverless == "v2" and self.acu_min == 0:
            return None
        return False

    @property
    def may_auto_pause(self) -> bool:
        """The first connection may have to wait for a resume (v1 auto-pause, v2 min 0 ACU)."""
        if self.serverless == "v1":
            return bool(self.auto_pause) or self.capacity == 0
        return self.serverless == "v2" and self.acu_min == 0

    @property
    def type_text(self) -> str:
        if self.kind == "proxy":
            return "RDS proxy"
        if self.serverless == "v1":
            return "serverless v1"
        if self.serverless == "v2":
            return "serverless v2"
        if self.kind == "instance":
            return self.instance_class or "instance"
        return self.engine_mode or "provisioned"

    @property
    def capacity_text(self) -> str:
        """`paused (0 ACU)`, `4 ACU (2–8)`, `0–4 ACU, auto-pause`, or `-`."""
        span = (
            f"{self.acu_min:g}–{self.acu_max:g}"
            if self.acu_min is not None and self.acu_max is not None
            else None
        )
        if self.serverless == "v1":
            if self.capacity == 0:
                return "paused (0 ACU)"
            if self.capacity is not None:
                return f"{self.capacity:g} ACU" + (f" ({span})" if span else "")
            return f"{span} ACU" if span else "-"
        if self.serverless == "v2" and span:
            return f"{span} ACU" + (", auto-pause" if self.acu_min == 0 else "")
        return "-"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "region": self.region,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "engine_mode": self.engine_mode,
            "status": self.status,
            "endpoint": self.endpoint,
            "reader_endpoint": self.reader_endpoint,
            "port": self.port,
            "iam_auth": self.iam_auth,
            "secret_arn": self.secret_arn,
            "database": self.database,
            "master_user": self.master_user,
            "vpc_id": self.vpc_id,
            "serverless": self.serverless,
            "capacity": self.capacity,
            "acu_min": self.acu_min,
            "acu_max": self.acu_max,
            "auto_pause": self.auto_pause,
            "seconds_until_auto_pause": self.seconds_until_auto_pause,
            "paused": self.paused,
            "members": [m.to_json() for m in self.members],
            "custom_endpoints": [e.to_json() for e in self.custom_endpoints],
            "instance_class": self.instance_class,
            "cluster": self.cluster,
            "arn": self.arn,
        }


@dataclass(frozen=True)
class BastionCandidate:
    """A running EC2 instance that looks like a way in: named/tagged bastion or jump, or with a
    public IP in a database's VPC."""

    id: str
    region: str
    name: str | None
    state: str | None
    public_dns: str | None
    public_ip: str | None
    private_ip: str | None
    vpc_id: str | None
    reason: str
    instance_type: str | None = None
    key_name: str | None = None
    ssm_online: bool = False  # managed by Systems Manager, agent online: `transport = "ssm"` works

    @property
    def address(self) -> str | None:
        """What `--bastion` should name: the public DNS name, else the public IP."""
        return self.public_dns or self.public_ip

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "bastion",
            "id": self.id,
            "region": self.region,
            "name": self.name,
            "public_dns": self.public_dns,
            "public_ip": self.public_ip,
            "private_ip": self.private_ip,
            "vpc_id": self.vpc_id,
            "state": self.state,
            "reason": self.reason,
            "instance_type": self.instance_type,
            "key_name": self.key_name,
            "ssm_online": self.ssm_online,
        }


# ----------------------------------------------------------------------------- converters


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def cluster_from_api(
    raw: Mapping[str, Any],
    region: str,
    *,
    instances: Mapping[str, Mapping[str, Any]] | None = None,
    vpc_id: str | None = None,
    custom_endpoints: Iterable[CustomEndpoint] = (),
) -> Database:
    """A `Database(kind="cluster")` from one describe_db_clusters item.

    `instances` (DBInstanceIdentifier -> describe_db_instances item) adds member classes and
    statuses and tells Serverless v2 (a `db.serverless` member) from provisioned.
    """
    engine_mode = _str(raw.get("EngineMode")) or "provisioned"
    members: list[Member] = []
    classes: list[str] = []
    for m in raw.get("DBClusterMembers") or []:
        ident = str(m.get("DBInstanceIdentifier", ""))
        detail = (instances or {}).get(ident, {})
        klass = _str(detail.get("DBInstanceClass"))
        if klass:
            classes.append(klass)
        members.append(
            Member(
                id=ident,
                role="writer" if m.get("IsClusterWriter") else "reader",
                instance_class=klass,
                status=_str(detail.get("DBInstanceStatus")),
            )
        )
    members.sort(key=lambda m: (m.role != "writer", m.id))
    serverless: Serverless | None = None
    acu_min = acu_max = None
    auto_pause: bool | None = None
    pause_after: int | None = None
    capacity: float | None = None
    if engine_mode == "serverless":
        serverless = "v1"
        scaling = raw.get("ScalingConfigurationInfo") or {}
        acu_min, acu_max = _float(scaling.get("MinCapacity")), _float(scaling.get("MaxCapacity"))
        auto_pause = (
            scaling.get("AutoPause") if isinstance(scaling.get("AutoPause"), bool) else None
        )
        pause_after = _int(scaling.get("SecondsUntilAutoPause"))
        capacity = _float(raw.get("Capacity"))
    else:
        v2 = raw.get("ServerlessV2ScalingConfiguration") or {}
        if v2 and (not classes or "db.serverless" in classes):
            serverless = "v2"
            acu_min, acu_max = _float(v2.get("MinCapacity")), _float(v2.get("MaxCapacity"))
            auto_pause = acu_min == 0
            pause_after = _int(v2.get("SecondsUntilAutoPause")) if auto_pause else None
    secret = raw.get("MasterUserSecret") or {}
    customs = tuple(custom_endpoints)
    if not customs:
        # describe_db_cluster_endpoints may be refused; the cluster still lists the host names
        customs = tuple(
            CustomEndpoint(id=host.split(".", 1)[0], endpoint=host)
            for host in raw.get("CustomEndpoints") or []
            if isinstance(host, str) and host
        )
    return Database(
        kind="cluster",
        id=str(raw.get("DBClusterIdentifier", "")),
        region=region,
        engine=_str(raw.get("Engine")),
        engine_version=_str(raw.get("EngineVersion")),
        engine_mode=engine_mode,
        status=_str(raw.get("Status")),
        endpoint=_str(raw.get("Endpoint")),
        reader_endpoint=_str(raw.get("ReaderEndpoint")),
        port=_int(raw.get("Port")),
        iam_auth=bool(raw.get("IAMDatabaseAuthenticationEnabled")),
        secret_arn=_str(secret.get("SecretArn")),
        database=_str(raw.get("DatabaseName")),
        master_user=_str(raw.get("MasterUsername")),
        vpc_id=vpc_id,
        serverless=serverless,
        capacity=capacity,
        acu_min=acu_min,
        acu_max=acu_max,
        auto_pause=auto_pause,
        seconds_until_auto_pause=pause_after,
        members=tuple(members),
        custom_endpoints=customs,
        arn=_str(raw.get("DBClusterArn")),
    )


def instance_from_api(raw: Mapping[str, Any], region: str) -> Database:
    """A `Database(kind="instance")` from one describe_db_instances item."""
    endpoint = raw.get("Endpoint") or {}
    subnet_group = raw.get("DBSubnetGroup") or {}
    secret = raw.get("MasterUserSecret") or {}
    return Database(
        kind="instance",
        id=str(raw.get("DBInstanceIdentifier", "")),
        region=region,
        engine=_str(raw.get("Engine")),
        engine_version=_str(raw.get("EngineVersion")),
        engine_mode=None,
        status=_str(raw.get("DBInstanceStatus")),
        endpoint=_str(endpoint.get("Address")),
        reader_endpoint=None,
        port=_int(endpoint.get("Port")) or _int(raw.get("DbInstancePort")) or None,
        iam_auth=bool(raw.get("IAMDatabaseAuthenticationEnabled")),
        secret_arn=_str(secret.get("SecretArn")),
        database=_str(raw.get("DBName")),
        master_user=_str(raw.get("MasterUsername")),
        vpc_id=_str(subnet_group.get("VpcId")),
        instance_class=_str(raw.get("DBInstanceClass")),
        cluster=_str(raw.get("DBClusterIdentifier")),
        arn=_str(raw.get("DBInstanceArn")),
    )


_PROXY_ENGINES = {"POSTGRESQL": "postgres", "MYSQL": "mysql", "SQLSERVER": "sqlserver"}
_PROXY_PORTS = {"POSTGRESQL": 5432, "MYSQL": 3306, "SQLSERVER": 1433}


def proxy_from_api(raw: Mapping[str, Any], region: str) -> Database:
    """A `Database(kind="proxy")` from one describe_db_proxies item (the port is the engine's)."""
    family = str(raw.get("EngineFamily") or "")
    auth = list(raw.get("Auth") or [])
    secret = next((_str(a.get("SecretArn")) for a in auth if a.get("SecretArn")), None)
    return Database(
        kind="proxy",
        id=str(raw.get("DBProxyName", "")),
        region=region,
        engine=_PROXY_ENGINES.get(family, family.lower() or None),
        status=_str(raw.get("Status")),
        endpoint=_str(raw.get("Endpoint")),
        port=_PROXY_PORTS.get(family),
        iam_auth=any(a.get("IAMAuth") == "REQUIRED" for a in auth),
        secret_arn=secret,
        vpc_id=_str(raw.get("VpcId")),
        arn=_str(raw.get("DBProxyArn")),
    )


def custom_endpoints_from_api(
    items: Iterable[Mapping[str, Any]],
) -> dict[str, list[CustomEndpoint]]:
    """Cluster id -> its CUSTOM endpoints, from describe_db_cluster_endpoints items."""
    out: dict[str, list[CustomEndpoint]] = {}
    for item in items:
        if item.get("EndpointType") != "CUSTOM" or not item.get("Endpoint"):
            continue
        cluster = str(item.get("DBClusterIdentifier", ""))
        out.setdefault(cluster, []).append(
            CustomEndpoint(
                id=str(item.get("DBClusterEndpointIdentifier", "")),
                endpoint=str(item["Endpoint"]),
                type=_str(item.get("CustomEndpointType")),
                status=_str(item.get("Status")),
            )
        )
    return out


def _tags(raw: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key", "")): str(t.get("Value", "")) for t in raw.get("Tags") or []}


def bastion_reason(raw: Mapping[str, Any], database_vpcs: Mapping[str, list[str]]) -> str | None:
    """Why an EC2 instance looks like a bastion, or None: a Name or any tag matching
    bastion/jump, or a public IP in the VPC of a database (`database_vpcs`: VPC -> db ids)."""
    tags = _tags(raw)
    name = tags.get("Name", "")
    if _BASTION_RE.search(name):
        return f"named '{name}'"
    for key, value in sorted(tags.items()):
        if key != "Name" and (_BASTION_RE.search(key) or _BASTION_RE.search(value)):
            return f"tag {key}={value}" if value else f"tag {key}"
    vpc = raw.get("VpcId")
    if raw.get("PublicIpAddress") and isinstance(vpc, str) and vpc in database_vpcs:
        return "public IP in the VPC of " + ", ".join(database_vpcs[vpc])
    return None


def bastion_from_api(
    raw: Mapping[str, Any], region: str, reason: str, *, ssm_online: bool = False
) -> BastionCandidate:
    """A `BastionCandidate` from one describe_instances instance."""
    return BastionCandidate(
        id=str(raw.get("InstanceId", "")),
        region=region,
        name=_tags(raw).get("Name") or None,
        state=_str((raw.get("State") or {}).get("Name")),
        public_dns=_str(raw.get("PublicDnsName")),
        public_ip=_str(raw.get("PublicIpAddress")),
        private_ip=_str(raw.get("PrivateIpAddress")),
        vpc_id=_str(raw.get("VpcId")),
        reason=reason,
        instance_type=_str(raw.get("InstanceType")),
        key_name=_str(raw.get("KeyName")),
        ssm_online=ssm_online,
    )
