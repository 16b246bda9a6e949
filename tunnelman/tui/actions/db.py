"""Database operations (`tunnelman db …`) for the highlighted profile, from the command palette.

Seven palette commands ("Database: create user…", …) open a form (`tui/screens/db.py`). Its
"Dry run" runs the operation in a `@work` thread worker with `dbops.Ops(dry_run=True)` and shows the
statements and programs in the form; "Run" (after the typed-name confirmation for the drops) shows a
result screen fed by the worker: each step, grant-read's ✓/✗ self-test, dump/restore progress, the
summary, or the `TunnelmanError`'s message and hint. The routines are `tunnelman.core.dbops`, as
`tunnelman/cli/cmd_db.py` calls them; this module is the TUI's counterpart of those thin commands.

The tunnel is the one the TUI already shows open (the agent's, or this process's) when there is
one, else `dbops.tunnel_port` opens one for the operation, asking about host keys and passphrases
through modals. The login is the profile's (keyring, prompt in a modal, Secrets Manager, IAM).
A new role's password travels only inside `DbRequest` (repr hidden) to the worker; a generated one
is shown once on the result screen and nowhere else (no log line, no notification).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from textual import work

from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelmanError
from tunnelman.core.logs import get_logger
from tunnelman.core.tunnel import TunnelState
from tunnelman.tui.actions.base import AppBase
from tunnelman.tui.messages import Notice

if TYPE_CHECKING:
    from textual.screen import Screen

    from tunnelman.core import dbops
    from tunnelman.core.credentials import Login
    from tunnelman.core.ssh.known_hosts import HostKeyInfo
    from tunnelman.tui.screens.db import DbFormScreen

log = get_logger("tui")

Field = Literal["role", "password", "db", "owner", "extensions", "file"]
Kind = Literal["step", "ok", "fail", "progress", "note", "secret"]
Say = Callable[[str, Kind], None]


@dataclass(frozen=True)
class DbOp:
    """One `tunnelman db` command as the palette and its form show it."""

    key: str  # the CLI's command name
    title: str  # the palette's
    help: str
    fields: tuple[Field, ...]
    drops: Field | None = None  # the field a person types again to confirm a drop


OPS: tuple[DbOp, ...] = (
    DbOp(
        "create-user",
        "Database: create user…",
        "A login role with least privilege (NOSUPERUSER NOCREATEDB NOCREATEROLE), as `tunnelman db create-user`",
        ("role", "password"),
    ),
    DbOp(
        "create-database",
        "Database: create database…",
        "From template0 for an owner: PUBLIC revoked, extensions as master, then handed over",
        ("db", "owner", "extensions"),
    ),
    DbOp(
        "grant-read",
        "Database: grant read…",
        "Read-only access to a database (tables created later too), then a ✓/✗ self-test",
        ("db", "role"),
    ),
    DbOp(
        "dump",
        "Database: dump…",
        "pg_dump --format=custom of a database into a file, with progress per table",
        ("db", "file"),
    ),
    DbOp(
        "restore",
        "Database: restore…",
        "pg_restore a custom-format archive into a database (--no-owner --no-acl, as its owner)",
        ("db", "file"),
    ),
    DbOp(
        "drop-database",
        "Database: drop database…",
        "Owner back to the profile's user, then DROP DATABASE (never the profile's own)",
        ("db",),
        drops="db",
    ),
    DbOp(
        "drop-user",
        "Database: drop user…",
        "Revoke the role's privileges everywhere (DROP OWNED BY), then DROP ROLE",
        ("role",),
        drops="role",
    ),
)
BY_KEY = {op.key: op for op in OPS}


@dataclass(frozen=True)
class DbRequest:
    """What a person filled in for one operation (names checked by `check_request`)."""

    op: DbOp
    profile: str
    role: str = ""
    password: str = field(default="", repr=False)  # create-user; empty: generate one
    db: str = ""
    owner: str = ""
    extensions: tuple[str, ...] = ()
    file: str = ""
    # The login a dry run from the same form asked for (password = "prompt"): not asked twice.
    login: Login | None = field(default=None, repr=False, compare=False)

    @property
    def target(self) -> str:
        """The name a drop's confirmation asks for."""
        return self.db if self.op.drops == "db" else self.role

    @property
    def path(self) -> Path:
        return Path(self.file).expanduser()


_REQUIRED: dict[Field, str] = {
    "role": "role",
    "db": "database",
    "owner": "role",
    "file": "file",
}


