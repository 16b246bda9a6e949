"""`tunnelman ls` and `tunnelman profile add|show|rm`: thin commands over core.profiles."""

from __future__ import annotations

import sys
from typing import get_args

import click

from tunnelman.cli.common import json_option, load_profile
from tunnelman.cli.main import get_ctx
from tunnelman.cli.output import json_out, out, table
from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError, TunnelmanError


@click.command("ls")
@json_option("A JSON list of profile objects.")
@click.pass_context
def ls_cmd(ctx: click.Context, as_json: bool) -> None:
    """List saved profiles: name, bastion, endpoint, database, user, local port."""
    sets = prof.load(get_ctx(ctx).config)
    if as_json:
        json_out([p.to_public_dict() for p in sets])
        return
    if not sets.exists:
        out(f"No profile file yet ({prof.printable(str(sets.path))}).")
        out("Add one: tunnelman profile add NAME --endpoint HOST --bastion USER@HOST")
        return
    if not len(sets):
        out(f"No profiles in {prof.printable(str(sets.path))}.")
        return
    # Every cell through printable: an escape sequence in a description must not reach the terminal.
    rows = [
        tuple(
            prof.printable(str(cell))
            for cell in (
                p.name,
                p.bastion or (f"ssm:{p.bastion_instance_id}" if p.transport == "ssm" else "-"),
                p.endpoint or (f"cluster {p.cluster}" if p.cluster else "-"),
                f"{p.user}@{p.database}",
                p.local_port or "auto",
                p.description,
            )
        )
        for p in sets
    ]
    table(("NAME", "BASTION", "ENDPOINT", "USER@DB", "PORT", "DESCRIPTION"), rows)


@click.group("profile")
def profile_group() -> None:
    """Add, show or remove profiles in the profile file (comments are kept)."""


