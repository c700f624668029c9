"""`stockwire import skus|events FILE.csv`: idempotent, resumable, every refused row named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from app import importer
from app.cli import cli
from app.db.engine import Database
from app.services import catalog, events
from app.services.catalog import LocationInput, LocationKind, SkuInput
from app.services.context import Ctx
from app.settings import Settings
from tests.conftest import _truncate

pytestmark = pytest.mark.postgres


@pytest.fixture
async def ctx(postgres_url: str) -> AsyncIterator[Ctx]:
    await _truncate(postgres_url)
    db = Database(postgres_url)
    ctx = Ctx(db=db, settings=Settings(database_url=postgres_url, broadcast_url="memory://"))
    await catalog.upsert_locations(ctx, [LocationInput("WH-1", "Warehouse 1", LocationKind.WAREHOUSE)])
    try:
        yield ctx
    finally:
        await db.dispose()


async def sql(ctx: Ctx, statement: str) -> list[Any]:
    async with ctx.db.read() as conn:
        return list(await conn.execute(text(statement)))


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def nothing(_: int) -> None:
    pass


async def test_skus_are_upserted_and_bad_rows_named(ctx: Ctx, tmp_path: Path) -> None:
    await catalog.upsert_skus(ctx, [SkuInput("OLD-1", "Old name")])
    csv = write(
        tmp_path / "skus.csv",
        "code,name,active",
        "NEW-1,New one,",
        "OLD-1,New name,false",
        "NEW-2,,",  # row 4: no name
        "NEW-3,Third,maybe",  # row 5: not a boolean
        "NEW-4,Fourth,true",
    )
    report = await importer.import_skus(ctx, csv, resume=False, advance=nothing)
    assert (report.rows, report.applied) == (5, 3)
    assert [(r.row, r.code) for r in report.refused] == [(4, "INVALID_INPUT"), (5, "INVALID_INPUT")]
    assert "name" in report.refused[0].message and "maybe" in report.refused[1].message
    rows = await sql(ctx, "SELECT code, name, active FROM skus ORDER BY code")
    assert [tuple(r) for r in rows] == [
        ("NEW-1", "New one", True),
        ("NEW-4", "Fourth", True),
        ("OLD-1", "New name", False),
    ]


EVENTS = (
    "type,sku,location,quantity,occurred_at,reason,reference",
    "RECEIVED,SKU-1,WH-1,10,2026-01-05T09:00:00Z,delivery,PO-1",
    "SOLD,SKU-1,WH-1,3,2026-01-05T10:00:00Z,,",
    "SOLD,NOPE,WH-1,1,2026-01-05T10:00:00Z,,",  # row 4: unknown SKU
    "SOLD,SKU-1,WH-1,two,2026-01-05T10:00:00Z,,",  # row 5: not a number
    "SOLD,SKU-1,WH-1,1,2026-01-05 10:00,,",  # row 6: no timezone
    "RECEIVED,SKU-2,WH-1,4,2026-01-05T11:00:00+01:00,,PO-2",
)


async def test_events_are_recorded_once_with_stable_external_ids(ctx: Ctx, tmp_path: Path) -> None:
    await catalog.upsert_skus(ctx, [SkuInput("SKU-1", "One"), SkuInput("SKU-2", "Two")])
    csv = write(tmp_path / "moves.csv", *EVENTS)
    first = await importer.import_events(ctx, csv, "erp", resume=True, advance=nothing)
    assert (first.rows, first.applied, first.duplicates) == (6, 3, 0)
    assert [(r.row, r.code) for r in first.refused] == [
        (4, "UNKNOWN_SKU"),
        (5, "INVALID_QUANTITY"),
        (6, "INVALID_INPUT"),
    ]

    again = await importer.import_events(ctx, csv, "erp", resume=False, advance=nothing)  # the whole file again
    assert (again.applied, again.duplicates, len(again.refused)) == (0, 3, 3)

    ledger = await sql(ctx, "SELECT source, external_id, kind, reference FROM inventory_events ORDER BY id")
    assert [tuple(r) for r in ledger] == [
        ("erp", "moves.csv:2", "RECEIVED", "PO-1"),
        ("erp", "moves.csv:3", "SOLD", None),
        ("erp", "moves.csv:7", "RECEIVED", "PO-2"),
    ]
    on_hand = await sql(ctx, "SELECT s.code, l.on_hand FROM stock_levels l JOIN skus s ON s.id = l.sku_id ORDER BY 1")
    assert [tuple(r) for r in on_hand] == [("SKU-1", 7), ("SKU-2", 4)]


async def test_an_interrupted_import_resumes_after_the_last_finished_batch(
    ctx: Ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await catalog.upsert_skus(ctx, [SkuInput("SKU-1", "One")])
    lines = ["source,external_id,type,sku,location,quantity,occurred_at"]
    lines += [f"wms,rcv-{i},RECEIVED,SKU-1,WH-1,1,2026-01-05T09:{i:02d}:00Z" for i in range(7)]
    csv = write(tmp_path / "big.csv", *lines)
    monkeypatch.setattr(importer, "BATCH", 3)
    record = events.record_events
    calls = 0

    async def dies_on_the_second_batch(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("the database went away")
        return await record(*args, **kwargs)

    monkeypatch.setattr(events, "record_events", dies_on_the_second_batch)
    with pytest.raises(ConnectionError):
        await importer.import_events(ctx, csv, None, resume=True, advance=nothing)
    assert (tmp_path / "big.csv.progress").exists()

    seen: list[int] = []
    report = await importer.import_events(ctx, csv, None, resume=True, advance=seen.append)
    assert (report.rows, report.skipped, report.applied, report.duplicates) == (7, 3, 4, 0)
    assert sum(seen) == 7  # the bar still reaches the end
    external_ids = await sql(ctx, "SELECT external_id FROM inventory_events ORDER BY id")
    assert [r[0] for r in external_ids] == [f"rcv-{i}" for i in range(7)]  # each row once, in order
    assert (await sql(ctx, "SELECT on_hand FROM stock_levels"))[0][0] == 7


@pytest.fixture
def runner_env(postgres_url: str) -> Iterator[dict[str, str]]:
    yield {"STOCKWIRE_DATABASE_URL": postgres_url, "STOCKWIRE_BROADCAST_URL": "memory://"}


def test_the_cli_prints_a_summary_and_fails_when_rows_were_refused(
    postgres_url: str, tmp_path: Path, runner_env: dict[str, str]
) -> None:
    asyncio.run(_truncate(postgres_url))
    skus = write(tmp_path / "skus.csv", "code,name", "SKU-1,One", " ,Blank code")
    result = CliRunner().invoke(cli, ["import", "skus", str(skus)], env=runner_env)
    assert result.exit_code == 1, result.output
    assert "REFUSED row 3 INVALID_INPUT" in result.output
    assert "2 rows: 1 upserted, 0 already recorded, 1 refused" in result.output

    moves = write(tmp_path / "moves.csv", *EVENTS[:3])
    no_source = CliRunner().invoke(cli, ["import", "events", str(moves)], env=runner_env)
    assert no_source.exit_code == 1 and "source is empty" in no_source.output  # no source column, no --source
    nowhere = CliRunner().invoke(cli, ["import", "events", str(moves), "--source", "erp", "--restart"], env=runner_env)
    # no location WH-1 in this database: the rows are refused with the service's own code
    assert nowhere.exit_code == 1 and "REFUSED row 2 UNKNOWN_LOCATION" in nowhere.output
