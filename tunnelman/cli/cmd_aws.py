"""`tunnelman discover`, `tunnelman cluster status|start|stop`, and `fill_from_cluster` for
`profile add --cluster`: thin commands over `tunnelman.core.aws` (which imports boto3 lazily)."""

from __future__ import annotations

import sys
from typing import Any

import click

from tunnelman.cli.common import json_option, load_profile
from tunnelman.cli.output import err, json_out, out, progress, table
from tunnelman.core import aws
from tunnelman.core import profiles as prof
from tunnelman.core.errors import AWSError, TunnelmanError

# ----------------------------------------------------------------------------- discover


@click.command("discover")
@click.option(
    "--region",
    "regions",
    multiple=True,
    metavar="R",
    help="Region to search; repeat for several (default: your AWS config's region).",
)
@click.option(
    "--aws-profile", metavar="P", help="AWS shared-config profile (default: $AWS_PROFILE)."
)
@click.option(
    "--all-engines", is_flag=True, help="Also list MySQL and other non-PostgreSQL engines."
)
@json_option("A JSON list (kind: cluster|instance|proxy|bastion).")
def discover_cmd(
    regions: tuple[str, ...], aws_profile: str | None, all_engines: bool, as_json: bool
) -> None:
    """Find Aurora clusters, RDS instances, RDS proxies and bastion candidates in AWS.

    Uses your AWS credentials as the AWS CLI does (environment, ~/.aws/config, SSO); read-only.
    """
    chatty = not as_json or sys.stderr.isatty()
    found = aws.discover(
        regions,
        aws_profile=aws_profile,
        all_engines=all_engines,
        on_progress=progress if chatty else None,
    )
    for warning in sorted(found.warnings):
        err(f"warning: {warning}")
    if as_json:
        json_out(found.to_json())
        return
    if chatty:
        progress("")
    _print_discovery(found, several_regions=len(found.regions) > 1)


WIDTH = 100


