"""One RDS cluster or instance: look-up by id, status, start/stop with waiting, and the serverless
resume check that `up` / `psql` make before connecting.

Called through `tunnelman.core.aws` by `cluster status|start|stop`, `profile add --cluster`, the
tunnel/client code (`resume_hint`, `needs_resume_timeout`, `connect_timeout_for`) and the TUI.
Those last three return at once, without importing boto3, for a profile with no `cluster`.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from tunnelman.core.aws import params
from tunnelman.core.aws.model import (
    CustomEndpoint,
    Database,
    cluster_from_api,
    custom_endpoints_from_api,
    instance_from_api,
    proxy_from_api,
)
from tunnelman.core.aws.session import (
    calling,
    error_code,
    rds_client,
    resolve_region,
    session_for,
)
from tunnelman.core.errors import AWSError, ConfigError

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_rds import RDSClient

    from tunnelman.core.profiles import Profile

Action = Literal["start", "stop"]
TARGET_STATUS: dict[Action, str] = {"start": "available", "stop": "stopped"}
RESUME_CONNECT_TIMEOUT = 60
"""Seconds a connection should be allowed when the cluster may have to resume first."""
RESUME_NOTE = "resuming (can take ~15–60 s)"
_FAILED_STATES = frozenset(
    {
        "failed",
        "incompatible-parameters",
        "incompatible-network",
        "incompatible-restore",
        "inaccessible-encryption-credentials",
        "storage-full",
    }
)
_CLUSTER_NOT_FOUND = {"DBClusterNotFoundFault", "DBClusterNotFound"}
_INSTANCE_NOT_FOUND = {"DBInstanceNotFound", "DBInstanceNotFoundFault"}


@dataclass(frozen=True)
class RDSContext:
    """A client for one region, and what its errors should mention."""

    session: boto3.Session
    region: str
    client: RDSClient

    @classmethod
    def create(
        cls,
        profile: Profile | None = None,
        *,
        region: str | None = None,
        aws_profile: str | None = None,
    ) -> RDSContext:
        session = session_for(profile, region=region, aws_profile=aws_profile)
        hosts = (profile.endpoint.host,) if profile is not None and profile.endpoint else ()
        where = resolve_region(session, profile, hosts=hosts)
        return cls(session=session, region=where, client=rds_client(session, where))

    def calling(self, action: str) -> Any:
        return calling(action, region=self.region, session=self.session)


# ----------------------------------------------------------------------------- look-up


def _describe_cluster(ctx: RDSContext, ident: str) -> dict[str, Any] | None:
    with ctx.calling("rds:DescribeDBClusters"):
        try:
            found = ctx.client.describe_db_clusters(DBClusterIdentifier=ident)["DBClusters"]
        except Exception as exc:
            if error_code(exc) in _CLUSTER_NOT_FOUND | {"InvalidParameterValue"}:
                return None
            raise
    return dict(found[0]) if found else None


def _describe_instance(ctx: RDSContext, ident: str) -> dict[str, Any] | None:
    with ctx.calling("rds:DescribeDBInstances"):
        try:
            found = ctx.client.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"]
        except Exception as exc:
            if error_code(exc) in _INSTANCE_NOT_FOUND | {"InvalidParameterValue"}:
                return None
            raise
    return dict(found[0]) if found else None


def _all_ids(ctx: RDSContext) -> list[str]:
    ids: list[str] = []
    with ctx.calling("rds:DescribeDBClusters"):
        for page in ctx.client.get_paginator("describe_db_clusters").paginate():
            ids.extend(c["DBClusterIdentifier"] for c in page.get("DBClusters", []))
    with ctx.calling("rds:DescribeDBInstances"):
        for ipage in ctx.client.get_paginator("describe_db_instances").paginate():
            ids.extend(
                i["DBInstanceIdentifier"]
                for i in ipage.get("DBInstances", [])
                if not i.get("DBClusterIdentifier")
            )
    return ids


def _not_found(ctx: RDSContext, ident: str) -> AWSError:
    try:
        ids = _all_ids(ctx)
    except AWSError:
        ids = []
    guess = difflib.get_close_matches(ident.lower(), ids, n=1, cutoff=0.6)
    tip = f" (did you mean '{guess[0]}'?)" if guess else ""
    if ids:
        shown = ", ".join(ids[:8]) + (", …" if len(ids) > 8 else "")
        hint = f"there: {shown}"
    else:
        hint = "none there: another region? see `tunnelman discover --region R`"
    return AWSError(f"no RDS cluster or instance '{ident}' in {ctx.region}{tip}", hint=hint)


def _members(ctx: RDSContext, cluster_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with ctx.calling("rds:DescribeDBInstances"):
        pages = ctx.client.get_paginator("describe_db_instances").paginate(
            Filters=[{"Name": "db-cluster-id", "Values": [cluster_id]}]
        )
        for page in pages:
            for item in page.get("DBInstances", []):
                out[item["DBInstanceIdentifier"]] = dict(item)
    return out


def _subnet_group_vpc(ctx: RDSContext, name: str | None) -> str | None:
    if not name:
        return None
    try:
        with ctx.calling("rds:DescribeDBSubnetGroups"):
            groups = ctx.client.describe_db_subnet_groups(DBSubnetGroupName=name)["DBSubnetGroups"]
    except AWSError:
        return None  # the VPC is a nicety; status works without it
    return groups[0].get("VpcId") if groups else None


def custom_endpoints(
    ctx: RDSContext, cluster_id: str | None = None
) -> dict[str, list[CustomEndpoint]]:
    """Custom endpoints by cluster id. An emulator without this call (moto) or a refusal gives {}."""
    kwargs: dict[str, Any] = {"DBClusterIdentifier": cluster_id} if cluster_id else {}
    items: list[dict[str, Any]] = []
    try:
        with ctx.calling("rds:DescribeDBClusterEndpoints"):
            for page in ctx.client.get_paginator("describe_db_cluster_endpoints").paginate(
                **kwargs
            ):
                items.extend(dict(e) for e in page.get("DBClusterEndpoints", []))
    except AWSError:
        return {}
    return custom_endpoints_from_api(items)


def _resolve(ctx: RDSContext, ident: str) -> tuple[RDSContext, str]:
    """`ident` as an id: read from SSM for `ssm:/NAME`; an ARN's id, in the ARN's region."""
    ref: params.ClusterRef | None = None
    if params.is_reference(ident):
        ref = params.resolve_cluster(ident, session=ctx.session, region=ctx.region)
    elif ident.startswith("arn:"):
        ref = params.rds_ident(ident)
    if ref is None:
        return ctx, ident
    if ref.region and ref.region != ctx.region:
        ctx = RDSContext(ctx.session, ref.region, rds_client(ctx.session, ref.region))
    return ctx, ref.ident


def lookup(ctx: RDSContext, ident: str, *, detail: bool = False) -> Database:
    """The cluster `ident`, else the instance `ident`, else an AWSError with a did-you-mean.

    `ident` may be an ARN, or `ssm:/NAME` (a parameter holding the id or ARN). `detail` adds
    member classes/statuses, the VPC and custom endpoints (3 more calls).
    """
    ctx, ident = _resolve(ctx, ident)
    cluster = _describe_cluster(ctx, ident)
    if cluster is not None:
        if not detail:
            return cluster_from_api(cluster, ctx.region)
        cluster_id = str(cluster["DBClusterIdentifier"])
        members = _members(ctx, cluster_id)
        vpc = _subnet_group_vpc(ctx, cluster.get("DBSubnetGroup"))
        if vpc is None:
            vpc = next(
                (m["DBSubnetGroup"]["VpcId"] for m in members.values() if m.get("DBSubnetGroup")),
                None,
            )
        return cluster_from_api(
            cluster,
            ctx.region,
            instances=members,
            vpc_id=vpc,
            custom_endpoints=custom_endpoints(ctx, cluster_id).get(cluster_id, []),
        )
    instance = _describe_instance(ctx, ident)
    if instance is not None:
        return instance_from_api(instance, ctx.region)
    raise _not_found(ctx, ident)


def find(
    ident: str, *, region: str | None = None, aws_profile: str | None = None, detail: bool = False
) -> Database:
    """Look up a cluster or instance id without a profile (for `profile add --cluster`)."""
    return lookup(RDSContext.create(region=region, aws_profile=aws_profile), ident, detail=detail)


def find_proxy(name: str, *, region: str | None = None, aws_profile: str | None = None) -> Database:
    """The RDS proxy `name` (for `profile add --proxy`); AWSError listing the proxies there are."""
    ctx = RDSContext.create(region=region, aws_profile=aws_profile)
    with ctx.calling("rds:DescribeDBProxies"):
        try:
            found = ctx.client.describe_db_proxies(DBProxyName=name)["DBProxies"]
        except Exception as exc:
            if error_code(exc) not in ("DBProxyNotFoundFault", "DBProxyNotFound"):
                raise
            found = []
    if found:
        return proxy_from_api(dict(found[0]), ctx.region)
    with ctx.calling("rds:DescribeDBProxies"):
        names = [
            str(p["DBProxyName"])
            for page in ctx.client.get_paginator("describe_db_proxies").paginate()
            for p in page.get("DBProxies", [])
        ]
    guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    tip = f" (did you mean '{guess[0]}'?)" if guess else ""
    hint = (
        "proxies there: " + ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        if names
        else "there is no RDS proxy there: another region? see `tunnelman discover --region R`"
    )
    raise AWSError(f"no RDS proxy '{name}' in {ctx.region}{tip}", hint=hint)


def _require_cluster(profile: Profile) -> str:
    if not profile.cluster:
        raise ConfigError(
            f"profile '{profile.name}' has no cluster",
            hint=f'add cluster = "ID" (an RDS cluster or instance id) to [profiles.{profile.name}]',
        )
    return profile.cluster


def cluster_status(profile: Profile) -> Database:
    """The profile's cluster (or instance) with members, VPC and custom endpoints."""
    ident = _require_cluster(profile)
    return lookup(RDSContext.create(profile), ident, detail=True)