def check_request(req: DbRequest, profile: prof.Profile) -> tuple[Field, str] | None:
    """(field, what is wrong) for the first bad field, or None: the checks the CLI makes before it
    connects (names, the profile's own database), so the form refuses without a round trip."""
    from tunnelman.core import dbops

    for name in req.op.fields:
        value = getattr(req, name)
        if name in _REQUIRED and not value:
            return name, f"type the {_REQUIRED[name]} name" if name != "file" else "type a path"
        try:
            if name in ("role", "owner"):
                dbops.check_name(value, "role")
            elif name == "db":
                dbops.check_name(value, "database")
            elif name == "extensions":
                for ext in value:
                    dbops.check_name(ext, "extension")
        except TunnelmanError as exc:
            return name, str(exc)
    if req.op.key == "drop-database" and req.db == profile.database:
        # The same refusal as dbops.drop_database (which makes it again on the server's side).
        return "db", (
            f"refusing to drop {req.db!r}: profile '{profile.name}' connects to it "
            "(drop it through a profile that connects to another database)"
        )
    return None


# ----------------------------------------------------------------------------- the operations


def perform(ops: dbops.Ops, req: DbRequest, say: Say) -> str:
    """Run `req` on `ops` (a dry run when `ops.dry_run`: statements go to `ops.echo`); `say`
    reports each step as it happens. Returns the summary; raises TunnelmanError when it failed."""
    from tunnelman.core import dbops

    key = req.op.key
    if key == "create-user":
        if ops.dry_run:
            dbops.create_user(ops, req.role, None)
            return f"Would create role {req.role}."
        password, generated = (req.password or dbops.generate_password()), not req.password
        dbops.create_user(ops, req.role, password)
        if generated:
            say(
                f"Generated password for {req.role} (shown only now, keep it safe): {password}",
                "secret",
            )
        return f"Created role {req.role} (LOGIN, not superuser, no CREATEDB, no CREATEROLE)."
    if key == "create-database":
        dbops.create_database(ops, req.db, req.owner, list(dict.fromkeys(req.extensions)))
        ext = f" with {', '.join(req.extensions)}" if req.extensions else ""
        if ops.dry_run:
            return f"Would create database {req.db}{ext}, owned by {req.owner}."
        return f"Created database {req.db}{ext}, owned by {req.owner}; PUBLIC may not connect."
    if key == "grant-read":
        return _grant_read(ops, req, say)
    if key == "dump":
        return _dump(ops, req, say)
    if key == "restore":
        return _restore(ops, req, say)
    if key == "drop-database":
        dbops.drop_database(ops, req.db)
        return f"Would drop database {req.db}." if ops.dry_run else f"Dropped database {req.db}."
    if key == "drop-user":
        dbops.drop_user(ops, req.role)
        return f"Would drop role {req.role}." if ops.dry_run else f"Dropped role {req.role}."
    raise TunnelmanError(f"unknown database operation {key!r}")


def _grant_read(ops: dbops.Ops, req: DbRequest, say: Say) -> str:
    from tunnelman.core import dbops

    dbops.grant_read(ops, req.db, req.role)
    if ops.dry_run:
        ops.echo("-- then the self-test as the role, in a transaction that is rolled back")
        return f"Would grant read-only access to {req.db} to {req.role}, then test it."
    say(f"Granted read-only access to {req.db} to {req.role}. Testing it as {req.role}:", "step")
    checks = dbops.grant_read_selftest(ops, req.db, req.role)
    for check in checks:
        detail = f": {check.detail}" if check.detail else ""
        say(f"{'✓' if check.ok else '✗'} {check.label}{detail}", "ok" if check.ok else "fail")
    failed = [c for c in checks if not c.ok]
    if failed:
        raise TunnelmanError(f"grant-read self-test: {len(failed)} of {len(checks)} checks failed")
    return f"{req.role} may read {req.db}: all {len(checks)} checks passed."


def _progress(verb: str, say: Say) -> Callable[[str, int], None]:
    def show(table: str, count: int) -> None:
        say(f"{verb} {table} (table {count})", "progress")

    return show


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _dump(ops: dbops.Ops, req: DbRequest, say: Say) -> str:
    from tunnelman.core import dbops

    result = dbops.dump(ops, req.db, req.path, on_table=_progress("dumping", say))
    if result is None:
        return f"Would dump {req.db} to {req.path}."
    for warning in result.log.warnings:
        say(f"pg_dump warning: {warning}", "note")
    return (
        f"Dumped {req.db} to {req.path} ({_size(req.path)}, {len(result.log.tables)} tables) "
        f"in {result.seconds:.1f} s."
    )


