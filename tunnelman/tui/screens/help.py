"""The `?` screen: every key, what it does, and where the files live."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

KEYS: tuple[tuple[str, str], ...] = (
    ("enter", "open or close the highlighted profile's tunnel (cancel while connecting)"),
    ("esc", "cancel a tunnel that is still connecting"),
    (
        "c",
        "show / hide the connection settings (psql, URI, pgAdmin, QGIS, ArcGIS, JDBC, SQLAlchemy)",
    ),
    ("y", "copy the shown setting to the clipboard (through the terminal, works over SSH)"),
    ("w", "write the shown setting into the client's file (pg_service, servers.json, QGIS XML)"),
    ("r", "refresh the cluster status (profiles with AWS settings)"),
    ("s", "start or stop the cluster (asks first)"),
    ("n / e", "new profile / edit the highlighted one"),
    ("x", "delete the highlighted profile (asks first)"),
    ("d", "discover clusters in AWS and import one as a profile"),
    ("p", "set the profile's database password in the OS keyring"),
    ("o", "run `tunnelman psql` for the profile in this terminal; back here when psql exits"),
    ("h", "show a failed tunnel's last error and its hint"),
    ("k", "check the profile step by step, as `tunnelman check` (the doctor)"),
    ("l", "event log: every tunnel's events, live (a: all / this profile, esc: back)"),
    ("/", "filter the list as you type (name, description, endpoint, group); esc clears"),
    ("S", "sort the list: by group (file order), by name, by state (open first)"),
    ("g", "fold / unfold the highlighted group (enter or space on its heading too)"),
    ("ctrl+p", "command palette: every action by name"),
    ("?", "this help"),
    ("q", "quit"),
)


class HelpScreen(ModalScreen[None]):
    """Keys and a few words on how tunnels live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, *, survives_quit: bool) -> None:
        super().__init__(classes="modal")
        self.survives_quit = survives_quit

    def compose(self) -> ComposeResult:
        keys = "\n".join(f"[b]{key:>7}[/b]  {what}" for key, what in KEYS)
        life = (
            "Tunnels are held by the background agent: they keep running after you quit "
            "(`tunnelman status`, `tunnelman down NAME`)."
            if self.survives_quit
            else "Tunnels live in this window: quitting closes them (you are asked first)."
        )
        with Vertical(classes="dialog", id="help-dialog"):
            yield Label("tunnelman — keys", classes="dialog-title")
            with VerticalScroll():
                yield Static(keys, markup=True, id="help-keys")
                yield Static(
                    "\nThe mouse works too: click a profile, click it again to open its tunnel; "
                    "the footer shows the keys used most, and ctrl+p's command palette finds "
                    "every action by name.\n\n" + life,
                    classes="dialog-body",
                )
            yield Button("Close", variant="primary", id="help-close")

    def on_button_pressed(self) -> None:
        self.dismiss(None)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
