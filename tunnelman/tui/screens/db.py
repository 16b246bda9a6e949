"""The database operations' modals: the form (with its dry run), the typed-name confirmation of a
drop, and the result screen that follows a run.

Opened by `tunnelman.tui.actions.db` (the palette's "Database: …" commands), whose thread worker
posts `DbLine` / `DbDone` to the form (a dry run) or the result screen (a run). Nothing here
blocks or connects. The new role's password is a masked input; a generated one reaches only the
result screen's "secret" line, shown once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from tunnelman.core.profiles import Profile, printable

if TYPE_CHECKING:
    from tunnelman.core.credentials import Login
    from tunnelman.core.errors import TunnelmanError
    from tunnelman.tui.actions.db import DbOp, DbRequest, Field, Kind

_LABELS: dict[str, tuple[str, str]] = {
    "role": ("role", "e.g. app1"),
    "password": ("password", "empty: generate one (shown once)"),
    "password2": ("again", "the password again, to confirm"),
    "db": ("database", "e.g. appdb"),
    "owner": ("owner", "the role that will own it"),
    "extensions": ("extensions", "e.g. postgis, hstore (created as master)"),
    "file": ("file", "e.g. ~/appdb.dump (custom format)"),
}
"""(label, placeholder) of each form field."""


class DbLine(Message):
    """A step of a running operation (posted from the worker thread)."""

    def __init__(self, text: str, kind: Kind) -> None:
        super().__init__()
        self.text = text
        self.kind = kind


class DbDone(Message):
    """The operation ended: `summary` when it worked, else `error`; `plan` is a dry run's text."""

    def __init__(self, summary: str | None, error: TunnelmanError | None, plan: list[str]) -> None:
        super().__init__()
        self.summary = summary
        self.error = error
        self.plan = plan


def describe(error: TunnelmanError) -> str:
    """The error's message, and its hint on a line of its own."""
    return error.message + (f"\nfix: {error.hint}" if error.hint else "")


