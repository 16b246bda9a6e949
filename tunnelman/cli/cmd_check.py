"""`tunnelman check NAME`: a doctor that walks the way in step by step and says what to fix.

Steps: config, key, reach bastion, host key, log in to bastion, open forward, log in to the
database, server version, PostGIS. Each prints ✓ or ✗ with a detail; a failure prints the fix and
the steps it blocks are listed as skipped. Exit 0 when every step passes, 1 otherwise. The
connection steps are `tunnelman.core.ssh`'s own, run one at a time; the database steps go through
a real tunnel (`Tunnel.adopt` on the checked connection), with the password handed to psycopg
as an argument, never on a command line or in the environment.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from tunnelman.cli.main import get_ctx
from tunnelman.cli.output import out
from tunnelman.cli.prompts import host_key_policy, passphrase_prompt, password_prompt
from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelmanError

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh import Identity
    from tunnelman.core.tunnel import Tunnel

STEPS = (
    "config",
    "key",
    "reach bastion",
    "host key",
    "log in to bastion",
    "open forward",
    "log in to database",
    "server version",
    "PostGIS",
)
_WIDTH = max(len(s) for s in STEPS) + 2


class StepFailed(Exception):
    """A step's failure: what went wrong and how to fix it."""

    def __init__(self, detail: str, fix: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


def _from_error(exc: TunnelmanError) -> StepFailed:
    return StepFailed(exc.message, exc.hint)


@dataclass
class _State:
    profile: Profile | None = None
    given: Profile | None = None  # as the file says (before ssh_config)
    identity: Identity | None = None
    sock: Any = None
    transport: paramiko.Transport | None = None
    tunnel: Tunnel | None = None
    port: int | None = None
    conn: Any = None


class Doctor:
    """Runs the steps in order, printing each; stops at the first failure."""

    def __init__(self, config: str | None, name: str, accept_new: bool) -> None:
        self.config = config
        self.name = name
        self.accept_new = accept_new
        self.s = _State()

    # ------------------------------------------------------------------ steps

    def config_step(self) -> str:
        sets = prof.load(self.config, missing_ok=False)
        profile = sets.get(self.name)
        if profile.bastion is None:
            raise StepFailed(
                f"profile '{self.name}' has no bastion", 'add bastion = "user@host" to it'
            )
        if profile.endpoint is None:
            raise StepFailed(
                f"profile '{self.name}' has no endpoint",
                'add endpoint = "HOST[:PORT]", the database as the bastion sees it',
            )
        from tunnelman.core import ssh_config

        self.s.given = profile
        resolved, notes = ssh_config.effective(profile)
        self.s.profile = resolved
        route = " → ".join(str(hop) for hop in (*resolved.jump, resolved.bastion))
        detail = f"{sets.path}: {route} → {profile.endpoint}, {profile.user}@{profile.database}"
        indent = f"\n  {''.ljust(_WIDTH)}"
        return detail + "".join(f"{indent}ssh_config: {prof.printable(n)}" for n in notes)

    def key_step(self) -> str:
        from tunnelman.core import ssh
        from tunnelman.core.known_hosts import fingerprint
        from tunnelman.core.platform import agents
        from tunnelman.core.platform import keys as platform_keys

        profile = self._profile()
        identity = ssh.load_identity(profile, passphrase_prompt())
        self.s.identity = identity
        if identity.source == "file" and identity.key is not None:
            key = identity.key
            assert identity.path is not None
            protection = platform_keys.describe_protection(identity.path)
            return f"{identity.path} ({key.get_name()} {fingerprint(key)}, {protection})"
        if identity.through_agent:
            with identity.keys() as keys:
                found = agents.find_agent() or "ssh-agent"
                key = keys[0]
                return (
                    f"{identity.path} ({key.get_name()} {fingerprint(key)}, passphrase-protected): "
                    f"used through {found}, which holds it"
                )
        if identity.source == "agent":
            with identity.keys() as keys:
                found = agents.find_agent() or "ssh-agent"
                return f"no identity_file: {found} offers {len(keys)} key(s)"
        return "EC2 Instance Connect: a fresh key is pushed for each connection"

    def reach_step(self) -> str:
        from tunnelman.core import ssh

        profile = self._profile()
        assert profile.bastion is not None
        timeout = float(profile.connect_timeout)
        sock = ssh.open_route(profile, self.s.identity, host_key_policy(self.accept_new))
        try:
            self.s.transport = ssh.start_transport(sock, profile, timeout)
        except BaseException:
            sock.close()
            raise
        version = self.s.transport.remote_version or "SSH"
        through = f" through {', '.join(str(h) for h in profile.jump)}" if profile.jump else ""
        return f"{profile.bastion.host}:{profile.bastion.port} answers ({version}){through}"

    def host_key_step(self) -> str:
        from tunnelman.core import ssh
        from tunnelman.core.known_hosts import entries_for

        profile = self._profile()
        assert profile.bastion is not None
        assert self.s.transport is not None
        before = len(entries_for(profile.known_hosts, profile.bastion.host, profile.bastion.port))
        info = ssh.check_host_key(self.s.transport, profile, host_key_policy(self.accept_new))
        after = len(entries_for(profile.known_hosts, profile.bastion.host, profile.bastion.port))
        verb = "recorded in" if after > before else "matches"
        return f"{info.display_type} {info.fingerprint} {verb} {profile.known_hosts}"

    def bastion_login_step(self) -> str:
        from tunnelman.core import ssh

        profile = self._profile()
        assert profile.bastion is not None
        assert self.s.transport is not None
        assert self.s.identity is not None
        ssh.authenticate(self.s.transport, profile, self.s.identity, float(profile.connect_timeout))
        return f"as {profile.bastion.login} with {self.s.identity.describe()}"

    def forward_step(self) -> str:
        from tunnelman.core.tunnel import open_tunnel

        profile = self._profile()
        assert self.s.transport is not None
        assert self.s.identity is not None
        # The profile as written: the openssh engine hands ssh the alias and its ssh_config.
        tunnel = open_tunnel(self.s.given or profile, local_port=0)
        transport, self.s.transport = self.s.transport, None  # the tunnel owns it now
        self.s.tunnel = tunnel
        self.s.port = tunnel.adopt(transport, self.s.identity)
        return f"the bastion reaches {profile.endpoint}; test tunnel on 127.0.0.1:{self.s.port}"

    def db_login_step(self) -> str:
        import psycopg

        from tunnelman.core.credentials import resolve_password

        profile = self._profile()
        assert profile.endpoint is not None
        assert self.s.port is not None
        password = resolve_password(profile, prompt=password_prompt())
        params: dict[str, Any] = {
            # libpq connects to the tunnel but checks TLS names against the real endpoint.
            "host": profile.endpoint.host,
            "hostaddr": "127.0.0.1",
            "port": self.s.port,
            "dbname": profile.database,
            "user": profile.user,
            "sslmode": profile.sslmode,
            "connect_timeout": profile.connect_timeout,
            "application_name": "tunnelman check",
        }
        if profile.sslrootcert is not None:
            params["sslrootcert"] = str(profile.sslrootcert)
        if password is not None:
            params["password"] = password
        try:
            self.s.conn = psycopg.connect(autocommit=True, **params)
        except psycopg.OperationalError as exc:
            raise StepFailed(_pg_reason(exc), _pg_fix(str(exc), profile)) from None
        tls = "TLS" if self.s.conn.info.pgconn.ssl_in_use else "no TLS"
        return f"as {profile.user} to {profile.database} ({tls}, password: {profile.password})"

    def version_step(self) -> str:
        row = self.s.conn.execute("select version()").fetchone()
        return str(row[0]) if row else "unknown"

    def postgis_step(self) -> str:
        import psycopg

        try:
            row = self.s.conn.execute("select postgis_full_version()").fetchone()
        except psycopg.errors.UndefinedFunction:
            profile = self._profile()
            return (
                f"not installed in {profile.database} (note: `CREATE EXTENSION postgis;` "
                "if you need it)"
            )
        full = str(row[0]) if row else ""
        match = re.search(r'POSTGIS="([^" ]+)', full)
        version = match.group(1) if match else "?"
        return f"PostGIS {version}: {full}"

    # ------------------------------------------------------------------ running

    def _profile(self) -> Profile:
        assert self.s.profile is not None
        return self.s.profile

    def run(self) -> bool:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("config", self.config_step),
            ("key", self.key_step),
            ("reach bastion", self.reach_step),
            ("host key", self.host_key_step),
            ("log in to bastion", self.bastion_login_step),
            ("open forward", self.forward_step),
            ("log in to database", self.db_login_step),
            ("server version", self.version_step),
            ("PostGIS", self.postgis_step),
        ]
        try:
            for index, (label, step) in enumerate(steps):
                try:
                    detail = step()
                except StepFailed as exc:
                    self._failed(label, exc, [name for name, _ in steps[index + 1 :]])
                    return False
                except TunnelmanError as exc:
                    self._failed(label, _from_error(exc), [name for name, _ in steps[index + 1 :]])
                    return False
                out(f"✓ {label.ljust(_WIDTH)}{detail}")
            out("All checks passed.")
            return True
        finally:
            self.close()

    def _failed(self, label: str, exc: StepFailed, skipped: list[str]) -> None:
        # Several problems in the profile file come as several lines: keep them under the first.
        detail = f"\n  {''.ljust(_WIDTH)}".join(prof.printable(x) for x in exc.detail.split("\n"))
        out(f"✗ {label.ljust(_WIDTH)}{detail}")
        if exc.fix:
            out(f"  {''.ljust(_WIDTH)}fix: {exc.fix}")
        for name in skipped:
            out(f"- {name.ljust(_WIDTH)}skipped")

    def close(self) -> None:
        if self.s.conn is not None:
            with contextlib.suppress(Exception):
                self.s.conn.close()
        if self.s.tunnel is not None:
            self.s.tunnel.stop()
        if self.s.transport is not None:
            self.s.transport.close()


