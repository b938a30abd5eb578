"""Error-adjusted areas with 95 % confidence intervals (Olofsson et al. 2014, "Good practices for
estimating area and assessing accuracy of land change", Remote Sensing of Environment 148: 42-57).

A map's cell counts are a biased area estimate: misclassification moves area between classes. The
stratified estimator takes the map's classes as strata and a sample error matrix ``n`` (rows: map
class i, columns: reference class j):

- ``W_i``: the share of the mapped area that the map gives class i;
- ``p_ij = W_i n_ij / n_i.``: the estimated share of the area mapped i that is really j;
- ``area_j = A sum_i p_ij`` (A: the mapped area);
- ``SE(p_.j) = sqrt(sum_i W_i² (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1))``, ``CI95 = 1.96 SE A``.

The matrix comes from the model's test split (the evaluate stage's ``per_class.csv``), a proxy for
the mapped area until the user gives reference samples of it (``--reference points.csv``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eurosat_pipeline.core.errors import MapError
from eurosat_pipeline.maps.result import NODATA, LandUseMap

Z95 = 1.96  # the normal quantile of a two-sided 95 % interval
REFERENCE_COLUMNS = ("x", "y", "class")
PROXY_NOTE = (
    "the error-adjusted areas are a proxy from the test split's confusion matrix ({source}) until reference "
    "samples of the mapped area are given (--reference points.csv)"
)


@dataclass(frozen=True)
class ErrorMatrix:
    """Sample counts ``counts[i][j]``: samples the map puts in class i whose reference class is j."""

    classes: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    source: str  # the file it came from, as the table names it
    from_reference: bool = False  # samples of the mapped area, not the test split

    def check_classes(self, model_classes: tuple[str, ...]) -> None:
        """The matrix must be over the model's classes, in its order."""
        if tuple(self.classes) != tuple(model_classes):
            raise MapError(
                f"{self.source}: its classes ({', '.join(self.classes)}) are not the model's "
                f"({', '.join(model_classes)}); give the confusion matrix of this model's evaluation (--accuracy)"
            )


@dataclass(frozen=True)
class ReferenceSamples:
    """The user's reference samples of the mapped area: ``(x, y, class name, line)`` in the map's CRS."""

    points: tuple[tuple[float, float, str, int], ...]
    source: str

    def check_classes(self, model_classes: tuple[str, ...]) -> None:
        for _, _, name, line in self.points:
            if name not in model_classes:
                raise MapError(
                    f"{self.source}, line {line}: class {name!r} is not one of the model's ({', '.join(model_classes)})"
                )

    def matrix(self, result: LandUseMap) -> tuple[ErrorMatrix, int]:
        """The error matrix of the points that fall on classified cells, and how many did not."""
        from rasterio.transform import rowcol

        names = result.class_names
        counts = np.zeros((len(names), len(names)), dtype=np.int64)
        outside = 0
        rows, cols = result.classes.shape
        for x, y, name, _ in self.points:
            row, col = rowcol(result.transform, x, y)
            mapped = result.classes[row, col] if 0 <= row < rows and 0 <= col < cols else NODATA
            if mapped == NODATA:
                outside += 1
                continue
            counts[mapped, names.index(name)] += 1
        as_tuples = tuple(tuple(int(n) for n in row) for row in counts)
        return ErrorMatrix(names, as_tuples, self.source, from_reference=True), outside


