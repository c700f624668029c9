"""Static buffers against the buffer that follows demand, on synthetic demand traces (issue 18).

    .venv/bin/python bench/simulate.py [--lag-minutes 10] [--seed 7] [--hours 48]

Pure Python on the domain functions (app/domain/demand.py): no server, no database. Each trace is a small
catalogue of SKUs with their own demand over time (seeded). One marketplace hears of every change `lag`
minutes late; the rest of the demand comes through channels that see the stock at once. Minute by minute:

- the marketplace shows the figure pushed `lag` minutes ago, less its own sales since (it counts those
  itself); a marketplace order is accepted while that is above 0, and is *oversold* when the stock is gone;
- the other channels sell only what is really there;
- the figure pushed is `max(0, stock - buffer)`; *withheld* is what the buffer hides of real stock
  (min(buffer, stock)), summed as unit-hours; a *stockout* is a minute in which a SKU shows 0 on the
  marketplace.

The static buffer is one number for every SKU (what a channel rule holds today), swept over a range; the
dynamic buffer is `clamp(ceil(velocity x lag x factor), min, max)` per SKU, velocity from the sales seen
(half-life), moved with hysteresis (`settle`). The verdict per trace compares the dynamic buffer with the
best static buffer that withholds no more unit-hours than it does (fewest oversold), and with the static
buffer that oversells no more than it does (fewest unit-hours withheld).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.domain import demand

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MARKETPLACE_SHARE = 0.5  # of every SKU's demand, what comes through the lagged marketplace


@dataclass(frozen=True)
class Sku:
    name: str
    stock: int
    rate: Callable[[float], float]  # units per hour at hour h
    restocks: tuple[tuple[float, int], ...] = ()  # (hour, units)


@dataclass(frozen=True)
class Trace:
    name: str
    skus: tuple[Sku, ...]


def _steady(per_hour: float) -> Callable[[float], float]:
    return lambda h: per_hour


def traces() -> list[Trace]:
    """Steady sellers, a viral spike, a restock, a flash sale beside a long tail: stock runs out in each."""
    steady = Trace(
        "steady sellers",
        tuple(
            Sku(f"S{i}", rate * 16, _steady(rate), ((24.0, rate * 16),)) for i, rate in enumerate([1, 3, 8, 20, 40, 60])
        ),
    )

    def viral(h: float) -> float:
        # 4 an hour, then a post goes viral at hour 12: 150 an hour, fading with a 2-hour half-life
        return 4.0 if h < 12 else 4.0 + 150.0 * 0.5 ** ((h - 12) / 2)

    spike = Trace(
        "viral spike",
        (
            Sku("V", 200, viral, ((30.0, 100),)),
            Sku("Q1", 30, _steady(1)),
            Sku("Q2", 60, _steady(2)),
            Sku("Q3", 150, _steady(5)),
        ),
    )

    def pent_up(h: float) -> float:
        # steady 25 an hour; after the restock at hour 20, waiting buyers come back at 120 an hour
        return 25.0 if h < 20 else 25.0 + 95.0 * 0.5 ** ((h - 20) / 1.5)

    restock = Trace(
        "restock",
        (
            Sku("R", 100, pent_up, ((20.0, 250),)),
            Sku("Q1", 25, _steady(1), ((30.0, 20),)),
            Sku("Q2", 80, _steady(3)),
        ),
    )

    def flash(h: float) -> float:
        return 10.0 if not 30 <= h < 31 else 240.0  # a one-hour flash sale

    mixed = Trace(
        "flash sale, long tail",
        (
            Sku("F", 400, flash),
            *(Sku(f"T{i}", 8, _steady(0.3)) for i in range(8)),
        ),
    )
    return [steady, spike, restock, mixed]


@dataclass
class Result:
    oversold: int = 0
    withheld_unit_hours: float = 0.0
    stockout_minutes: int = 0
    sold: int = 0


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def simulate(trace: Trace, lag_minutes: int, hours: int, seed: int, policy: str, static: int = 0) -> Result:
    """Replay `trace` with a static buffer of `static` units, or the dynamic one (policy "dynamic")."""
    rng = random.Random(seed)  # the same demand for every policy
    rule = demand.DynamicBufferRule(factor=1.3, minimum=0, maximum=None, band=2)
    half_life = 1800.0  # 30 minutes: a spike is seen within minutes
    out = Result()
    for sku in trace.skus:
        stock = sku.stock
        restocks = dict(sku.restocks)
        count: demand.DecayedCount | None = None
        applied: int | None = None
        pushed: deque[tuple[int, int]] = deque()  # (figure, marketplace sales so far) per minute
        mp_sales = 0
        for minute in range(hours * 60):
            now = T0 + timedelta(minutes=minute)
            hour = minute / 60
            for at, units in list(restocks.items()):
                if hour >= at:
                    stock += units
                    del restocks[at]
            if policy == "dynamic":
                rate = demand.rate_per_second(count, now, half_life)
                target = demand.buffer_target(rate, lag_minutes * 60.0, rule)
                applied = demand.settle(applied, target, rule.band)
                buffer = applied
            else:
                buffer = static
            figure = max(0, stock - buffer)
            if not pushed:
                pushed.extend([(figure, 0)] * lag_minutes)  # what the marketplace was told at the start
            pushed.append((figure, mp_sales))
            out.withheld_unit_hours += min(buffer, max(0, stock)) / 60
            # what the marketplace shows: the figure from `lag` minutes ago, less its own sales since
            seen, sales_then = pushed.popleft()
            if seen - (mp_sales - sales_then) <= 0:
                out.stockout_minutes += 1
            sold_now = 0
            for _ in range(_poisson(rng, sku.rate(hour) / 60)):
                if rng.random() < MARKETPLACE_SHARE:
                    if seen - (mp_sales - sales_then) <= 0:
                        continue  # the marketplace shows 0: the buyer goes away
                    mp_sales += 1
                    if stock > 0:
                        stock -= 1
                    else:
                        out.oversold += 1
                    sold_now += 1
                elif stock > 0:
                    stock -= 1
                    sold_now += 1
            out.sold += sold_now
            if sold_now:
                count = demand.add_sale(count, sold_now, now, half_life)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lag-minutes", type=int, default=10)
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-static", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"lag {args.lag_minutes} min, {args.hours} h, seed {args.seed}; marketplace share {MARKETPLACE_SHARE:.0%}")
    print(
        "| trace | buffer | oversold | withheld (unit-h) | stockout min | "
        "best static withholding <= dynamic | static overselling <= dynamic |"
    )
    print("|---|---|---|---|---|---|---|")
    wins = 0
    for trace in traces():
        statics = {
            b: simulate(trace, args.lag_minutes, args.hours, args.seed, "static", b) for b in range(args.max_static + 1)
        }
        dyn = simulate(trace, args.lag_minutes, args.hours, args.seed, "dynamic")
        same_hold = [(r.oversold, b) for b, r in statics.items() if r.withheld_unit_hours <= dyn.withheld_unit_hours]
        same_over = [(r.withheld_unit_hours, b) for b, r in statics.items() if r.oversold <= dyn.oversold]
        best_hold = min(same_hold) if same_hold else None
        best_over = min(same_over) if same_over else None
        hold_text = "none" if best_hold is None else f"{best_hold[1]} u: {best_hold[0]} oversold"
        over_text = "none in range" if best_over is None else f"{best_over[1]} u: {best_over[0]:.0f} unit-h"
        won = (best_hold is None or dyn.oversold < best_hold[0]) or (
            best_over is None or dyn.withheld_unit_hours < best_over[0]
        )
        wins += won
        for b in (0, 2, 5, 10, 20):
            r = statics[b]
            print(
                f"| {trace.name} | static {b} | {r.oversold} | {r.withheld_unit_hours:.0f} | {r.stockout_minutes} | | |"
            )
        print(
            f"| {trace.name} | **dynamic** | **{dyn.oversold}** | **{dyn.withheld_unit_hours:.0f}** | "
            f"{dyn.stockout_minutes} | {hold_text} | {over_text} |"
        )
    print(f"dynamic better on {wins} of {len(traces())} traces")
    return 0 if wins >= 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
