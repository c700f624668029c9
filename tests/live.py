"""Live uvicorn server processes for tests that need real sockets (websockets, several processes)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

import httpx

from app.serving import uvicorn_flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    key: str = field(default="", repr=False)  # an API key with every scope, in the server's database

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def init_payload(self) -> dict[str, str]:
        """The websocket connection_init payload that authenticates with `key`."""
        return {"authorization": f"Bearer {self.key}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"


async def _migrated_key(database_url: str) -> str:
    from tests.conftest import create_test_key

    return await create_test_key(database_url)  # the test databases are migrated when made


def make_key(database_url: str) -> str:
    """An every-scope key in that database; callable from sync code and from inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _migrated_key(database_url)).result()


def start_server(
    database_url: str,
    broadcast_url: str = "memory://",
    key: str | None = None,
    log: IO[bytes] | None = None,
    **env: str,
) -> Server:
    """A uvicorn process on a free port. `key`: one already in the database; by default one is made
    (a PostgreSQL server refuses to start without any) and is `server.key`. `log`: where its stderr
    goes (the log; default: this process's stderr)."""
    key = key or make_key(database_url)
    port = free_port()
    environment = {
        **os.environ,
        "STOCKWIRE_DATABASE_URL": database_url,
        "STOCKWIRE_BROADCAST_URL": broadcast_url,
        **{f"STOCKWIRE_{k.upper()}": v for k, v in env.items()},
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *uvicorn_flags(environment),  # the protocols `stockwire serve` runs
        ],
        env=environment,
        stderr=log,
    )
    server = Server(process, port, key)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError("server did not become ready in 30 s")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def servers(count: int, database_url: str, broadcast_url: str = "memory://", **env: str) -> Iterator[list[Server]]:
    started: list[Server] = []
    key = make_key(database_url)  # one key, valid on all of them (they share the database)
    try:
        for _ in range(count):
            started.append(start_server(database_url, broadcast_url, key, **env))
        yield started
    finally:
        for server in started:
            stop_server(server)
