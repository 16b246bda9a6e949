"""Write tunnelman profile files (TOML) for tests.

``write_profile(path, name, **keys)`` adds or replaces ``[profiles.<name>]`` in ``path``
(other profiles and ``[defaults]`` are kept); ``write_defaults(path, **keys)`` does the same
for ``[defaults]``.  Values may be str, int, bool, float, ``Path`` (written as a string) or
lists of those; ``None`` leaves the key out.  Keys are not checked here: writing an unknown
key is how tests exercise the loader's errors.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["dump_toml", "write_defaults", "write_profile"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, os.PathLike):
        return json.dumps(os.fspath(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(header: str, values: Mapping[str, Any]) -> list[str]:
    lines = [f"[{header}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None]
    return lines


def dump_toml(defaults: Mapping[str, Any], profiles: Mapping[str, Mapping[str, Any]]) -> str:
    """The text of a profile file with ``[defaults]`` (if any) and ``[profiles.NAME]`` tables."""
    out: list[str] = ["# written by tests/lab/toml_profile.py"]
    if defaults:
        out += ["", *_table("defaults", defaults)]
    for name, values in profiles.items():
        out += ["", *_table(f"profiles.{_key(name)}", values)]
    return "\n".join(out) + "\n"


def _read(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not path.exists():
        return {}, {}
    data = tomllib.loads(path.read_text("utf-8"))
    return dict(data.get("defaults", {})), {k: dict(v) for k, v in data.get("profiles", {}).items()}


def write_profile(path: str | os.PathLike[str], name: str, **keys: Any) -> Path:
    """Add or replace profile ``name`` in the TOML file ``path``; return the path."""
    p = Path(path)
    defaults, profiles = _read(p)
    profiles[name] = {k: v for k, v in keys.items() if v is not None}
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump_toml(defaults, profiles), "utf-8")
    return p


def write_defaults(path: str | os.PathLike[str], **keys: Any) -> Path:
    """Replace the ``[defaults]`` table of the TOML file ``path``; return the path."""
    p = Path(path)
    _, profiles = _read(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump_toml({k: v for k, v in keys.items() if v is not None}, profiles), "utf-8")
    return p
