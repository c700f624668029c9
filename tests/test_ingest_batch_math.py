"""services.events._size_after (the per-event bound check of an ingested batch) computes in plain ints
what Magnitude.replacing computed: the same answer for any positions and moves, at the Int bounds too."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.domain.quantities import INT_MAX, INT_MIN, Delta, Magnitude, Position, excess, grows_out_of_range
from app.services.events import _size_after


def _reference(
    size: Magnitude, positions: dict[tuple[int, int], Position], moves: list[tuple[tuple[int, int], Delta]]
) -> Magnitude | None:
    start = size
    for pair, delta in moves:
        before = positions[pair]
        after = before.plus(delta)
        if grows_out_of_range(excess(before), excess(after)):
            return None
        size = size.replacing(before, after)
    return None if grows_out_of_range(start.excess, size.excess) else size


figure = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.integers(min_value=INT_MIN - 10, max_value=INT_MAX + 10),
    st.sampled_from([0, INT_MAX, INT_MAX - 1, INT_MIN, -INT_MAX, 10**9, 2 * 10**9]),
)
positions = st.builds(Position, figure, figure, figure, figure, figure, figure)
deltas = st.builds(Delta, figure, figure, figure, figure, figure, figure)
sizes = st.builds(Magnitude, figure, figure, figure, figure)


@given(size=sizes, here=positions, there=positions, first=deltas, second=deltas, two=st.booleans())
def test_size_after_is_magnitude_replacing(
    size: Magnitude, here: Position, there: Position, first: Delta, second: Delta, two: bool
) -> None:
    at = {(1, 1): here, (1, 2): there}
    moves = [((1, 1), first)] + ([((1, 2), second)] if two else [])
    given_after = [(at[p], at[p].plus(d), d) for p, d in moves]  # as _apply_batch makes each after once
    assert _size_after(size, given_after) == _reference(size, at, moves)
