"""A server freezes its start-up heap out of garbage collection and collects its youngest generation less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app.main import _tune_gc
from app.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_default_threshold_freezes_the_start_up_heap(restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKWIRE_GC_THRESHOLD", raising=False)  # the tests turn it off for themselves
    threshold = Settings().gc_threshold
    assert threshold == 10_000
    _tune_gc(threshold)
    assert gc.get_threshold() == (10_000, 50, 100)
    assert gc.get_freeze_count() > 1000  # modules, the schema and everything else alive now


def test_zero_keeps_pythons_defaults(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    _tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen
