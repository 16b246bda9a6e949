"""`d`: find Aurora/RDS clusters and instances in AWS and import one as a profile.

Discovery runs in a thread worker (boto3 is imported there, not before); results come back as a
message. Pick a row, give a bastion (one found in AWS or typed), and the profile is saved with the
same comment-preserving writer as the form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError
from tunnelman.tui import services
from tunnelman.tui.screens.profile_form import field_of_error

if TYPE_CHECKING:
    from tunnelman.tui.app import TunnelmanApp


class Discovered(Message):
    """Discovery results (clusters, instances, bastions) as plain dicts."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__()
        self.items = items


def bastion_login(item: dict[str, Any], user: str = "ec2-user") -> str:
    host = item.get("public_dns") or item.get("public_ip") or item.get("private_ip") or ""
    return f"{user}@{host}" if host else ""


def profile_values(
    item: dict[str, Any], *, bastion: str, identity_file: str, local_port: str, aws_profile: str
) -> dict[str, Any]:
    """The TOML values of a profile made from one discovered cluster or instance."""
    endpoint = str(item.get("endpoint") or "")
    port = item.get("port")
    if endpoint and port and int(port) != prof.DEFAULT_DB_PORT:
        endpoint = f"{endpoint}:{port}"
    values: dict[str, Any] = {
        "description": f"{item.get('engine') or 'postgres'} {item.get('kind', '')} {item.get('id')}".strip(),
        "bastion": bastion or None,
        "identity_file": identity_file or None,
        "endpoint": endpoint or None,
        "database": item.get("database") or item.get("database_name") or None,
        "user": item.get("master_user") or item.get("master_username") or None,
        "local_port": int(local_port) if local_port.isdigit() else (local_port or None),
        "cluster": item.get("id"),
        "region": item.get("region"),
        "aws_profile": aws_profile or None,
    }
    return values


class DiscoverScreen(ModalScreen[str | None]):
    """Dismissed with the name of the imported profile, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="modal")
        self.items: list[dict[str, Any]] = []

    @property
    def tm(self) -> TunnelmanApp:
        return cast("TunnelmanApp", self.app)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="discover-dialog"):
            yield Label("Discover clusters in AWS", classes="dialog-title")
            with Horizontal(classes="form-row"):
                yield Label("regions", classes="form-label")
                yield Input(
                    placeholder="us-east-2, eu-west-1 (empty: your default)",
                    id="d-regions",
                    compact=True,
                )
            with Horizontal(classes="form-row"):
                yield Label("AWS profile", classes="form-label")
                yield Input(placeholder="(default credentials)", id="d-aws-profile", compact=True)
            with Horizontal(classes="button-row"):
                yield Button("Search", variant="primary", id="d-search", compact=True)
            yield Static("", id="d-status")
            table: DataTable[str] = DataTable(id="d-results", cursor_type="row")
            yield table
            with Horizontal(classes="form-row"):
                yield Label("bastion", classes="form-label")
                yield Select[str]([], prompt="(bastions found)", id="d-bastion-pick", compact=True)
                yield Input(placeholder="[user@]host[:port]", id="d-bastion", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("identity file", classes="form-label")
                yield Input(
                    placeholder="~/.ssh/key.pem (empty: ssh-agent)", id="d-identity", compact=True
                )
            with Horizontal(classes="form-row"):
                yield Label("name", classes="form-label")
                yield Input(
                    placeholder="profile name (default: the cluster id)", id="d-name", compact=True
                )
                yield Label("local port", classes="form-label")
                yield Input(placeholder="5433", id="d-port", compact=True)
            yield Static("", id="d-error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Import as profile", variant="primary", id="d-import")
                yield Button("Close", id="d-close")

    def on_mount(self) -> None:
        table = self.query_one("#d-results", DataTable)
        for key, label in (
            ("kind", "Kind"),
            ("id", "Id"),
            ("region", "Region"),
            ("engine", "Engine"),
            ("mode", "Mode"),
            ("status", "Status"),
            ("endpoint", "Endpoint"),
        ):
            table.add_column(label, key=key)
        self.query_one("#d-regions", Input).focus()

    @on(Button.Pressed, "#d-search")
    @on(Input.Submitted, "#d-regions, #d-aws-profile")
    def search(self) -> None:
        regions = [
            r.strip() for r in self.query_one("#d-regions", Input).value.replace(",", " ").split()
        ]
        aws_profile = self.query_one("#d-aws-profile", Input).value.strip() or None
        self.query_one("#d-status", Static).update("asking AWS…")
        app = self.tm

        def run() -> None:
            self.post_message(Discovered(services.discover(app.aws, regions, aws_profile)))

        app._work("discover", "aws", run)

    @on(Discovered)
    def _discovered(self, message: Discovered) -> None:
        self.items = message.items
        table = self.query_one("#d-results", DataTable)
        table.clear()
        dbs = [i for i in self.items if i.get("kind") in ("cluster", "instance")]
        bastions = [i for i in self.items if i.get("kind") == "bastion"]
        for index, item in enumerate(dbs):
            table.add_row(
                str(item.get("kind", "")),
                str(item.get("id", "")),
                str(item.get("region", "")),
                str(item.get("engine", "") or ""),
                str(item.get("engine_mode", "") or ""),
                str(item.get("status", "") or ""),
                str(item.get("endpoint", "") or ""),
                key=str(index),
            )
        options = [
            (f"{b.get('name') or b.get('id')}  {bastion_login(b)}", bastion_login(b))
            for b in bastions
            if bastion_login(b)
        ]
        self.query_one("#d-bastion-pick", Select).set_options(options)
        self.query_one("#d-status", Static).update(
            f"{len(dbs)} databases, {len(bastions)} bastions found."
        )
        self._dbs = dbs
        if dbs:
            table.focus()

    @on(Select.Changed, "#d-bastion-pick")
    def _picked(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.query_one("#d-bastion", Input).value = event.value

    @on(DataTable.RowHighlighted, "#d-results")
    def _row(self, event: DataTable.RowHighlighted) -> None:
        item = self._selected()
        name_input = self.query_one("#d-name", Input)
        if item is not None and not name_input.value:
            name_input.placeholder = str(item.get("id", ""))

    def _selected(self) -> dict[str, Any] | None:
        table = self.query_one("#d-results", DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        dbs: list[dict[str, Any]] = getattr(self, "_dbs", [])
        return dbs[int(key.value or 0)]

    @on(Button.Pressed, "#d-import")
    def import_selected(self) -> None:
        error = self.query_one("#d-error", Static)
        item = self._selected()
        if item is None:
            error.update("Search first, then pick a cluster or instance.")
            return
        name = self.query_one("#d-name", Input).value.strip() or str(item.get("id", ""))
        values = profile_values(
            item,
            bastion=self.query_one("#d-bastion", Input).value.strip(),
            identity_file=self.query_one("#d-identity", Input).value.strip(),
            local_port=self.query_one("#d-port", Input).value.strip(),
            aws_profile=self.query_one("#d-aws-profile", Input).value.strip(),
        )
        try:
            prof.save_profile(self.tm.config_path, name, values)
        except ConfigError as exc:
            key, reason = field_of_error(str(exc))
            error.update(f"{key}: {reason}" if key else reason)
            return
        self.dismiss(name)

    @on(Button.Pressed, "#d-close")
    def action_cancel(self) -> None:
        self.dismiss(None)
