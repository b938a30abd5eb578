"""``eurosat predict``: the top classes for image files and folders, from a checkpoint or ONNX file.

Images of any size and aspect are accepted and prepared as the model's preprocessing says (resize
to its ``image_size``, its normalisation; both stored with the model), then averaged over the
model options' views. They must hold the model's bands: 8-bit RGB models take JPEG, PNG and TIFF
files; models of other bands take (Geo)TIFF or PNG patches like those they were trained on, whose
bands are found by name (GeoTIFF band descriptions) or, when the file names none, by position.
A file that cannot be used is named in the output with the reason, and the rest are classified.
When images sit in folders named after the model's classes (as in the dataset), the command also
says how many it got right.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.files import csv_text, write_text
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS
from eurosat_pipeline.inference.engines import Predictor, load_predictor
from eurosat_pipeline.inference.images import read_image
from eurosat_pipeline.inference.options import ModelOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass(frozen=True)
class Prediction:
    path: Path
    classes: list[str]
    probabilities: list[float]
    #: The class named by the image's folder, when a folder is named after one of the model's classes.
    expected: str | None = None
    #: Why the file could not be classified (then ``classes`` is empty): the rest are still predicted.
    error: str = ""


def expected_class(path: Path, classes: Sequence[str]) -> str | None:
    return next((part for part in reversed(path.parent.parts) if part in classes), None)


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    found, missing = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            missing.append(str(item))
    if missing:
        raise PipelineError(f"not found: {', '.join(missing)}")
    if not found:
        raise PipelineError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}")
    return found


def predict(
    inputs: Sequence[str | Path], model: ModelOptions, top_k: int = 3, max_pixels: int = MAX_IMAGE_PIXELS
) -> list[Prediction]:
    """The ``top_k`` classes of every image found in ``inputs``, in order. A file that cannot be read
    (another format, other bands, over ``max_pixels``) gets a :class:`Prediction` with its ``error``;
    the other files are still classified."""
    paths = find_images(inputs)
    predictor = load_predictor(model)
    images: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    for index, path in enumerate(paths):
        try:
            images[index] = read_image(path, predictor.data, max_pixels)
        except PipelineError as err:
            errors[index] = str(err)
    probabilities = classify_any_sizes(predictor, list(images.values()), model.batch_size)
    classes = predictor.data.classes
    tops = dict(zip(images, top_classes(probabilities, classes, top_k), strict=True))
    return [
        Prediction(path, *tops[index], expected_class(path, classes))
        if index in tops
        else Prediction(path, [], [], expected_class(path, classes), errors[index])
        for index, path in enumerate(paths)
    ]


def top_classes(probabilities: np.ndarray, classes: Sequence[str], top_k: int) -> list[tuple[list[str], list[float]]]:
    """Per image (a row of ``probabilities``), its ``top_k`` classes and their probabilities, most likely first."""
    k = max(1, min(top_k, len(classes)))
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [([classes[i] for i in row], [float(probabilities[n, i]) for i in row]) for n, row in enumerate(order)]


def classify_any_sizes(model: Predictor, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Probabilities for uint8 images of any sizes, in their order: images of one size go in batches."""
    probabilities = np.empty((len(images), model.data.num_classes), dtype=np.float32)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size]
            probabilities[chosen] = model.classify(np.stack([images[i] for i in chosen]))
    return probabilities


def agreement(predictions: Iterable[Prediction]) -> tuple[int, int]:
    """(correct, labelled): classified predictions whose top class matches the class their folder names."""
    labelled = [p for p in predictions if p.expected and not p.error]
    return sum(p.classes[0] == p.expected for p in labelled), len(labelled)


def failures(predictions: Iterable[Prediction]) -> list[Prediction]:
    """The files that could not be classified."""
    return [p for p in predictions if p.error]


def render(predictions: list[Prediction], fmt: str) -> str:
    """The predictions as a table, CSV or JSON; a file that could not be classified carries its error."""
    if fmt == "json":
        return json.dumps([_json_row(p) for p in predictions], indent=2) + "\n"
    if fmt == "csv":
        k = max((len(p.classes) for p in predictions), default=0)
        header = ["path", *[f"{kind}{i}" for i in range(1, k + 1) for kind in ("class", "probability")], "error"]
        rows = ([str(p.path), *_csv_cells(p, k), p.error] for p in predictions)
        return csv_text(header, rows)
    lines = []
    for p in predictions:
        top = "  ".join(f"{c} {q:.1%}" for c, q in zip(p.classes, p.probabilities, strict=True))
        lines.append(f"{p.path}  {top}" if not p.error else f"{p.path}  NOT CLASSIFIED: {p.error}")
    return "\n".join(lines) + "\n"


def _json_row(p: Prediction) -> dict[str, object]:
    row: dict[str, object] = {
        "path": str(p.path),
        "predictions": [
            {"class": c, "probability": round(q, 6)} for c, q in zip(p.classes, p.probabilities, strict=True)
        ],
    }
    if p.error:
        row["error"] = p.error
    return row


def _csv_cells(p: Prediction, k: int) -> list[str]:
    cells = [v for c, q in zip(p.classes, p.probabilities, strict=True) for v in (c, f"{q:.6f}")]
    return cells + [""] * (2 * k - len(cells))


def emit(predictions: list[Prediction], fmt: str, output: str | None, stream: TextIO | None = None) -> None:
    """The rendered predictions (to ``output`` or ``stream``), then a count on stderr that names
    how many files could not be classified."""
    text = render(predictions, fmt)
    if output:
        write_text(output, text)
    else:
        (stream or sys.stdout).write(text)
    failed = failures(predictions)
    classified = len(predictions) - len(failed)
    correct, labelled = agreement(predictions)
    if labelled:
        print(
            f"{classified} image(s) classified; {correct}/{labelled} ({correct / labelled:.1%}) predicted as the "
            "class their folder names",
            file=sys.stderr,
        )
    else:
        print(f"{classified} image(s) classified", file=sys.stderr)
    for p in failed:
        print(f"error: {p.error}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(predictions)} file(s) could not be classified", file=sys.stderr)
