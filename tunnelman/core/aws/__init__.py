"""AWS for tunnelman: the one entry point to boto3 (discovery, cluster status/start/stop, serverless
resume checks, IAM tokens, Secrets Manager, EC2 Instance Connect).

Callers import this package (`from tunnelman.core import aws`) and none of its modules, which it
re-exports:

- `session`      sessions on the standard chain, clients with retries/timeouts, error mapping
- `model`        `Database`, `Member`, `CustomEndpoint`, `BastionCandidate` (pure, JSON shapes)
- `rds`          one cluster/instance: look-up, status, start/stop/wait, resume checks
- `wake`         start on connect: a stopped/starting cluster found before a tunnel opens
- `discovery`    clusters, instances, proxies and bastion candidates across regions
- `auth`         `iam_token`, `secret_login`, `instance_connect_key`
- `params`       `ssm:/NAME` references (SSM Parameter Store) for `secret` and `cluster`
- `dataapi`      `execute`: one statement through the RDS Data API (`tunnelman query`)
- `eice`         EC2 Instance Connect Endpoints: `find_target`, `signed_url`, `list_endpoints`

Importing it is cheap: boto3 (≈0.6 s) is imported inside the functions that call AWS, so the tunnel
and client code may import this module at top level and call `resume_hint` /
`needs_resume_timeout` / `connect_timeout_for`, which return at once for a profile without a
`cluster`. No other tunnelman module imports boto3.
"""

from __future__ import annotations

from tunnelman.core.aws import eice
from tunnelman.core.aws.auth import (
    Login,
    ephemeral_key,
    iam_token,
    instance_connect_key,
    secret_id_for,
    secret_login,
)
from tunnelman.core.aws.dataapi import QueryError, Result, execute
from tunnelman.core.aws.discovery import Discovery, discover
from tunnelman.core.aws.model import BastionCandidate, CustomEndpoint, Database, Member
from tunnelman.core.aws.params import get_parameter, is_reference, resolve_cluster, resolve_secret
from tunnelman.core.aws.rds import (
    RESUME_CONNECT_TIMEOUT,
    RESUME_NOTE,
    TARGET_STATUS,
    Action,
    assess,
    change_state,
    check_action,
    clear_cache,
    cluster_state,
    cluster_status,
    connect_timeout_for,
    find,
    find_proxy,
    needs_resume_timeout,
    resume_hint,
    start_cluster,
    stop_cluster,
    wait_for,
)
from tunnelman.core.aws.session import NO_REGION, map_error, region_from_host, session_for
from tunnelman.core.aws.wake import (
    POLL_INTERVAL_ENV,
    WAKE_TIMEOUT,
    Need,
    after_wake,
    poll_interval,
    wake,
    wake_needed,
)

__all__ = [
    "NO_REGION",
    "POLL_INTERVAL_ENV",
    "RESUME_CONNECT_TIMEOUT",
    "RESUME_NOTE",
    "TARGET_STATUS",
    "WAKE_TIMEOUT",
    "Action",
    "BastionCandidate",
    "CustomEndpoint",
    "Database",
    "Discovery",
    "Login",
    "Member",
    "Need",
    "QueryError",
    "Result",
    "after_wake",
    "assess",
    "change_state",
    "check_action",
    "clear_cache",
    "cluster_state",
    "cluster_status",
    "connect_timeout_for",
    "discover",
    "eice",
    "ephemeral_key",
    "execute",
    "find",
    "find_proxy",
    "get_parameter",
    "iam_token",
    "instance_connect_key",
    "is_reference",
    "map_error",
    "needs_resume_timeout",
    "poll_interval",
    "region_from_host",
    "resolve_cluster",
    "resolve_secret",
    "resume_hint",
    "secret_id_for",
    "secret_login",
    "session_for",
    "start_cluster",
    "stop_cluster",
    "wait_for",
    "wake",
    "wake_needed",
]
