"""`tunnelman query PROFILE "SQL" [--json|--csv]`: one statement through the RDS Data API, no
bastion and no tunnel. A thin command over `tunnelman.core.aws.execute`; this module only formats
the rows: an aligned table like psql's, a JSON list of row objects, or CSV with a header."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import click

from tunnelman.cli.common import load_profile
from tunnelman.cli.output import json_out, out
from tunnelman.core import profiles as prof


@click.command("query")
@click.argument("name")
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of row objects (NULL: null).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row (NULL: empty).")
@click.pass_context
def query_cmd(ctx: click.Context, name: str, sql: str, as_json: bool, as_csv: bool) -> None:
    """Run one SQL statement on profile NAME's Aurora cluster through the RDS Data API.

    No bastion and no tunnel: the statement goes over HTTPS to AWS, logging in with the profile's
    `secret` (or the cluster's RDS-managed master secret). The cluster's HTTP endpoint (Data API)
    must be enabled. SQL "-" reads the statement from stdin.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be used together")
    if sql == "-":
        sql = sys.stdin.read()
    profile = load_profile(ctx, name)
    from tunnelman.core import aws  # boto3 only for this command

    result = aws.execute(profile, sql)
    if as_json:
        json_out(result.to_json())
    elif as_csv:
        _csv(result.columns, result.rows)
    else:
        _table(result.columns, result.rows, result.updated)


def _csv(columns: tuple[str, ...], rows: tuple[tuple[Any, ...], ...]) -> None:
    if not columns:
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_csv_cell(v) for v in row] for row in rows])
    sys.stdout.write(buffer.getvalue())
    sys.stdout.flush()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"  # as psql and COPY write booleans
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, list):
        return "{" + ",".join(_cell(v) for v in value) + "}"
    # Rows come from the database: an escape sequence in them must not reach the terminal.
    return prof.printable(str(value))


def _table(
    columns: tuple[str, ...], rows: tuple[tuple[Any, ...], ...], updated: int | None
) -> None:
    if not columns:
        count = updated or 0
        out(f"OK, {count} row{'' if count == 1 else 's'} affected")
        return
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]
    heads = [prof.printable(c) for c in columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(heads)]
    out(" " + " | ".join(h.center(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    out("-" + "-+-".join("-" * w for w in widths) + "-")
    for row in cells:
        line = " | ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        )
        out(" " + line.rstrip())
    out(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
