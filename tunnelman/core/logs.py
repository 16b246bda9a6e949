"""Where tunnelman's own logs go: a rotating file, never the terminal.

sshtunnel and paramiko log to a console handler unless given a logger; inside the TUI that would
garble the screen, and on the CLI it would bury the one line a person needs. `setup_file_logging`
routes the `tunnelman`, `paramiko` and `sshtunnel` loggers to a rotating file in the per-user log
directory and stops them from propagating to the root logger. Called once by the CLI, TUI and agent.
`$TUNNELMAN_LOG` is checked like any path a person gives (a bad `~user` or a FIFO is a ConfigError).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
from pathlib import Path

from tunnelman.core.errors import ConfigError
from tunnelman.core.files import file_kind

LOGGER_NAMES = ("tunnelman", "paramiko", "sshtunnel")
_installed: dict[str, logging.Handler] = {}


def default_log_path() -> Path:
    """`tunnelman.log` in the platform's per-user log (state) directory; `$TUNNELMAN_LOG` wins."""
    env = os.environ.get("TUNNELMAN_LOG")
    if env:
        from tunnelman.core.profiles import user_path

        return user_path(env, "log file ($TUNNELMAN_LOG)")
    import platformdirs

    return Path(platformdirs.user_log_dir("tunnelman")) / "tunnelman.log"


def setup_file_logging(path: Path | None = None, *, level: int = logging.INFO) -> Path:
    """Send our and our libraries' logs to a rotating file (1 MiB x 3). Idempotent."""
    target = path or default_log_path()
    key = str(target)
    handler = _installed.get(key)
    if handler is None:
        _refuse_special(target)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(
            target, maxBytes=1 << 20, backupCount=3, encoding="utf-8", delay=True
        )
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
        )
        _installed[key] = handler
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        for other in list(logger.handlers):
            if other is not handler:
                logger.removeHandler(other)
        logger.addHandler(handler)
        logger.setLevel(level if name == "tunnelman" else max(level, logging.INFO))
        logger.propagate = False
    return target


def _refuse_special(target: Path) -> None:
    """A FIFO, socket or directory where the log should be is a ConfigError, not a hang later.

    The handler opens the file lazily, at the first record: on a FIFO with no reader that open
    blocks forever, in the middle of `up` or `psql`. /dev/null (a character device) is fine.
    """
    try:
        mode = target.stat().st_mode
    except (OSError, ValueError):
        return  # missing (created later) or unreachable: the open reports or is suppressed
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode):
        return
    raise ConfigError(
        f"log file {target}: is {file_kind(mode)}, not a file",
        hint="point $TUNNELMAN_LOG at a file, or unset it",
    )


def get_logger(name: str) -> logging.Logger:
    """A child of the `tunnelman` logger; goes nowhere until `setup_file_logging` runs."""
    return logging.getLogger(name if name.startswith("tunnelman") else f"tunnelman.{name}")


# Until a file handler is installed, keep library logs off stderr.
for _name in LOGGER_NAMES:
    logging.getLogger(_name).addHandler(logging.NullHandler())
    logging.getLogger(_name).propagate = False
