"""The core/UI boundary: nothing under tunnelman.core imports Textual, click or rich.

Each core module is imported in a fresh interpreter and `sys.modules` is inspected, as harlequin
does; import-linter (run by .ci/run) checks the same contract statically.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import tunnelman.core

FORBIDDEN = ("textual", "click", "rich")


def core_modules() -> list[str]:
    return sorted(f"tunnelman.core.{m.name}" for m in pkgutil.iter_modules(tunnelman.core.__path__))


def test_there_are_core_modules() -> None:
    assert "tunnelman.core.profiles" in core_modules()


def test_core_imports_no_ui_library() -> None:
    script = (
        "import importlib, json, sys\n"
        f"mods = {core_modules()!r}\n"
        "bad = {}\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        f"    hits = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
        "    if hits: bad[m] = hits\n"
        "print(json.dumps(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == {}, result.stdout


def test_ls_imports_neither_textual_nor_boto3(tmp_path: object) -> None:
    script = (
        "import sys\n"
        "from tunnelman.cli.main import main\n"
        "try:\n"
        "    main(['--config', '/nonexistent/profiles.toml', 'ls'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'textual', 'boto3', 'botocore'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
