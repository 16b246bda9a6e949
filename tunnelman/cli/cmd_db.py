"""`tunnelman db …`: database operations the RDS way, through the profile's tunnel.

Thin commands over `tunnelman.core.dbops`: each loads the profile, resolves its login (as
`tunnelman psql` does), reuses the agent's tunnel for the profile when it holds one (else opens
one in-process for the command), runs the routine as the profile's user and prints the outcome.
`--dry-run` prints the SQL and the programs instead of running them (look-ups still run).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from tunnelman.cli.common import load_profile
from tunnelman.cli.main import get_ctx
from tunnelman.cli.output import err, out, progress
from tunnelman.core import profiles as prof
from tunnelman.core.errors import CredentialError, TunnelmanError

F = TypeVar("F", bound=Callable[..., Any])


def _remember_start_cluster(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["tunnelman.start_cluster"] = value
    return value


def _common(func: F) -> F:
    func = click.option(
        "--start-cluster",
        is_flag=True,
        expose_value=False,
        callback=_remember_start_cluster,
        help="If the profile's cluster is stopped, start it without asking (needed without a "
        "terminal) and wait until its writer instance is available, then connect.",
    )(func)
    func = click.option(
        "--dry-run",
        is_flag=True,
        help="Print the SQL and programs it would run; change nothing (it still connects to look).",
    )(func)
    return click.option(
        "--accept-new-host-key",
        is_flag=True,
        help="Trust and record the bastion's host key if known_hosts has none yet.",
    )(func)


@click.group("db")
def db_group() -> None:
    """Database operations the RDS way, through the profile's tunnel, as the profile's user.

    On RDS and Aurora the master user is no superuser (CREATEDB, CREATEROLE, whitelisted
    extensions); these commands run the routines that work for it. Every command takes
    --dry-run. Names are quoted as identifiers: a hostile name is never executed.
    """


@contextlib.contextmanager
def _ops(ctx: click.Context, name: str, accept_new: bool, dry_run: bool) -> Iterator[Any]:
    from tunnelman.cli.cmd_clients import agent_port, login_for
    from tunnelman.cli.prompts import host_key_policy, passphrase_prompt
    from tunnelman.cli.wake import prepare
    from tunnelman.core import dbops

    profile = load_profile(ctx, name)
    login = login_for(profile)
    port = agent_port(name)
    start_cluster = bool(ctx.meta.get("tunnelman.start_cluster"))
    if port is None or start_cluster:
        # As for psql: a stopped cluster is started (asked, or --start-cluster), else the resume
        # note; the agent's tunnel is reused without asking AWS unless the flag says to check.
        profile = prepare(ctx, profile, start_cluster=start_cluster, announce=port is None)
    if port is None and sys.stderr.isatty():
        progress(f"tunnelman: opening a tunnel to '{name}' via {profile.route} …")
    with dbops.tunnel_port(
        profile,
        port=port,
        host_keys=host_key_policy(accept_new),
        passphrase=passphrase_prompt(),
    ) as opened:
        ops = dbops.Ops(profile, opened, login, dry_run=dry_run, echo=_dry_echo())
        try:
            yield ops
        finally:
            ops.close()


def _dry_echo() -> Callable[[str], None]:
    """`out`, with a first line saying that nothing is run (only once there is a plan to show)."""
    started = False

    def echo(text: str) -> None:
        nonlocal started
        if not started:
            out("-- dry run: nothing below was run")
            started = True
        out(text)

    return echo


def _confirm(what: str, yes: bool, dry_run: bool, again: str) -> None:
    if yes or dry_run:
        return
    from tunnelman.cli.prompts import interactive

    if not interactive():
        raise TunnelmanError(
            f"not dropping {what}: no terminal to confirm on",
            hint=f"pass --yes to drop it without asking: {again} --yes",
        )
    if not click.confirm(f"Drop {what}? This cannot be undone", default=False, err=True):
        raise click.Abort()


# ----------------------------------------------------------------------------- create-user


def _new_password(role: str, from_stdin: bool) -> tuple[str, bool]:
    """The new role's password and whether it was generated here."""
    from tunnelman.cli.prompts import interactive
    from tunnelman.core import dbops

    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise CredentialError("empty password on standard input: no role created")
        return value, False
    if interactive():
        value = click.prompt(
            f"Password for the new role '{role}' (empty: generate one)",
            hide_input=True,
            default="",
            show_default=False,
            err=True,
        )
        if value:
            again = click.prompt("Repeat it", hide_input=True, err=True)
            if again != value:
                raise CredentialError("the two passwords differ: no role created")
            return value, False
    return dbops.generate_password(), True


