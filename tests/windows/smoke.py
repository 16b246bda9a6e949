"""The Windows half of the wine smoke test: runs INSIDE Windows CPython (under wine), drives the
unmodified `tunnelman` CLI as a user would and writes what happened as JSON.

Started by tests/test_windows_smoke.py as `python.exe smoke.py CONFIG.json`. Stdout through
wine's console is unreliable, so every result goes to the JSON file named in the config, rewritten
after each step: a step that hangs or kills the process still leaves the earlier ones readable.
Each CLI command runs as a child `python.exe -m tunnelman …` with its output redirected (a pipe,
or a file for `up --detach`), so Windows' ANSI code page (cp1252) applies, as it does for a user
who redirects output. This file asserts nothing: the pytest side judges every step.
"""

from __future__ import annotations

import json
import locale
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEP_TIMEOUT = 90.0

# What `exec NAME -- python -c CHILD OUT` runs: report the libpq settings it was handed (the
# password file's line without the password) and log in through the tunnel with them.
CHILD = r"""
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith("PG")}
passfile = env.get("PGPASSFILE")
report = {"env": env, "passfile_exists": bool(passfile and os.path.exists(passfile))}
password = None
if passfile and report["passfile_exists"]:
    with open(passfile, encoding="utf-8") as fh:
        lines = [line.rstrip("\r\n") for line in fh if line.strip()]
    report["passfile_lines"] = len(lines)
    report["passfile_fields"] = [line.count(":") for line in lines]
    # host:port:database:user, never the password
    report["passfile_keys"] = [line.split(":")[:4] for line in lines]
    if lines:
        field = lines[0].split(":", 4)[-1]
        password = field.replace("\\:", ":").replace("\\\\", "\\")
import psycopg
def login(**kw):
    with psycopg.connect(connect_timeout=20, **kw) as conn:
        return conn.execute("select current_user, inet_server_port()").fetchone()
try:
    report["query"] = login()  # libpq alone, from the PG* settings and PGPASSFILE
except Exception as exc:
    report["libpq_error"] = f"{type(exc).__name__}: {exc}"
    # Under wine 8, libpq for Windows (16.4 and 18.0 measured) ignores every pgpass file
    # (passfile= or PGPASSFILE, LF or CRLF, on Z: or C:): log in with the password it holds.
    try:
        report["query"] = login(password=password)
        report["password_from_passfile"] = True
    except Exception as exc:
        report["query_error"] = f"{type(exc).__name__}: {exc}"
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump(report, fh, default=str)
"""


