"""Rates with their counts and 95% Wilson intervals: 30 prompts a language is ±9 points, so every share
this project reports carries its count and its interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._checks import check_int

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share k/n (95% by default); (0, 1) when n is 0."""
    k, n = check_int("k", k), check_int("n", n)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """k of n, with its share and 95% Wilson interval."""

    k: int
    n: int

    def __post_init__(self) -> None:
        wilson(self.k, self.n)  # validates

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def clearly_differs(self, other: Rate) -> bool:
        """True when the two 95% intervals do not overlap (a conservative test: call a difference only then)."""
        (a_lo, a_hi), (b_lo, b_hi) = self.interval, other.interval
        return a_hi < b_lo or b_hi < a_lo

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.k + other.k, self.n + other.n)

    def __str__(self) -> str:
        if not self.n:
            return "–"
        lo, hi = self.interval
        return f"{100 * self.value:.0f}% ({self.k}/{self.n}; {100 * lo:.0f}–{100 * hi:.0f})"

    def to_dict(self) -> dict:
        lo, hi = self.interval
        return {"k": self.k, "n": self.n, "rate": self.value, "low": lo, "high": hi}
