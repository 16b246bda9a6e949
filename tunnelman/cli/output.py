"""The only place that prints: plain lines, errors, JSON, tables.

Commands call these instead of `print` so that output stays testable and a ruff rule can ban
`print` everywhere else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from tunnelman.cli.lean import ensure_encodable_streams

__all__ = ["ensure_encodable_streams"]  # re-exported: the lean entry point owns it (no click)


def out(text: str = "") -> None:
    """A line to stdout."""
    click.echo(text)


def err(text: str) -> None:
    """A line to stderr."""
    click.echo(text, err=True)


def error_line(message: str) -> None:
    """The one line a failing command prints."""
    click.echo(f"tunnelman: error: {message}", err=True)


def progress(text: str) -> None:
    """A status line for long waits, to stderr so stdout stays clean for scripts."""
    click.echo(text, err=True)


def json_out(data: Any) -> None:
    """Pretty JSON to stdout, keys in insertion order, non-ASCII kept."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def json_line(data: Any) -> None:
    """Compact JSON on one stdout line, flushed at once (a script may read it while we run)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 100) -> None:
    """A plain, aligned table that fits `max_width` by trimming the widest column."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    gap = 2
    while sum(widths) + gap * (len(widths) - 1) > max_width and max(widths) > 8:
        widest = widths.index(max(widths))
        widths[widest] -= 1

    def fit(text: str, width: int) -> str:
        return text if len(text) <= width else text[: max(width - 1, 0)] + "…"

    def line(values: Sequence[str]) -> str:
        return "  ".join(fit(v, w).ljust(w) for v, w in zip(values, widths, strict=False)).rstrip()

    out(line(list(headers)))
    out(line(["-" * w for w in widths]))
    for row in cells:
        out(line(row))
