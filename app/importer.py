"""`stockwire import skus|events FILE.csv`: bulk loads for operators, with a progress bar.

Idempotent: SKUs are upserted by code, and every event row gets a stable externalId (its `external_id`
column, else `<file name>:<row number>`), so a second run records nothing twice (DUPLICATE). Resumable:
after each batch the number of rows done is written beside the file (`FILE.csv.progress`); an
interrupted run starts again after the last finished batch. Every refused row is reported with its
row number (as a spreadsheet counts: the header is row 1), code and message; the others go in.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import typer

from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import EventStatus, EventType, InventoryEvent
from app.services import catalog, events
from app.services.context import Ctx
from app.settings import Settings

import_cli = typer.Typer(help="Bulk imports from CSV files (SKUs, inventory events).", no_args_is_help=True)

BATCH = 500


@dataclass(frozen=True, slots=True)
class RefusedRow:
    row: int
    code: str
    message: str


@dataclass
class ImportReport:
    rows: int = 0
    skipped: int = 0  # done by an earlier, interrupted run (resumed past them)
    applied: int = 0
    duplicates: int = 0
    refused: list[RefusedRow] = field(default_factory=list)


# ---- reading ------------------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            yield number, {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}


def count_rows(path: Path) -> int:
    return sum(1 for _ in _rows(path))


class _Bad(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _required(row: dict[str, str], name: str) -> str:
    value = row.get(name, "")
    if not value:
        raise _Bad(ErrorCode.INVALID_INPUT, f"{name} is empty")
    return value


def _when(row: dict[str, str], name: str) -> datetime | None:
    text = row.get(name, "")
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _Bad(ErrorCode.INVALID_INPUT, f"{name} is not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise _Bad(ErrorCode.INVALID_INPUT, f"{name} needs a timezone offset: {text!r}")
    return value


def event_of(path: Path, number: int, row: dict[str, str], default_source: str | None) -> InventoryEvent:
    """One CSV row as an event; raises _Bad for a row that cannot even be read as one."""
    kind = _required(row, "type").upper()
    if kind not in EventType.__members__:
        raise _Bad(ErrorCode.INVALID_INPUT, f"type {kind!r} is not an event type")
    try:
        quantity = int(_required(row, "quantity"))
    except ValueError:
        raise _Bad(ErrorCode.INVALID_QUANTITY, f"quantity {row['quantity']!r} is not a whole number") from None
    source = row.get("source") or default_source
    if not source:
        raise _Bad(ErrorCode.INVALID_INPUT, "source is empty (add a source column or pass --source)")
    occurred_at = _when(row, "occurred_at")
    if occurred_at is None:
        raise _Bad(ErrorCode.INVALID_INPUT, "occurred_at is empty")
    return InventoryEvent(
        source=source,
        # the file's name and the row: the same row imported again is the same event
        external_id=row.get("external_id") or f"{path.name}:{number}",
        type=EventType[kind],
        sku_code=_required(row, "sku"),
        location_code=_required(row, "location"),
        quantity=quantity,
        occurred_at=occurred_at,
        reason=row.get("reason") or None,
        reference=row.get("reference") or None,
        to_location_code=row.get("to_location") or None,
        expected_at=_when(row, "expected_at"),
    )


# ---- resuming -----------------------------------------------------------------------------------


def _progress_file(path: Path) -> Path:
    return path.with_name(path.name + ".progress")


def _resume_from(path: Path) -> int:
    """Rows finished by an earlier run of this same file (same size and time), else 0."""
    try:
        saved = json.loads(_progress_file(path).read_text())
    except (OSError, ValueError):
        return 0
    stat = path.stat()
    if saved.get("size") != stat.st_size or saved.get("mtime_ns") != stat.st_mtime_ns:
        return 0  # the file changed: go through it all again (idempotency keeps that safe)
    return int(saved.get("rows_done", 0))


def _save_progress(path: Path, rows_done: int) -> None:
    stat = path.stat()
    _progress_file(path).write_text(
        json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows_done": rows_done})
    )


# ---- importing ----------------------------------------------------------------------------------


def _row_of(error: UserError, numbers: list[int]) -> int | None:
    if error.field and len(error.field) > 1 and error.field[0] == "input" and error.field[1].isdigit():
        return numbers[int(error.field[1])]
    return None


async def import_skus(ctx: Ctx, path: Path, resume: bool, advance: Callable[[int], None]) -> ImportReport:
    async def send(batch: list[tuple[int, dict[str, str]]], report: ImportReport) -> None:
        items: list[catalog.SkuInput] = []
        numbers: list[int] = []
        for number, row in batch:
            active_text = row.get("active", "").lower()
            if active_text not in ("", "true", "false", "1", "0", "yes", "no"):
                report.refused.append(RefusedRow(number, "INVALID_INPUT", f"active {active_text!r} is not a boolean"))
                continue
            active = None if not active_text else active_text in ("true", "1", "yes")
            items.append(catalog.SkuInput(row.get("code", ""), row.get("name", ""), active))
            numbers.append(number)
        while items:
            try:
                await catalog.upsert_skus(ctx, items)
            except Refused as refused:
                bad = _refuse(refused.errors, numbers, report)
                if not bad:
                    raise  # a refusal of the whole batch, not of a row: nothing more can go in
                items = [it for i, it in enumerate(items) if i not in bad]
                numbers = [n for i, n in enumerate(numbers) if i not in bad]
                continue
            report.applied += len(items)
            break

    return await _run(path, resume, advance, send)


async def import_events(
    ctx: Ctx, path: Path, source: str | None, resume: bool, advance: Callable[[int], None]
) -> ImportReport:
    async def send(batch: list[tuple[int, dict[str, str]]], report: ImportReport) -> None:
        readable: list[InventoryEvent] = []
        numbers: list[int] = []
        for number, row in batch:
            try:
                readable.append(event_of(path, number, row, source))
                numbers.append(number)
            except _Bad as bad:
                report.refused.append(RefusedRow(number, bad.code.value, str(bad)))
        if not readable:
            return
        results, errors = await events.record_events(ctx, readable, atomic=False)  # the good rows go in
        _refuse(errors, numbers, report)
        for r in results:
            if r.status is EventStatus.DUPLICATE:
                report.duplicates += 1
            else:
                report.applied += 1  # APPLIED, or recorded as SUPERSEDED / FLAGGED: in the ledger either way

    return await _run(path, resume, advance, send)


def _refuse(errors: list[UserError], numbers: list[int], report: ImportReport) -> set[int]:
    """Adds each row's errors to the report; returns the batch indexes refused."""
    refused: set[int] = set()
    for e in errors:
        number = _row_of(e, numbers)
        if number is not None:
            report.refused.append(RefusedRow(number, e.code.value, e.message))
            refused.add(numbers.index(number))
    return refused


