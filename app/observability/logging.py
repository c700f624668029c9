"""Structured logs: one JSON object per line, with the request's id and API key id in every line.

structlog's `ProcessorFormatter` renders the standard library's log records, so every existing
`logging.getLogger(...)` call (ours, uvicorn's, Strawberry's, SQLAlchemy's) comes out as JSON with no
change at the call sites, and `structlog.contextvars` carries `request_id` and `key_id` through a
request's tasks without pasting them into messages. (A hand-written JSON formatter would have to
re-implement exception rendering and contextvar merging; structlog is small and well kept.)

`RepeatedErrors` keeps a flood of the same unexpected error readable: its traceback is logged once
per `interval` seconds; repeats within the interval are counted, not printed, and the next line that
prints the traceback says `"repeated": N`.

STOCKWIRE_LOG_FORMAT=console gives human-readable lines for development; STOCKWIRE_LOG_LEVEL sets
the level of Stockwire's own loggers (INFO by default, which includes the access log).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

HANDLER_NAME = "stockwire-json"
ACCESS = logging.getLogger("stockwire.access")


class RepeatedErrors(logging.Filter):
    """Let the same error (logger, exception type, place) through with its traceback once per interval."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str, int], tuple[float, int]] = {}  # last traceback time, repeats since

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # where it was raised: the same error is the same exception from the same line
        place = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else (record.pathname, record.lineno)
        key = (record.name, type(exc).__qualname__, place[0], place[1])
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            if last is not None and last[1]:
                record.repeated = last[1]
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:  # bounded: forget the oldest half
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:5_000]:
                    del self._seen[old]
        return True


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes the lines logged during one event-loop step in one write.

    Every access line was its own write and flush (a system call each, stderr being unbuffered under
    PYTHONUNBUFFERED): about half of an empty request's server CPU, profiled. Lines logged on the
    event loop's thread below WARNING wait for the end of the current loop iteration (`call_soon`),
    so none waits longer than the step that logged it; WARNING and above, and lines from other
    threads or outside a loop, are written at once with everything pending before them (order kept).
    `flush()` (also run by logging.shutdown at exit) writes what is pending.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    json_lines = False  # set by configure_logging: what access_line may write without the formatter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.emit_line(line, record.levelno)

    def emit_line(self, line: str, levelno: int) -> None:
        self._pending.append(line + self.terminator)
        if levelno < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                if not self._scheduled:
                    self._scheduled = True
                    loop.call_soon(self._write_scheduled)
                return
        self._write()

    def _write_scheduled(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            if hasattr(self.stream, "flush"):
                self.stream.flush()
        except Exception:
            logging.Handler.handleError(self, logging.LogRecord("stockwire", logging.ERROR, "", 0, text, None, None))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()


# what json.dumps(event, default=repr) makes a new encoder for on every call: the same text, one encoder
_ACCESS_ENCODER = json.JSONEncoder(default=repr)


def access_line(level: int, method: str, path: str, status: int, duration_ms: float) -> None:
    """Log the access line of one request: the same JSON line `ACCESS.log` would write, made directly.

    Through the logging module and structlog's formatter the line took about 60 us (a LogRecord, a
    copy of the whole context, the processor chain), a tenth of an empty request's server CPU. When
    our JSON handler is the only one that would see the line, this builds the same fields in the same
    order (event, the bound context, level, logger, ts, method, path, status, duration_ms) and hands
    it to that handler; with any other handler or filter on the way (a test's capture, a console
    format) it goes through `ACCESS.log` as before.
    """
    if not ACCESS.isEnabledFor(level):
        return
    handler = _sole_json_handler(level)
    if handler is None:
        ACCESS.log(
            level,
            "%s %s %s",
            method,
            path,
            status,
            extra={"method": method, "path": path, "status": status, "duration_ms": duration_ms},
        )
        return
    event: dict[str, Any] = {"event": f"{method} {path} {status}"}
    for key, value in structlog.contextvars.get_contextvars().items():
        event.setdefault(key, value)
    event.setdefault("level", logging.getLevelName(level).lower())
    event.setdefault("logger", ACCESS.name)
    event.setdefault("ts", datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z"))
    event.update(method=method, path=path, status=status, duration_ms=duration_ms)
    try:
        line = _ACCESS_ENCODER.encode(event)
    except Exception:
        logging.Handler.handleError(handler, logging.LogRecord(ACCESS.name, level, "", 0, event["event"], None, None))
        return
    with handler.lock:  # type: ignore[union-attr]
        handler.emit_line(line, level)


def _sole_json_handler(level: int) -> BatchedStreamHandler | None:
    """Our JSON handler, if the access line would reach it and nothing else (no other handler or filter)."""
    logger: logging.Logger | None = ACCESS
    while logger is not None:
        if logger.filters or logger.disabled:
            return None
        if logger.parent is None:  # the root: exactly our handler
            handlers = logger.handlers
            if len(handlers) != 1 or not isinstance(handlers[0], BatchedStreamHandler):
                return None
            handler = handlers[0]
            if not handler.json_lines or level < handler.level or handler.formatter is None:
                return None
            return handler
        if logger.handlers or not logger.propagate:
            return None
        logger = logger.parent
    return None


def _extra_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Fields passed with `extra=` (e.g. the access line's method, path, status) and `repeated`."""
    record: logging.LogRecord | None = event.get("_record")
    if record is not None:
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in event:
                event[name] = value
    return event


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


def formatter(json_lines: bool = True) -> structlog.stdlib.ProcessorFormatter:
    renderer: Any = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _extra_fields,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # the traceback as one string field: still one line
            renderer,
        ],
    )


def configure_logging(level: str | None = None, fmt: str | None = None, repeat_interval: float = 60.0) -> None:
    """Route every logger through one JSON handler on stderr (idempotent: safe to call per app)."""
    level = (level or os.environ.get("STOCKWIRE_LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("STOCKWIRE_LOG_FORMAT") or "json").lower()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == HANDLER_NAME), None)
    if handler is None:
        handler = BatchedStreamHandler()
        handler.set_name(HANDLER_NAME)
        handler.addFilter(RepeatedErrors(repeat_interval))
        # a plain StreamHandler left by logging.basicConfig (the CLI) would print every line twice
        for old in [h for h in root.handlers if type(h) is logging.StreamHandler]:
            root.removeHandler(old)
        root.addHandler(handler)
    handler.setFormatter(formatter(fmt != "console"))
    if isinstance(handler, BatchedStreamHandler):
        handler.json_lines = fmt != "console"
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    logging.getLogger("stockwire").setLevel(level)
    # uvicorn's loggers print through their own plain-text handlers: send them through ours instead.
    # Its access log is replaced by ours (app.observability.middleware), which has the request id.
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers = []
        uv.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True
