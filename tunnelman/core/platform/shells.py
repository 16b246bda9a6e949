"""Shells: which one `tunnelman env` writes for, and how each quotes a value.

Called by `core.clients.render_env` (the script) and the CLI's `env --shell` (the default).

- posix: `export NAME='value'` (`shlex.quote`), `unset NAME…`, `# ` comments: for
  `eval "$(tunnelman env NAME)"` in sh, bash, zsh.
- powershell: `$env:NAME = 'value'` with `'` doubled (PowerShell also ends a single-quoted string
  at the typographic quotes U+2018-U+201B, so those are doubled too), `Remove-Item Env:NAME`:
  for `tunnelman env NAME --shell powershell | Out-String | Invoke-Expression`.
- cmd: `set "NAME=value"` lines for a batch file (`… --shell cmd > pg.cmd` then `call pg.cmd`).
  Inside the quotes `^ & | < > ( )` are literal; `%` is doubled because a batch file expands
  `%…%` even there (and in REM comments). A value holding `"`, `!` or a line break cannot be
  written safely (a `"` ends the quoting, `!` expands under delayed expansion, `set` takes one
  line): it is refused with a pointer to PowerShell.

The default shell follows the running one: on Windows PowerShell when PSModulePath carries a
user's module directory (PowerShell adds `Documents\\…PowerShell\\Modules`; cmd.exe has only the
system entries), else cmd; posix everywhere else. A cmd.exe started from PowerShell inherits
PowerShell's PSModulePath and is taken for PowerShell: `--shell` says otherwise.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence

from tunnelman.core.errors import ClientError
from tunnelman.core.platform.programs import system_name

__all__ = ["SHELLS", "command_word", "default_shell", "env_script", "quote"]

SHELLS = ("posix", "powershell", "cmd")

_PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def default_shell(env: Mapping[str, str] | None = None, system: str | None = None) -> str:
    """posix, powershell or cmd: the shell tunnelman is most likely running under."""
    env = os.environ if env is None else env
    if (system or system_name()) != "win32":
        return "posix"
    module_path = env.get("PSModulePath", "")
    entries = [e for e in module_path.split(";") if e.strip()]
    profile = env.get("USERPROFILE", "").rstrip("\\/").lower()
    user_entry = any(
        (profile and e.lower().startswith(profile + "\\")) or "\\documents\\" in e.lower()
        for e in entries
    )
    # Not "three entries or more": installers (SQL Server, …) add system entries cmd sees too.
    return "powershell" if user_entry else "cmd"


def _ps_quote(value: str) -> str:
    return "'" + "".join(c * 2 if c in _PS_QUOTES else c for c in value) + "'"


def _cmd_value(name: str, value: str) -> str:
    bad = next((c for c in value if c in '"!\r\n\0'), None)
    if bad is not None:
        shown = {"\r": "a line break", "\n": "a line break", "\0": "a NUL"}.get(bad, repr(bad))
        raise ClientError(
            f"cmd cannot safely set {name}: its value holds {shown}",
            hint="use `--shell powershell` (or `tunnelman psql` / `tunnelman exec`)",
        )
    return value.replace("%", "%%")


def quote(value: str, shell: str) -> str:
    """`value` as one literal word for `shell` (cmd: the text between `set "NAME=` and `"`)."""
    if shell == "posix":
        return shlex.quote(value)
    if shell == "powershell":
        return _ps_quote(value)
    if shell == "cmd":
        return _cmd_value("the variable", value)
    raise ClientError(f"unknown shell '{shell}'", hint=f"shells: {', '.join(SHELLS)}")


def command_word(text: str, shell: str | None = None) -> str:
    """`text` as one argument of a command a person copies into `shell` (default: the running
    one): POSIX `shlex.quote`; PowerShell and cmd bare when plain, else in double quotes (which
    both take; the texts quoted here are paths and SQL without `"`, `$`, `%` or `!`)."""
    shell = shell or default_shell()
    if shell == "posix":
        return shlex.quote(text)
    if text and re.fullmatch(r"[A-Za-z0-9_@+=:,./\\-]+", text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _comment(shell: str, line: str) -> str:
    if shell == "cmd":
        return f"REM {line.replace('%', '%%')}\n"
    return f"# {line}\n"


def env_script(
    values: Sequence[tuple[str, str]],
    unset: Sequence[str],
    comments: Sequence[str],
    shell: str = "posix",
) -> str:
    """Comment lines, then one assignment per (name, value), then the removal of `unset`."""
    if shell not in SHELLS:
        raise ClientError(f"unknown shell '{shell}'", hint=f"shells: {', '.join(SHELLS)}")
    text = "".join(_comment(shell, line) for line in comments)
    if shell == "posix":
        text += "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values)
        return text + (f"unset {' '.join(unset)}\n" if unset else "")
    if shell == "powershell":
        text += "".join(f"$env:{name} = {_ps_quote(value)}\n" for name, value in values)
        if unset:
            names = ", ".join(f"Env:{n}" for n in unset)
            text += f"Remove-Item {names} -ErrorAction SilentlyContinue\n"
        return text
    text += "".join(f'set "{name}={_cmd_value(name, value)}"\n' for name, value in values)
    return text + "".join(f'set "{name}="\n' for name in unset)