def _endpoint_option(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(prof.parse_endpoint(value))
    except ValueError as exc:
        raise click.BadParameter(f"'{value}' {exc}; expected HOST[:PORT]") from None


@profile_group.command("add")
@click.argument("name")
@click.option("--cluster", metavar="ID", help="RDS cluster or instance id: endpoint etc. from AWS.")
@click.option("--endpoint", metavar="HOST[:PORT]", help="Database endpoint as the bastion sees it.")
@click.option(
    "--reader", is_flag=True, help="With --cluster: connect to the cluster's reader endpoint."
)
@click.option(
    "--proxy",
    metavar="NAME",
    help="With --cluster: connect through this RDS Proxy's endpoint.",
)
@click.option("--region", metavar="R", help="AWS region of the cluster.")
@click.option("--aws-profile", metavar="P", help="AWS shared-config profile to use.")
@click.option("--bastion", metavar="[USER@]HOST[:PORT]", help="The SSH bastion.")
@click.option("--identity-file", metavar="PATH", help="Private key (default: ssh-agent).")
@click.option(
    "--known-hosts", metavar="PATH", help="known_hosts file (default ~/.ssh/known_hosts)."
)
@click.option("--database", metavar="DB", help="Database name.")
@click.option("--user", metavar="USER", help="Database user.")
@click.option("--local-port", type=click.IntRange(1, 65535), help="Fixed local port.")
@click.option(
    "--password",
    "password_source",
    type=click.Choice(["keyring", "prompt", "none", "iam", "secretsmanager"]),
    help="Where the database password comes from (default keyring).",
)
@click.option(
    "--sslmode",
    type=click.Choice(["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
    help="libpq sslmode for clients (verify-full works through the tunnel).",
)
@click.option(
    "--engine",
    type=click.Choice(get_args(prof.Engine)),
    help="sshtunnel (default: paramiko, in-process) or openssh (the system `ssh -N -L`, "
    "with your ssh_config).",
)
@click.option(
    "--transport",
    type=click.Choice(get_args(prof.Transport)),
    help="ssh (default: TCP to the bastion), ssm (AWS Session Manager: SSH over SSM with "
    "--bastion, else port forwarding to the endpoint) or eice (EC2 Instance Connect Endpoint).",
)
@click.option(
    "--bastion-instance",
    metavar="i-…",
    help="The EC2 instance id the transport reaches (ssm: an SSM-managed instance).",
)
@click.option(
    "--jump",
    "jump",
    multiple=True,
    metavar="[USER@]HOST[:PORT]",
    help="A jump host the bastion is reached through (repeat for several, in order).",
)
@click.option("--description", metavar="TEXT", help="A line shown in lists.")
@click.option(
    "--group", metavar="NAME", help="A heading the TUI lists the profile under (prod, staging…)."
)
@click.option("--force", is_flag=True, help="Replace an existing profile of that name.")
@click.pass_context
def profile_add(
    ctx: click.Context,
    name: str,
    cluster: str | None,
    endpoint: str | None,
    reader: bool,
    proxy: str | None,
    region: str | None,
    aws_profile: str | None,
    bastion: str | None,
    identity_file: str | None,
    known_hosts: str | None,
    database: str | None,
    user: str | None,
    local_port: int | None,
    password_source: str | None,
    sslmode: str | None,
    engine: str | None,
    transport: str | None,
    bastion_instance: str | None,
    jump: tuple[str, ...],
    description: str | None,
    group: str | None,
    force: bool,
) -> None:
    """Add a profile NAME, from an AWS cluster (--cluster) or a known endpoint (--endpoint).

    With --cluster, --reader uses the cluster's reader endpoint and --proxy NAME an RDS Proxy's
    endpoint (see `tunnelman discover`); --cluster may be "ssm:/NAME" (an SSM parameter holding the
    id or ARN), kept as such in the profile.
    """
    if not cluster and not endpoint:
        raise click.UsageError("give --cluster ID (looked up in AWS) or --endpoint HOST[:PORT]")
    if reader and proxy:
        raise click.UsageError("--reader and --proxy cannot be used together: pick one endpoint")
    if transport in ("ssm", "eice") and not bastion_instance:
        raise click.UsageError(f"--transport {transport} needs --bastion-instance i-…")
    if transport == "eice" and not bastion:
        raise click.UsageError("--transport eice needs --bastion USER@HOST (SSH runs over it)")
    chosen = "--reader" if reader else "--proxy" if proxy else None
    if chosen and not cluster:
        raise click.UsageError(f"{chosen} needs --cluster ID (the cluster it belongs to)")
    if chosen and endpoint:
        raise click.UsageError(f"{chosen} sets the endpoint: do not pass --endpoint too")
    path = prof.config_path(get_ctx(ctx).config)
    values: dict[str, object] = {
        "description": description,
        "group": group,
        "bastion": bastion,
        "identity_file": identity_file,
        "known_hosts": known_hosts,
        "endpoint": _endpoint_option(endpoint),
        "database": database,
        "user": user,
        "local_port": local_port,
        "password": password_source,
        "sslmode": sslmode,
        "cluster": cluster,
        "region": region,
        "aws_profile": aws_profile,
        "engine": engine,
        "transport": transport,
        "bastion_instance_id": bastion_instance,
        "jump": (list(jump) if len(jump) > 1 else jump[0]) if jump else None,
    }
    # Refuse a taken name before asking AWS: no point in a look-up whose result is thrown away.
    if prof.load(path).profiles.get(name) is not None and not force:
        raise ConfigError(
            f"{path}: profiles.{name}: a profile of that name exists",
            hint="pick another name or pass --force to replace it",
        )
    if cluster and not endpoint:
        from tunnelman.cli import cmd_aws  # boto3 only when AWS fills the profile

        values = cmd_aws.fill_from_cluster(values, reader=reader, proxy=proxy)
    prof.save_profile(
        path, name, {k: v for k, v in values.items() if v is not None}, overwrite=force
    )
    saved = prof.load(path).get(name)
    out(f"Saved profile '{name}' in {path}")
    out(f"  endpoint  {saved.endpoint or '-'}   database {saved.database}   user {saved.user}")
    if saved.transport == "ssm" and saved.bastion is None:
        out(f"  bastion   - (SSM port forwarding through {saved.bastion_instance_id})")
    else:
        out(f"  bastion   {saved.bastion or '- (set one with --bastion USER@HOST)'}")
    if saved.transport != "ssh":
        out(f"  transport {saved.transport} ({saved.bastion_instance_id})")
    out(f"Next: tunnelman check {name}")


@profile_group.command("show")
@click.argument("name")
@json_option("The profile as a JSON object.")
@click.pass_context
def profile_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one profile with defaults filled in."""
    profile = load_profile(ctx, name)
    data = profile.to_public_dict()
    if as_json:
        json_out(data)
        return
    width = max(len(k) for k in data)
    for key, raw in data.items():
        value = ", ".join(raw) if isinstance(raw, list) else raw
        out(f"{key.ljust(width)}  {'-' if value in (None, '') else prof.printable(str(value))}")
    from tunnelman.core.ssh import config as ssh_config

    _resolved, notes = ssh_config.effective(profile)
    for line in notes:
        out(f"{'ssh_config'.ljust(width)}  {prof.printable(line)}")


def _stdin_is_terminal() -> bool:
    # Not cli.prompts.interactive: that module pulls in paramiko, which `rm` has no use for.
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


@profile_group.command("rm")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def profile_rm(ctx: click.Context, name: str, yes: bool) -> None:
    """Remove profile NAME from the file (the rest of the file is kept as it is)."""
    path = prof.config_path(get_ctx(ctx).config)
    prof.load(path, missing_ok=False).get(name)
    if not yes:
        if not _stdin_is_terminal():
            # click.confirm would read EOF and say only "aborted".
            raise TunnelmanError(
                f"not removing profile '{name}': no terminal to confirm on",
                hint=f"pass --yes to remove it without asking: tunnelman profile rm {name} --yes",
            )
        if not click.confirm(f"Remove profile '{name}' from {path}?", default=False):
            raise click.Abort()
    prof.delete_profile(path, name)
    out(f"Removed profile '{name}' from {path}")
