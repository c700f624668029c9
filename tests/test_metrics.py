"""Issue 16 item 2: /metrics moves when work happens."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api
from tests.helpers import RESERVE, catalogue, event, record


async def _scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_when_work_happens(api: Api) -> None:
    before = await _scrape(api)
    await catalogue(api, ["SKU-M"], [("WH-M", 10)])
    await record(api, event("RECEIVED", "SKU-M", "WH-M", 5))
    ok = await api.ok(RESERVE, input={"idempotencyKey": "m-1", "lines": [{"skuCode": "SKU-M", "quantity": 2}]})
    assert ok["reserve"]["userErrors"] == []
    refused = await api.ok(RESERVE, input={"idempotencyKey": "m-2", "lines": [{"skuCode": "SKU-M", "quantity": 999}]})
    assert refused["reserve"]["userErrors"][0]["code"] == "INSUFFICIENT_STOCK"
    after = await _scrape(api)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("stockwire_reserve_outcomes_total", code="OK") == 1
    assert moved("stockwire_reserve_outcomes_total", code="INSUFFICIENT_STOCK") == 1
    assert moved("stockwire_events_total", status="APPLIED") == 1
    assert moved("stockwire_graphql_operations_total", operation="reserve", type="mutation", outcome="ok") == 2
    assert moved("stockwire_graphql_operation_seconds_count", operation="reserve", type="mutation") == 2
    assert moved("stockwire_http_requests_total", route="/graphql", method="POST", status="200") >= 4
    assert _value(after, "stockwire_broadcast_up") == 1.0
    assert _value(after, "stockwire_db_pool_size") >= 0
    assert ("stockwire_outbox_oldest_age_seconds", ()) in after
    assert ("stockwire_subscribers", ()) in after


def test_an_answers_events_and_reserve_outcomes_are_counted_per_status() -> None:
    """One answer's statuses counted and added once each (metrics.child keeps the labelled series)."""
    from prometheus_client import REGISTRY

    from app.observability.metrics import record_operation_result

    def now(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {s: now("stockwire_events_total", status=s) for s in ("APPLIED", "DUPLICATE", "SUPERSEDED")}
    statuses = ["APPLIED", "DUPLICATE", "APPLIED", None, "APPLIED", "DUPLICATE"]
    results = [{"index": i, "status": s} for i, s in enumerate(statuses)] + ["not a result"]
    for _ in range(2):
        record_operation_result([("recordInventoryEvents", "e")], {"e": {"results": results, "userErrors": []}})
    assert {s: now("stockwire_events_total", status=s) - before[s] for s in before} == {
        "APPLIED": 6,
        "DUPLICATE": 4,
        "SUPERSEDED": 0,
    }
    ok, short = now("stockwire_reserve_outcomes_total", code="OK"), now("stockwire_reserve_outcomes_total", code="X")
    record_operation_result([("reserve", "a"), ("reserve", "b")], {"a": {"userErrors": []}, "b": None})
    record_operation_result([("reserve", "r")], {"r": {"userErrors": [{"code": "X"}, {"code": "X"}]}})
    assert now("stockwire_reserve_outcomes_total", code="OK") == ok + 1
    assert now("stockwire_reserve_outcomes_total", code="X") == short + 1
