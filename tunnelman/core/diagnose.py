"""The doctor: walk the way into a profile's database step by step and say what to fix.

Steps (STEPS): config, key, reach bastion, host key, log in to bastion, open forward, log in to
the database, server version, PostGIS. A profile with `transport = "eice"` has the transport's own
steps (EICE_STEPS: AWS credentials, the endpoint, the websocket) after the key; `Doctor.steps` is
the list for the profile being checked (STEPS until its config step has run). `Doctor.run()` yields one `StepResult` per step as it
completes: passed (a detail), failed (the `TunnelmanError`'s message and hint), then every later
step as skipped. `tunnelman check` prints them; the TUI's check screen shows them live.

A profile with `transport = "ssm"` gets the transport's own steps after config (SSM_STEPS: AWS
credentials, the instance is SSM-managed and online, the plugin and its version); StartSession
itself is the "reach bastion" step (SSH over SSM) or the "open forward" step (SSM port
forwarding, which has no SSH steps), and a refusal there names `ssm:StartSession`. ALL_STEPS is
every label in the order they can come.

The connection steps are `tunnelman.core.ssh`'s own, run one at a time; the database steps go
through a real tunnel (`Tunnel.adopt` on the checked connection), with the password handed to
psycopg as an argument, never on a command line or in the environment. Whoever runs the doctor
passes how to ask (host key policy, passphrase and password prompts): none means nobody can answer,
and the step fails with the non-interactive way out.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tunnelman.core import profiles as prof
from tunnelman.core.errors import TunnelmanError
from tunnelman.core.ssh.known_hosts import HostKeyPolicy

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.credentials import Prompt
    from tunnelman.core.profiles import Profile
    from tunnelman.core.ssh import Identity, PassphrasePrompt
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

SSM_STEPS = ("AWS credentials", "SSM instance", "SSM plugin")
# The eice transport's steps, run before "reach bastion" (which then uses their websocket).
EICE_STEPS = ("AWS credentials", "EICE endpoint", "EICE websocket")
# Every label in the order they can come (a profile has one transport's steps at most).
ALL_STEPS = (STEPS[0], *SSM_STEPS, STEPS[1], *EICE_STEPS[1:], *STEPS[2:])
_SSH_STEPS = frozenset(("key", "reach bastion", "host key", "log in to bastion"))

Outcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class StepResult:
    """One step's outcome: `detail` says what was found (or, failed, what is wrong); `hint` the
    fix; `notes` extra lines under the detail (ssh_config's changes to the profile)."""

    step: str
    outcome: Outcome
    detail: str = ""
    hint: str | None = None
    notes: tuple[str, ...] = ()
    next_step: str | None = None  # the step that runs next (passed results), for a progress line

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"

    @classmethod
    def from_error(cls, step: str, exc: TunnelmanError) -> StepResult:
        return cls(step, "failed", exc.message, exc.hint)


@dataclass
class _State:
    profile: Profile | None = None
    given: Profile | None = None  # as the file says (before ssh_config)
    identity: Identity | None = None
    transport: paramiko.Transport | None = None
    tunnel: Tunnel | None = None
    port: int | None = None
    conn: Any = None
    first_hop: Any = None  # a transport's socket to the bastion, opened by its steps
    eice_target: Any = None


# What a step returns: its detail, or its detail and the notes under it.
_Found = str | tuple[str, tuple[str, ...]]


class Doctor:
    """Runs the steps in order; stops at the first failure (the rest are skipped)."""

    def __init__(
        self,
        config: str | os.PathLike[str] | None,
        name: str,
        *,
        host_keys: HostKeyPolicy | None = None,
        passphrase: PassphrasePrompt | None = None,
        password: Prompt | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.host_keys = host_keys or HostKeyPolicy()
        self.passphrase = passphrase
        self.password = password
        # Set by a UI that stopped listening: no further step starts, reaching the bastion stops.
        self.cancel = cancel
        self.s = _State()
        self.steps: tuple[str, ...] = STEPS

    # ------------------------------------------------------------------ steps

    def config_step(self) -> _Found:
        sets = prof.load(self.config, missing_ok=False)
        profile = sets.get(self.name)
        prof.require_route(profile)
        from tunnelman.core.ssh import config as ssh_config

        self.s.given = profile
        resolved, notes = ssh_config.effective(profile)
        self.s.profile = resolved
        hops = [str(hop) for hop in (*resolved.jump, resolved.bastion) if hop is not None]
        if profile.transport != "ssh":
            hops.insert(0, f"{profile.transport}:{profile.bastion_instance_id}")
        route = " → ".join(hops)
        detail = f"{sets.path}: {route} → {profile.endpoint}, {profile.user}@{profile.database}"
        return detail, tuple(f"ssh_config: {note}" for note in notes)

    def aws_credentials_step(self) -> _Found:
        from tunnelman.core.transport import ssm

        return ssm.check_credentials(self._profile())

    def ssm_instance_step(self) -> _Found:
        from tunnelman.core.transport import ssm

        return ssm.check_instance(self._profile())

    def ssm_plugin_step(self) -> _Found:
        from tunnelman.core.transport import ssm

        return ssm.check_plugin()

    def key_step(self) -> _Found:
        from tunnelman.core import ssh
        from tunnelman.core.platform import agents
        from tunnelman.core.platform import keys as platform_keys
        from tunnelman.core.ssh.known_hosts import fingerprint

        profile = self._profile()
        identity = ssh.load_identity(profile, self.passphrase)
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

    def reach_step(self) -> _Found:
        from tunnelman.core import ssh

        profile = self._profile()
        assert profile.bastion is not None
        timeout = float(profile.connect_timeout)
        if self.s.first_hop is not None:
            sock, self.s.first_hop = self.s.first_hop, None
        else:
            sock = ssh.open_route(profile, self.s.identity, self.host_keys, cancel=self.cancel)
        try:
            self.s.transport = ssh.start_transport(sock, profile, timeout)
        except BaseException:
            sock.close()
            raise
        version = self.s.transport.remote_version or "SSH"
        through = f" through {', '.join(str(h) for h in profile.jump)}" if profile.jump else ""
        if profile.transport == "ssm":
            through += f" over a Session Manager session to {profile.bastion_instance_id}"
        if profile.transport == "eice" and self.s.eice_target is not None:
            through = f" through {self.s.eice_target.endpoint.id}"
        return f"{profile.bastion.host}:{profile.bastion.port} answers ({version}){through}"

    def host_key_step(self) -> _Found:
        from tunnelman.core import ssh
        from tunnelman.core.ssh.known_hosts import entries_for

        profile = self._profile()
        assert profile.bastion is not None
        assert self.s.transport is not None
        before = len(entries_for(profile.known_hosts, profile.bastion.host, profile.bastion.port))
        info = ssh.check_host_key(self.s.transport, profile, self.host_keys)
        after = len(entries_for(profile.known_hosts, profile.bastion.host, profile.bastion.port))
        verb = "recorded in" if after > before else "matches"
        return f"{info.display_type} {info.fingerprint} {verb} {profile.known_hosts}"

    def bastion_login_step(self) -> _Found:
        from tunnelman.core import ssh

        profile = self._profile()
        assert profile.bastion is not None
        assert self.s.transport is not None
        assert self.s.identity is not None
        ssh.authenticate(self.s.transport, profile, self.s.identity, float(profile.connect_timeout))
        return f"as {profile.bastion.login} with {self.s.identity.describe()}"

    def forward_step(self) -> _Found:
        from tunnelman.core.tunnel import open_tunnel

        profile = self._profile()
        if profile.bastion is None:  # SSM port forwarding: no SSH connection to adopt
            tunnel = open_tunnel(profile, local_port=0)
            self.s.tunnel = tunnel
            self.s.port = tunnel.start()
            return (
                f"{profile.bastion_instance_id} reaches {profile.endpoint} (SSM port forwarding); "
                f"test tunnel on 127.0.0.1:{self.s.port}"
            )
        assert self.s.transport is not None
        assert self.s.identity is not None
        # The profile as written: the openssh engine hands ssh the alias and its ssh_config.
        tunnel = open_tunnel(self.s.given or profile, local_port=0)
        transport, self.s.transport = self.s.transport, None  # the tunnel owns it now
        self.s.tunnel = tunnel
        self.s.port = tunnel.adopt(transport, self.s.identity)
        return f"the bastion reaches {profile.endpoint}; test tunnel on 127.0.0.1:{self.s.port}"

    def db_login_step(self) -> _Found:
        import psycopg

        from tunnelman.core.credentials import resolve_password

        profile = self._profile()
        assert profile.endpoint is not None
        assert self.s.port is not None
        from tunnelman.core.clients import conn_settings

        password = resolve_password(profile, prompt=self.password)
        # The settings `tunnelman psql` uses: 127.0.0.1, or (verify-ca/-full) the endpoint's name
        # with hostaddr 127.0.0.1, so ~/.pgpass lines match here as they do for psql.
        s = conn_settings(profile, self.s.port)
        params: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "dbname": s.dbname,
            "user": s.user,
            "sslmode": s.sslmode,
            "connect_timeout": s.connect_timeout,
            "application_name": "tunnelman check",
        }
        if s.hostaddr is not None:
            params["hostaddr"] = s.hostaddr
        if s.sslrootcert is not None:
            params["sslrootcert"] = s.sslrootcert
        if password is not None:
            params["password"] = password
        try:
            self.s.conn = psycopg.connect(autocommit=True, **params)
        except psycopg.OperationalError as exc:
            raise TunnelmanError(_pg_reason(exc), hint=_pg_fix(str(exc), profile)) from None
        tls = "TLS" if self.s.conn.info.pgconn.ssl_in_use else "no TLS"
        return f"as {profile.user} to {profile.database} ({tls}, password: {profile.password})"

    def version_step(self) -> _Found:
        row = self.s.conn.execute("select version()").fetchone()
        return str(row[0]) if row else "unknown"

    def postgis_step(self) -> _Found:
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

    def _plan(self) -> list[tuple[str, Callable[[], _Found], str | None]]:
        """(label, step, the transport it is for, or None: every profile's)."""
        eice = eice_steps(self)
        return [
            ("config", self.config_step, None),
            ("AWS credentials", self.aws_credentials_step, "ssm"),
            ("SSM instance", self.ssm_instance_step, "ssm"),
            ("SSM plugin", self.ssm_plugin_step, "ssm"),
            ("key", self.key_step, None),
            *((label, step, "eice") for label, step in eice),
            ("reach bastion", self.reach_step, None),
            ("host key", self.host_key_step, None),
            ("log in to bastion", self.bastion_login_step, None),
            ("open forward", self.forward_step, None),
            ("log in to database", self.db_login_step, None),
            ("server version", self.version_step, None),
            ("PostGIS", self.postgis_step, None),
        ]

    def _applies(self, label: str, only: str | None) -> bool:
        """Whether the step is this profile's (known once the config step has passed)."""
        profile = self.s.profile
        if profile is None:  # the config step failed: the steps of every ssh profile follow
            return only is None
        if only is not None:
            return profile.transport == only
        if label in _SSH_STEPS:
            return profile.bastion is not None
        return True

    def run(self) -> Generator[StepResult, None, None]:
        """Each step's result as it completes; what the steps opened is closed at the end (also
        when the caller stops iterating early, or `cancel` is set: then nothing more is yielded)."""
        plan = self._plan()
        try:
            for index, (label, step, only) in enumerate(plan):
                if not self._applies(label, only):
                    continue
                if self.cancel is not None and self.cancel.is_set():
                    return
                try:
                    found = step()
                except TunnelmanError as exc:
                    yield StepResult.from_error(label, exc)
                    for name, _, when in plan[index + 1 :]:
                        if self._applies(name, when):
                            yield StepResult(name, "skipped")
                    return
                if label == "config":  # the profile is known: its own list of steps
                    self.steps = tuple(n for n, _, w in plan if self._applies(n, w))
                detail, notes = (found, ()) if isinstance(found, str) else found
                following = (n for n, _, w in plan[index + 1 :] if self._applies(n, w))
                yield StepResult(
                    label, "passed", detail, notes=notes, next_step=next(following, None)
                )
        finally:
            self.close()

    def close(self) -> None:
        if self.s.conn is not None:
            with contextlib.suppress(Exception):
                self.s.conn.close()
            self.s.conn = None
        if self.s.tunnel is not None:
            self.s.tunnel.stop()
            self.s.tunnel = None
        if self.s.transport is not None:
            self.s.transport.close()
            self.s.transport = None
        if self.s.first_hop is not None:
            with contextlib.suppress(Exception):
                self.s.first_hop.close()
            self.s.first_hop = None


def eice_steps(doctor: Doctor) -> list[tuple[str, Callable[[], _Found]]]:
    """The eice transport's steps: AWS credentials, the Instance Connect Endpoint, the websocket
    (each reads the profile when it runs: after the config step).

    The websocket they open is the socket the "reach bastion" step runs SSH over.
    """
    from tunnelman.core import aws

    state = doctor.s

    def credentials() -> _Found:
        profile = doctor._profile()
        from tunnelman.core.aws.session import calling, make_client

        session = aws.session_for(profile)
        region = aws.eice.region_for(profile, session)
        with calling("sts:GetCallerIdentity", region=region, session=session):
            # No credentials: botocore's NoCredentialsError, mapped to the one-line fix.
            who = make_client(session, "sts", region).get_caller_identity()
            method = getattr(session.get_credentials(), "method", None) or "credentials"
        return f"as {who.get('Arn', '?')} ({method}), region {region}"

    def endpoint() -> _Found:
        profile = doctor._profile()
        target = aws.eice.find_target(profile)
        state.eice_target = target
        ep = target.endpoint
        return (
            f"{ep.id} ({ep.state}) in {target.vpc_id}"
            + (" (the instance's subnet)" if ep.subnet_id == target.subnet_id else "")
            + f" reaches {target.instance_id} at {target.private_ip}:22"
        )

    def websocket() -> _Found:
        profile = doctor._profile()
        from tunnelman.core.transport import eice

        target = state.eice_target
        ws = eice.open_websocket(
            profile, target, timeout=float(profile.connect_timeout), cancel=doctor.cancel
        )
        state.first_hop = eice.bridge(ws, label=f"{target.endpoint.id} → {target.instance_id}")
        return (
            f"opened (HTTP 101) wss://{target.endpoint.dns_name}/openTunnel to port 22, "
            f"for at most {aws.eice.MAX_TUNNEL_DURATION // 60} min (then a new one)"
        )

    return list(zip(EICE_STEPS, (credentials, endpoint, websocket), strict=True))


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