def _fit_last(headers: list[str], rows: list[list[Any]]) -> list[list[Any]]:
    """Trim the last (least important) column so `table` need not trim the others."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if not cells:
        return cells
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    room = WIDTH - sum(widths[:-1]) - 2 * (len(widths) - 1)
    room = max(room, len(headers[-1]), 8)
    for row in cells:
        if len(row[-1]) > room:
            row[-1] = row[-1][: room - 1] + "…"
    return cells


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    table(headers, _fit_last(headers, rows), max_width=WIDTH)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _members(db: aws.Database) -> str:
    return ", ".join(f"{m.id} ({m.role})" for m in db.members) or "-"


def _engine(db: aws.Database) -> str:
    return " ".join(x for x in (db.engine, db.engine_version) if x) or "-"


def _print_discovery(found: aws.Discovery, *, several_regions: bool) -> None:
    if not found.databases and not found.bastions:
        out(f"Nothing found in {', '.join(found.regions)}.")
        if found.hidden:
            out(f"({_hidden(found.hidden)}: --all-engines shows them)")
        out("Another region? tunnelman discover --region R [--region R2 …]")
        return
    region = ["REGION"] if several_regions else []

    def reg(db: aws.Database | aws.BastionCandidate) -> list[str]:
        return [db.region] if several_regions else []

    if not several_regions:
        out(f"In {found.regions[0]}:")
        out()
    sections = 0

    def section(title: str) -> None:
        nonlocal sections
        if sections:
            out()
        sections += 1
        out(title)

    clusters = [d for d in found.databases if d.kind == "cluster"]
    if clusters:
        section("Aurora clusters")
        _table(
            ["ID", *region, "STATUS", "TYPE", "CAPACITY", "IAM", "SECRET", "MEMBERS"],
            [
                [
                    d.id,
                    *reg(d),
                    d.status,
                    d.type_text,
                    d.capacity_text,
                    _yes(d.iam_auth),
                    "managed" if d.secret_arn else "-",
                    _members(d),
                ]
                for d in clusters
            ],
        )
    instances = [d for d in found.databases if d.kind == "instance"]
    if instances:
        section("RDS instances")
        _table(
            ["ID", *region, "STATUS", "ENGINE", "CLASS", "IAM", "SECRET"],
            [
                [
                    d.id,
                    *reg(d),
                    d.status,
                    _engine(d),
                    d.instance_class,
                    _yes(d.iam_auth),
                    "managed" if d.secret_arn else "-",
                ]
                for d in instances
            ],
        )
    proxies = [d for d in found.databases if d.kind == "proxy"]
    if proxies:
        section("RDS proxies")
        _table(
            ["ID", *region, "STATUS", "ENGINE", "IAM", "SECRET", "VPC"],
            [
                [
                    d.id,
                    *reg(d),
                    d.status,
                    d.engine,
                    _yes(d.iam_auth),
                    _yes(bool(d.secret_arn)),
                    d.vpc_id,
                ]
                for d in proxies
            ],
        )
    if found.databases:
        section("Endpoints (as the bastion sees them)")
        table(["ID", "ROLE", "HOST", "PORT"], _endpoint_rows(found.databases), max_width=200)
    if found.bastions:
        section("Bastion candidates (running EC2 instances)")
        _table(
            ["ID", "NAME", *region, "PUBLIC IP", "VPC", "WHY"],
            [
                [b.id, b.name or "-", *reg(b), b.public_ip or "-", b.vpc_id, _why(b)]
                for b in found.bastions
            ],
        )
    if found.connect_endpoints:
        section('EC2 Instance Connect Endpoints (transport = "eice": no public bastion needed)')
        _table(
            ["ID", *region, "STATE", "VPC", "SUBNET"],
            [
                [e.id, *([e.region] if several_regions else []), e.state, e.vpc_id, e.subnet_id]
                for e in found.connect_endpoints
            ],
        )
    if found.hidden:
        out()
        out(f"({_hidden(found.hidden)}: --all-engines shows them)")
    _print_hint(found, several_regions=several_regions)


def _hidden(n: int) -> str:
    return f"{n} non-PostgreSQL database{'' if n == 1 else 's'} hidden"


def _why(b: aws.BastionCandidate) -> str:
    # the full "public IP in the VPC of a, b, c" is in --json; the table keeps it short
    why = "public IP, DB VPC" if b.reason.startswith("public IP") else b.reason
    return f"{why}, SSM online" if b.ssm_online and "SSM" not in why else why


def _endpoint_rows(databases: list[aws.Database]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for d in databases:
        if d.kind == "cluster":
            rows.append([d.id, "writer", d.endpoint or "-", d.port])
            if d.reader_endpoint:
                rows.append([d.id, "reader", d.reader_endpoint, d.port])
            for c in d.custom_endpoints:
                role = f"custom {c.type.lower()}" if c.type else "custom"
                rows.append([c.id, role, c.endpoint, d.port])
        else:
            rows.append([d.id, d.kind, d.endpoint or "-", d.port])
    return rows


def _print_hint(found: aws.Discovery, *, several_regions: bool) -> None:
    candidates = [d for d in found.databases if d.kind in ("cluster", "instance")]
    if not candidates:
        return

    def score(pair: tuple[aws.Database, aws.BastionCandidate | None]) -> tuple[bool, ...]:
        db, b = pair
        return (
            b is not None and b.vpc_id == db.vpc_id,
            b is not None,
            db.status == "available",
            db.kind == "cluster",
        )

    pairs = [
        (db, next((b for b in found.bastions if b.region == db.region and b.address), None))
        for db in candidates
    ]
    db, bastion = max(pairs, key=score)
    region = f" --region {db.region}" if several_regions or db.region else ""
    out()
    out("Make a profile from one of these (endpoint, database, user and secret come from AWS):")
    out(f"  tunnelman profile add NAME --cluster {db.id}{region} \\")
    managed = next((b for b in found.bastions if b.region == db.region and b.ssm_online), None)
    if bastion is None and managed is not None:
        out(f"      --transport ssm --bastion-instance {managed.id}")
    elif bastion is not None:
        key = f"~/.ssh/{bastion.key_name}.pem" if bastion.key_name else "~/.ssh/KEY.pem"
        out(f"      --bastion ec2-user@{bastion.address} \\")
        out(f"      --identity-file {key}")
    else:
        out("      --bastion USER@BASTION-HOST --identity-file ~/.ssh/KEY.pem")


# ----------------------------------------------------------------------------- profile add


def _text(values: dict[str, object], key: str) -> str | None:
    value = values.get(key)
    return str(value) if value not in (None, "") else None


def fill_from_cluster(
    values: dict[str, object], *, reader: bool = False, proxy: str | None = None
) -> dict[str, object]:
    """Fill a new profile's values from the RDS cluster (or instance) named by `values["cluster"]`.

    Sets what the person did not give: endpoint (HOST[:PORT]; the cluster's reader endpoint with
    `reader`, the RDS proxy `proxy`'s endpoint with `proxy`), database (DatabaseName, else
    "postgres"), user (MasterUsername), region, and — when the cluster has an RDS-managed master
    secret and no --password was given — password = "secretsmanager" with that secret's ARN.
    A `cluster = "ssm:/NAME"` reference is kept as given: it is read again at each use.
    """
    ident = _text(values, "cluster")
    if ident is None:
        raise click.UsageError("--cluster needs an id")
    where = _text(values, "region")
    progress(f"Looking up '{ident}' in AWS{f' ({where})' if where else ''}…")
    db = aws.find(ident, region=where, aws_profile=_text(values, "aws_profile"))
    if not db.endpoint:
        raise AWSError(
            f"{db.kind} '{db.id}' has no endpoint yet (status {db.status})",
            hint="try again when it is available, or pass --endpoint HOST[:PORT]",
        )
    filled = dict(values)
    if not aws.is_reference(ident):
        filled["cluster"] = db.id
    if reader:
        filled["endpoint"] = _reader_endpoint(db)
    elif proxy:
        filled["endpoint"] = _proxy_endpoint(proxy, db, filled)
    if filled.get("endpoint") is None:
        filled["endpoint"] = str(prof.Endpoint(db.endpoint, db.port or prof.DEFAULT_DB_PORT))
    if filled.get("database") is None:
        filled["database"] = db.database or "postgres"
    if filled.get("user") is None and db.master_user:
        filled["user"] = db.master_user
    if filled.get("region") is None:
        filled["region"] = db.region
    if db.secret_arn and filled.get("password") is None:
        filled["password"] = "secretsmanager"
        filled["secret"] = db.secret_arn
    if filled.get("password") == "iam" and filled.get("sslmode") in (
        None,
        "disable",
        "allow",
        "prefer",
    ):
        filled["sslmode"] = "require"  # RDS refuses IAM tokens without TLS
    if db.status and db.status != "available":
        progress(f"Note: {db.kind} '{db.id}' is {db.status}.")
    return filled


def _reader_endpoint(db: aws.Database) -> str:
    if db.kind != "cluster":
        raise AWSError(
            f"{db.kind} '{db.id}' is not an Aurora cluster: it has no reader endpoint",
            hint="drop --reader, or name the cluster it belongs to",
        )
    if not db.reader_endpoint:
        raise AWSError(
            f"cluster '{db.id}' has no reader endpoint (status {db.status})",
            hint="try again when it is available, or pass --endpoint HOST[:PORT]",
        )
    if not any(m.role == "reader" for m in db.members):
        progress(
            f"Note: cluster '{db.id}' has no reader instance yet: its reader endpoint reaches "
            "the writer until one is added."
        )
    return str(prof.Endpoint(db.reader_endpoint, db.port or prof.DEFAULT_DB_PORT))


def _proxy_endpoint(name: str, db: aws.Database, filled: dict[str, object]) -> str:
    progress(f"Looking up RDS proxy '{name}'…")
    found = aws.find_proxy(name, region=db.region, aws_profile=_text(filled, "aws_profile"))
    if found.engine and not found.is_postgres:
        raise AWSError(f"RDS proxy '{found.id}' is for {found.engine}, not PostgreSQL")
    if not found.endpoint:
        raise AWSError(
            f"RDS proxy '{found.id}' has no endpoint yet (status {found.status})",
            hint="try again when it is available",
        )
    if found.status and found.status != "available":
        progress(f"Note: RDS proxy '{found.id}' is {found.status}.")
    if found.iam_auth and filled.get("password") is None:
        # A proxy that requires IAM authentication refuses passwords; tokens need TLS.
        filled["password"] = "iam"
        if filled.get("sslmode") in (None, "disable", "allow", "prefer"):
            filled["sslmode"] = "require"
    return str(prof.Endpoint(found.endpoint, found.port or prof.DEFAULT_DB_PORT))


# ----------------------------------------------------------------------------- cluster


@click.group("cluster")
def cluster_group() -> None:
    """Status, start and stop of a profile's RDS cluster (or instance): its `cluster` key."""