class Smoke:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.work = Path(config["work"])
        self.out = Path(config["out"])
        self.results: dict[str, Any] = {"steps": {}, "order": []}

    # -- plumbing ------------------------------------------------------------------------------

    def save(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str), "utf-8")
        os.replace(tmp, self.out)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            record = fn()
        except Exception:
            record = {"error": traceback.format_exc()}
        record["seconds"] = round(time.monotonic() - started, 2)
        self.results["steps"][name] = record
        self.results["order"].append(name)
        self.save()
        return record

    def cli(
        self,
        *args: str,
        stdin: str | None = None,
        stdout_file: Path | None = None,
        timeout: float = STEP_TIMEOUT,
    ) -> dict[str, Any]:
        """Run `python -m tunnelman ARGS` with its output redirected; never raises."""
        argv = [sys.executable, "-m", "tunnelman", *args]
        record: dict[str, Any] = {"argv": list(args)}
        started = time.monotonic()
        sink = open(stdout_file, "wb") if stdout_file is not None else None  # noqa: SIM115
        try:
            proc = subprocess.run(
                argv,
                input=stdin.encode() if stdin is not None else None,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                stdout=sink if sink is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
            record["rc"] = proc.returncode
            raw = stdout_file.read_bytes() if stdout_file is not None else proc.stdout
            record["stdout_bytes"] = raw.hex()
            record["stdout"] = _decode(raw)
            record["stderr"] = _decode(proc.stderr)
        except subprocess.TimeoutExpired as exc:
            record["rc"] = None
            record["timeout"] = timeout
            record["stdout"] = _decode(exc.stdout or b"")
            record["stderr"] = _decode(exc.stderr or b"")
        finally:
            if sink is not None:
                sink.close()
        record["seconds"] = round(time.monotonic() - started, 2)
        return record

    # -- the steps -----------------------------------------------------------------------------

    def environment(self) -> dict[str, Any]:
        import tunnelman
        from tunnelman.agent import paths

        return {
            "platform": sys.platform,
            "version": sys.version,
            "executable": sys.executable,
            "tunnelman": tunnelman.__file__,
            "af_unix": hasattr(socket, "AF_UNIX"),
            "preferred_encoding": locale.getpreferredencoding(False),
            "agent_dir": str(paths.agent_dir()),
            "pythonutf8": os.environ.get("PYTHONUTF8"),
        }

    def query(self, port: int) -> dict[str, Any]:
        import psycopg

        cfg = self.config
        rows = []
        for _ in range(2):  # two separate connections through the same tunnel
            with psycopg.connect(
                host="127.0.0.1",
                port=port,
                dbname=cfg["database"],
                user=cfg["user"],
                password=cfg["password"],
                connect_timeout=20,
            ) as conn:
                row = conn.execute("select 1 + 1, inet_server_port(), version()").fetchone()
                rows.append(list(row or ()))
        return {"rows": rows}

    def exec_step(self, name: str, tag: str) -> dict[str, Any]:
        report = self.work / f"exec-{tag}.json"
        record = self.cli("exec", name, "--", sys.executable, "-c", CHILD, str(report))
        if report.exists():
            child = json.loads(report.read_text("utf-8"))
            record["child"] = child
            passfile = child.get("env", {}).get("PGPASSFILE")
            record["passfile_gone_after"] = bool(passfile) and not os.path.exists(passfile)
        return record

    def agent_state(self) -> dict[str, Any]:
        from tunnelman.agent import paths

        state = paths.paths().read_state() or {}
        # The token is a secret: report only that there is one.
        return {
            "transport": state.get("transport"),
            "port": state.get("port"),
            "has_token": bool(state.get("token")),
            "keys": sorted(state),
        }

    def port_closed(self, port: int) -> dict[str, Any]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3):
                return {"closed": False}
        except OSError as exc:
            return {"closed": True, "refused": str(exc)}

    def run(self) -> None:
        cfg = self.config
        name, loose = cfg["profile"], cfg["loose_profile"]
        self.step("environment", self.environment)
        self.step("help", lambda: self.cli("--help"))
        self.step("ls_json", lambda: self.cli("ls", "--json"))
        self.step(
            "password_set",
            lambda: self.cli("password", "set", name, "--stdin", stdin=cfg["password"] + "\n"),
        )
        self.step("key_refused", lambda: self.cli("check", loose))
        self.step("key_accepted", lambda: self.cli("check", name))
        up = self.step(
            "up_detach", lambda: self.cli("up", name, "--detach", stdout_file=self.work / "up.txt")
        )
        self.step("agent_state", self.agent_state)
        status = self.step("status_json", lambda: self.cli("status", "--json"))
        port = _port(status)
        if port is None:
            self.results["stopped"] = f"no local port from up/status: {up.get('stdout')!r}"
        else:
            self.step("query_twice", lambda: self.query(port))
            self.step("exec_agent", lambda: self.exec_step(name, "agent"))
        self.step("down_all", lambda: self.cli("down", "--all"))
        self.step("status_after_down", lambda: self.cli("status", "--json"))
        self.step("status_table", lambda: self.cli("status"))
        self.step("log_json", lambda: self.cli("log", name, "--json"))
        if port is not None:
            self.step("port_closed", lambda: self.port_closed(port))
        # With no agent holding the profile, `exec` opens its own tunnel in-process (the relay).
        self.step("exec_oneshot", lambda: self.exec_step(name, "oneshot"))
        self.step("agent_stop", lambda: self.cli("agent", "stop"))
        self.results["finished"] = True
        self.save()


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _port(status: dict[str, Any]) -> int | None:
    try:
        tunnels = json.loads(status.get("stdout") or "[]")
        for tunnel in tunnels:
            if tunnel.get("state") == "up" and tunnel.get("local_port"):
                return int(tunnel["local_port"])
    except (ValueError, TypeError, AttributeError):
        return None
    return None


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text("utf-8"))
    smoke = Smoke(config)
    try:
        smoke.run()
    except BaseException:
        smoke.results["crashed"] = traceback.format_exc()
        smoke.save()
        raise


if __name__ == "__main__":
    main()