def _restore(ops: dbops.Ops, req: DbRequest, say: Say) -> str:
    from tunnelman.core import dbops

    result = dbops.restore(ops, req.db, req.path, on_table=_progress("restoring", say))
    if result is None:
        return f"Would restore {req.path} into {req.db}."
    tolerated = result.tolerated
    if tolerated:
        names = sorted({e.extension or "" for e in tolerated})
        say(
            f"note: {len(tolerated)} error(s) about extensions already in {req.db} "
            f"ignored ({', '.join(names)})",
            "note",
        )
    for warning in result.log.warnings:
        say(f"pg_restore warning: {warning}", "note")
    failures = result.failures
    for failure in failures:
        say(f"✗ pg_restore: {failure.describe()}", "fail")
    if failures or (result.returncode != 0 and not tolerated):
        reason = failures[0].message if failures else f"exit status {result.returncode}"
        more = f" (and {len(failures) - 1} more, listed above)" if len(failures) > 1 else ""
        raise TunnelmanError(f"restore of {req.path} into {req.db} had errors: {reason}{more}")
    return (
        f"Restored {req.path} into {req.db} ({len(result.log.tables)} tables) "
        f"in {result.seconds:.1f} s."
    )


# ----------------------------------------------------------------------------- the app's side


class DbActions(AppBase):
    """The palette's "Database: …" commands."""

    def db_commands(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        """(title, help, callback) of each palette command (for `get_system_commands`)."""
        for op in OPS:
            yield (
                op.title,
                f"{op.help} (highlighted profile)",
                partial(self.db_operation, op.key),
            )

    def db_operation(self, key: str, name: str | None = None) -> None:
        """Open the form of operation `key` for `name` (default: the highlighted profile)."""
        from tunnelman.tui.screens.db import DbFormScreen

        main = self.main
        name = name or (main.current if main is not None else None)
        if name is None:
            self.notify("No profile highlighted: add one first (n).", severity="warning")
            return
        try:
            profile = prof.load(self.config_path).get(name)
        except TunnelmanError as exc:
            self.notify(str(exc), severity="error")
            return
        op = BY_KEY[key]
        self.push_screen(
            DbFormScreen(op, profile, dry_run=self._db_dry_run),
            partial(self._db_confirmed, profile),
        )

    def _db_dry_run(self, req: DbRequest, form: DbFormScreen) -> None:
        self._db_work(form.profile, req, form, dry_run=True)

    def _db_confirmed(self, profile: prof.Profile, req: DbRequest | None) -> None:
        """The form was answered with Run (and, for a drop, the typed name): run it."""
        from tunnelman.tui.screens.db import DbResultScreen

        if req is None:
            return
        screen = DbResultScreen(req)
        self.push_screen(screen)
        self._db_work(profile, req, screen, dry_run=False)

    @work(thread=True, group="db", exit_on_error=False, description="database operation")
    def _db_work(
        self, profile: prof.Profile, req: DbRequest, target: Screen[Any], *, dry_run: bool
    ) -> None:
        """The operation, in a thread: lines and the outcome go to `target` as messages."""
        from tunnelman.core import dbops
        from tunnelman.core.credentials import resolve_login
        from tunnelman.tui.hosts import host_key_policy
        from tunnelman.tui.screens.db import DbDone, DbFormScreen, DbLine
        from tunnelman.tui.screens.modals import HostKeyScreen, SecretScreen

        plan: list[str] = []

        def say(text: str, kind: Kind) -> None:
            target.post_message(DbLine(text, kind))

        def ask_host_key(info: HostKeyInfo) -> bool:
            answer: bool | None = self.ask_from_thread(HostKeyScreen(info, profile.known_hosts))
            return bool(answer)

        summary: str | None = None
        error: TunnelmanError | None = None
        try:
            login = req.login or resolve_login(
                profile,
                prompt=lambda label: self.ask_from_thread(
                    SecretScreen("Database password", label.strip())
                ),
            )
            if dry_run and profile.password == "prompt" and isinstance(target, DbFormScreen):
                target.login = login  # the Run that follows uses it: one prompt per form
            status = self.state.tunnel_of(profile.name)
            port = (
                status.local_port if status is not None and status.state is TunnelState.UP else None
            )
            if port is None and not dry_run:
                say(f"opening a tunnel to '{profile.name}' via {profile.route} …", "progress")
            with dbops.tunnel_port(
                profile,
                port=port,
                host_keys=host_key_policy(ask_host_key),
                passphrase=lambda path: self.ask_from_thread(
                    SecretScreen("Key passphrase", f"Passphrase for {path}:")
                ),
            ) as opened:
                ops = dbops.Ops(profile, opened, login, dry_run=dry_run, echo=plan.append)
                try:
                    summary = perform(ops, req, say)
                finally:
                    ops.close()
        except TunnelmanError as exc:
            error = exc
        except Exception as exc:  # a bug: say so on the screen rather than take the app down
            log.error("db %s for %s failed", req.op.key, profile.name, exc_info=exc)
            error = TunnelmanError(
                f"{req.op.key} failed unexpectedly: {type(exc).__name__} (details in the log)"
            )
        delivered = target.post_message(DbDone(summary, error, plan))
        if not dry_run and (not delivered or not target.is_attached):
            # The result screen was closed before the end: say how it ended anyway.
            text = summary if error is None else f"{req.op.key} failed: {error}"
            self.post_message(Notice(text or ""))
