"""New / edit profile: a form validated by the same rules as loading, saved with comments kept.

Saving calls `profiles.save_profile` (tomlkit, atomic). Its `ConfigError` names the dotted key;
the form shows the reason under that field. Keys the form does not show are kept as they were.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, get_args

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError

FIELDS: tuple[tuple[str, str, str], ...] = (
    ("name", "name", "letters, digits, - _ ."),
    ("description", "description", "what this database is"),
    ("group", "group", "a heading of the list: prod, staging, a client… (empty: none)"),
    ("bastion", "bastion", "[user@]host[:port]"),
    ("identity_file", "identity file", "~/.ssh/key.pem (empty: ssh-agent)"),
    ("known_hosts", "known_hosts", "~/.ssh/known_hosts"),
    ("endpoint", "endpoint", "host[:port] of the database, as the bastion sees it"),
    ("database", "database", "postgres"),
    ("user", "user", "postgres"),
    ("local_port", "local port", "e.g. 5433 (empty: any free port)"),
    ("password", "password", ""),
    ("sslmode", "sslmode", ""),
    ("sslrootcert", "sslrootcert", "~/.postgresql/rds-global-bundle.pem"),
    ("cluster", "cluster", "RDS cluster or instance id (for status/start/stop)"),
    ("region", "region", "us-east-2"),
    ("aws_profile", "AWS profile", "a profile in ~/.aws/config"),
)
"""(key, label, placeholder) in form order."""

SELECTS: dict[str, tuple[str, ...]] = {
    "password": get_args(prof.PasswordSource),
    "sslmode": get_args(prof.SSLMode),
}

_KEY_IN_MESSAGE = re.compile(r"profiles\.[^.:\s]+\.([a-z_]+): (.*)$", re.DOTALL)


def raw_table(path: Path, name: str) -> dict[str, Any]:
    """The profile's own TOML values (not merged with [defaults])."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    table = data.get("profiles", {}).get(name, {})
    return dict(table) if isinstance(table, dict) else {}


def field_of_error(message: str) -> tuple[str | None, str]:
    """Which form field a ConfigError is about, and the reason to show under it."""
    match = _KEY_IN_MESSAGE.search(message)
    if match:
        return match.group(1), match.group(2)
    if "profile name" in message or "a profile of that name exists" in message:
        return "name", message.split(": ", 1)[-1] if ": " in message else message
    return None, message


class ProfileFormScreen(ModalScreen[str | None]):
    """Dismissed with the saved profile's name, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, config_path: Path, name: str | None = None) -> None:
        super().__init__(classes="modal")
        self.config_path = config_path
        self.original = name
        self.raw: dict[str, Any] = raw_table(config_path, name) if name else {}

    def compose(self) -> ComposeResult:
        title = f"Edit profile '{self.original}'" if self.original else "New profile"
        with Vertical(classes="dialog", id="form-dialog"):
            yield Label(title, classes="dialog-title")
            with VerticalScroll(id="form-fields"):
                for key, label, placeholder in FIELDS:
                    with Horizontal(classes="form-row"):
                        yield Label(label, classes="form-label")
                        if key in SELECTS:
                            current = self.raw.get(key)
                            yield Select(
                                [(v, v) for v in SELECTS[key]],
                                value=current if current in SELECTS[key] else Select.NULL,
                                prompt="(default)",
                                allow_blank=True,
                                id=f"f-{key}",
                                compact=True,
                            )
                        else:
                            value = self.original if key == "name" else self.raw.get(key)
                            yield Input(
                                "" if value is None else str(value),
                                placeholder=placeholder,
                                id=f"f-{key}",
                                compact=True,
                            )
                    yield Label("", id=f"err-{key}", classes="field-error")
            yield Static("", id="form-error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        for err in self.query(".field-error"):
            err.display = False
        self.query_one("#f-name" if not self.original else "#f-description").focus()

    def values(self) -> tuple[str, dict[str, Any]]:
        """The name and the raw TOML values the form holds (None: key absent)."""
        shown = {key for key, _, _ in FIELDS}
        out: dict[str, Any] = {k: v for k, v in self.raw.items() if k not in shown}
        name = ""
        for key, _, _ in FIELDS:
            widget = self.query_one(f"#f-{key}")
            if isinstance(widget, Select):
                value: Any = None if widget.is_blank() else widget.value
            else:
                assert isinstance(widget, Input)
                value = widget.value.strip() or None
            if key == "name":
                name = value or ""
                continue
            if key == "local_port" and value is not None:
                value = int(value) if value.isdigit() else value
            out[key] = value
        return name, out

    def show_error(self, key: str | None, reason: str) -> None:
        for err in self.query(".field-error"):
            err.display = False
        for widget in self.query(".-invalid-field"):
            widget.remove_class("-invalid-field")
        if key is not None and self.query(f"#err-{key}"):
            label = self.query_one(f"#err-{key}", Label)
            label.update(f"{key}: {reason}")
            label.display = True
            field = self.query_one(f"#f-{key}")
            field.add_class("-invalid-field")
            field.focus()
            return
        general = self.query_one("#form-error", Static)
        general.update(reason)
        general.display = True

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        name, values = self.values()
        if not name:
            self.show_error("name", "a profile needs a name")
            return
        port = values.get("local_port")
        if port is not None and not isinstance(port, int):
            self.show_error("local_port", f"must be a port number 1-65535, not '{port}'")
            return
        renamed = self.original is not None and name != self.original
        try:
            prof.save_profile(
                self.config_path, name, values, overwrite=self.original is not None and not renamed
            )
            if renamed and self.original is not None:
                prof.delete_profile(self.config_path, self.original)
        except ConfigError as exc:
            key, reason = field_of_error(str(exc))
            self.show_error(key, reason)
            return
        self.dismiss(name)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
