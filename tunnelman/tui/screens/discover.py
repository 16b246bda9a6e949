"""`d`: find Aurora/RDS clusters and instances in AWS and import one as a profile.

Discovery runs in a thread worker (boto3 is imported there, not before); results come back as a
message. Pick a row, give a bastion (one found in AWS or typed), and the profile is saved with the
same comment-preserving writer as the form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from tunnelman.core import profiles as prof
from tunnelman.core.errors import ConfigError
from tunnelman.tui.messages import Discovered
from tunnelman.tui.screens.profile_form import field_of_error

if TYPE_CHECKING:
    from tunnelman.core.aws import BastionCandidate, Database, Discovery
    from tunnelman.tui.app import TunnelmanApp

LISTED_KINDS = ("cluster", "instance")
"""What can be imported as a profile (proxies are listed by `tunnelman discover`, not here)."""


def bastion_login(bastion: BastionCandidate, user: str = "ec2-user") -> str:
    host = bastion.public_dns or bastion.public_ip or bastion.private_ip or ""
    return f"{user}@{host}" if host else ""


def profile_values(
    db: Database, *, bastion: str, identity_file: str, local_port: str, aws_profile: str
) -> dict[str, Any]:
    """The TOML values of a profile made from one discovered cluster or instance."""
    endpoint = db.endpoint or ""
    if endpoint and db.port and db.port != prof.DEFAULT_DB_PORT:
        endpoint = f"{endpoint}:{db.port}"
    values: dict[str, Any] = {
        "description": f"{db.engine or 'postgres'} {db.kind} {db.id}".strip(),
        "bastion": bastion or None,
        "identity_file": identity_file or None,
        "endpoint": endpoint or None,
        "database": db.database or None,
        "user": db.master_user or None,
        "local_port": int(local_port) if local_port.isdigit() else (local_port or None),
        "cluster": db.id,
        "region": db.region,
        "aws_profile": aws_profile or None,
    }
    return values


class DiscoverScreen(ModalScreen[str | None]):
    """Dismissed with the name of the imported profile, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="modal")
        self.found: Discovery | None = None
        self.databases: list[Database] = []  # the rows: those that can become a profile
        self.bastions: list[BastionCandidate] = []

    @property
    def items(self) -> list[dict[str, Any]]:
        """Everything found, in the `discover --json` shape (databases, then bastions)."""
        return self.found.to_json() if self.found is not None else []

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
        self._search(self.tm, regions, aws_profile)

    @work(thread=True, group="discover", exclusive=True, exit_on_error=False)
    def _search(self, app: TunnelmanApp, regions: list[str], aws_profile: str | None) -> None:
        with app.reported("discover", "aws"):
            self.post_message(Discovered(app.aws.discover(regions, aws_profile=aws_profile)))

    @on(Discovered)
    def _discovered(self, message: Discovered) -> None:
        found = self.found = message.found
        self.databases = [d for d in found.databases if d.kind in LISTED_KINDS]
        self.bastions = list(found.bastions)
        table = self.query_one("#d-results", DataTable)
        table.clear()
        for index, db in enumerate(self.databases):
            table.add_row(
                db.kind,
                db.id,
                db.region,
                db.engine or "",
                db.engine_mode or "",
                db.status or "",
                db.endpoint or "",
                key=str(index),
            )
        options = [
            (f"{b.name or b.id}  {bastion_login(b)}", bastion_login(b))
            for b in self.bastions
            if bastion_login(b)
        ]
        self.query_one("#d-bastion-pick", Select).set_options(options)
        self.query_one("#d-status", Static).update(
            f"{len(self.databases)} databases, {len(self.bastions)} bastions found."
        )
        if self.databases:
            table.focus()

    @on(Select.Changed, "#d-bastion-pick")
    def _picked(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.query_one("#d-bastion", Input).value = event.value

    @on(DataTable.RowHighlighted, "#d-results")
    def _row(self, event: DataTable.RowHighlighted) -> None:
        db = self._selected()
        name_input = self.query_one("#d-name", Input)
        if db is not None and not name_input.value:
            name_input.placeholder = db.id

    def _selected(self) -> Database | None:
        table = self.query_one("#d-results", DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.databases[int(key.value or 0)]

    @on(Button.Pressed, "#d-import")
    def import_selected(self) -> None:
        error = self.query_one("#d-error", Static)
        db = self._selected()
        if db is None:
            error.update("Search first, then pick a cluster or instance.")
            return
        name = self.query_one("#d-name", Input).value.strip() or db.id
        values = profile_values(
            db,
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