def _pg_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    # libpq repeats "connection to server at … failed:"; keep the reason.
    text = re.sub(r"^connection failed: ", "", text)
    text = re.sub(r'connection to server at "[^"]*"( \([^)]*\))?, port \d+ failed: ', "", text)
    return f"the database refused the login: {text}"


def _pg_fix(message: str, profile: Profile) -> str | None:
    lower = message.lower()
    if "no password supplied" in lower and profile.password == "none":
        return (
            'the server wants a password: set password = "keyring" in the profile and run '
            f"`tunnelman password set {profile.name}`"
        )
    if "password authentication failed" in lower or "no password supplied" in lower:
        return f"store the right password: `tunnelman password set {profile.name}`"
    if "does not exist" in lower and "database" in lower:
        return "fix `database` in the profile"
    if "pg_hba.conf" in lower:
        return "the server does not allow this user/database from the bastion: check pg_hba / the cluster's settings"
    if "ssl" in lower or "certificate" in lower:
        return "check sslmode and sslrootcert in the profile (RDS: the global CA bundle)"
    if "timeout" in lower or "timed out" in lower:
        return "the cluster may be paused or starting (Aurora Serverless): try again in a minute"
    return None


@click.command("check")
@click.argument("name")
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Trust and record the bastion's host key if known_hosts has none for it yet.",
)
@click.pass_context
def check_cmd(ctx: click.Context, name: str, accept_new_host_key: bool) -> None:
    """Diagnose NAME step by step: config, key, bastion, host key, forward, login, PostGIS.

    Each step prints ✓ or ✗ with what to fix; steps after a failure are skipped. Exit status 0
    when everything passes.
    """
    doctor = Doctor(get_ctx(ctx).config, name, accept_new_host_key)
    if not doctor.run():
        ctx.exit(1)
