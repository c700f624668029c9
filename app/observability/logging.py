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

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        if record.levelno < logging.WARNING:
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
