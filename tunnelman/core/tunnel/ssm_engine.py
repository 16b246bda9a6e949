"""SSM port forwarding: `transport = "ssm"` without a `bastion` (no SSH at all).

Built by `tunnelman.core.tunnel.open_tunnel`; states, reconnects and status are the base's
(`base.Tunnel`). AWS's `session-manager-plugin` runs an `AWS-StartPortForwardingSessionToRemoteHost`
session (`tunnelman.core.transport.ssm.open_forward`) and listens on a private loopback port; the
tunnel listens on the profile's port itself (127.0.0.1 only) and relays each client to the
plugin's port (`listener.LoopbackListener`), counting connections and bytes as the other engines do.

Before "up", one connection through the session sends PostgreSQL's SSLRequest (as the OpenSSH
engine does): no answer means the instance cannot reach the endpoint, a `ForwardingFailed` at `up`
rather than at the first query.

The plugin's exit (AWS's idle timeout or maximum session duration, a lost link, a killed
process) is noticed at once by the watcher: without `supervise` the tunnel FAILS and the port
closes; with it, the port stays bound while a fresh session is started through the base's
reconnect loop, and clients that connect meanwhile wait for it.

There is no SSH here, so no host key: SSH over SSM (a profile with a `bastion`) is the way to
have the bastion's host key checked end to end, through the default engine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from tunnelman.core.errors import ForwardingFailed, TunnelError
from tunnelman.core.tunnel import ports, probe
from tunnelman.core.tunnel.base import Capabilities, Tunnel, TunnelState
from tunnelman.core.tunnel.listener import Lease, LoopbackListener

if TYPE_CHECKING:
    import paramiko

    from tunnelman.core.ssh import Identity
    from tunnelman.core.transport.ssm import PluginProcess

__all__ = ["SsmTunnel"]


class SsmTunnel(Tunnel):
    """127.0.0.1:port → session-manager-plugin → the instance's SSM agent → endpoint."""

    capabilities = Capabilities(
        engine="ssm",
        instance_connect=False,
        decrypts_keys=False,
        serves_checked_transport=False,
        counts_connections=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listener = LoopbackListener(
            self._admit,
            traffic=self._traffic,
            log=self._log,
            refused="the plugin's port %d refused a client (%s)",
        )
        self._plugin: PluginProcess | None = None
        self._inner: int | None = None  # the plugin's loopback port
        # Renewal before the account's maximum session length (make-before-break): the open
        # client connections of each session, and sessions replaced but still carrying some.
        self._uses: dict[int, int] = {}
        self._retired: list[PluginProcess] = []
        self._lifetime: float | None = None
        self._connected_at = 0.0
        self._renewer: threading.Thread | None = None

    def adopt(self, transport: paramiko.Transport, identity: Identity) -> int:
        raise TunnelError("internal error: SSM port forwarding has no SSH transport to adopt")

    # ------------------------------------------------------------------------- starting

    def _start(self) -> int:
        self._require_route()
        from tunnelman.core.transport import ssm

        ssm.find_plugin()  # a missing plugin: one line, before any AWS call or bind
        port = self._local_port_wanted()
        ports.ensure_port_free(port)
        bound = self._listener.listen(port)  # held from now on: a client that connects early waits
        self._launch()
        self._check_cancel()
        self._test_forward()
        self._start_accepting()
        self._start_renewing()
        self._came_up(bound, " over SSM port forwarding")
        return bound

    def _start_renewing(self) -> None:
        """With a known maximum session length: a thread opening the next session before it."""
        from tunnelman.core import transport as transports

        self._lifetime = transports.lifetime(self.profile)
        if self._lifetime is None or not self._supervise:
            return
        self._renewer = threading.Thread(
            target=self._renew_loop, name="tunnelman-ssm-renew", daemon=True
        )
        self._renewer.start()

    def _renew_loop(self) -> None:
        from tunnelman.core.transport import renew_after

        assert self._lifetime is not None
        not_before = 0.0
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            if now < self._connected_at + renew_after(self._lifetime) or now < not_before:
                continue
            if self._state != TunnelState.UP:
                continue  # reconnecting: the reconnect opens the next session anyway
            try:
                self._renew()
            except Exception as exc:  # AWS said no, the plugin failed: keep the current one
                self._log.info("renewal failed (the current session keeps serving): %s", exc)
                not_before = time.monotonic() + 30.0

    def _renew(self) -> None:
        """The next session on a new plugin port; new clients go there, the old session ends
        once its last client connection has (or when AWS ends it)."""
        from tunnelman.core.transport import ssm

        self._log.info(
            "renewing the Session Manager session before its %.0f-minute limit",
            (self._lifetime or 0) / 60,
        )
        inner = ports.free_local_port()
        plugin = ssm.open_forward(self.profile, inner, cancel=self._stopping)
        if self._stopping.is_set():
            plugin.stop()
            return
        with self._lock:
            old = self._plugin
            self._plugin, self._inner = plugin, inner
            self._connected_at = time.monotonic()
            idle = old is not None and self._uses.get(id(old), 0) <= 0
            if old is not None and not idle:
                self._retired.append(old)
            self._changed.notify_all()
        if old is not None and idle:
            old.stop()
        self._log.info("renewed: new client connections go over the new session")

    def _launch(self) -> None:
        from tunnelman.core.transport import ssm

        inner = ports.free_local_port()
        cancel = self._cancel if self._cancel is not None else self._stopping
        plugin = ssm.open_forward(self.profile, inner, cancel=cancel)
        if self._stopping.is_set():
            plugin.stop()
            return
        with self._lock:
            self._plugin = plugin
            self._inner = inner
            self._connected_at = time.monotonic()
            self._changed.notify_all()

    def _test_forward(self) -> None:
        """One connection through the session before "up": PostgreSQL answers an SSLRequest
        (8 bytes, before any login) with one byte; a closed connection means the instance could
        not reach the endpoint."""
        profile = self.profile
        assert profile.endpoint is not None
        inner = self._inner
        if inner is None:
            raise TunnelError("stopped")
        timeout = float(profile.connect_timeout)
        where = f"instance {profile.bastion_instance_id}"
        fix = (
            "check the endpoint name and port, that the cluster is available with "
            "`tunnelman cluster status`, and that its security group lets the instance in"
        )
        try:
            sock = socket.create_connection(("127.0.0.1", inner), timeout=timeout)
        except OSError as exc:
            raise TunnelError(
                f"session-manager-plugin's port refused a connection: {exc}"
            ) from None
        answer = b""
        try:
            answer = probe.ssl_answer(sock, profile.endpoint.host, timeout)
        except TimeoutError:
            raise ForwardingFailed(
                f"{where} did not reach the database endpoint {profile.endpoint} within "
                f"{timeout:g} s (through Session Manager)",
                hint=fix,
            ) from None
        except OSError:
            answer = b""
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        if not answer:
            raise ForwardingFailed(
                f"{where} cannot reach the database endpoint {profile.endpoint} "
                "(the Session Manager session closed the connection)",
                hint=fix,
            )

    def _start_accepting(self) -> None:
        self._listener.start("tunnelman-ssm-listen")

    # ------------------------------------------------------------------------- clients

    def _plugin_running(self) -> bool:
        plugin = self._plugin
        return plugin is not None and plugin.exited() is None and self._inner is not None

    def _release(self, plugin: PluginProcess | None) -> None:
        """A client of `plugin`'s session left: a replaced session ends with its last one."""
        if plugin is None:
            return
        with self._lock:
            left = self._uses.get(id(plugin), 1) - 1
            if left > 0:
                self._uses[id(plugin)] = left
                return
            self._uses.pop(id(plugin), None)
            retired = plugin in self._retired
            if retired:
                self._retired.remove(plugin)
        if retired:
            plugin.stop()

    def _admit(self) -> Lease | None:
        """A client arrived (on its own thread): wait until a session can take it, count it
        against that session (a renewed one ends with its last client)."""
        if not self._await_up(self._plugin_running):
            return None
        with self._lock:
            plugin, inner = self._plugin, self._inner
            if plugin is not None:
                self._uses[id(plugin)] = self._uses.get(id(plugin), 0) + 1

        def done() -> None:
            self._client_left()
            self._release(plugin)

        return Lease(inner, float(self.profile.connect_timeout), done)

    # ------------------------------------------------------------------------- supervision

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                plugin = self._plugin
            if plugin is None:
                return
            code = plugin.wait()  # returns when the session ends (stop() ends it too)
            if self._stopping.is_set():
                return
            with self._lock:
                replaced = plugin is not self._plugin and self._plugin is not None
            if replaced:
                continue  # a renewal replaced it: follow the new session
            said = plugin.last_words()
            with self._lock:
                self._inner = None
            reason = f"the Session Manager session ended (session-manager-plugin exit {code}" + (
                f": {said})" if said else ")"
            )
            if not self._supervise:
                self._fail(reason)
                return
            if not self._reconnect_loop(reason):
                return

    def _reconnect_once(self) -> bool:
        self._stop_plugin()
        self._launch()
        return not self._stopping.is_set()

    def _stop_plugin(self) -> None:
        with self._lock:
            plugin, self._plugin = self._plugin, None
            self._inner = None
            retired, self._retired = self._retired, []
        for each in (plugin, *retired):
            if each is not None:
                each.stop()

    # ------------------------------------------------------------------------- teardown

    def _close_listener(self) -> None:
        self._listener.close()
        with self._lock:
            self._changed.notify_all()

    def _close_for_failure(self) -> None:
        # Port first, then the session: whoever reacts to FAILED finds nothing listening.
        self._close_listener()
        self._stop_plugin()

    def _teardown(self) -> None:
        self._stopping.set()
        self._backoff.wake()
        self._close_listener()
        self._stop_plugin()
        with self._lock:
            threads = [self._watcher, self._renewer]
        self._listener.join(threads)
