"""Discovery: Aurora clusters, standalone RDS instances, RDS proxies, bastion candidates and EC2
Instance Connect Endpoints (in the databases' VPCs) in one or more regions, queried concurrently.
Bastion candidates include every running instance whose SSM agent is online
(DescribeInstanceInformation), the ones `transport = "ssm"` can use.

Called through `tunnelman.core.aws.discovery` by `tunnelman discover` and the TUI. Every list call
goes through a paginator. A refused or missing secondary call (proxies, custom endpoints, EC2,
subnet groups) becomes a warning and the rest is still returned; a region whose clusters or
instances cannot be listed is a warning too, unless every region fails (then its error is raised).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tunnelman.core.aws.eice import ConnectEndpoint, list_endpoints
from tunnelman.core.aws.model import (
    BastionCandidate,
    Database,
    bastion_from_api,
    bastion_reason,
    cluster_from_api,
    custom_endpoints_from_api,
    instance_from_api,
    proxy_from_api,
)
from tunnelman.core.aws.session import (
    calling,
    ec2_client,
    rds_client,
    resolve_region,
    session_for,
    ssm_client,
)
from tunnelman.core.errors import AWSError

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_ssm import SSMClient

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
_T = TypeVar("_T")
_KIND_ORDER = {"cluster": 0, "instance": 1, "proxy": 2}


@dataclass
class Discovery:
    """What was found, in display order, with warnings about what could not be listed."""

    regions: list[str]
    databases: list[Database] = field(default_factory=list)
    bastions: list[BastionCandidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hidden: int = 0  # databases of other engines (MySQL…), left out unless all_engines
    connect_endpoints: list[ConnectEndpoint] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        """The `discover --json` list: databases, then bastions, then Instance Connect Endpoints."""
        return (
            [d.to_json() for d in self.databases]
            + [b.to_json() for b in self.bastions]
            + [e.to_json() for e in self.connect_endpoints]
        )


@dataclass
class _RegionScan:
    region: str
    session: boto3.Session
    rds: RDSClient
    ec2: EC2Client
    all_engines: bool
    ssm: Callable[[], SSMClient] | None = None  # made on first use (only if EC2 lists instances)
    databases: list[Database] = field(default_factory=list)
    bastions: list[BastionCandidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hidden: int = 0
    connect_endpoints: list[ConnectEndpoint] = field(default_factory=list)

    def required(self, action: str, fetch: Callable[[], _T]) -> _T:
        with calling(action, region=self.region, session=self.session):
            return fetch()

    def optional(
        self, action: str, what: str, fetch: Callable[[], _T], *, quiet: bool = False
    ) -> _T | None:
        try:
            with calling(action, region=self.region, session=self.session):
                return fetch()
        except AWSError as exc:
            if quiet and "denied" not in exc.message:
                # e.g. moto has no DescribeDBClusterEndpoints: say nothing, list the rest
                log.debug("%s: %s", action, exc)
            else:
                self.warnings.append(f"{self.region}: {what} not listed: {exc}")
            return None

    def pages(self, client: Any, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in client.get_paginator(operation).paginate(**kwargs):
            items.extend(dict(i) for i in page.get(key, []))
        return items

    def run(self) -> _RegionScan:
        region, rds = self.region, self.rds
        clusters = self.required(
            "rds:DescribeDBClusters",
            lambda: self.pages(rds, "describe_db_clusters", "DBClusters"),
        )
        instances = self.required(
            "rds:DescribeDBInstances",
            lambda: self.pages(rds, "describe_db_instances", "DBInstances"),
        )
        by_id = {str(i["DBInstanceIdentifier"]): i for i in instances}
        groups = (
            self.optional(
                "rds:DescribeDBSubnetGroups",
                "cluster VPCs",
                lambda: self.pages(rds, "describe_db_subnet_groups", "DBSubnetGroups"),
            )
            or []
        )
        vpc_of_group = {str(g["DBSubnetGroupName"]): g.get("VpcId") for g in groups}
        endpoints = (
            self.optional(
                "rds:DescribeDBClusterEndpoints",
                "custom endpoints",
                lambda: self.pages(rds, "describe_db_cluster_endpoints", "DBClusterEndpoints"),
                quiet=True,
            )
            if clusters
            else None
        )
        custom = custom_endpoints_from_api(endpoints or [])
        found: list[Database] = []
        for raw in clusters:
            ident = str(raw["DBClusterIdentifier"])
            members = {
                str(m["DBInstanceIdentifier"]): by_id.get(str(m["DBInstanceIdentifier"]), {})
                for m in raw.get("DBClusterMembers") or []
            }
            vpc = vpc_of_group.get(str(raw.get("DBSubnetGroup") or "")) or next(
                (
                    m["DBSubnetGroup"].get("VpcId")
                    for m in members.values()
                    if m.get("DBSubnetGroup")
                ),
                None,
            )
            found.append(
                cluster_from_api(
                    raw,
                    region,
                    instances=members,
                    vpc_id=vpc,
                    custom_endpoints=custom.get(ident, []),
                )
            )
        found.extend(
            instance_from_api(raw, region)
            for raw in instances
            if not raw.get("DBClusterIdentifier")
        )
        proxies = self.optional(
            "rds:DescribeDBProxies",
            "RDS proxies",
            lambda: self.pages(rds, "describe_db_proxies", "DBProxies"),
        )
        found.extend(proxy_from_api(raw, region) for raw in proxies or [])
        for db in found:
            if self.all_engines or db.is_postgres:
                self.databases.append(db)
            else:
                self.hidden += 1
        self._bastions()
        self._connect_endpoints()
        return self

    def _connect_endpoints(self) -> None:
        """EC2 Instance Connect Endpoints in the databases' VPCs (transport = "eice")."""
        vpcs = sorted({db.vpc_id for db in self.databases if db.vpc_id})
        if not vpcs:
            return
        found = self.optional(
            "ec2:DescribeInstanceConnectEndpoints",
            "Instance Connect Endpoints",
            lambda: list_endpoints(self.ec2, self.region, vpcs),
            quiet=True,  # an emulator without the call (moto): say nothing, list the rest
        )
        self.connect_endpoints.extend(found or [])

    def _bastions(self) -> None:
        database_vpcs: dict[str, list[str]] = {}
        for db in self.databases:
            if db.vpc_id:
                database_vpcs.setdefault(db.vpc_id, []).append(db.id)
        reservations = self.optional(
            "ec2:DescribeInstances",
            "bastion candidates",
            lambda: self.pages(
                self.ec2,
                "describe_instances",
                "Reservations",
                Filters=[{"Name": "instance-state-name", "Values": ["running"]}],
            ),
        )
        online = self._ssm_online() if reservations else set()
        for reservation in reservations or []:
            for raw in reservation.get("Instances", []):
                reason = bastion_reason(raw, database_vpcs)
                managed = str(raw.get("InstanceId", "")) in online
                if reason is None and managed:
                    reason = "SSM agent online"
                if reason:
                    self.bastions.append(
                        bastion_from_api(raw, self.region, reason, ssm_online=managed)
                    )

    def _ssm_online(self) -> set[str]:
        """Ids of the instances whose SSM agent is online (nothing when that cannot be listed)."""
        if self.ssm is None:
            return set()
        client = self.ssm()
        infos = self.optional(
            "ssm:DescribeInstanceInformation",
            "SSM-managed instances",
            lambda: self.pages(
                client,
                "describe_instance_information",
                "InstanceInformationList",
                Filters=[{"Key": "PingStatus", "Values": ["Online"]}],
            ),
            quiet=True,
        )
        return {str(i.get("InstanceId")) for i in infos or [] if i.get("InstanceId")}


