"""Prometheus metrics, served at /metrics by every process (README "Metrics").

Counters and histograms are updated where the work happens; figures that are state rather than
events (subscribers, pool use, broadcast health, outbox age, leadership) are read at scrape time by
`RuntimeCollector` from the processes' live runtimes, so they cannot drift from the truth.

Each process serves its own /metrics (no prometheus multiprocess mode): the fleet runs one uvicorn
worker per container/replica and Prometheus scrapes each replica, which keeps gauges read at scrape
time (pool use, subscribers) exact; multiprocess mode cannot run custom collectors and would sum
such gauges across dead and live workers through files on disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "stockwire_http_requests_total",
    "HTTP requests answered, by route, method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "stockwire_http_request_seconds", "HTTP request duration by route", ["route"], buckets=LATENCY_BUCKETS
)
OPERATIONS = Counter(
    "stockwire_graphql_operations_total",
    "GraphQL operations executed, by operation (root field) and outcome (ok, error)",
    ["operation", "type", "outcome"],
)
OPERATION_SECONDS = Histogram(
    "stockwire_graphql_operation_seconds",
    "GraphQL operation execution time, by operation (root field)",
    ["operation", "type"],
    buckets=LATENCY_BUCKETS,
)
RESERVE_OUTCOMES = Counter(
    "stockwire_reserve_outcomes_total", "reserve/routeAndReserve calls by outcome: OK or the userError code", ["code"]
)
EVENTS = Counter("stockwire_events_total", "Inventory events recorded, by result status", ["status"])
PUBLICATION_PUSHES = Counter(
    "stockwire_publication_pushes_total", "Pushes to channel endpoints, by channel and result", ["channel", "result"]
)
PUBLICATION_SECONDS = Histogram(
    "stockwire_publication_push_seconds", "Channel endpoint push latency", ["channel"], buckets=LATENCY_BUCKETS
)
PUBLICATION_ITEMS = Counter(
    "stockwire_publication_items_acked_total", "SKU figures acknowledged by channel endpoints", ["channel"]
)
SWEEPER_EXPIRED = Counter("stockwire_sweeper_expired_total", "Holds expired and given back by the sweeper")
SWEEPER_FAILURES = Counter("stockwire_sweeper_failures_total", "Sweeper passes that failed")


class Observed(Protocol):
    """What the collector reads from a running process (app.main.Runtime implements it)."""

    def gauges(self) -> Iterable[tuple[str, str, dict[str, str], float]]: ...


_RUNTIMES: list[Observed] = []


def watch(runtime: Observed) -> None:
    _RUNTIMES.append(runtime)


def unwatch(runtime: Observed) -> None:
    if runtime in _RUNTIMES:
        _RUNTIMES.remove(runtime)


class RuntimeCollector(Collector):
    """State read at scrape time: (name, help, labels, value) tuples from each live runtime."""

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for runtime in list(_RUNTIMES):
            for name, doc, labels, value in runtime.gauges():
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(name, doc, labels=sorted(labels))
                family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


REGISTRY.register(RuntimeCollector())


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def since(start: float) -> float:
    return time.perf_counter() - start


_CHILDREN_MAX = 1024
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, kept: labels() validates, stringifies and locks on every call (about
    2.4 us, measured; recordInventoryEvents called it once per event). Bounded: past _CHILDREN_MAX
    label sets, labels() as before."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = metric.labels(*labels)
        if len(_children) < _CHILDREN_MAX:
            _children[key] = found
    return found


def record_operation_result(root_fields: Sequence[tuple[str, str]], data: Any) -> None:
    """Reserve outcomes and event statuses from what the mutation answered (its payload's codes)."""
    if not isinstance(data, dict):
        return
    for name, response_key in root_fields:
        payload = data.get(response_key)
        if not isinstance(payload, dict):
            continue
        if name in ("reserve", "routeAndReserve"):
            errors = payload.get("userErrors")
            codes = [e.get("code") for e in errors or [] if isinstance(e, dict)]
            if codes:
                for code in set(codes):
                    child(RESERVE_OUTCOMES, str(code)).inc()
            else:
                child(RESERVE_OUTCOMES, "OK").inc()
        elif name == "recordInventoryEvents":
            statuses: dict[str, int] = {}  # counted per status, then added: one inc per status, not per event
            for result in payload.get("results") or []:
                if isinstance(result, dict) and result.get("status"):
                    status = str(result["status"])
                    statuses[status] = statuses.get(status, 0) + 1
            for status, count in statuses.items():
                child(EVENTS, status).inc(count)
