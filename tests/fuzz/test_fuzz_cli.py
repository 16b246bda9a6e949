"""Fuzz: the CLI's argument handling, in-process through `tunnelman.cli.main.main(argv)`.

argv lists are built from the real command tree (walked through the lazy group, so every
sub-command and option is found as click sees it), with values drawn per option type, then mixed
with garbage: unknown flags, options without their value, huge and negative numbers, unicode,
surrogate-escaped bytes, `--`, `-h`. Invariant: `main` ends in `SystemExit` (any code) and stderr
holds no traceback; nothing hangs (a SIGALRM per argv).

The run is sealed: HOME, XDG dirs and the working directory are temporary; profiles point at
127.0.0.1 ports nobody listens on (connect_timeout = 1); AWS goes to a closed local endpoint
with one attempt; the keyring is keyring's `fail` backend. What would really do long work is
stubbed in place (the TUI, `demo`, `agent run`, `up --detach`) so the parsing in front of it is
still fuzzed. Free text never holds '/', so no argv names a path outside the temp dirs (the
tests may run as root).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.budget import count, examples
from tunnelman.cli import main as cli_main

pytestmark = pytest.mark.fuzz

TIME_LIMIT = 20  # seconds for one argv; the slowest real path (boto3's first import) takes ~2


class Hang(Exception):
    """One argv ran past TIME_LIMIT."""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- the command tree


def command_tree() -> list[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command with its path, as `tunnelman --help` and its groups list them."""
    found: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(cmd: click.Command, path: tuple[str, ...], ctx: click.Context) -> None:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, (*path, name), click.Context(sub, parent=ctx, info_name=name))
        else:
            found.append((path, cmd))

    walk(cli_main.cli, (), click.Context(cli_main.cli, info_name="tunnelman"))
    return found


TREE = command_tree()
NAMES = ["a", "b", "c", "nosuch", "A", "a b", "-a", "", "é", "x" * 300]
_free = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="/\\\x00"),
    max_size=20,
)
_escaped = st.binary(min_size=1, max_size=6).map(os.fsdecode).filter(lambda t: "/" not in t)
garbage = st.one_of(
    _free,
    _escaped,
    st.sampled_from(
        ["--", "-", "-h", "--help", "--nosuch", "-x", "--port", "--json=1", "--format=", "-fz"]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["1e999", "nan", "-0", "99999999999999999999999999", "0x10", "٣"]),
)


def _value_for(param: click.Parameter, pool: dict[str, list[str]]) -> st.SearchStrategy[str]:
    kind = param.type
    if isinstance(kind, click.Choice):
        choice = st.sampled_from([str(c) for c in kind.choices])
        return st.one_of(choice, choice, choice, garbage)
    if isinstance(kind, click.types._NumberParamTypeBase):
        return st.one_of(
            st.integers(-5, 70000).map(str),
            st.integers(1, 65535).map(str),
            st.sampled_from(["0", "1", "0.5", "-1", "65536", "1" * 400, "inf", "nan"]),
            garbage,
        )
    name = param.name or ""
    if name in ("name", "profile"):
        good = st.sampled_from(["a", "a", "b", "c"])
        return st.one_of(good, good, good, st.sampled_from(NAMES), garbage)
    if isinstance(kind, click.File) or "file" in name or name in ("known_hosts", "postgres"):
        return st.one_of(st.sampled_from(pool["paths"]), garbage)
    if name in ("command", "psql_args"):
        return st.one_of(st.just("true"), garbage)
    return st.one_of(st.sampled_from(pool["text"]), garbage)


@st.composite
def argvs(draw: st.DrawFn, pool: dict[str, list[str]]) -> list[str]:
    path, cmd = draw(st.sampled_from(TREE))
    argv: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        argv += ["--config", draw(st.one_of(st.sampled_from(pool["paths"]), garbage))]
    argv += list(path)
    for param in cmd.params:
        if not draw(st.booleans()):
            continue
        if isinstance(param, click.Option):
            flag = draw(st.sampled_from(param.opts))
            if param.is_flag:
                argv.append(flag)
            elif draw(st.integers(0, 9)) == 0:
                argv.append(flag)  # its value missing (or the next token taken as it)
            elif flag.startswith("--") and draw(st.booleans()):
                argv.append(f"{flag}={draw(_value_for(param, pool))}")
            else:
                argv += [flag, draw(_value_for(param, pool))]
        else:
            n = 1 if param.nargs == 1 else draw(st.integers(0, 3))
            argv += [draw(_value_for(param, pool)) for _ in range(n)]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        argv.insert(draw(st.integers(0, len(argv))), draw(garbage))
    if draw(st.integers(0, 19)) == 0 and argv:
        del argv[draw(st.integers(0, len(argv) - 1))]
    return argv


# ----------------------------------------------------------------------------- the sealed run