# ----------------------------------------------------------------------------- start / stop


def check_action(db: Database, action: Action) -> bool:
    """Whether `action` is needed: False when already there; AWSError when it cannot be done now."""
    what = f"{db.kind} '{db.id}'"
    if db.status == TARGET_STATUS[action]:
        return False
    if db.kind == "proxy":
        raise AWSError(f"{what} is an RDS proxy: it cannot be started or stopped")
    if db.kind == "cluster" and db.serverless == "v1" and action == "stop":
        raise AWSError(
            f"{what} is Aurora Serverless v1: it cannot be stopped, it pauses by itself when idle"
        )
    if db.kind == "instance" and db.cluster:
        raise AWSError(f"{what} belongs to cluster '{db.cluster}': {action} the cluster instead")
    needed = "available" if action == "stop" else "stopped"
    if db.status != needed:
        raise AWSError(
            f"cannot {action} {what} while it is {db.status or 'in an unknown state'}",
            hint=f"it must be {needed}; check again with `tunnelman cluster status`",
        )
    return True


def change_state(profile: Profile, action: Action, db: Database | None = None) -> Database:
    """Ask AWS to start or stop the profile's cluster/instance; returns its state right after.

    Call `check_action` first (this does it again); AWS carries on after this returns.
    """
    ident = _require_cluster(profile)
    ctx = RDSContext.create(profile)
    current = db or lookup(ctx, ident)
    if not check_action(current, action):
        return current
    verb = "Start" if action == "start" else "Stop"
    if current.kind == "cluster":
        with ctx.calling(f"rds:{verb}DBCluster"):
            if action == "start":
                status = ctx.client.start_db_cluster(DBClusterIdentifier=current.id)
                new = status["DBCluster"].get("Status")
            else:
                stopped = ctx.client.stop_db_cluster(DBClusterIdentifier=current.id)
                new = stopped["DBCluster"].get("Status")
    else:
        with ctx.calling(f"rds:{verb}DBInstance"):
            if action == "start":
                started = ctx.client.start_db_instance(DBInstanceIdentifier=current.id)
                new = started["DBInstance"].get("DBInstanceStatus")
            else:
                halted = ctx.client.stop_db_instance(DBInstanceIdentifier=current.id)
                new = halted["DBInstance"].get("DBInstanceStatus")
    _forget(profile)
    return replace(current, status=new or current.status)