@cluster_group.command("status")
@click.argument("name")
@json_option("The cluster as a JSON object.")
@click.pass_context
def cluster_status_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Status, serverless capacity, endpoints and members of profile NAME's cluster."""
    profile = load_profile(ctx, name)
    db = aws.cluster_status(profile)
    note, _ = aws.assess(db, profile.name)
    if as_json:
        json_out({"profile": profile.name, **db.to_json(), "note": note})
        return
    _print_status(profile, db, note)


def _print_status(profile: prof.Profile, db: aws.Database, note: str | None) -> None:
    rows: list[tuple[str, str]] = [
        ("status", db.status or "-"),
        ("engine", ", ".join(x for x in (_engine(db), db.type_text) if x and x != "-") or "-"),
    ]
    if db.serverless:
        capacity = db.capacity_text
        if db.seconds_until_auto_pause and db.auto_pause:
            capacity += f" after {db.seconds_until_auto_pause} s idle"
        rows.append(("capacity", capacity))
    rows.append(("iam auth", _yes(db.iam_auth)))
    rows.append(("secret", f"{db.secret_arn} (managed)" if db.secret_arn else "-"))
    if db.vpc_id:
        rows.append(("vpc", db.vpc_id))
    port = f":{db.port}" if db.port else ""
    endpoints = [
        f"writer  {db.endpoint or '-'}{port}"
        if db.kind == "cluster"
        else f"{db.endpoint or '-'}{port}"
    ]
    if db.reader_endpoint:
        endpoints.append(f"reader  {db.reader_endpoint}{port}")
    for c in db.custom_endpoints:
        kind = f" ({c.type})" if c.type else ""
        endpoints.append(f"custom  {c.endpoint}{port}  {c.id}{kind}")
    out(f"{db.id}  ({db.kind} in {db.region}, profile {profile.name})")
    width = 10
    for key, value in rows:
        out(f"  {key.ljust(width)}{value}")
    for i, line in enumerate(endpoints):
        out(f"  {('endpoints' if i == 0 else '').ljust(width)}{line}")
    if db.kind == "cluster":
        if db.members:
            member_width = max(len(m.id) for m in db.members)
            for i, m in enumerate(db.members):
                text = "  ".join(
                    x
                    for x in (
                        m.id.ljust(member_width),
                        m.role.ljust(6),
                        m.instance_class or "",
                        m.status or "",
                    )
                    if x
                )
                out(f"  {('members' if i == 0 else '').ljust(width)}{text.rstrip()}")
        else:
            out(f"  {'members'.ljust(width)}none (add an instance before connecting)")
    if note:
        out(f"  {'note'.ljust(width)}{note}")


