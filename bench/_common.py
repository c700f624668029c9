"""Shared plumbing for the on-demand benchmarks in bench/ (not part of the test suite).

- a throw-away PostgreSQL database (dropped and re-created), migrated with `stockwire migrate`;
- a live uvicorn server as a subprocess in its own process group (killed by its pid/pgid);
- a minimal keep-alive HTTP/1.1 client (much cheaper per request than httpx: on a 2-core machine the
  load generator competes with the server and Postgres for CPU, so its own cost matters);
- CPU accounting from /proc (server, Postgres, this process) so a run says where the time went;
- latency/throughput bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable


def own_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess running this checkout's service or CLI: `app` imported from ROOT.

    Why: the virtualenv holds the project as an editable install, which maps `app` to the checkout it
    was installed from. A worktree sharing that virtualenv (an A/B against another commit) ran the
    other checkout's `stockwire migrate`, so its database had the other commit's schema (seen: a
    worktree's bench database carried a migration only main had)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), **extra}


PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress line, flushed at once, with the elapsed time since the start of the run."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def pg_dsn(db: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def sa_url(db: str) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


# --- database -------------------------------------------------------------------------------------


async def recreate_database(name: str) -> None:
    import asyncpg

    if not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing odd database name {name!r}")
    conn = await asyncpg.connect(pg_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def migrate(db: str) -> None:
    env = own_env(STOCKWIRE_DATABASE_URL=sa_url(db))
    stockwire = VENV_BIN / "stockwire"
    cmd = [str(stockwire), "migrate"] if stockwire.exists() else [PYTHON, "-m", "app.cli", "migrate"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"`stockwire migrate` failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


# --- the server -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A uvicorn subprocess in its own session: stop() ends exactly that process group."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session=True: the leader's pid is the group id

    def pids(self) -> list[int]:
        """The uvicorn process and its workers (everything in its process group)."""
        return [pid for pid in _all_pids() if _pgid_of(pid) == self.pgid]

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # workers of a multi-process server may outlive the supervisor for a moment
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)

    def discard_log(self) -> None:
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def stop_on_sigterm() -> None:
    """Call first thing in the benchmark's main coroutine: SIGTERM (`timeout`, a cancelled job) then
    cancels it like Ctrl-C does, so its `finally` stops the servers it started. A server left running
    keeps its outbox relay polling a database of the same name: it took the next run's changes and
    published them on its own channel, which looked like lost updates (an earlier session's push bench
    failures; reproduced by starting a stray server on the bench's database)."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def run_bench(main: Coroutine[Any, Any, int | None], fast_loop: bool = True) -> None:
    """Run a benchmark's main coroutine (on uvloop when installed and `fast_loop`) and exit with its
    code; 143 when SIGTERM stopped it (see stop_on_sigterm: its servers were stopped on the way out)."""
    loop_factory: Any = None
    if fast_loop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            sys.exit(runner.run(main))
        except asyncio.CancelledError:
            say("stopped by SIGTERM")
            sys.exit(143)


def run_database(kind: str) -> str:
    """A database name of this run's own, so a server left behind by another run cannot touch it."""
    return f"stockwire_bench_{kind}_{os.getpid()}"


def _serving_flags(env: dict[str, str]) -> list[str]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app.serving import uvicorn_flags

    return uvicorn_flags(env)


def start_server(
    db: str,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> Server:
    """`uvicorn app.main:create_app --factory` on a free port (or `argv`, given `{port}`)."""
    port = free_port()
    env = {
        **own_env(),
        "STOCKWIRE_DATABASE_URL": sa_url(db),
        "STOCKWIRE_BROADCAST_URL": "memory://",
        # a benchmark measures throughput, not the per-key limit on holds (RATE_LIMITED)
        "STOCKWIRE_HOLD_RATE_LIMIT": "0",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    if argv is None:
        argv = [PYTHON, "-m", "uvicorn", "app.main:create_app", "--factory"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
        argv += _serving_flags(env)  # the protocols `stockwire serve` runs (app/serving.py)
        if workers > 1:
            argv += ["--workers", str(workers)]
    else:
        argv = [a.replace("{port}", str(port)) for a in argv]
    log_fd, log_name = tempfile.mkstemp(prefix="stockwire-bench-server-", suffix=".log")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_fd, stderr=log_fd, start_new_session=True)
    os.close(log_fd)
    return Server(proc, port, Path(log_name))


async def wait_ready(server: Server, workers: int = 1, within: float = 30.0) -> None:
    """Until /readyz answers 200 (and, with several workers, until every worker has started)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            client = RawHttp("127.0.0.1", server.port)
            await client.connect()
            try:
                status, _ = await client.request("GET", "/readyz")
            finally:
                await client.close()
            if status == 200 and (workers <= 1 or len(server.pids()) >= workers + 1):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server not ready after {within}s:\n{server.log_tail()}")


# --- API keys (the security issue) -----------------------------------------------------------------

# headers every RawHttp sends unless given its own (set_api_key() puts the Authorization header here)
DEFAULT_HEADERS: dict[str, str] = {}


_CREATE_KEY_PY = """
import asyncio, sys
from app.db.engine import Database
from app.security import keys
from app.security.scopes import parse_scopes

async def main():
    db = Database(sys.argv[1])
    try:
        created = await keys.create_key(db, "bench", parse_scopes(sys.argv[2].split(",")))
        print(created.secret)
    finally:
        await db.dispose()

asyncio.run(main())
"""


def create_api_key(db: str, scopes: str) -> str | None:
    """A new API key in the bench database: `stockwire keys create --scopes S` (the contract), else the
    service's own `app.security.keys.create_key`; None when the service has no API keys at all."""
    env = own_env(STOCKWIRE_DATABASE_URL=sa_url(db))
    cmd = [str(VENV_BIN / "stockwire"), "keys", "create", "--scopes", scopes]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    if "No such command" not in out.stderr + out.stdout:
        raise SystemExit(f"`stockwire keys create` failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    if not (ROOT / "app" / "security" / "keys.py").exists():
        return None
    out = subprocess.run(
        [PYTHON, "-c", _CREATE_KEY_PY, sa_url(db), scopes], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"creating an API key with app.security.keys failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def set_api_key(key: str | None) -> None:
    DEFAULT_HEADERS.pop("Authorization", None)
    if key:
        DEFAULT_HEADERS["Authorization"] = f"Bearer {key}"


# --- a storefront watching one SKU ---------------------------------------------------------------------


@dataclass
class Watcher:
    """One websocket subscription to one SKU's availability (`watch`)."""

    conn: Any
    sink: Any
    sku: str

    def close(self) -> int:
        """Close it; returns how many updates it received after its initial state. Raises if the server
        closed it or refused something meanwhile: then part of the run had nobody listening."""
        lost, errors = self.conn.closed, list(self.sink.errors)
        self.conn.close()
        if lost or errors:
            raise RuntimeError(f"the watcher of {self.sku} was closed ({lost}) or refused: {errors[:2]}")
        return max(0, len(self.sink.raw) - 1)

    def report(self) -> None:
        """`close` it and say how many updates it got (at the end of a measured run)."""
        say(f"the storefront's subscription got {self.close()} updates of {self.sku}")

    def discard(self) -> None:
        """Close it without a word (a run that is failing anyway: `close` raising would hide why)."""
        self.conn.close()


async def watch(port: int, key: str | None, sku: str, within: float = 10.0) -> Watcher:
    """A storefront's subscription to `sku` (availabilityChanged, bench/push.py's websocket client), open
    once its initial state has arrived. With a subscriber open the outbox relay reads every change, as in
    any deployment with one, and publishes it (memory://: only what somebody hears, here `sku`'s
    messages; Redis: all); on memory:// with none it claims the rows unread (README, "Nobody listening"),
    which a bench must not mistake for a faster write path."""
    from push import Receipts, WsConnection  # push imports this module: taken when first called

    sink = Receipts()
    conn = WsConnection("127.0.0.1", port, key, sink)
    await asyncio.get_running_loop().create_connection(lambda: conn, "127.0.0.1", port)
    await asyncio.wait_for(conn.ready, within)
    conn.subscribe("watch", [sku])
    deadline = time.monotonic() + within
    while not sink.raw:
        if sink.errors or time.monotonic() > deadline:
            conn.close()
            raise RuntimeError(f"the watcher of {sku} got no initial state: {sink.errors[:1]}")
        await asyncio.sleep(0.01)
    return Watcher(conn, sink, sku)


async def storefront(port: int, key: str | None, sku: str, unwatched: bool) -> Watcher | None:
    """The storefront a bench keeps subscribed to `sku` (`watch`), or none with `--unwatched`; says which."""
    if unwatched:
        say("nobody subscribed (--unwatched): the relay claims the changes unread")
        return None
    watcher = await watch(port, key, sku)
    say(f"a storefront watches {watcher.sku}: the relay reads every change (memory://: builds and publishes {sku}'s)")
    return watcher


# --- a minimal HTTP/1.1 keep-alive client -----------------------------------------------------------


class RawHttp:
    """One persistent connection; one request at a time. Enough for a JSON POST benchmark."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        extra = DEFAULT_HEADERS if headers is None else headers
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n{self._extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode("latin-1") + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        else:
            data = await self.reader.read()
        return status, data


async def graphql(client: RawHttp, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    status, data = await client.request("POST", "/graphql", body)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
    out: dict[str, Any] = json.loads(data)
    return out


# --- CPU accounting from /proc ------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return raw[raw.rfind(")") + 2 :].split()


def _pgid_of(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[2]) if f else None


def _cpu_seconds(pid: int) -> float:
    f = _stat_fields(pid)
    if not f:
        return 0.0
    return (int(f[11]) + int(f[12])) / _CLK_TCK  # utime + stime


# "postgres: [cluster: ]user database host(port) state" (Debian adds the cluster name)
_BACKEND = re.compile(r"postgres: (?:\S+: )?(\S+) (\S+) (\S+\(\d+\)|\[local\])")


def postgres_pids(db: str | None = None) -> list[int]:
    """Postgres processes: the shared ones and, given `db`, only the backends connected to it."""
    out = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if not Path(f"/proc/{pid}/comm").read_text().strip().startswith("postgres"):
                continue
            m = _BACKEND.match(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
            if db is None or m is None or m.group(2) == db:
                out.append(pid)
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs since boot."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


@dataclass
class CpuSnapshot:
    server: dict[int, float]
    postgres: dict[int, float]
    me: float
    busy: float
    total: float


def cpu_snapshot(server_pids: Iterable[int], db: str | None = None) -> CpuSnapshot:
    t = os.times()
    busy, total = _machine_busy()
    return CpuSnapshot(
        server={p: _cpu_seconds(p) for p in server_pids},
        postgres={p: _cpu_seconds(p) for p in postgres_pids(db)},
        me=t.user + t.system,
        busy=busy,
        total=total,
    )


@dataclass
class CpuUse:
    server_s: float
    postgres_s: float
    client_s: float
    machine_busy_pct: float  # of all cores
    others_cores: float  # CPU used by processes outside this run (other tests, benchmarks), in cores


def cpu_delta(a: CpuSnapshot, b: CpuSnapshot) -> CpuUse:
    def d(x: dict[int, float], y: dict[int, float]) -> float:
        return sum(v - x.get(p, 0.0) for p, v in y.items())

    total = b.total - a.total
    ncpu = os.cpu_count() or 1
    wall = total / ncpu / _CLK_TCK if total else 0.0
    server_s, postgres_s, client_s = d(a.server, b.server), d(a.postgres, b.postgres), b.me - a.me
    busy_s = (b.busy - a.busy) / _CLK_TCK
    return CpuUse(
        server_s=server_s,
        postgres_s=postgres_s,
        client_s=client_s,
        machine_busy_pct=100.0 * (b.busy - a.busy) / total if total else 0.0,
        others_cores=max(0.0, (busy_s - server_s - postgres_s - client_s) / wall) if wall else 0.0,
    )


# --- results ----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    unknown: int = 0  # transport failures: the call may or may not have committed
    latencies: list[float] = field(default_factory=list)
    failure_samples: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failed += 1
        if len(self.failure_samples) < 5:
            self.failure_samples.append(why[:300])


@dataclass
class Result:
    label: str
    scenario: str
    seconds: float
    tally: Tally
    cpu: CpuUse | None = None

    @property
    def rate(self) -> float:
        return self.tally.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.tally.latencies)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0

    def cpu_line(self) -> str:
        if self.cpu is None or not self.tally.ok:
            return ""
        n = self.tally.ok
        c = self.cpu
        noisy = " <- NOISY: other work on the machine, rerun when idle" if c.others_cores > 0.2 else ""
        return (
            f"CPU per reserve: server {c.server_s / n * 1e6:6.0f} us, postgres {c.postgres_s / n * 1e6:5.0f} us, "
            f"bench client {c.client_s / n * 1e6:5.0f} us; machine busy {c.machine_busy_pct:3.0f}%, "
            f"other processes {c.others_cores:.2f} cores" + noisy
        )


def print_profile(mode: str, prefix: str, labels: list[str], top: int = 30) -> None:
    for n, label in enumerate(labels, start=1):
        path = Path(f"{prefix}.{n}.{'prof' if mode == 'cprofile' else 'txt'}")
        for _ in range(50):  # the server writes it on SIGUSR2
            if path.exists():
                break
            time.sleep(0.1)
        print(f"== server profile, {label} ({path}) ==")
        if not path.exists():
            print("  (no profile written)")
            continue
        if mode != "cprofile":
            print(path.read_text())
        else:
            import pstats

            st = pstats.Stats(str(path))
            st.sort_stats("tottime").print_stats(top)
            st.sort_stats("cumulative").print_stats(r"app/", top)
        print()
