"""Small modal questions: confirm, trust an unknown host key, a changed host key, a secret.

Each is a `ModalScreen[T]` dismissed with its answer; the app pushes them with a callback, or from a
worker thread through `TunnelmanApp.ask_from_thread` (which blocks only that worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from tunnelman.core.ssh.known_hosts import HostKeyInfo, KnownKey


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no, with the risky choice on a button that says what it does."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "answer(False)", "Cancel"),
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "Cancel") -> None:
        super().__init__(classes="modal")
        self._title = title
        self._body = body
        self._yes = yes
        self._no = no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._body, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self._yes, variant="warning", id="yes")
                yield Button(self._no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class HostKeyScreen(ModalScreen[bool]):
    """The bastion's host key is not in known_hosts yet: show it, accept or reject."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "reject", "Reject")]

    def __init__(self, question: HostKeyInfo, known_hosts: Path | None = None) -> None:
        super().__init__(classes="modal")
        self.question = question
        self.known_hosts = known_hosts

    def compose(self) -> ComposeResult:
        q = self.question
        where = q.host if q.port == 22 else f"[{q.host}]:{q.port}"
        with Vertical(classes="dialog", id="hostkey-dialog"):
            yield Label("Unknown host key", classes="dialog-title")
            yield Static(
                f"The authenticity of the bastion [b]{where}[/b] can't be established.\n\n"
                f"  key type     {q.display_type}\n"
                f"  fingerprint  [b]{q.fingerprint}[/b]\n\n"
                "Compare the fingerprint with one you got from the bastion's owner "
                "(or the EC2 console log). Accepting records it in "
                f"{self.known_hosts or 'known_hosts'}.",
                classes="dialog-body",
                markup=True,
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Accept and connect", variant="warning", id="accept")
                yield Button("Reject", variant="primary", id="reject")

    def on_mount(self) -> None:
        self.query_one("#reject", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "accept")

    def action_reject(self) -> None:
        self.dismiss(False)


class HostKeyChangedScreen(ModalScreen[None]):
    """The bastion's host key differs from known_hosts: refuse, show both keys and the line.

    With `known` (a key of a type known_hosts has none of for this host), every recorded key is
    listed: that is a refusal too, as in OpenSSH, not the "unknown host" question.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(
        self,
        question: HostKeyInfo,
        *,
        expected: str,
        known_hosts: Path | None,
        line: int | None,
        known: Sequence[KnownKey] | None = None,
    ) -> None:
        super().__init__(classes="modal")
        self.question = question
        self.expected = expected
        self.known_hosts = known_hosts
        self.line = line
        self.known = tuple(known or ())

    def compose(self) -> ComposeResult:
        q = self.question
        where = q.host if q.port == 22 else f"[{q.host}]:{q.port}"
        location = f"{self.known_hosts}:{self.line}" if self.line else str(self.known_hosts)
        with Vertical(classes="dialog error-dialog", id="hostkey-changed-dialog"):
            if self.known:
                yield Label("HOST KEY OF ANOTHER TYPE — connection refused", classes="dialog-title")
                recorded = "\n".join(
                    f"  recorded  [b]{k.display_type} {k.fingerprint}[/b]  "
                    f"({self.known_hosts}:{k.line})"
                    for k in self.known
                )
                yield Static(
                    f"The bastion [b]{where}[/b] presented a {q.display_type} key, but "
                    "known_hosts holds only keys of another type for it. A new key type is not a new host: "
                    "someone may be intercepting the connection.\n\n"
                    f"  received  [b $error]{q.display_type} {q.fingerprint}[/]\n{recorded}\n\n"
                    "Ask the bastion's administrator. If its keys really changed, remove the old "
                    f"entries (`ssh-keygen -R {where} -f {self.known_hosts}`) and connect again.",
                    classes="dialog-body",
                    markup=True,
                )
                with Horizontal(classes="dialog-buttons"):
                    yield Button("Close", variant="primary", id="close")
                return
            yield Label("HOST KEY CHANGED — connection refused", classes="dialog-title")
            yield Static(
                f"The bastion [b]{where}[/b] presented a different {q.display_type} key than "
                "the one recorded for it. Someone may be intercepting the connection, or the bastion was "
                "rebuilt.\n\n"
                f"  expected  [b]{self.expected}[/b]\n"
                f"  received  [b $error]{q.fingerprint}[/]\n"
                f"  recorded  {location}\n\n"
                "If the change is expected, remove that line "
                f"(`ssh-keygen -R {where} -f {self.known_hosts}`) and connect again.",
                classes="dialog-body",
                markup=True,
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    @on(Button.Pressed)
    def _pressed(self) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class SecretScreen(ModalScreen[str | None]):
    """A masked prompt (key passphrase, database password); optionally asks twice."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, prompt: str, *, confirm: bool = False) -> None:
        super().__init__(classes="modal")
        self._title = title
        self._prompt = prompt
        self._confirm = confirm

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="secret-dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._prompt, classes="dialog-body")
            yield Input(password=True, id="secret", placeholder="hidden")
            if self._confirm:
                yield Input(password=True, id="secret2", placeholder="again, to confirm")
            yield Label("", id="secret-error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#secret", Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if self._confirm and event.input.id == "secret":
            self.query_one("#secret2", Input).focus()
            return
        self._ok()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        value = self.query_one("#secret", Input).value
        error = self.query_one("#secret-error", Label)
        if not value:
            error.update("Type it, or press Cancel.")
            return
        if self._confirm and value != self.query_one("#secret2", Input).value:
            error.update("The two entries differ.")
            return
        self.dismiss(value)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