Sender = Callable[[list[tuple[int, dict[str, str]]], ImportReport], Awaitable[None]]


async def _run(path: Path, resume: bool, advance: Callable[[int], None], send: Sender) -> ImportReport:
    report = ImportReport()
    done = _resume_from(path) if resume else 0
    batch: list[tuple[int, dict[str, str]]] = []
    for index, (number, row) in enumerate(_rows(path)):
        report.rows += 1
        if index < done:
            report.skipped += 1
            advance(1)
            continue
        batch.append((number, row))
        if len(batch) == BATCH:
            await send(batch, report)
            _save_progress(path, index + 1)
            advance(len(batch))
            batch = []
    if batch:
        await send(batch, report)
        _save_progress(path, report.rows)
        advance(len(batch))
    report.refused.sort(key=lambda r: r.row)
    return report


# ---- the commands -------------------------------------------------------------------------------


def _run_with_progress(
    path: Path, label: str, work: Callable[[Ctx, Callable[[int], None]], Awaitable[ImportReport]]
) -> ImportReport:
    from rich.console import Console
    from rich.progress import Progress

    from app.cli import database_or_exit
    from app.db.engine import Database

    total = count_rows(path)

    async def run(settings: Settings) -> ImportReport:
        db = Database(settings.database)
        try:
            with Progress(console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task(label, total=total)
                return await work(Ctx(db=db, settings=settings), lambda n: progress.advance(task, n))
        finally:
            await db.dispose()

    with database_or_exit(Settings()) as settings:  # the embedded default: started (or shared) and migrated
        return asyncio.run(run(settings))


def _summarise(report: ImportReport, what: str) -> None:
    for r in report.refused:
        typer.echo(f"REFUSED row {r.row} {r.code}: {r.message}")
    resumed = f", {report.skipped} done by an earlier run" if report.skipped else ""
    typer.echo(
        f"{report.rows} rows: {report.applied} {what}, {report.duplicates} already recorded, "
        f"{len(report.refused)} refused{resumed}"
    )
    if report.refused:
        raise typer.Exit(1)


FILE = typer.Argument(..., exists=True, dir_okay=False, help="The CSV file (UTF-8, a header row)")
RESUME = typer.Option(True, "--resume/--restart", help="Continue after the last batch an earlier run finished")


@import_cli.command("skus")
def skus_command(file: Path = FILE, resume: bool = RESUME) -> None:
    """SKUs from a CSV with columns code,name[,active]: new ones created, known ones updated."""
    report = _run_with_progress(file, "importing SKUs", lambda ctx, advance: import_skus(ctx, file, resume, advance))
    _summarise(report, "upserted")


@import_cli.command("events")
def events_command(
    file: Path = FILE,
    source: str | None = typer.Option(None, help="The source of rows without a source column"),
    resume: bool = RESUME,
) -> None:
    """Inventory events from a CSV with columns type,sku,location,quantity,occurred_at and optionally
    source, external_id, reason, reference, to_location, expected_at."""
    report = _run_with_progress(
        file, "importing events", lambda ctx, advance: import_events(ctx, file, source, resume, advance)
    )
    _summarise(report, "recorded")