@db_group.command("create-user")
@click.argument("profile")
@click.argument("role")
@click.option(
    "--password-stdin", is_flag=True, help="Read the new role's password from standard input."
)
@click.option(
    "--save-profile",
    "save_as",
    metavar="NEWPROFILE",
    help="Also add a profile NEWPROFILE for ROLE (same bastion and endpoint), password in the keyring.",
)
@_common
@click.pass_context
def create_user_cmd(
    ctx: click.Context,
    profile: str,
    role: str,
    password_stdin: bool,
    save_as: str | None,
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """Create a login ROLE with least privilege (NOSUPERUSER NOCREATEDB NOCREATEROLE).

    The password comes from --password-stdin, a hidden prompt, or is generated and shown once.
    The server receives only its SCRAM verifier, never the password itself.
    """
    from tunnelman.core import dbops

    dbops.check_name(role, "role")
    path = prof.config_path(get_ctx(ctx).config)
    if save_as is not None:
        if not prof.valid_name(save_as):
            raise click.UsageError(f"bad profile name {save_as!r} for --save-profile")
        if prof.load(path).profiles.get(save_as) is not None:
            raise TunnelmanError(
                f"a profile '{save_as}' already exists: no role created",
                hint="pick another --save-profile name",
            )
    password, generated = (None, False) if dry_run else _new_password(role, password_stdin)
    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        dbops.create_user(ops, role, password)
        source = ops.profile
    if dry_run:
        if save_as:
            out(
                f"-- then: add profile '{save_as}' (user {role}) and store the password in the keyring"
            )
        return
    out(f"Created role {role} (LOGIN, not superuser, no CREATEDB, no CREATEROLE).")
    if generated:
        out(f"Generated password for {role} (shown only now, keep it safe): {password}")
    if save_as is not None:
        assert password is not None
        _save_profile(path, source, save_as, role, password)


def _save_profile(path: Path, source: Any, name: str, role: str, password: str) -> None:
    from tunnelman.core import credentials

    values = prof.profile_to_table(source)
    for key in ("local_port", "secret", "description"):
        values.pop(key, None)
    values.update(
        user=role, password="keyring", description=f"{role} (made with {source.name}'s master)"
    )
    prof.save_profile(path, name, values)
    try:
        credentials.keyring_set(name, password)
    except TunnelmanError as exc:
        raise CredentialError(
            f"profile '{name}' was saved, but its password was not: {exc.message}",
            hint=f"store it with `tunnelman password set {name}`",
        ) from None
    out(f"Saved profile '{name}' in {path} (user {role}); its password is in the keyring.")


# ----------------------------------------------------------------------------- create-database


@db_group.command("create-database")
@click.argument("profile")
@click.argument("db")
@click.option("--owner", required=True, metavar="ROLE", help="The role that will own DB.")
@click.option(
    "--extension",
    "extensions",
    multiple=True,
    metavar="NAME",
    help="Create this extension as master (repeat; postgis hands spatial_ref_sys to the owner).",
)
@_common
@click.pass_context
def create_database_cmd(
    ctx: click.Context,
    profile: str,
    db: str,
    owner: str,
    extensions: tuple[str, ...],
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """Create DB from template0 for ROLE: PUBLIC revoked, extensions as master, then handed over."""
    from tunnelman.core import dbops

    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        dbops.create_database(ops, db, owner, list(dict.fromkeys(extensions)))
    if not dry_run:
        ext = f" with {', '.join(extensions)}" if extensions else ""
        out(f"Created database {db}{ext}, owned by {owner}; PUBLIC may not connect.")


# ----------------------------------------------------------------------------- grant-read


@db_group.command("grant-read")
@click.argument("profile")
@click.argument("db")
@click.argument("role")
@_common
@click.pass_context
def grant_read_cmd(
    ctx: click.Context,
    profile: str,
    db: str,
    role: str,
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """Give ROLE read-only access to DB, including tables its owner creates later; then test it.

    The test runs as ROLE (SET ROLE, in a transaction rolled back afterwards): a SELECT must work
    and a write must be refused, on an existing table and on one created for the test.
    """
    from tunnelman.core import dbops

    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        dbops.grant_read(ops, db, role)
        if dry_run:
            out("-- then the self-test as the role, in a transaction that is rolled back")
            return
        out(f"Granted read-only access to {db} to {role}. Testing it as {role}:")
        checks = dbops.grant_read_selftest(ops, db, role)
    for check in checks:
        mark = "✓" if check.ok else "✗"
        out(f"  {mark} {check.label}" + (f": {check.detail}" if check.detail else ""))
    failed = [c for c in checks if not c.ok]
    if failed:
        raise TunnelmanError(f"grant-read self-test: {len(failed)} of {len(checks)} checks failed")


# ----------------------------------------------------------------------------- dump / restore


def _on_table(verb: str) -> Callable[[str, int], None]:
    def show(table: str, count: int) -> None:
        progress(f"tunnelman: {verb} {table} (table {count})")

    return show


def _size(path: Path) -> str:
    from tunnelman.core.tunnel.traffic import human_bytes

    return human_bytes(path.stat().st_size)


@db_group.command("dump")
@click.argument("profile")
@click.argument("db")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The archive to write (custom format; replaced only when the dump succeeded).",
)
@_common
@click.pass_context
def dump_cmd(
    ctx: click.Context,
    profile: str,
    db: str,
    output: Path,
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """pg_dump --format=custom of DB into FILE, with progress per table."""
    from tunnelman.core import dbops

    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        result = dbops.dump(ops, db, output, on_table=_on_table("dumping"))
    if result is None:
        return
    for warning in result.log.warnings:
        err(f"tunnelman: pg_dump warning: {warning}")
    out(
        f"Dumped {db} to {output} ({_size(output)}, {len(result.log.tables)} tables) "
        f"in {result.seconds:.1f} s."
    )


@db_group.command("restore")
@click.argument("profile")
@click.argument("db")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_common
@click.pass_context
def restore_cmd(
    ctx: click.Context,
    profile: str,
    db: str,
    file: Path,
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """pg_restore FILE into DB (--no-owner --no-acl, as DB's owner), with progress per table.

    Errors about extensions that already exist are summarised, not fatal; any other error is
    listed and the exit status is 1.
    """
    from tunnelman.core import dbops

    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        result = dbops.restore(ops, db, file, on_table=_on_table("restoring"))
    if result is None:
        return
    tolerated = result.tolerated
    if tolerated:
        names = sorted({e.extension or "" for e in tolerated})
        err(
            f"tunnelman: note: {len(tolerated)} error(s) about extensions already in {db} "
            f"ignored ({', '.join(names)})"
        )
    for warning in result.log.warnings:
        err(f"tunnelman: pg_restore warning: {warning}")
    failures = result.failures
    for failure in failures:
        err(f"tunnelman: pg_restore: {failure.describe()}")
    if failures or (result.returncode != 0 and not tolerated):
        reason = failures[0].message if failures else f"exit status {result.returncode}"
        more = f" (and {len(failures) - 1} more, listed above)" if len(failures) > 1 else ""
        raise TunnelmanError(f"restore of {file} into {db} had errors: {reason}{more}")
    out(f"Restored {file} into {db} ({len(result.log.tables)} tables) in {result.seconds:.1f} s.")


# ----------------------------------------------------------------------------- drops


@db_group.command("drop-database")
@click.argument("profile")
@click.argument("db")
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."
)
@_common
@click.pass_context
def drop_database_cmd(
    ctx: click.Context,
    profile: str,
    db: str,
    yes: bool,
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """Drop DB: its owner back to the profile's user, then DROP DATABASE (never the profile's own)."""
    from tunnelman.core import dbops

    dbops.check_name(db, "database")
    _confirm(f"database {db}", yes, dry_run, f"tunnelman db drop-database {profile} {db}")
    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        dbops.drop_database(ops, db)
    if not dry_run:
        out(f"Dropped database {db}.")


@db_group.command("drop-user")
@click.argument("profile")
@click.argument("role")
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."
)
@_common
@click.pass_context
def drop_user_cmd(
    ctx: click.Context,
    profile: str,
    role: str,
    yes: bool,
    accept_new_host_key: bool,
    dry_run: bool,
) -> None:
    """Drop ROLE: its privileges revoked in every database (DROP OWNED BY), then DROP ROLE.

    Refused while ROLE owns a database or objects.
    """
    from tunnelman.core import dbops

    dbops.check_name(role, "role")
    _confirm(f"role {role}", yes, dry_run, f"tunnelman db drop-user {profile} {role}")
    with _ops(ctx, profile, accept_new_host_key, dry_run) as ops:
        dbops.drop_user(ops, role)
    if not dry_run:
        out(f"Dropped role {role}.")
