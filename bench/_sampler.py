"""A poor man's py-spy: a thread samples the main thread's Python stack every few milliseconds.

cProfile is a poor fit for an asyncio server: `cumtime` of a coroutine includes the time it spent
suspended, and its overhead inflates Python-heavy code. Stack sampling in wall-clock time shows where
the event loop thread actually is: idle in the loop (waiting for sockets), or running which code.

The report (text) gives the share of samples per frame: "self" (the innermost frame) and "total"
(the frame is anywhere on the stack), and per top-level activity (the outermost app/ frame: the reserve
mutation, the outbox relay, the expiry sweeper, ...).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

_ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def _short(filename: str) -> str:
    if filename.startswith(_ROOT):
        return filename[len(_ROOT) :]
    i = filename.find("site-packages/")
    if i >= 0:
        return filename[i + len("site-packages/") :]
    i = filename.find("/lib/python3")
    if i >= 0:
        return "stdlib/" + filename[i:].split("/", 3)[-1]
    return filename


class Sampler:
    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.main_id = threading.main_thread().ident
        self.self_counts: Counter[str] = Counter()
        self.total_counts: Counter[str] = Counter()
        self.activity: Counter[str] = Counter()
        self.samples = 0
        self.idle = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.enabled = threading.Event()

    def reset(self) -> None:
        self.self_counts.clear()
        self.total_counts.clear()
        self.activity.clear()
        self.samples = self.idle = 0

    def start(self) -> None:
        sys.setswitchinterval(0.0005)  # let the sampler in often enough
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set():
            time.sleep(self.interval)
            if not self.enabled.is_set():
                continue
            frame = sys._current_frames().get(self.main_id)
            if frame is not None:
                self._record(frame)

    def _record(self, frame: FrameType) -> None:
        stack: list[str] = []
        f: FrameType | None = frame
        while f is not None:
            code = f.f_code
            stack.append(f"{_short(code.co_filename)}:{code.co_name}")
            f = f.f_back
        self.samples += 1
        leaf = stack[0]
        # uvloop waits in C: the innermost Python frame is then the runner itself
        if leaf.endswith(("runners.py:run", "base_events.py:run_forever", "selectors.py:select")) or (
            "uvicorn/server.py" in leaf
        ):
            self.idle += 1
            return
        self.self_counts[leaf] += 1
        for name in set(stack):
            self.total_counts[name] += 1
        outer_app = next((s for s in reversed(stack) if s.startswith("app/")), None)
        self.activity[outer_app or _first_interesting(stack)] += 1

    def report(self, top: int = 30) -> str:
        n = max(1, self.samples)
        busy = self.samples - self.idle
        out = [
            f"samples: {self.samples} every {self.interval * 1000:.0f} ms; event loop busy in Python "
            f"{100 * busy / n:.0f}%, idle/waiting {100 * self.idle / n:.0f}%",
            "",
            "by activity (outermost app/ frame; % of all samples):",
        ]
        out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in self.activity.most_common(15)]
        out += ["", "app/ frames, total (anywhere on the stack):"]
        app = [(k, c) for k, c in self.total_counts.most_common() if k.startswith("app/")]
        out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in app[:top]]
        out += ["", "library frames, total:"]
        lib = [(k, c) for k, c in self.total_counts.most_common() if not k.startswith("app/")]
        out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in lib[:top]]
        out += ["", "self (innermost frame):"]
        out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in self.self_counts.most_common(top)]
        return "\n".join(out)


def _first_interesting(stack: list[str]) -> str:
    for s in reversed(stack):
        if any(p in s for p in ("uvicorn/protocols", "starlette/", "strawberry/", "sqlalchemy/")):
            return s
    return stack[-1]
