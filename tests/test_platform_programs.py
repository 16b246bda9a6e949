"""`core.platform` programs, shells, paths, clipboard: the per-OS decisions, for every OS here.

Each function takes the facts it decides on (system name, environment, filesystem root, which)
as arguments, so Windows and macOS are exercised on Linux over real files in a temporary tree.
The POSIX quoting is checked by a real `sh`; PowerShell and cmd.exe do not run here, so their
output is checked against the languages' quoting rules (a PowerShell single-quoted string reader
below, cmd's `set "NAME=value"` shape).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelman.core import clients, oneshot
from tunnelman.core.errors import ClientError
from tunnelman.core.platform import clipboard, paths, programs, shells
from tunnelman.core.profiles import Endpoint, Profile

HOSTILE = [
    "plain",
    "it's",
    "a'b''c",
    'say "hi"',
    "100%",
    "%PATH%",
    "50%% off",
    "^caret^",
    "$HOME",
    "$(rm -rf /)",
    "`whoami`",
    "a;b&c|d<e>f",
    "new\nline",
    "tab\there",
    "back\\slash\\",
    "\u2019curly\u2018",
    "é 東京",
    "",
]


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ----------------------------------------------------------------------------- programs


def test_windows_finds_psql_in_program_files_newest_version_first(tmp_path: Path) -> None:
    pf = tmp_path / "Program Files"
    w6432 = tmp_path / "W6432"
    _exe(pf / "PostgreSQL" / "9.6" / "bin" / "psql.exe")
    _exe(pf / "PostgreSQL" / "16" / "bin" / "psql.exe")
    _exe(pf / "PostgreSQL" / "10" / "bin" / "psql.exe")
    _exe(w6432 / "PostgreSQL" / "17" / "bin" / "pg_dump.exe")
    (pf / "PostgreSQL" / "notes").mkdir()
    env = {"ProgramFiles": str(pf), "ProgramW6432": str(w6432), "PATHEXT": ".COM;.EXE"}
    dirs = programs.install_dirs("win32", env)
    assert dirs == [
        pf / "PostgreSQL" / "16" / "bin",
        pf / "PostgreSQL" / "10" / "bin",
        pf / "PostgreSQL" / "9.6" / "bin",
        w6432 / "PostgreSQL" / "17" / "bin",
    ]
    found = programs.search("psql", path=str(tmp_path / "empty"), system="win32", env=env)
    assert found == str(pf / "PostgreSQL" / "16" / "bin" / "psql.exe")
    # %ProgramFiles% has no pg_dump: the next root's is used.
    found = programs.search("pg_dump", path="", system="win32", env=env)
    assert found == str(w6432 / "PostgreSQL" / "17" / "bin" / "pg_dump.exe")
    assert programs.search("ogr2ogr", path="", system="win32", env=env) is None


def test_path_wins_over_the_install_dirs(tmp_path: Path) -> None:
    on_path = _exe(tmp_path / "bin" / "psql")
    _exe(tmp_path / "opt/homebrew/opt/libpq/bin/psql")
    found = programs.search("psql", path=str(on_path.parent), system="darwin", root=tmp_path)
    assert found == str(on_path)


def test_macos_order_libpq_then_postgres_app_then_newest_postgresql_keg(tmp_path: Path) -> None:
    for rel in (
        "usr/local/opt/libpq/bin/psql",
        "Applications/Postgres.app/Contents/Versions/latest/bin/psql",
        "opt/homebrew/opt/postgresql@14/bin/psql",
        "opt/homebrew/opt/postgresql@16/bin/psql",
        "opt/homebrew/opt/postgresql@16/bin/pg_dump",
    ):
        _exe(tmp_path / rel)
    dirs = programs.install_dirs("darwin", {}, tmp_path)
    assert dirs == [
        tmp_path / "usr/local/opt/libpq/bin",
        tmp_path / "Applications/Postgres.app/Contents/Versions/latest/bin",
        tmp_path / "opt/homebrew/opt/postgresql@16/bin",
        tmp_path / "opt/homebrew/opt/postgresql@14/bin",
    ]
    assert programs.search("psql", path="", system="darwin", root=tmp_path) == str(dirs[0] / "psql")
    assert programs.search("pg_dump", path="", system="darwin", root=tmp_path) == str(
        dirs[2] / "pg_dump"
    )
    _exe(tmp_path / "opt/homebrew/opt/libpq/bin/psql")
    assert programs.search("psql", path="", system="darwin", root=tmp_path) == str(
        tmp_path / "opt/homebrew/opt/libpq/bin/psql"
    )


def test_macos_skips_a_file_that_is_not_executable(tmp_path: Path) -> None:
    plain = tmp_path / "opt/homebrew/opt/libpq/bin/psql"
    plain.parent.mkdir(parents=True)
    plain.write_text("")
    assert programs.search("psql", path="", system="darwin", root=tmp_path) is None


def test_linux_looks_on_path_only(tmp_path: Path) -> None:
    _exe(tmp_path / "opt/homebrew/opt/libpq/bin/psql")
    assert programs.install_dirs("linux", {}, tmp_path) == []
    assert programs.search("psql", path="", system="linux", root=tmp_path) is None
    assert programs.where_looked("linux") == ""


def test_a_name_with_a_directory_is_not_searched_elsewhere(tmp_path: Path) -> None:
    _exe(tmp_path / "opt/homebrew/opt/libpq/bin/psql")
    assert programs.search("./psql", path="", system="darwin", root=tmp_path) is None


def test_not_found_names_where_it_looked_and_how_to_install() -> None:
    env = {"ProgramFiles": r"C:\Program Files", "ProgramW6432": r"C:\Program Files"}
    looked = programs.where_looked("win32", env)
    assert looked == r"C:\Program Files\PostgreSQL\<version>\bin"
    hint = programs.install_hint("psql", "win32")
    assert hint is not None
    assert "postgresql.org/download/windows" in hint
    mac = programs.install_hint("pg_dump", "darwin")
    assert mac is not None
    assert "brew install libpq" in mac
    assert "/opt/homebrew/opt/libpq/bin" in programs.where_looked("darwin")
    assert programs.install_hint("ogr2ogr", "win32") is None
    assert programs.install_hint("psql", "linux") is None


def test_linux_message_is_unchanged() -> None:
    with pytest.raises(oneshot.ProgramNotFound) as info:
        oneshot.find_program("psql", path="/nonexistent")
    assert str(info.value).startswith("psql not found (install the PostgreSQL client tools:")


def test_pid_alive() -> None:
    assert programs.pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not programs.pid_alive(proc.pid)
    assert not programs.pid_alive(0)


# ----------------------------------------------------------------------------- shells


@pytest.mark.parametrize(
    ("env", "system", "expected"),
    [
        ({}, "linux", "posix"),
        ({"PSModulePath": r"C:\x;C:\y;C:\z"}, "darwin", "posix"),
        (
            {
                "PSModulePath": r"C:\Program Files\WindowsPowerShell\Modules;"
                r"C:\WINDOWS\system32\WindowsPowerShell\v1.0\Modules"
            },
            "win32",
            "cmd",
        ),
        ({}, "win32", "cmd"),
        (
            {
                "USERPROFILE": r"C:\Users\ana",
                "PSModulePath": r"C:\Program Files\WindowsPowerShell\Modules;"
                r"C:\WINDOWS\system32\WindowsPowerShell\v1.0\Modules;"
                r"C:\Program Files (x86)\Microsoft SQL Server\150\Tools\PowerShell\Modules",
            },
            "win32",
            "cmd",
        ),
        (
            {
                "USERPROFILE": r"C:\Users\ana",
                "PSModulePath": r"C:\Users\ana\Documents\WindowsPowerShell\Modules;"
                r"C:\Program Files\WindowsPowerShell\Modules;"
                r"C:\WINDOWS\system32\WindowsPowerShell\v1.0\Modules",
            },
            "win32",
            "powershell",
        ),
        (
            {"PSModulePath": r"D:\OneDrive\Documents\PowerShell\Modules;C:\pf\Modules"},
            "win32",
            "powershell",
        ),
    ],
)
def test_default_shell(env: dict[str, str], system: str, expected: str) -> None:
    assert shells.default_shell(env, system) == expected


@pytest.mark.parametrize("value", HOSTILE)
def test_posix_quoting_survives_a_real_shell(value: str) -> None:
    script = shells.env_script([("TM_VALUE", value)], ["TM_GONE"], ["a comment; $(no)"], "posix")
    result = subprocess.run(
        [
            "sh",
            "-c",
            'eval "$1"; printf %s "$TM_VALUE"; printf "|%s" "${TM_GONE-unset}"',
            "sh",
            script,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TM_GONE": "stale"},
        check=True,
    )
    assert result.stdout == f"{value}|unset"


def _read_ps_single_quoted(line: str, name: str) -> str:
    """The value of `$env:NAME = '…'` the way PowerShell reads it: any of the single quotes
    (including U+2018-U+201B) doubled inside means one; an undoubled one ends the string."""
    head = f"$env:{name} = "
    assert line.startswith(head)
    rest = line[len(head) :]
    quotes = "'\u2018\u2019\u201a\u201b"
    assert rest[0] in quotes
    out, i = [], 1
    while i < len(rest):
        c = rest[i]
        if c in quotes:
            if i + 1 < len(rest) and rest[i + 1] in quotes:
                out.append(c)
                i += 2
                continue
            assert i == len(rest) - 1, f"string ends early: {rest!r}"
            return "".join(out)
        out.append(c)
        i += 1
    raise AssertionError(f"unterminated: {rest!r}")


@pytest.mark.parametrize("value", HOSTILE)
def test_powershell_quoting(value: str) -> None:
    script = shells.env_script(
        [("PGUSER", value)], ["PGSERVICE", "PGPASSWORD"], ["c"], "powershell"
    )
    body = script.split("\n", 1)[1]
    assign, remove = body.rsplit("\n", 2)[0], body.rsplit("\n", 2)[1]
    assert _read_ps_single_quoted(assign, "PGUSER") == value
    assert remove == "Remove-Item Env:PGSERVICE, Env:PGPASSWORD -ErrorAction SilentlyContinue"
    assert script.startswith("# c\n")


def test_powershell_exact_text() -> None:
    assert shells.quote("it's $x `y`", "powershell") == "'it''s $x `y`'"
    assert shells.quote("\u2019", "powershell") == "'\u2019\u2019'"


@pytest.mark.parametrize("value", [v for v in HOSTILE if not any(c in v for c in '"!\n')])
def test_cmd_quoting(value: str) -> None:
    script = shells.env_script([("PGUSER", value)], ["PGSERVICE"], ["100% sure"], "cmd")
    lines = script.splitlines()
    assert lines[0] == "REM 100%% sure"
    assert lines[1] == f'set "PGUSER={value.replace("%", "%%")}"'
    assert lines[2] == 'set "PGSERVICE="'
    # A batch file turns %% back into %; nothing else inside the quotes is special.
    assert lines[1][len('set "PGUSER=') : -1].replace("%%", "%") == value


@pytest.mark.parametrize("value", ['say "hi"', "a\nb", "a\rb", "bang!"])
def test_cmd_refuses_what_it_cannot_hold(value: str) -> None:
    with pytest.raises(ClientError, match="cmd cannot safely set PGUSER") as info:
        shells.env_script([("PGUSER", value)], [], [], "cmd")
    assert "--shell powershell" in str(info.value)


def test_unknown_shell_is_one_clear_error() -> None:
    with pytest.raises(ClientError, match="unknown shell 'fish'"):
        shells.env_script([], [], [], "fish")


def test_env_render_per_shell() -> None:
    profile = Profile(name="p", endpoint=Endpoint("db.example.com"), database="geo")
    posix = clients.render("env", profile, 5433)
    assert "export PGPORT=5433\n" in posix
    assert posix.endswith("unset PGHOSTADDR PGSSLROOTCERT PGSERVICE PGPASSWORD\n")
    ps = clients.render("env", profile, 5433, shell="powershell")
    assert "$env:PGPORT = '5433'\n" in ps
    cmd = clients.render("env", profile, 5433, shell="cmd")
    assert 'set "PGPORT=5433"\n' in cmd
    assert cmd.startswith("REM tunnelman profile 'p'")


# ----------------------------------------------------------------------------- paths


def test_libpq_files_per_os(monkeypatch: pytest.MonkeyPatch) -> None:
    appdata = r"C:\Users\ana\AppData\Roaming"
    win = {"APPDATA": appdata}
    assert str(paths.pgpass_file(win, "win32")) == str(Path(appdata) / "postgresql" / "pgpass.conf")
    assert str(paths.service_file(win, "win32")) == str(
        Path(appdata) / "postgresql" / ".pg_service.conf"
    )
    assert paths.pgpass_file({}, "linux") == Path.home() / ".pgpass"
    assert paths.service_file({}, "darwin") == Path.home() / ".pg_service.conf"
    assert paths.pgpass_file({**win, "PGPASSFILE": "/x/pp"}, "win32") == Path("/x/pp")
    assert paths.service_file({"PGSERVICEFILE": "~/svc"}, "linux") == Path.home() / "svc"


STORE_EXE = (
    r"C:\Users\ana\AppData\Local\Microsoft\WindowsApps"
    r"\PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0\python.exe"
)
STORE_PREFIX = r"C:\Program Files\WindowsApps\PythonSoftwareFoundation.Python.3.12_3.12.2800.0_x64__qbz5n2kfra8p0"
WIN_ENV = {
    "APPDATA": r"C:\Users\ana\AppData\Roaming",
    "LOCALAPPDATA": r"C:\Users\ana\AppData\Local",
}


@pytest.mark.parametrize(
    ("executable", "prefix", "family"),
    [
        (STORE_EXE, r"C:\elsewhere", "PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0"),
        (r"C:\py\python.exe", STORE_PREFIX, "PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0"),
        (
            r"C:\Users\ana\AppData\Local\Packages\PythonSoftwareFoundation.Python.3.11_qbz5n2kfra8p0"
            r"\LocalCache\local-packages\Python311\Scripts\tunnelman.exe",
            r"C:\x",
            "PythonSoftwareFoundation.Python.3.11_qbz5n2kfra8p0",
        ),
        (r"C:\Users\ana\AppData\Local\Programs\Python\Python312\python.exe", r"C:\Python312", None),
        ("/usr/bin/python3", "/usr", None),
    ],
)
def test_store_python_detection(executable: str, prefix: str, family: str | None) -> None:
    assert paths.store_python_package(executable, prefix) == family


def test_store_python_redirect_names_the_real_path() -> None:
    target = r"C:\Users\ana\AppData\Roaming\postgresql\pgpass.conf"
    real = paths.store_python_redirect(
        target, env=WIN_ENV, system="win32", executable=STORE_EXE, prefix=STORE_PREFIX
    )
    assert str(real) == (
        r"C:\Users\ana\AppData\Local\Packages\PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0"
        r"\LocalCache\Roaming\postgresql\pgpass.conf"
    )
    warning = paths.store_python_warning(
        target, env=WIN_ENV, system="win32", executable=STORE_EXE, prefix=STORE_PREFIX
    )
    assert warning is not None
    assert str(real) in warning
    assert "python.org" in warning
    assert "PGPASSFILE" in warning
    # Outside %APPDATA%, with a python.org Python, or off Windows: no redirect, no warning.
    assert (
        paths.store_python_redirect(
            r"D:\pg\pgpass.conf", env=WIN_ENV, system="win32", executable=STORE_EXE, prefix="C:\\"
        )
        is None
    )
    assert (
        paths.store_python_warning(
            target, env=WIN_ENV, system="win32", executable=r"C:\py\python.exe", prefix="C:\\py"
        )
        is None
    )
    assert (
        paths.store_python_warning(
            target, env=WIN_ENV, system="linux", executable=STORE_EXE, prefix=STORE_PREFIX
        )
        is None
    )


def test_socket_safe_tempdir() -> None:
    assert paths.socket_safe_tempdir(40, base="/tmp") is None
    mac = "/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T"
    assert paths.socket_safe_tempdir(60, base=mac) == "/tmp"
    assert paths.unix_sockets() == hasattr(__import__("socket"), "AF_UNIX")


# ----------------------------------------------------------------------------- clipboard


def _which(available: set[str]) -> clipboard.Which:
    return lambda name: f"/bin/{name}" if name in available else None


@pytest.mark.parametrize(
    ("env", "system", "available", "label"),
    [
        ({"DISPLAY": ":0"}, "linux", {"xclip"}, "OSC 52 through the terminal"),
        ({"WT_SESSION": "1f2e"}, "win32", {"clip"}, "OSC 52 through the terminal"),
        ({}, "win32", {"clip"}, "clip.exe"),
        ({"TERM_PROGRAM": "Apple_Terminal"}, "darwin", {"pbcopy"}, "pbcopy"),
        ({"TERM_PROGRAM": "iTerm.app"}, "darwin", {"pbcopy"}, "OSC 52 through the terminal"),
        (
            {"TERM_PROGRAM": "Apple_Terminal", "WAYLAND_DISPLAY": "w", "DISPLAY": ":0"},
            "linux",
            {"wl-copy", "xclip", "xsel"},
            "wl-copy",
        ),
        ({"TERM_PROGRAM": "Apple_Terminal", "DISPLAY": ":0"}, "linux", {"xclip", "xsel"}, "xclip"),
        ({"TERM_PROGRAM": "Apple_Terminal", "DISPLAY": ":0"}, "linux", {"xsel"}, "xsel"),
        ({"TERM_PROGRAM": "Apple_Terminal", "WAYLAND_DISPLAY": "w"}, "linux", {"xclip"}, None),
        ({}, "win32", set(), None),
        ({"TERM_PROGRAM": "Apple_Terminal"}, "darwin", set(), None),
    ],
)
def test_clipboard_method(
    env: dict[str, str], system: str, available: set[str], label: str | None
) -> None:
    method = clipboard.choose(env, system, _which(available))
    assert (method.label if method else None) == label


def test_clipboard_argv_and_encoding() -> None:
    win = clipboard.choose({}, "win32", _which({"clip"}))
    assert win is not None
    assert win.argv == ("/bin/clip",)
    assert win.encoding == "utf-16-le"
    x = clipboard.choose(
        {"TERM_PROGRAM": "Apple_Terminal", "DISPLAY": ":0"}, "linux", _which({"xclip"})
    )
    assert x is not None
    assert x.argv == ("/bin/xclip", "-selection", "clipboard")


def test_copy_with_puts_the_text_on_stdin_in_its_encoding(tmp_path: Path) -> None:
    out = tmp_path / "clip.bin"
    # A stand-in clipboard program (no clip.exe here) that records the bytes it was given.
    recorder = (
        sys.executable,
        "-c",
        f"import sys; open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())",
    )
    text = "host=127.0.0.1 dbname='é 東京'\n"
    clipboard.copy_with(clipboard.Method("clip.exe", recorder, "utf-16-le"), text)
    assert out.read_bytes() == text.encode("utf-16-le")
    with pytest.raises(clipboard.ClipboardError, match=r"exit status 3"):
        clipboard.copy_with(
            clipboard.Method("x", (sys.executable, "-c", "raise SystemExit(3)")), "t"
        )
    with pytest.raises(clipboard.ClipboardError, match="nope failed"):
        clipboard.copy_with(clipboard.Method("nope", (str(tmp_path / "missing"),)), "t")


def test_command_word_per_shell() -> None:
    psql = r"C:\Program Files\PostgreSQL\17\bin\psql.exe"
    assert shells.command_word(psql, "cmd") == f'"{psql}"'
    assert shells.command_word(psql, "powershell") == f'"{psql}"'
    assert shells.command_word(r"C:\py\python.exe", "cmd") == r"C:\py\python.exe"
    assert shells.command_word("select 1, 2", "posix") == "'select 1, 2'"
    assert shells.command_word("/usr/bin/psql", "posix") == "/usr/bin/psql"


def test_executable_name() -> None:
    assert programs.executable_name("postgres", "win32") == "postgres.exe"
    assert programs.executable_name("postgres", "darwin") == "postgres"
    assert programs.executable_name("postgres", "linux") == "postgres"


def test_windows_postgresql_server_dirs_are_demo_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo finds a server in Program Files\\PostgreSQL\\<version>\\bin (faked as Windows)."""
    from tunnelman.demo import database

    pf = tmp_path / "Program Files"
    for version in ("15", "17"):
        for prog in ("initdb.exe", "postgres.exe"):
            _exe(pf / "PostgreSQL" / version / "bin" / prog)
    monkeypatch.setattr(programs, "system_name", lambda: "win32")
    monkeypatch.setenv("ProgramFiles", str(pf))
    monkeypatch.delenv("ProgramW6432", raising=False)
    monkeypatch.delenv("ProgramFiles(x86)", raising=False)
    dirs = database._system_bindirs()
    newest, older = pf / "PostgreSQL" / "17" / "bin", pf / "PostgreSQL" / "15" / "bin"
    assert newest in dirs
    assert dirs.index(newest) < dirs.index(older)
    assert (
        database.Binaries(newest, "system", "17.2", None).tool("postgres")
        == newest / "postgres.exe"
    )


def test_not_found_line_on_windows_and_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ProgramW6432", raising=False)
    monkeypatch.delenv("ProgramFiles(x86)", raising=False)
    monkeypatch.setenv("ProgramFiles", r"C:\Program Files")
    win = oneshot._not_found("psql", "win32")
    assert str(win).startswith(
        r"psql not found on PATH, nor in C:\Program Files\PostgreSQL\<version>\bin ("
    )
    assert "postgresql.org/download/windows" in str(win)
    assert win.exit_code == 127
    mac = oneshot._not_found("pg_dump", "darwin")
    assert "nor in /opt/homebrew/opt/libpq/bin, /usr/local/opt/libpq/bin" in str(mac)
    assert "brew install libpq" in str(mac)


def test_essential_env_for_a_minimal_child_environment() -> None:
    environ = {"SystemRoot": r"C:\WINDOWS", "TEMP": r"C:\t", "SECRET": "x", "PATH": "p"}
    assert programs.essential_env(environ, "win32") == {
        "SYSTEMROOT": r"C:\WINDOWS",
        "TEMP": r"C:\t",
    }
    assert programs.essential_env(environ, "linux") == {}
    assert programs.essential_env(environ, "darwin") == {}
