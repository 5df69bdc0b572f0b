"""Counts and 95% Wilson intervals."""

import math

import pytest

from safety_neurons.rates import Z95, Rate, wilson


@pytest.mark.parametrize("k,n", [(0, 30), (6, 15), (15, 30), (29, 30), (30, 30), (1, 1), (3, 240)])
def test_wilson_bounds_are_where_the_score_test_stops_rejecting(k, n):
    """The Wilson interval is {p : |k/n − p| ≤ z·sqrt(p(1−p)/n)}: its ends solve the equality (or are 0 / 1)."""
    lo, hi = wilson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1

    def excess(p):
        return abs(k / n - p) - Z95 * math.sqrt(p * (1 - p) / n)

    for end, edge in ((lo, 0.0), (hi, 1.0)):
        assert end == edge or abs(excess(end)) < 1e-9
    grid = [i / 1000 for i in range(1, 1000)]
    inside = [p for p in grid if excess(p) <= 0]
    assert min(inside) == pytest.approx(lo, abs=2e-3) and max(inside) == pytest.approx(hi, abs=2e-3)
    assert wilson(6, 15) == (pytest.approx(0.1982, abs=1e-4), pytest.approx(0.6425, abs=1e-4))  # textbook value


def test_rate_prints_count_and_interval_and_adds_counts():
    r = Rate(6, 15)
    assert str(r) == "40% (6/15; 20–64)"
    assert r + Rate(4, 15) == Rate(10, 30)
    assert Rate(0, 0).value is None and str(Rate(0, 0)) == "–"
    assert Rate(28, 30).clearly_differs(Rate(5, 30)) and not Rate(17, 30).clearly_differs(Rate(12, 30))
    d = Rate(3, 10).to_dict()
    assert d["k"] == 3 and d["n"] == 10 and math.isclose(d["rate"], 0.3)


@pytest.mark.parametrize("k,n", [(-1, 3), (4, 3)])
def test_impossible_counts_are_refused(k, n):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        Rate(k, n)