def start_cluster(profile: Profile) -> Database:
    """`change_state(profile, "start")`."""
    return change_state(profile, "start")


def stop_cluster(profile: Profile) -> Database:
    """`change_state(profile, "stop")`."""
    return change_state(profile, "stop")


StatusCallback = Callable[[str, float], None]
"""Called with (new status, seconds since waiting began) on every status change."""


def writer_status(ctx: RDSContext, db: Database) -> tuple[str, str | None]:
    """(id, status) of an Aurora cluster's writer instance (DBClusterMembers' IsClusterWriter).

    AWSError when the cluster has no writer: nothing could accept a connection.
    """
    writer = next((m for m in db.members if m.role == "writer"), None)
    if writer is None:
        raise AWSError(
            f"cluster '{db.id}' has no writer instance: nothing can accept connections",
            hint="add an instance to it in the RDS console",
        )
    found = _describe_instance(ctx, writer.id)
    return writer.id, (str(found["DBInstanceStatus"]) if found else None)


def wait_for(
    profile: Profile,
    action: Action,
    *,
    on_status: StatusCallback | None = None,
    cancel: threading.Event | None = None,
    timeout: float = 1800.0,
    interval: float = 5.0,
    writer: bool = False,
) -> Database:
    """Poll until the cluster reaches the action's target status; return its last state.

    `writer` (for a start before connecting): an Aurora cluster counts as available only once its
    writer instance is available too, since the cluster says "available" first; meanwhile the
    status reported is "writer ID STATUS".
    Returns early (status not yet the target) when `cancel` is set: AWS carries on regardless.
    Raises AWSError on a failed state or when `timeout` passes.
    """
    ident = _require_cluster(profile)
    ctx = RDSContext.create(profile)
    target = TARGET_STATUS[action]
    started = time.monotonic()
    last: str | None = None
    while True:
        db = lookup(ctx, ident)
        shown = db.status or "unknown"
        what = f"{db.kind} '{db.id}'"
        if writer and db.kind == "cluster" and db.status == target:
            writer_id, writer_state = writer_status(ctx, db)
            if writer_state != target:
                shown = f"writer {writer_id} {writer_state or 'unknown'}"
                what = f"writer instance '{writer_id}' of cluster '{db.id}'"
            if writer_state in _FAILED_STATES:
                raise AWSError(f"{what} is {writer_state}; see the RDS console for why")
        elapsed = time.monotonic() - started
        if shown != last:
            last = shown
            if on_status is not None:
                on_status(shown, elapsed)
        if shown == target:
            _forget(profile)
            return db
        if db.status in _FAILED_STATES:
            raise AWSError(f"{what} is {db.status}; see the RDS console for why")
        if elapsed >= timeout:
            now = shown.rsplit(" ", 1)[-1]
            raise AWSError(
                f"{what} is still {now} after {elapsed:.0f} s; the {action} continues in AWS",
                hint=f"check with `tunnelman cluster status {profile.name}`",
            )
        pause = min(interval, max(timeout - elapsed, 0.1))
        if cancel is not None:
            if cancel.wait(pause):
                return db
        else:
            time.sleep(pause)