@contextmanager
def sealed(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    work = tmp / "work"
    work.mkdir()
    runtime = Path(tempfile.mkdtemp(prefix="tm-fz-"))
    config = home / "profiles.toml"
    closed = _closed_port()
    profiles_text = (
        f'[defaults]\nconnect_timeout = 1\npassword = "none"\n'
        f'[profiles.a]\nbastion = "u@127.0.0.1:{closed}"\nendpoint = "127.0.0.1:{closed}"\n'
        f'known_hosts = "~/.ssh/known_hosts"\n'
        f'[profiles.b]\nbastion = "127.0.0.1:{closed}"\ncluster = "db-1"\nregion = "us-east-2"\n'
        f'sslmode = "verify-full"\n[profiles.c]\nendpoint = "127.0.0.1:{closed}"\nlocal_port = 5999\n'
    )
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    (tmp / "broken.toml").write_text("[profiles.a\n")
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".state"),
        "XDG_DATA_HOME": str(home / ".data"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(runtime),
        "TUNNELMAN_CONFIG": str(config),
        "TUNNELMAN_LOG": str(tmp / "tunnelman.log"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "AWS_ACCESS_KEY_ID": "AKIAFUZZ",
        "AWS_SECRET_ACCESS_KEY": "fuzz",
        "AWS_DEFAULT_REGION": "us-east-2",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
    }
    for key in ("SSH_AUTH_SOCK", "PGPASSWORD", "PGSERVICE", "AWS_PROFILE", "TUNNELMAN_AGENT_IDLE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(work)

    def stub(what: str) -> Any:
        def run(*_args: Any, **_kwargs: Any) -> None:
            click.echo(f"(fuzz: {what} not started)")

        return run

    for path, cmd in TREE:
        if path in (("tui",), ("demo",), ("agent", "run")):
            monkeypatch.setattr(cmd, "callback", stub(" ".join(path)))
    from tunnelman.cli import cmd_tunnel

    monkeypatch.setattr(cmd_tunnel, "detach_up", stub("up --detach"))
    pool = {
        "paths": [
            str(config),
            str(tmp / "broken.toml"),
            str(tmp / "missing.toml"),
            str(tmp),
            str(fifo),
            os.devnull,
            "~/x.json",
            "rel.json",
            "-",
        ],
        "text": ["us-east-2", "db-1", "default", "postgres", "127.0.0.1:1", "h:99999", "u@"],
    }
    try:
        yield {"pool": pool, "config": config, "profiles": profiles_text}
    finally:
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)


def _on_alarm(_sig: int, _frame: FrameType | None) -> None:
    raise Hang(f"no exit within {TIME_LIMIT} s")


def run_argv(argv: list[str]) -> tuple[int | str | None, str]:
    """main(argv) with stdin at /dev/null and real-file stdout/stderr: (exit code, stderr)."""
    saved = sys.stdin, sys.stdout, sys.stderr
    with (
        open(os.devnull, encoding="utf-8") as stdin,
        tempfile.TemporaryFile() as out_raw,
        tempfile.TemporaryFile() as err_raw,
    ):
        out = io.TextIOWrapper(out_raw, encoding="utf-8", errors="backslashreplace")
        err = io.TextIOWrapper(err_raw, encoding="utf-8", errors="backslashreplace")
        old_handler = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(TIME_LIMIT)
        code: int | str | None = "no SystemExit"
        try:
            sys.stdin, sys.stdout, sys.stderr = stdin, out, err
            cli_main.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int | str) or exc.code is None else str(exc)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old_handler)
            sys.stdin, sys.stdout, sys.stderr = saved
            err.flush()
            err_raw.seek(0)
            stderr = err_raw.read().decode("utf-8", "replace")
            out.detach()
            err.detach()
    return code, stderr


@pytest.fixture
def sealed_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with sealed(tmp_path, monkeypatch) as world:
        yield world


def _check(world: dict[str, Any], argv: list[str]) -> None:
    world["config"].write_text(world["profiles"])  # `profile add/rm` may have changed it
    code, stderr = run_argv(argv)
    count("argv")
    count(f"argv exit {code if code in (0, 1, 2, None) else 'other'}")
    assert code != "no SystemExit", argv
    assert "Traceback" not in stderr, (argv, stderr)


@settings(max_examples=examples(ci=80, long=2500))
@given(data=st.data())
def test_cli_argv_never_tracebacks(sealed_cli: dict[str, Any], data: st.DataObject) -> None:
    argv = data.draw(argvs(sealed_cli["pool"]), label="argv")
    _check(sealed_cli, argv)


@settings(max_examples=examples(ci=20, long=300))
@given(data=st.data())
def test_cli_pure_garbage(sealed_cli: dict[str, Any], data: st.DataObject) -> None:
    argv = data.draw(st.lists(garbage, min_size=1, max_size=6), label="argv")
    _check(sealed_cli, argv)


def test_cli_tree_is_complete() -> None:
    """The walk finds the lazy sub-commands, so the fuzz reaches every command."""
    paths = {" ".join(p) for p, _ in TREE}
    assert {"conn", "profile add", "cluster stop", "agent status", "password set"} <= paths
    assert len(paths) >= 20
