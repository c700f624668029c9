"""How `stockwire serve` runs uvicorn: read deadlines on every HTTP connection, one message cap.

uvicorn waits forever for a request that never completes: 400 connections each sending half a
header (or trickling a body a byte at a time) all stayed open, each holding a socket and a parser.
Its `timeout_keep_alive` only covers the quiet time between two requests. The protocol classes
here add two deadlines (settings `header_timeout_seconds`, `body_timeout_seconds`, README Limits):

* the head of a request (request line and headers) must be complete within `header_timeout_seconds`
  of its first byte, or of the connection opening for the first request;
* its body must be complete within `body_timeout_seconds` of the head.

Past a deadline the server answers 408 (if it has not started answering) and closes the connection.
A websocket upgrade ends the deadlines (a websocket has its own keepalive and init timeout).

They read the settings from the environment once per process, so `--workers N` (whose processes
import this module afresh) and a plain `uvicorn --http app.serving:TimedHttpProtocol` get them too.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.compat import upgrading_to_websocket
from app.settings import Settings

HEAD = "head"
BODY = "body"


@functools.cache
def _deadlines() -> dict[str, float]:
    settings = Settings()
    return {HEAD: settings.header_timeout_seconds, BODY: settings.body_timeout_seconds}


def _timeout_response(phase: str, seconds: float) -> bytes:
    what = "request headers" if phase == HEAD else "request body"
    body = json.dumps(
        {
            "errors": [
                {
                    "message": f"the {what} did not arrive within {seconds:g} s",
                    "extensions": {"code": "REQUEST_TIMEOUT"},
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Deadlines:
    """The deadline of the request phase a connection is in; mixed into uvicorn's protocols."""

    transport: asyncio.Transport
    cycle: Any
    _phase: str | None = None
    _timer: asyncio.TimerHandle | None = None

    def _enter(self, phase: str | None) -> None:
        if phase == self._phase:
            return
        self._phase = phase
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if phase is not None:
            self._timer = asyncio.get_running_loop().call_later(_deadlines()[phase], self._expired)

    def _expired(self) -> None:
        self._timer = None
        phase, self._phase = self._phase, None
        if phase is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if phase == HEAD and cycle is not None and not cycle.response_complete:
            # a pipelined request waits while the previous answer is still being written: not the client's fault
            self._enter(HEAD)
            return
        # 408 only where no answer has begun: a body nobody reads any more (the app answered early) just ends
        answering = cycle is not None and (not cycle.response_complete if phase == HEAD else cycle.response_started)
        if not answering:
            self.transport.write(_timeout_response(phase, _deadlines()[phase]))
        self.transport.close()


class TimedH11Protocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with the deadlines; h11's state machine says which phase a request is in."""

    _upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter(HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._upgraded or self.transport.is_closing():
            self._enter(None)
        elif self.conn.their_state is h11.SEND_BODY:
            self._enter(BODY)
        elif self.conn.their_state is h11.IDLE:
            self._enter(HEAD)  # part of the next request's head arrived
        else:
            self._enter(None)  # the request is complete: the app answers in its own time

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        self._enter(None)
        super().handle_websocket_upgrade(event)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is optional in uvicorn; h11 is always there
    TimedHttpProtocol: type[asyncio.Protocol] = TimedH11Protocol
else:

    class TimedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol with the deadlines, phases from the parser's callbacks."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._enter(HEAD)

        def connection_lost(self, exc: Exception | None) -> None:
            self._enter(None)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._enter(HEAD)

        def on_headers_complete(self) -> None:
            upgrading = upgrading_to_websocket(self)
            super().on_headers_complete()
            self._enter(None if upgrading else BODY)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._enter(None)

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            # The websocket protocol owns the transport from here and nothing calls this object again
            # (uvicorn's data_received returns right after). It sits in a reference cycle (httptools'
            # parser keeps bound methods of it), so it and its parser, flow control and buffers
            # stayed alive, 23 objects per websocket connection, until a full collection, which the
            # tuned collector (app/main.py `_tune_gc`) runs rarely. Dropping its attributes frees it at
            # once (tests/test_realtime_lean.py checks that a connection leaves no cyclic garbage).
            self._enter(None)
            self.__dict__.clear()

    TimedHttpProtocol = TimedHttpToolsProtocol  # what uvicorn's "auto" would pick


WS_PROTOCOL = "app.realtime.ws_protocol:StockwireWSProtocol"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings `stockwire serve` uses (tests start servers with the same)."""
    return {
        "http": "app.serving:TimedHttpProtocol",
        # uvicorn's websockets protocol without the per-connection costs idle subscribers do not need,
        # and with one socket write per event-loop turn (app/realtime/ws_protocol.py, issue 15)
        "ws": WS_PROTOCOL,
        # websocket frames over the request cap are refused by the protocol (close 1009) before the
        # app buffers them; the app checks messages against the same cap (close 4413) wherever a
        # server lets bigger frames through
        "ws_max_size": settings.max_request_bytes,
    }


def uvicorn_flags(environ: Mapping[str, str] | None = None) -> list[str]:
    """`uvicorn_options` as `uvicorn` command-line flags, for the benches and tests that start a server
    process (so they run the server production runs). `environ`: the server's environment, for the
    request cap (STOCKWIRE_MAX_REQUEST_BYTES; otherwise this process's settings)."""
    cap = (environ or {}).get("STOCKWIRE_MAX_REQUEST_BYTES")
    settings = Settings() if cap is None else Settings(max_request_bytes=int(cap))
    options = uvicorn_options(settings)
    return ["--http", options["http"], "--ws", options["ws"], "--ws-max-size", str(options["ws_max_size"])]
