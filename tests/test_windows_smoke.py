"""Windows smoke test: real Windows CPython under wine runs the unmodified package from this
checkout against the Linux lab (the `sshd` and `postgres` fixtures).

`scripts/dev setup` installs wine and the Windows side (embeddable CPython + Windows wheels in
`.venv/wine`, or `$TUNNELMAN_WINE_DIR`); see ../shared/reference/WINDOWS_UNDER_WINE.md for why it
is built this way. tests/windows/smoke.py runs inside the Windows Python, drives the CLI with
its output redirected (cp1252, as for a Windows user piping output) and writes each step's result
to JSON; every test below judges one step, so a failure names the step and shows its output.

The wine prefix is private to this module (removed after), the agent listens on TCP + token (no
AF_UNIX on Windows), and `wineserver -k` ends every Windows process before the module finishes.
Without wine or the Windows Python the module skips locally and fails under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import need
from tests.lab.postgres import Postgres
from tests.lab.sshd import Sshd
from tests.lab.toml_profile import write_profile

pytestmark = [pytest.mark.windows, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "windows" / "smoke.py"
RUN_TIMEOUT = 600.0  # the whole Windows side; each of its commands has its own 90 s bound
WINECFG_TIMEOUT = 180.0

# Never handed to the Windows side: the developer's database/agent settings, and anything that
# would change the output encoding under test (PYTHONUTF8 hides the cp1252 case).
_SCRUB_PREFIXES = ("PG", "TUNNELMAN_", "PYTHON", "SSH_AUTH_SOCK", "AWS_", "VIRTUAL_ENV")


def _winpath(path: Path) -> str:
    """How a Linux path looks to a Windows process under wine (drive Z: is /)."""
    return "Z:" + str(path).replace("/", "\\")


def _wine_dir() -> Path:
    env = os.environ.get("TUNNELMAN_WINE_DIR")
    if env:
        return Path(env)
    for candidate in (Path(sys.prefix) / "wine", REPO / ".venv" / "wine"):
        if candidate.is_dir():
            return candidate
    return REPO / ".venv" / "wine"


def _wine_env(prefix: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    # mscoree/mshtml off: no Mono/Gecko install on prefix creation. wbemprox off: Python's
    # `platform` asks WMI, whose wine 8 provider aborts the process in the unimplemented
    # propsys.VariantToString (that, not the Credential Manager, is what breaks `keyring`);
    # without WMI `platform` falls back to sys.getwindowsversion().
    env.update(
        WINEPREFIX=str(prefix), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml,wbemprox="
    )
    return env


def _prefix_pids(prefix: Path) -> list[int]:
    """Processes (wineserver, python.exe, the agent, …) running in the wine prefix `prefix`."""
    marker = f"WINEPREFIX={prefix}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(proc.name))
    return pids


def _kill_wine(prefix: Path, env: dict[str, str]) -> list[int]:
    """`wineserver -k` for this prefix; returns the pids still alive 10 s later."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["wineserver", "-k"], env=env, timeout=30, check=False)
    deadline = time.monotonic() + 10
    while True:
        left = _prefix_pids(prefix)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _run_in_pty(
    cmd: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """python.exe needs a console: run it under `script` (a pty); kill the group on timeout."""
    proc = subprocess.Popen(
        ["script", "-qec", shlex.join(cmd), "/dev/null"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return subprocess.CompletedProcess(proc.args, -9, out, None)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def _lab_keys(work: Path, sshd: Sshd) -> tuple[Path, Path, Path]:
    assert sshd.key_path is not None
    private, loose = work / "id_lab", work / "id_loose"
    for path, mode in ((private, 0o600), (loose, 0o644)):
        shutil.copyfile(sshd.key_path, path)
        path.chmod(mode)
    known_hosts = work / "known_hosts"
    known_hosts.write_text(sshd.host_key_line() + "\n")
    return private, loose, known_hosts


@pytest.fixture(scope="module")
def smoke(sshd: Sshd, postgres: Postgres) -> Iterator[dict[str, Any]]:
    """Run tests/windows/smoke.py once under wine; its results, plus `leftover` wine pids."""
    if shutil.which("wine") is None or shutil.which("wineserver") is None:
        need("wine is not installed (`scripts/dev setup` installs wine64 + wine as root)")
    if shutil.which("script") is None:
        need("`script` (util-linux) is missing: python.exe under wine needs a pty")
    wine_dir = _wine_dir()
    if not (wine_dir / "python" / "python.exe").is_file() or not (wine_dir / "site").is_dir():
        need(f"no Windows CPython in {wine_dir} (`scripts/dev setup` fetches it)")

    tmp = Path(tempfile.mkdtemp(prefix="tm-wine-"))
    prefix, work = tmp / "prefix", tmp / "work"
    work.mkdir()
    env = _wine_env(prefix)
    try:
        # A private copy of the interpreter: its ._pth names this checkout's source (the
        # unmodified package) and the Windows wheels; the embeddable Python ignores PYTHONPATH.
        python_dir = tmp / "python"
        shutil.copytree(wine_dir / "python", python_dir)
        pth = ["python313.zip", ".", _winpath(wine_dir.resolve() / "site"), _winpath(REPO)]
        (python_dir / "python313._pth").write_text("\r\n".join([*pth, "import site", ""]))

        started = time.monotonic()
        cfg = subprocess.run(
            ["wine", "winecfg", "-v", "win10"],
            env=env,
            capture_output=True,
            timeout=WINECFG_TIMEOUT,
            check=False,
        )
        if cfg.returncode != 0:
            need(f"cannot create a wine prefix: {cfg.stderr.decode(errors='replace')[-300:]}")
        prefix_seconds = time.monotonic() - started

        private, loose, known_hosts = _lab_keys(work, sshd)
        config = work / "profiles.toml"
        common = {
            "bastion": sshd.destination,
            "known_hosts": _winpath(known_hosts),
            "endpoint": f"127.0.0.1:{postgres.port}",
            "database": postgres.database,
            "user": postgres.user,
        }
        write_profile(config, "lab", identity_file=_winpath(private), **common)
        write_profile(config, "loose", identity_file=_winpath(loose), **common)
        out = work / "results.json"
        settings = work / "smoke.json"
        settings.write_text(
            json.dumps(
                {
                    "work": _winpath(work),
                    "out": _winpath(out),
                    "profile": "lab",
                    "loose_profile": "loose",
                    "database": postgres.database,
                    "user": postgres.user,
                    "password": postgres.password,
                }
            )
        )
        settings.chmod(0o600)
        env["TUNNELMAN_CONFIG"] = _winpath(config)
        started = time.monotonic()
        run = _run_in_pty(
            ["wine", str(python_dir / "python.exe"), _winpath(HELPER), _winpath(settings)],
            env,
            RUN_TIMEOUT,
        )
        run_seconds = time.monotonic() - started
        results: dict[str, Any] = (
            json.loads(out.read_text("utf-8")) if out.exists() else {"steps": {}, "order": []}
        )
        results["console"] = run.stdout.decode(errors="replace")[-4000:]
        results["returncode"] = run.returncode
        results["timing"] = {"prefix": round(prefix_seconds, 1), "run": round(run_seconds, 1)}
        results["leftover"] = _kill_wine(prefix, env)
        results["pg_port"] = postgres.port
        steps = ", ".join(f"{n} {s.get('seconds')}s" for n, s in results["steps"].items())
        print(
            f"\nwine smoke: prefix {prefix_seconds:.1f}s, Windows side {run_seconds:.1f}s: {steps}"
        )
        yield results
    finally:
        for pid in _kill_wine(prefix, env):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _step(smoke: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] | None = smoke["steps"].get(name)
    if step is None:
        pytest.fail(
            f"the Windows side never ran step {name!r} (ran: {smoke['order']}; "
            f"crash: {smoke.get('crashed') or smoke.get('stopped')}; console: {smoke['console'][-800:]})"
        )
    assert "error" not in step, f"step {name!r} raised inside Windows Python:\n{step['error']}"
    return step


def _ok(step: dict[str, Any]) -> str:
    """Assert the command exited 0 without a traceback; return its stdout."""
    detail = f"`tunnelman {' '.join(step['argv'])}`: rc={step['rc']}\nstdout: {step['stdout']}\nstderr: {step['stderr']}"
    assert step["rc"] == 0, detail
    assert "Traceback" not in step["stderr"], detail
    return str(step["stdout"])


def test_windows_cpython_runs_the_checkout(smoke: dict[str, Any]) -> None:
    env = _step(smoke, "environment")
    assert env["platform"] == "win32"
    assert env["tunnelman"] == _winpath(REPO / "tunnelman" / "__init__.py")
    assert env["pythonutf8"] is None
    # The condition the redirected-output steps rely on: the ANSI code page, not UTF-8.
    assert env["preferred_encoding"] == "cp1252"


def test_help(smoke: dict[str, Any]) -> None:
    stdout = _ok(_step(smoke, "help"))
    assert "Usage" in stdout
    assert "up" in stdout
    assert "exec" in stdout


def test_ls_json(smoke: dict[str, Any]) -> None:
    profiles = json.loads(_ok(_step(smoke, "ls_json")))
    by_name = {p["name"]: p for p in profiles}
    assert set(by_name) == {"lab", "loose"}
    assert by_name["lab"]["endpoint"].endswith(f":{smoke['pg_port']}")


def test_password_set_from_stdin(smoke: dict[str, Any]) -> None:
    _ok(_step(smoke, "password_set"))


def test_key_readable_by_others_is_refused_with_icacls_fix(smoke: dict[str, Any]) -> None:
    step = _step(smoke, "key_refused")
    text = step["stdout"] + step["stderr"]
    assert step["rc"] not in (0, None), text
    assert "Traceback" not in text, text
    assert re.search(r"^✗ key\s.*id_loose", step["stdout"], re.M), text
    assert "icacls" in text, f"the refusal must give the icacls fix:\n{text}"
    assert "chmod" not in text, f"chmod cannot fix a key on Windows:\n{text}"


def test_private_key_is_accepted(smoke: dict[str, Any]) -> None:
    stdout = _ok(_step(smoke, "key_accepted"))
    assert re.search(r"^✓ key\s.*id_lab", stdout, re.M), stdout
    assert "All checks passed." in stdout, stdout


def test_up_detach_through_the_agent_over_tcp(smoke: dict[str, Any]) -> None:
    stdout = _ok(_step(smoke, "up_detach"))
    assert re.search(r"Tunnel 'lab' is up: 127\.0\.0\.1:\d+ ", stdout), stdout
    state = _step(smoke, "agent_state")
    assert state["transport"] == "tcp", state
    assert state["has_token"], state
    assert isinstance(state["port"], int), state
    tunnels = json.loads(_ok(_step(smoke, "status_json")))
    assert [t["state"] for t in tunnels if t["name"] == "lab"] == ["up"], tunnels
    (lab,) = [t for t in tunnels if t["name"] == "lab"]
    assert isinstance(lab["bytes_received"], int), lab  # the relay counts on Windows too


def test_the_event_log_of_the_agent_s_tunnel(smoke: dict[str, Any]) -> None:
    """events.jsonl on Windows: written by the agent, read by `tunnelman log`, after `down`."""
    events = [e["event"] for e in json.loads(_ok(_step(smoke, "log_json")))]
    assert events[:1] == ["opened"], events
    assert events[-1] == "closed", events


def test_redirected_output_to_a_file_in_cp1252(smoke: dict[str, Any]) -> None:
    """`up --detach > file` prints "→": the ANSI code page must not make it crash."""
    step = _step(smoke, "up_detach")
    assert "UnicodeEncodeError" not in step["stderr"], step["stderr"]
    raw = bytes.fromhex(step["stdout_bytes"])
    assert b"Tunnel 'lab' is up" in raw, raw
    # The arrow is written (UTF-8) or spelled in ASCII, not lost to a "?".
    assert "→".encode() in raw or b" -> " in raw, raw


def test_no_command_hits_unicode_encode_error(smoke: dict[str, Any]) -> None:
    broken = {
        name: step["stderr"][-400:]
        for name, step in smoke["steps"].items()
        if "UnicodeEncodeError" in str(step.get("stderr", ""))
    }
    assert not broken, broken


def test_psycopg_query_through_the_tunnel_twice(smoke: dict[str, Any]) -> None:
    rows = _step(smoke, "query_twice")["rows"]
    assert len(rows) == 2
    for total, port, version in rows:
        assert total == 2
        assert port == smoke["pg_port"]
        assert version.startswith("PostgreSQL")


def _check_exec(smoke: dict[str, Any], name: str) -> dict[str, str]:
    step = _step(smoke, name)
    _ok(step)
    child = step.get("child")
    assert child is not None, f"the child never ran: {step['stderr']}"
    env: dict[str, str] = child["env"]
    assert env.get("PGHOST") == "127.0.0.1", env
    assert env.get("PGDATABASE"), env
    assert env.get("PGUSER"), env
    assert "PGPASSWORD" not in env, "the password must reach the child only in a PGPASSFILE"
    assert child["passfile_exists"], env
    assert child["passfile_lines"] == 1, child
    assert child["passfile_fields"] == [4], child  # host:port:db:user:password
    assert step["passfile_gone_after"], f"PGPASSFILE {env['PGPASSFILE']} is still there"
    assert child["passfile_keys"] == [["127.0.0.1", env["PGPORT"], "*", env["PGUSER"]]], child
    assert "query_error" not in child, child["query_error"]
    # libpq under wine 8 ignores pgpass files: then the file's password must be the one that
    # logs in; any other libpq failure (wrong port, host) is a real one.
    assert "no password supplied" in child.get("libpq_error", "no password supplied"), child
    assert child["query"][1] == smoke["pg_port"], child
    return env


def test_exec_through_the_agent_gets_settings_and_a_temporary_passfile(
    smoke: dict[str, Any],
) -> None:
    env = _check_exec(smoke, "exec_agent")
    tunnels = json.loads(_step(smoke, "status_json")["stdout"])
    assert env["PGPORT"] == str(tunnels[0]["local_port"]), "exec must reuse the agent's tunnel"


def test_down_all(smoke: dict[str, Any]) -> None:
    _ok(_step(smoke, "down_all"))
    after = json.loads(_ok(_step(smoke, "status_after_down")) or "[]")
    assert not [t for t in after if t["state"] == "up"], after
    assert _step(smoke, "port_closed")["closed"]


def test_exec_one_shot_tunnel(smoke: dict[str, Any]) -> None:
    """With no agent tunnel, `exec` opens its own (the relay, in the Windows process)."""
    _check_exec(smoke, "exec_oneshot")


def test_helper_finished_and_no_wine_process_left(smoke: dict[str, Any]) -> None:
    assert smoke.get("finished"), (
        f"the Windows side stopped early: {smoke.get('crashed') or smoke.get('stopped')}\n"
        f"console: {smoke['console'][-1500:]}"
    )
    assert smoke["leftover"] == [], f"wine processes left after wineserver -k: {smoke['leftover']}"
