"""Run the service in-process (one worker) with a profiler that the benchmark switches on and off.

    python bench/_profiled_server.py --port 8123 --out /tmp/reserve-prof --mode sample|cprofile

SIGUSR1 starts a measurement, SIGUSR2 ends it and writes `<out>.<n>.txt` (mode sample: a stack-sampling
report, see _sampler.py; mode tracemalloc: the memory allocated between the two signals and still held,
by line) or `<out>.<n>.prof` (mode cprofile: pstats), n = 1, 2, ... Started by `bench/reserve.py
--profile` and `bench/push.py --profile`; stops on SIGTERM/SIGINT like uvicorn.
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=("sample", "cprofile", "tracemalloc"), default="sample")
    a = p.parse_args()

    import uvicorn
    from _sampler import Sampler

    seq = 0
    sampler = Sampler() if a.mode == "sample" else None
    prof: cProfile.Profile | None = None

    memory: list[Any] = []

    def begin(*_: Any) -> None:
        nonlocal prof
        if a.mode == "tracemalloc":
            import tracemalloc

            tracemalloc.start(8)
            memory[:] = [tracemalloc.take_snapshot()]
        elif sampler is not None:
            sampler.reset()
            sampler.enabled.set()
        else:
            prof = cProfile.Profile()
            prof.enable()

    def end(*_: Any) -> None:
        nonlocal seq
        seq += 1
        if a.mode == "tracemalloc":
            import tracemalloc

            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            lines = [f"{s}" for s in after.compare_to(memory[0], "lineno")[:40]]
            grouped = after.compare_to(memory[0], "filename")[:15]
            for stat in after.compare_to(memory[0], "traceback")[:12]:
                lines += ["", f"{stat.size_diff / 1024:.0f} KiB in {stat.count_diff} blocks:", *stat.traceback.format()]
            Path(f"{a.out}.{seq}.txt").write_text("\n".join(lines + ["", "by file:"] + [str(g) for g in grouped]))
        elif sampler is not None:
            sampler.enabled.clear()
            Path(f"{a.out}.{seq}.txt").write_text(sampler.report())
        elif prof is not None:
            prof.disable()
            prof.dump_stats(f"{a.out}.{seq}.prof")

    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
    # uvicorn re-raises the signal it shut down on once it has stopped: make that an ordinary exit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

    from app.serving import uvicorn_options
    from app.settings import Settings

    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
        **uvicorn_options(Settings()),  # the protocols `stockwire serve` runs
    )
    if sampler is not None:
        sampler.start()
    try:
        uvicorn.Server(config).run()
    finally:
        if sampler is not None:
            sampler.stop()


if __name__ == "__main__":
    main()