def _change(
    ctx: click.Context,
    name: str,
    action: aws.Action,
    *,
    yes: bool,
    wait: bool,
    timeout: float,
    interval: float,
    as_json: bool,
) -> None:
    profile = load_profile(ctx, name)
    db = aws.cluster_status(profile)
    what = f"{db.kind} '{db.id}'"
    if not aws.check_action(db, action):
        if as_json:
            json_out({"profile": profile.name, **db.to_json(), "changed": False})
        else:
            out(f"{what} is already {db.status}.")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise TunnelmanError(
                f"refusing to {action} {what} without confirmation: no terminal to ask",
                hint=f"pass --yes: tunnelman cluster {action} {name} --yes",
            )
        extra = (
            " Open connections will drop; AWS starts a stopped cluster again after 7 days."
            if action == "stop"
            else " It takes several minutes and is billed from then on."
        )
        click.confirm(
            f"{action.capitalize()} {what} in {db.region}?{extra}", default=False, abort=True
        )
    aws.change_state(profile, action, db)
    verb = "starting" if action == "start" else "stopping"
    if not wait:
        if as_json:
            json_out({"profile": profile.name, **db.to_json(), "status": verb, "changed": True})
        else:
            out(f"{what}: {verb} (not waiting; see `tunnelman cluster status {name}`)")
        return
    progress(
        f"{verb.capitalize()} {what}; waiting for {aws.TARGET_STATUS[action]} (Ctrl-C stops waiting)…"
    )
    seen: list[float] = [0.0]

    def on_status(status: str, elapsed: float) -> None:
        seen[0] = elapsed
        if status != aws.TARGET_STATUS[action]:
            progress(f"  {status}… ({elapsed:.0f} s)")

    try:
        final = aws.wait_for(
            profile, action, on_status=on_status, timeout=timeout, interval=interval
        )
    except KeyboardInterrupt:
        err(
            f"stopped waiting; the {action} of {what} continues in AWS: "
            f"check with `tunnelman cluster status {name}`"
        )
        ctx.exit(130)
    if as_json:
        json_out({"profile": profile.name, **final.to_json(), "changed": True})
    else:
        out(f"{what} is {final.status} ({seen[0]:.0f} s)")