def read_confusion(path: str | Path) -> ErrorMatrix:
    """The evaluate stage's ``per_class.csv`` (a row per reference class, a column of counts per
    predicted class, as scikit-learn's confusion matrix) as an error matrix of map x reference."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise MapError(f"--accuracy {path}: cannot be read ({err})") from err
    if not rows or "class" not in rows[0]:
        raise MapError(
            f"--accuracy {path}: not the evaluate stage's per_class.csv (a 'class' column, one row per class)"
        )
    classes = tuple(row["class"] for row in rows)
    missing = [name for name in classes if name not in rows[0]]
    if missing:
        raise MapError(f"--accuracy {path}: no count column for class(es) {', '.join(missing)}")
    try:
        by_reference = np.array([[int(row[name]) for name in classes] for row in rows], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise MapError(f"--accuracy {path}: the confusion counts must be whole numbers ({err})") from err
    if (by_reference < 0).any():
        raise MapError(f"--accuracy {path}: the confusion counts must not be negative")
    # scikit-learn's rows are the true (reference) classes; the estimator's rows are the map's.
    counts = tuple(tuple(int(n) for n in row) for row in by_reference.T)
    return ErrorMatrix(classes, counts, str(path))


def read_reference(path: str | Path) -> ReferenceSamples:
    """``x, y, class`` rows (the map's CRS, the class by name)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = tuple(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise MapError(f"--reference {path}: cannot be read ({err})") from err
    if not set(REFERENCE_COLUMNS) <= set(header):
        raise MapError(
            f"--reference {path}: needs the columns {', '.join(REFERENCE_COLUMNS)}; it has {', '.join(header)}"
        )
    points = []
    for line, row in enumerate(rows, start=2):
        try:
            x, y = float(row["x"]), float(row["y"])
        except (TypeError, ValueError):
            raise MapError(f"--reference {path}, line {line}: x and y must be numbers") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise MapError(f"--reference {path}, line {line}: x and y must be finite")
        points.append((x, y, (row["class"] or "").strip(), line))
    if not points:
        raise MapError(f"--reference {path}: no samples")
    return ReferenceSamples(tuple(points), str(path))


def adjusted_areas(
    counts: np.ndarray, mapped: np.ndarray, unit_area: float
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Olofsson's stratified estimate of each class's area and its 95 % half-interval, in the units of
    ``unit_area`` (the area of one mapped cell), from the sample ``counts`` (map x reference) and the
    map's cells per class (``mapped``); and the map classes whose samples could not correct them
    (fewer than 2 samples: they are taken as mapped, and add no variance)."""
    counts = np.asarray(counts, dtype=np.float64)
    mapped = np.asarray(mapped, dtype=np.float64)
    total = mapped.sum()
    if total == 0:
        zeros = np.zeros(len(mapped))
        return zeros, zeros, []
    weights = mapped / total
    per_stratum = counts.sum(axis=1)
    unusable = [i for i in range(len(mapped)) if mapped[i] > 0 and per_stratum[i] < 2]
    shares = np.zeros_like(counts)  # n_ij / n_i.
    usable = per_stratum >= 2
    shares[usable] = counts[usable] / per_stratum[usable, None]
    proportions = weights[:, None] * shares  # p_ij
    for i in unusable:
        proportions[i] = 0.0
        proportions[i, i] = weights[i]
    variance = np.zeros(len(mapped))
    for i in np.flatnonzero(usable):
        variance += weights[i] ** 2 * shares[i] * (1 - shares[i]) / (per_stratum[i] - 1)
    area = total * unit_area
    return area * proportions.sum(axis=0), Z95 * np.sqrt(variance) * area, unusable


def adjusted_rows(result: LandUseMap, matrix: ErrorMatrix) -> tuple[list[dict[str, float]], list[str]]:
    """Per class of ``result``, ``adjusted_hectares`` and ``ci95_hectares`` (rounded), and notes."""
    if result.tile_area_m2 is None:
        return [], ["no error-adjusted areas: the map has no areas (no projected CRS)"]
    mapped = np.bincount(result.classes[result.classes != NODATA], minlength=len(result.class_names))
    area, ci, unusable = adjusted_areas(np.array(matrix.counts), mapped, result.tile_area_m2 / 10_000)
    rows = [
        {"adjusted_hectares": round(float(a), 4), "ci95_hectares": round(float(c), 4)}
        for a, c in zip(area, ci, strict=True)
    ]
    notes = [
        f"{matrix.source} has fewer than 2 samples the map puts in {result.class_names[i]}: "
        "its mapped area is taken as it is, with no interval"
        for i in unusable
    ]
    return rows, notes


def fingerprint(matrix: ErrorMatrix | ReferenceSamples | None) -> str | None:
    """A short digest of an error matrix or reference samples: a region re-maps a scene whose
    adjusted areas would come from other counts."""
    import hashlib

    return None if matrix is None else hashlib.sha256(repr(matrix).encode()).hexdigest()[:16]
