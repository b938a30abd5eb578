"""The from-to table of two aligned maps, and the change that classifier error alone would show.

**Transitions** are counted over the cells classified at both dates: ``counts[i][j]`` cells were
class i before and class j after. Every other cell of BEFORE's grid is excluded and counted under
one reason, the first that applies in :data:`EXCLUSIONS`' order (BEFORE's status before AFTER's:
a cell masked at both dates counts as ``masked before``), so the compared and excluded cells add
up to BEFORE's grid.

**Spurious change.** Two maps of an unchanged place still differ where the classifier erred at one
date and not at the other. From the test split's confusion matrix (``counts[j][t]``: map class j,
reference class t, as :class:`~eurosat_pipeline.maps.accuracy.ErrorMatrix` holds it):

- ``P(j | t) = counts[j][t] / sum_j counts[j][t]``: how often a cell truly t is mapped j (a class
  with no reference sample is taken as always mapped right);
- ``p_t``: each class's true share of the compared cells, by Olofsson's stratified estimator
  (:func:`~eurosat_pipeline.maps.accuracy.adjusted_areas`) applied to each date's mapped counts over
  the compared cells, then averaged over the two dates: under "no real change" both maps estimate
  the same shares, the mean uses both, and swapping the dates gives the same estimate (the
  expected table is then the transpose, as it should be);
- with errors independent between the dates, the expected count of the apparent transition i -> j
  (i != j) over N compared cells is ``E_ij = N sum_t p_t P(i | t) P(j | t)``.

A transition **stands out** when so many cells are unlikely from error alone: a count of rare,
independent errors is about Poisson with mean E, and the transition stands out when
``P(X >= observed | Poisson(E))`` is below 0.00135, the one-sided tail of three standard deviations
of a normal distribution (about one false alarm per 740 transitions tested; a 10-class table has
90). For large E this is about ``observed > E + 3 sqrt(E)``; for small E it is stricter than that normal
rule, which would flag a single cell where E = 0.09 (a Poisson tail of 8.6 %). Assumptions (docs/maps.md): errors
independent between dates (one model on two similar scenes tends to err alike at both: the maps
then disagree less than E says, so E over-states the noise and the rule is conservative), and the
test split stands for the mapped area (its classes' errors; the shares come from the maps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eurosat_pipeline.change.grid import OUTSIDE, AlignedPair
from eurosat_pipeline.maps.accuracy import ErrorMatrix, adjusted_areas
from eurosat_pipeline.maps.result import NODATA, CellStatus

#: Why a cell of BEFORE's grid is not compared, in the order a cell is counted (its first reason).
EXCLUSIONS = (
    ("masked before", "before", CellStatus.MASKED),
    ("uncertain before", "before", CellStatus.UNCERTAIN),
    ("nodata before", "before", CellStatus.NODATA),
    ("outside after", "after", OUTSIDE),
    ("masked after", "after", CellStatus.MASKED),
    ("uncertain after", "after", CellStatus.UNCERTAIN),
    ("nodata after", "after", CellStatus.NODATA),
)
#: The Poisson tail below which a transition stands out: a normal distribution's beyond 3 sigma, one-sided.
STANDS_OUT_TAIL = 0.00135
NO_MATRIX_NOTE = (
    "no expected change from classifier error: give the test split's confusion matrix "
    "(--accuracy reports/eval/per_class.csv, the evaluate stage's)"
)


@dataclass
class ChangeTable:
    """The transitions (cells), the excluded cells by reason, and the expected spurious change."""

    class_names: tuple[str, ...]
    counts: np.ndarray  # K x K: cells class i before and j after
    excluded: dict[str, int]
    cell_m2: float | None  # a BEFORE cell's area (None without a projected CRS)
    expected: np.ndarray | None = None  # K x K: cells expected from classifier error alone (i != j)
    notes: list[str] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return int(self.counts.sum())

    @property
    def changed(self) -> int:
        return self.compared - int(np.trace(self.counts))

    def hectares(self, cells: float) -> float | None:
        return None if self.cell_m2 is None else cells * self.cell_m2 / 10_000

    def stands_out(self, i: int, j: int) -> bool | None:
        """Whether the transition i -> j exceeds the change classifier error alone explains (None:
        no expected change known, or no change: i == j)."""
        if self.expected is None or i == j:
            return None
        return stands_out(int(self.counts[i, j]), float(self.expected[i, j]))

    def transitions(self, changed_only: bool = False) -> list[tuple[int, int]]:
        """``(from, to)`` of every transition with cells, the biggest first."""
        pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(self.counts), strict=True)]
        if changed_only:
            pairs = [(i, j) for i, j in pairs if i != j]
        return sorted(pairs, key=lambda p: (-int(self.counts[p]), p))


def stands_out(observed: int, expected: float) -> bool:
    """Whether ``observed`` cells are unlikely from error alone: the Poisson tail ``P(X >= observed)``
    of mean ``expected`` below :data:`STANDS_OUT_TAIL` (see the module's docstring)."""
    return observed > expected and poisson_tail(observed, expected) < STANDS_OUT_TAIL


def poisson_tail(count: int, mean: float) -> float:
    """``P(X >= count)`` for X Poisson with ``mean``, for ``count`` above the mean: the terms from
    ``count`` up (each smaller than the last there), summed in log space until they stop counting."""
    if count <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    log_mean = math.log(mean)
    total, x = 0.0, count
    while True:
        term = math.exp(-mean + x * log_mean - math.lgamma(x + 1))
        total += term
        if term <= total * 1e-12:
            return min(total, 1.0)
        x += 1


def codes_of(pair: AlignedPair) -> tuple[np.ndarray, np.ndarray]:
    """Per BEFORE cell, whether it is compared, and its ``from * K + to`` code there (uint16)."""
    compared = (pair.before_status == CellStatus.CLASSIFIED) & (pair.after_status == CellStatus.CLASSIFIED)
    k = len(pair.before.class_names)
    codes = pair.before.classes.astype(np.uint16) * k + pair.after_classes.astype(np.uint16)
    return compared, np.where(compared, codes, NODATA).astype(np.uint16)


def excluded_cells(pair: AlignedPair, compared: np.ndarray) -> dict[str, int]:
    """Cells not compared, each under its first reason (see :data:`EXCLUSIONS`)."""
    left = ~compared
    counted: dict[str, int] = {}
    for reason, date, status in EXCLUSIONS:
        layer = pair.before_status if date == "before" else pair.after_status
        hit = left & (layer == status)
        counted[reason] = int(hit.sum())
        left &= ~hit
    return counted


def cross_tabulate(pair: AlignedPair, matrix: ErrorMatrix | None) -> tuple[ChangeTable, np.ndarray]:
    """The change table of an aligned pair (with the expected spurious change when ``matrix`` is
    given), and the per-cell codes (NODATA where not compared)."""
    names = tuple(pair.before.class_names)
    k = len(names)
    compared, codes = codes_of(pair)
    counts = np.bincount(codes[compared].astype(np.int64), minlength=k * k).reshape(k, k)
    table = ChangeTable(names, counts, excluded_cells(pair, compared), pair.before.tile_area_m2)
    if matrix is None:
        table.notes.append(NO_MATRIX_NOTE)
    else:
        matrix.check_classes(names)
        table.expected = expected_transitions(matrix, counts.sum(axis=1), counts.sum(axis=0))
        table.notes.append(
            f"expected change from classifier error: the test split's confusion matrix ({matrix.source}), "
            "errors taken as independent between the dates; a transition stands out where its cells are "
            f"less likely than {STANDS_OUT_TAIL} from error alone (a Poisson count of mean expected)"
        )
    return table, codes


def mapped_given_true(counts: np.ndarray) -> np.ndarray:
    """``P[j, t] = P(map j | true t)`` from an error matrix of map x reference (columns sum to 1; a
    class with no reference sample is taken as always mapped right)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=0)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    for t in np.flatnonzero(totals == 0):
        shares[t, t] = 1.0
    return shares


def true_shares(counts: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """Each class's true share of the mapped cells (Olofsson's stratified estimate; 0 without cells)."""
    total = float(np.asarray(mapped).sum())
    if total == 0:
        return np.zeros(len(mapped))
    areas, _, _ = adjusted_areas(counts, mapped, 1.0)
    return areas / total


def expected_transitions(matrix: ErrorMatrix, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``E[i, j]``: cells expected to change i -> j from classifier error alone over the compared
    cells (``before``/``after``: their mapped counts per class at each date); the diagonal is 0."""
    counts = np.asarray(matrix.counts, dtype=np.float64)
    shares = (true_shares(counts, before) + true_shares(counts, after)) / 2
    given = mapped_given_true(counts)
    expected = float(np.sum(before)) * (given * shares) @ given.T
    np.fill_diagonal(expected, 0.0)
    return expected