class DbFormScreen(ModalScreen["DbRequest | None"]):
    """The fields of one operation; Dry run shows the plan here, Run dismisses with the request
    (after the typed-name confirmation for a drop)."""

    DEFAULT_CSS = """
    DbFormScreen #db-dialog {
        width: 100;
    }
    DbFormScreen #db-plan-box {
        height: auto;
        max-height: 16;
        background: $boost;
        padding: 0 1;
        margin-top: 1;
    }
    DbFormScreen .db-error-text {
        color: $error;
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+t", "dry_run", "Dry run"),
    ]

    def __init__(
        self,
        op: DbOp,
        profile: Profile,
        *,
        dry_run: Callable[[DbRequest, DbFormScreen], None] | None = None,
    ) -> None:
        super().__init__(classes="modal")
        self.op = op
        self.profile = profile
        self.login: Login | None = None  # asked for by a dry run from this form (prompt)
        self._dry_run = dry_run
        self.busy = False
        self.plan: list[str] = []

    def _fields(self) -> list[str]:
        names: list[str] = list(self.op.fields)
        if "password" in names:
            names.insert(names.index("password") + 1, "password2")
        return names

    def compose(self) -> ComposeResult:
        p = self.profile
        title = self.op.title.removeprefix("Database: ").rstrip("…").capitalize()
        with Vertical(classes="dialog", id="db-dialog"):
            yield Label(f"{title} — '{printable(p.name)}'", classes="dialog-title")
            yield Static(
                f"{self.op.help}.\nThrough the profile's tunnel as {printable(p.user)} "
                f"(connects to {printable(p.database)}).",
                classes="dialog-body",
                markup=False,
            )
            for name in self._fields():
                label, placeholder = _LABELS[name]
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(
                        placeholder=placeholder,
                        id=f"db-{name}",
                        password=name.startswith("password"),
                        compact=True,
                    )
            yield Static("", id="db-error", classes="db-error-text", markup=False)
            with VerticalScroll(id="db-plan-box"):
                yield Static("", id="db-plan", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Dry run (ctrl+t)", id="dry-run")
                yield Button(
                    "Drop…" if self.op.drops else "Run",
                    variant="error" if self.op.drops else "primary",
                    id="run",
                )
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#db-error").display = False
        self.query_one("#db-plan-box").display = False
        self.query_one(f"#db-{self._fields()[0]}", Input).focus()

    # ------------------------------------------------------------------ reading the form

    def value(self, name: str) -> str:
        return self.query_one(f"#db-{name}", Input).value

    def request(self) -> DbRequest | None:
        """The request the form holds, or None after showing what is wrong under the fields."""
        from tunnelman.tui.actions.db import DbRequest, check_request

        fields = self.op.fields
        get = {n: self.value(n).strip() for n in fields if n != "password"}
        extensions = tuple(e.strip() for e in get.get("extensions", "").split(",") if e.strip())
        password = self.value("password") if "password" in fields else ""
        req = DbRequest(
            op=self.op,
            profile=self.profile.name,
            role=get.get("role", ""),
            password=password,
            db=get.get("db", ""),
            owner=get.get("owner", ""),
            extensions=extensions,
            file=get.get("file", ""),
            login=self.login,
        )
        bad = check_request(req, self.profile)
        if bad is None and password and password != self.value("password2"):
            bad = ("password", "the two passwords differ")
        if bad is not None:
            self.show_error(*bad)
            return None
        self.show_error(None, "")
        return req

    def show_error(self, name: Field | None, text: str) -> None:
        for widget in self.query(".-invalid-field"):
            widget.remove_class("-invalid-field")
        error = self.query_one("#db-error", Static)
        error.update(f"{_LABELS[name][0]}: {text}" if name else text)
        error.display = bool(text)
        if name is not None:
            field = self.query_one(f"#db-{name}", Input)
            field.add_class("-invalid-field")
            field.focus()

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        for button in self.query(Button):
            if button.id != "cancel":
                button.disabled = busy

    # ------------------------------------------------------------------ buttons

    @on(Button.Pressed, "#dry-run")
    def action_dry_run(self) -> None:
        if self.busy or self._dry_run is None:
            return
        req = self.request()
        if req is None:
            return
        self._set_busy(True)
        self._show_plan("… connecting to look (nothing is changed)")
        self._dry_run(req, self)

    def _show_plan(self, text: str) -> None:
        self.query_one("#db-plan", Static).update(text)
        self.query_one("#db-plan-box").display = True

    def on_db_line(self, message: DbLine) -> None:
        message.stop()  # a dry run has no steps to show

    def on_db_done(self, message: DbDone) -> None:
        self._set_busy(False)
        if message.error is not None:
            self.plan = []
            self._show_plan("")
            self.query_one("#db-plan-box").display = False
            self.show_error(None, describe(message.error))
            return
        self.plan = message.plan
        lines = ["-- dry run: nothing below was run", *message.plan] if message.plan else []
        lines.append(f"-- {message.summary}" if message.summary else "")
        self._show_plan("\n".join(lines).rstrip())

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        names = self._fields()
        index = names.index(str(event.input.id).removeprefix("db-"))
        if index + 1 < len(names):
            self.query_one(f"#db-{names[index + 1]}", Input).focus()
        else:
            self._run()

    @on(Button.Pressed, "#run")
    def _run(self) -> None:
        if self.busy:
            return
        req = self.request()
        if req is None:
            return
        if not self.op.drops:
            self.dismiss(req)
            return
        what = "database" if self.op.drops == "db" else "role"

        def answered(yes: bool | None) -> None:
            if yes:
                self.dismiss(req)

        self.app.push_screen(
            TypedConfirmScreen(
                f"Drop {what} {req.target}",
                f"Drop {what} {req.target!r} through '{self.profile.name}'? This cannot be undone."
                + (
                    " Its owner is set back to the profile's user first; sessions still "
                    "connected to it make the drop fail."
                    if what == "database"
                    else " Its privileges are revoked in every database first; a role that "
                    "still owns something is refused."
                ),
                req.target,
                yes=f"Drop {what}",
            ),
            answered,
        )

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class TypedConfirmScreen(ModalScreen[bool]):
    """A drop's confirmation: the button works only once the name is typed exactly (as GitHub's)."""

    DEFAULT_CSS = """
    TypedConfirmScreen #typed {
        margin-top: 1;
        background: $boost;
    }
    TypedConfirmScreen .db-error-text {
        color: $error;
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, body: str, expected: str, *, yes: str = "Drop") -> None:
        super().__init__(classes="modal")
        self._title = title
        self._body = body
        self.expected = expected
        self._yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog", id="typed-dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._body, classes="dialog-body", markup=False)
            yield Static(f"Type {self.expected} to confirm:", markup=False)
            yield Input(placeholder=self.expected, id="typed", compact=True)
            yield Static("", id="typed-error", classes="db-error-text", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self._yes, variant="error", id="yes", disabled=True)
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        self.query_one("#typed-error").display = False
        self.query_one("#typed", Input).focus()

    @on(Input.Changed, "#typed")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#yes", Button).disabled = event.value != self.expected
        self.query_one("#typed-error").display = False

    @on(Input.Submitted, "#typed")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value == self.expected:
            self.dismiss(True)
            return
        error = self.query_one("#typed-error", Static)
        error.update(f"That is not {self.expected}: nothing is dropped.")
        error.display = True

    @on(Button.Pressed, "#yes")
    def _yes_pressed(self) -> None:
        if self.query_one("#typed", Input).value == self.expected:
            self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_cancel(self) -> None:
        self.dismiss(False)


