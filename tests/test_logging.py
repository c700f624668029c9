"""Issue 16 item 3: JSON log lines with the request id and key id, an access line, and tracebacks
that neither come with client errors nor flood when the same fault repeats."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from app.observability.logging import RepeatedErrors, configure_logging, formatter
from tests.conftest import Api, _truncate
from tests.helpers import catalogue
from tests.live import start_server, stop_server


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What the service's JSON handler writes, captured (same formatter and filter, into a buffer)."""
    configure_logging()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter())
    handler.addFilter(RepeatedErrors(0.3))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def _parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]  # each line is JSON


async def test_every_line_of_a_request_is_json_with_its_request_id_and_key_id(api: Api, lines: io.StringIO) -> None:
    await catalogue(api, ["SKU-L"], [("WH-L", 1)])
    lines.truncate(0)
    lines.seek(0)
    logging.getLogger("stockwire.test").setLevel(logging.INFO)
    response = await api.raw("query { skus: stockLevels(first: 1) { skuCode } }")
    assert response.status_code == 200
    rid = response.headers["X-Request-Id"]
    records = _parsed(lines)
    access = [r for r in records if r["logger"] == "stockwire.access"]
    assert len(access) == 1, records
    line = access[0]
    assert line["request_id"] == rid
    assert line["key_id"]
    assert (line["method"], line["path"], line["status"]) == ("POST", "/graphql", 200)
    assert line["duration_ms"] >= 0
    assert all(r.get("request_id") == rid for r in records), records

    # a caller's own request id is kept, and used in the log
    response = await api.client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={**api.headers, "X-Request-Id": "caller-123"}
    )
    assert response.headers["X-Request-Id"] == "caller-123"
    assert any(r.get("request_id") == "caller-123" for r in _parsed(lines))


async def test_a_client_error_logs_no_traceback(api: Api, lines: io.StringIO) -> None:
    response = await api.raw("query { stockLevels(first: -5) { skuCode } }")
    assert response.status_code in (200, 400)
    assert "errors" in response.json()
    assert not [r for r in _parsed(lines) if "exception" in r]


def test_the_same_error_logs_its_traceback_once_per_interval_then_counts(lines: io.StringIO) -> None:
    log = logging.getLogger("stockwire.test")

    def fail() -> None:
        raise RuntimeError("the same fault")

    for _ in range(5):
        try:
            fail()
        except RuntimeError:
            log.exception("unexpected error")
    first = [r for r in _parsed(lines) if r["logger"] == "stockwire.test"]
    assert len(first) == 1 and "Traceback" in first[0]["exception"]
    time.sleep(0.35)
    try:
        fail()
    except RuntimeError:
        log.exception("unexpected error")
    records = [r for r in _parsed(lines) if r["logger"] == "stockwire.test"]
    assert len(records) == 2
    assert records[1]["repeated"] == 4 and "Traceback" in records[1]["exception"]


async def test_the_batched_handler_writes_a_loop_steps_lines_together_and_warnings_at_once() -> None:
    import asyncio

    from app.observability.logging import BatchedStreamHandler

    out = io.StringIO()
    handler = BatchedStreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("stockwire.test.batched")
    log.addHandler(handler)
    log.propagate, log.level = False, logging.INFO
    try:
        log.info("one")
        log.info("two")
        assert out.getvalue() == ""  # pending until this loop step ends
        await asyncio.sleep(0)
        assert out.getvalue() == "INFO one\nINFO two\n"
        log.info("three")
        log.warning("four")  # at once, with what was pending before it (order kept)
        assert out.getvalue().endswith("INFO three\nWARNING four\n")
        log.info("five")
        handler.flush()  # logging.shutdown at exit
        assert out.getvalue().endswith("WARNING four\nINFO five\n")
    finally:
        log.removeHandler(handler)


def test_the_batched_handler_writes_at_once_outside_an_event_loop() -> None:
    from app.observability.logging import BatchedStreamHandler

    out = io.StringIO()
    handler = BatchedStreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("stockwire", logging.INFO, "", 0, "plain", None, None)
    handler.handle(record)
    assert out.getvalue() == "plain\n"


def test_request_ids_are_32_hex_digits_and_unique() -> None:
    from app.graphql.request_state import _REQUEST_ID, new_request_id

    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and _REQUEST_ID.fullmatch(i) for i in ids)


def test_the_direct_access_line_is_the_line_the_formatter_writes() -> None:
    """access_line skips the logging module when our JSON handler is the only reader: same fields, same order."""
    import re

    import structlog

    from app.observability.logging import ACCESS, BatchedStreamHandler, _sole_json_handler, access_line

    configure_logging()
    root = logging.getLogger()
    handler = next(h for h in root.handlers if isinstance(h, BatchedStreamHandler))
    assert handler.json_lines
    out, kept, kept_handlers = io.StringIO(), handler.stream, root.handlers[:]
    handler.setStream(out)
    root.handlers = [handler]  # as in the service: pytest's capture handlers would send it the slow way
    structlog.contextvars.bind_contextvars(request_id="rid-1", key_id="key-1")
    try:
        assert _sole_json_handler(logging.INFO) is handler  # so the first line below takes the direct path
        access_line(logging.INFO, "POST", "/graphql", 200, 1.25)
        ACCESS.log(  # what the middleware logged before: the formatter's path
            logging.INFO,
            "%s %s %s",
            "POST",
            "/graphql",
            200,
            extra={"method": "POST", "path": "/graphql", "status": 200, "duration_ms": 1.25},
        )
        access_line(logging.DEBUG, "GET", "/healthz", 200, 0.5)  # below the level: nothing
        handler.flush()
    finally:
        structlog.contextvars.clear_contextvars()
        handler.setStream(kept)
        root.handlers = kept_handlers
    direct, formatted = [json.loads(line) for line in out.getvalue().splitlines()]
    assert list(direct) == list(formatted)  # same keys in the same order
    assert direct.pop("ts") != "" and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", formatted.pop("ts"))
    assert (
        direct
        == formatted
        == {
            "event": "POST /graphql 200",
            "request_id": "rid-1",
            "key_id": "key-1",
            "level": "info",
            "logger": "stockwire.access",
            "method": "POST",
            "path": "/graphql",
            "status": 200,
            "duration_ms": 1.25,
        }
    )


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_websocket_gets_its_access_line_with_its_request_id_and_key_id(
    postgres_url: str, tmp_path: Path
) -> None:
    """A websocket to /graphql goes straight to the view (app.main.StockwireApp), still through the
    observability middleware: its access line when it ends, with the caller's request id and the key."""
    await _truncate(postgres_url)
    path = tmp_path / "server.log"
    with path.open("wb") as log:
        server = start_server(postgres_url, log=log)
        try:
            async with connect(
                server.ws_url,
                subprotocols=[Subprotocol("graphql-transport-ws")],
                additional_headers={"X-Request-Id": "ws-caller-1"},
            ) as ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": server.init_payload}))
                assert json.loads(await ws.recv())["type"] == "connection_ack"
        finally:
            stop_server(server)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("logger") == "stockwire.access" and r.get("method") == "WS"]
    assert len(access) == 1, records
    (line,) = access
    assert (line["path"], line["status"], line["request_id"]) == ("/graphql", 101, "ws-caller-1")
    assert line["key_id"]