def _action_options(fn: Any) -> Any:
    fn = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(fn)
    fn = click.option(
        "--wait/--no-wait", default=True, show_default=True, help="Wait until it is done."
    )(fn)
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=1),
        default=1800,
        show_default=True,
        metavar="SECONDS",
        help="Give up waiting after this long (AWS carries on).",
    )(fn)
    fn = click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.05),
        default=5.0,
        hidden=True,
        help="Seconds between status checks while waiting (for tests).",
    )(fn)
    return json_option("The final state as JSON.")(fn)


@cluster_group.command("start")
@click.argument("name")
@_action_options
@click.pass_context
def cluster_start_cmd(
    ctx: click.Context,
    name: str,
    yes: bool,
    wait: bool,
    timeout: float,
    poll_interval: float,
    as_json: bool,
) -> None:
    """Start profile NAME's stopped cluster (or instance) and wait until it is available."""
    _change(
        ctx,
        name,
        "start",
        yes=yes,
        wait=wait,
        timeout=timeout,
        interval=poll_interval,
        as_json=as_json,
    )


@cluster_group.command("stop")
@click.argument("name")
@_action_options
@click.pass_context
def cluster_stop_cmd(
    ctx: click.Context,
    name: str,
    yes: bool,
    wait: bool,
    timeout: float,
    poll_interval: float,
    as_json: bool,
) -> None:
    """Stop profile NAME's cluster (or instance) and wait until it is stopped."""
    _change(
        ctx,
        name,
        "stop",
        yes=yes,
        wait=wait,
        timeout=timeout,
        interval=poll_interval,
        as_json=as_json,
    )