# ----------------------------------------------------------------------------- resume checks

_CACHE_TTL = 30.0
_cache: dict[tuple[str, str | None, str | None], tuple[float, Database | AWSError]] = {}
_cache_lock = threading.Lock()


def _key(profile: Profile) -> tuple[str, str | None, str | None]:
    return (profile.cluster or "", profile.region, profile.aws_profile)


def _forget(profile: Profile) -> None:
    with _cache_lock:
        _cache.pop(_key(profile), None)


def clear_cache() -> None:
    """Forget every cached cluster state (after a change made elsewhere, and between tests)."""
    with _cache_lock:
        _cache.clear()
    params.clear_cache()


def cluster_state(profile: Profile) -> Database | None:
    """The profile's cluster as last seen (one describe call, cached 30 s); None without a cluster.

    Raises AWSError when AWS cannot be asked (the error is cached too, so callers asking twice
    pay once).
    """
    if not profile.cluster:
        return None
    key = _key(profile)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and now - hit[0] < _CACHE_TTL:
        if isinstance(hit[1], AWSError):
            raise hit[1]
        return hit[1]
    try:
        db: Database | AWSError = lookup(RDSContext.create(profile), profile.cluster)
    except AWSError as exc:
        db = exc
    with _cache_lock:
        _cache[key] = (now, db)
    if isinstance(db, AWSError):
        raise db
    return db