_CLASSES: dict[str, str] = {
    "ok": "db-ok",
    "fail": "db-fail",
    "progress": "db-progress",
    "note": "db-note",
    "secret": "db-secret",
    "step": "db-step",
}


class DbResultScreen(ModalScreen[None]):
    """A run of one operation: its steps as they come, then the summary or the error."""

    DEFAULT_CSS = """
    DbResultScreen #db-result-dialog {
        width: 110;
    }
    DbResultScreen #db-lines {
        height: auto;
        max-height: 24;
    }
    DbResultScreen .db-ok {
        color: $success;
    }
    DbResultScreen .db-fail {
        color: $error;
    }
    DbResultScreen .db-progress, DbResultScreen .db-note {
        color: $text-muted;
    }
    DbResultScreen .db-secret {
        color: $warning;
        text-style: bold;
    }
    DbResultScreen #db-status {
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, req: DbRequest) -> None:
        super().__init__(classes="modal")
        self.req = req
        self.lines: list[str] = []
        self.finished = False
        self.error: TunnelmanError | None = None
        self.summary: str | None = None

    @property
    def ok(self) -> bool:
        return self.finished and self.error is None

    def compose(self) -> ComposeResult:
        title = self.req.op.title.removeprefix("Database: ").rstrip("…").capitalize()
        with Vertical(classes="dialog", id="db-result-dialog"):
            yield Label(f"{title} — '{printable(self.req.profile)}'", classes="dialog-title")
            yield VerticalScroll(id="db-lines")
            yield Static("… running", id="db-status", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_db_line(self, message: DbLine) -> None:
        box = self.query_one("#db-lines", VerticalScroll)
        if message.kind == "progress":
            self._status(f"… {message.text}")
        # A generated password is shown once and kept nowhere (not in `lines`, not in a log).
        if message.kind != "secret":
            self.lines.append(message.text)
        box.mount(Static(message.text, classes=_CLASSES[message.kind], markup=False))
        box.scroll_end(animate=False)

    def on_db_done(self, message: DbDone) -> None:
        self.finished = True
        self.error, self.summary = message.error, message.summary
        status = self.query_one("#db-status", Static)
        if message.error is not None:
            status.update(f"✗ {describe(message.error)}")
            status.add_class("db-fail")
            self.query_one("#db-result-dialog").add_class("error-dialog")
        else:
            status.update(f"✓ {message.summary}")
            status.add_class("db-ok")

    def _status(self, text: str) -> None:
        self.query_one("#db-status", Static).update(text)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)