def discover(
    regions: Sequence[str] = (),
    *,
    aws_profile: str | None = None,
    all_engines: bool = False,
    on_progress: Progress | None = None,
    max_workers: int = 8,
) -> Discovery:
    """Scan `regions` (default: the session's region) concurrently; PostgreSQL engines only unless
    `all_engines`. `on_progress` gets a line when the scan starts and when each region is done."""
    session = session_for(None, aws_profile=aws_profile)
    wanted = list(dict.fromkeys(regions)) or [resolve_region(session)]
    # Clients are made here, in one thread: sessions are not thread-safe, clients are.
    scans = [
        _RegionScan(
            region=r,
            session=session,
            rds=rds_client(session, r),
            ec2=ec2_client(session, r),
            all_engines=all_engines,
            ssm=functools.partial(_ssm_once, session, r),
        )
        for r in wanted
    ]
    if on_progress is not None:
        on_progress(f"Querying AWS in {', '.join(wanted)}: clusters, instances, proxies, bastions…")
    result = Discovery(regions=wanted)
    errors: list[AWSError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(scans)))) as pool:
        futures = {pool.submit(scan.run): scan for scan in scans}
        for future in as_completed(futures):
            scan = futures[future]
            try:
                future.result()
            except AWSError as exc:
                errors.append(exc)
                result.warnings.append(f"{scan.region}: {exc}")
                continue
            result.databases.extend(scan.databases)
            result.bastions.extend(scan.bastions)
            result.connect_endpoints.extend(scan.connect_endpoints)
            result.warnings.extend(scan.warnings)
            result.hidden += scan.hidden
            if on_progress is not None:
                on_progress(f"  {scan.region}: {_summary(scan)}")
    if errors and len(errors) == len(scans):
        raise errors[0]
    result.databases.sort(key=lambda d: (_KIND_ORDER[d.kind], d.region, d.id))
    result.bastions.sort(key=lambda b: (b.reason.startswith("public IP"), b.region, b.name or ""))
    result.connect_endpoints.sort(key=lambda e: (e.region, e.vpc_id or "", e.id))
    return result


_SESSION_LOCK = threading.Lock()


def _ssm_once(session: boto3.Session, region: str) -> SSMClient:
    """An SSM client that does not retry: the SSM listing is optional, and an endpoint that does
    not serve it (an emulator answering HTTP 500) must cost one round trip, not the backoff.
    Made from a scan's thread, so under a lock (a boto3 session is not thread-safe)."""
    with _SESSION_LOCK:
        client = ssm_client(session, region)
    events = client.meta.events
    events.unregister("needs-retry.ssm", unique_id="retry-config-ssm")
    return client


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _summary(scan: _RegionScan) -> str:
    kinds = [d.kind for d in scan.databases]
    parts = [
        _count(kinds.count("cluster"), "cluster", "clusters"),
        _count(kinds.count("instance"), "instance", "instances"),
        _count(kinds.count("proxy"), "proxy", "proxies"),
        _count(len(scan.bastions), "bastion candidate", "bastion candidates"),
    ]
    if scan.connect_endpoints:
        parts.append(
            _count(
                len(scan.connect_endpoints),
                "Instance Connect Endpoint",
                "Instance Connect Endpoints",
            )
        )
    if scan.hidden:
        parts.append(f"{scan.hidden} not PostgreSQL")
    return ", ".join(parts)