def assess(db: Database, profile_name: str) -> tuple[str | None, bool]:
    """(a note for the person, whether to allow RESUME_CONNECT_TIMEOUT) for a cluster's state."""
    what = f"{db.kind} '{db.id}'"
    status = db.status or ""
    if status == "stopped":
        return (
            f"{what} is stopped: start it with `tunnelman cluster start {profile_name}`"
            " (takes several minutes)",
            False,
        )
    if status == "stopping":
        return f"{what} is stopping and will refuse connections", False
    if status in ("starting", "rebooting", "resetting-master-credentials"):
        return f"{what} is {status}; connecting may take a while", True
    if db.paused:
        return f"{what} is paused (Serverless v1, 0 ACU): {RESUME_NOTE}", True
    if db.serverless == "v1" and db.paused is None and db.auto_pause:
        return f"{what} may be paused (Serverless v1 auto-pause): if so, {RESUME_NOTE}", True
    if db.serverless == "v2" and db.acu_min == 0:
        return f"{what} can auto-pause (Serverless v2, min 0 ACU): if paused, {RESUME_NOTE}", True
    return None, False


def resume_hint(profile: Profile) -> str | None:
    """A note to show before connecting ("… paused …: resuming (can take ~15–60 s)"), or None.

    Never raises: when AWS cannot be asked, the note says so. Free for a profile without a
    cluster.
    """
    if not profile.cluster:
        return None
    try:
        db = cluster_state(profile)
    except AWSError as exc:
        return (
            f"could not check cluster '{profile.cluster}' ({exc}); allowing "
            f"{RESUME_CONNECT_TIMEOUT} s to connect in case it is paused"
        )
    return assess(db, profile.name)[0] if db is not None else None


def needs_resume_timeout(profile: Profile) -> bool:
    """Whether connecting should allow at least RESUME_CONNECT_TIMEOUT seconds.

    True when the cluster is paused, may be auto-paused, is starting, or cannot be checked (a long
    timeout only costs time on failure; a short one fails a resume). False without a cluster.
    """
    if not profile.cluster:
        return False
    try:
        db = cluster_state(profile)
    except AWSError:
        return True
    return assess(db, profile.name)[1] if db is not None else False


def connect_timeout_for(profile: Profile) -> int:
    """The profile's connect_timeout, raised to RESUME_CONNECT_TIMEOUT when a resume may be due."""
    if needs_resume_timeout(profile):
        return max(profile.connect_timeout, RESUME_CONNECT_TIMEOUT)
    return profile.connect_timeout
