"""Datasets where only an extra band tells two classes apart, built on real EuroSAT images.

The pipeline must learn bands beyond red, green and blue (docs/your-own-data.md). Real EuroSAT RGB
varies as real data does; the extra bands are made here, so that the one signal a model can use to
separate two of the classes lies in them alone. Nothing here is committed; the datasets are written
to a folder you name, as uint16 GeoTIFFs without band descriptions (the common case).

- ``nir4``: 4 bands (red, green, blue, near-infrared). One real class (``--split``, Pasture by
  default) becomes two, ``<class>-low`` and ``<class>-high``, whose near-infrared levels differ by
  a wide margin against their noise; the other classes' levels are drawn across the same range, so
  the level alone names no class. Train it with ``band_names: [B04, B03, B02, B08]``.
- ``ms13``: 13 bands in EuroSAT MS's order (B01 ... B12, B8A; red, green and blue are the real
  pixels), the split class differing only in B8A and B11. Train it with
  ``bands: [B04, B03, B02, B8A, B11]``.
- ``cases``: 5 bands, B8A *before* red, green and blue, then B11 (issue 42's cases in one set). The
  split class becomes four: ``<class>-plain``; ``<class>-bright`` (B8A brighter: one band, brighter);
  ``<class>-dark`` (B11 darker: one band, darker); ``<class>-both`` (B8A brighter *and* B11 darker:
  opposite contrasts in two bands, which cancel in a stem that starts both from one filter). Each
  differs from ``plain`` in those bands alone. Train it with ``band_names: [B8A, B04, B03, B02, B11]``.

Red, green and blue are Level-1C digital numbers, the inverse of EuroSAT's stretch (as
``own_data_forms.py`` writes them); each made band is its level times the image's own texture
(so it has real spatial structure), plus noise.

    python benchmarks/extra_bands.py --zip ../shared/eurosat/EuroSAT.zip --layout nir4 --out /tmp/nir4
    python benchmarks/extra_bands.py --layout cases --out /tmp/cases --per-class 400 \
        --train 'band_names=[B8A,B04,B03,B02,B11]' --seeds 42 1 2 3 4
    .venv/bin/eurosat demo --data /tmp/nir4 -S 'band_names=[B04,B03,B02,B08]'
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:  # imported as benchmarks.extra_bands (the tests) or run as a script (its own folder is on sys.path)
    from benchmarks.own_data_forms import members, reflectance_of
except ModuleNotFoundError:
    from own_data_forms import members, reflectance_of

LAYOUTS = ("nir4", "ms13", "cases")
MS13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
DEFAULT_CLASSES = {
    "nir4": ("Pasture", "Forest", "SeaLake"),
    "ms13": ("AnnualCrop", "Forest", "Residential", "River"),
    "cases": ("Pasture", "Forest", "SeaLake"),
}

# Digital numbers of the made bands: the two levels of the split class, and their relative noise.
LOW, HIGH, NOISE = 1800.0, 2600.0, 0.04
# ``cases``: the split class's four (B8A, B11) levels, in turn.
CASES = (("plain", LOW, HIGH), ("bright", HIGH, HIGH), ("dark", LOW, LOW), ("both", HIGH, LOW))


def texture(rgb: np.ndarray) -> np.ndarray:
    """The image's brightness, scaled to mean 1: the made bands share its spatial structure."""
    brightness = rgb.astype(np.float64).mean(axis=0)
    return brightness / max(brightness.mean(), 1.0)


def made_band(level: float, shape_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``level`` times a damped copy of the image's texture, with per-pixel noise."""
    structure = 0.85 + 0.15 * texture(shape_of)
    noise = rng.normal(1.0, NOISE, size=structure.shape)
    return np.clip(level * structure * noise, 1, 10_000)


def level_of(
    class_name: str, split: str, number: int, rng: np.random.Generator, layout: str = "nir4"
) -> tuple[str, tuple[float, float]]:
    """The folder an image goes to and its made bands' levels (the first two made bands'; ``nir4``
    and ``ms13`` use the first for all): the split class takes its levels in turn, every other class
    draws each across them."""
    if class_name == split and layout == "cases":
        name, first, second = CASES[number % len(CASES)]
        return f"{split}-{name}", (first, second)
    if class_name == split:
        return (f"{split}-low", (LOW, LOW)) if number % 2 == 0 else (f"{split}-high", (HIGH, HIGH))
    first = float(rng.uniform(LOW - 300, HIGH + 300))
    # nir4 and ms13 draw one level, as they always did: the same seed makes the same images.
    return class_name, (first, float(rng.uniform(LOW - 300, HIGH + 300)) if layout == "cases" else first)


def bands_of(layout: str, rgb: np.ndarray, levels: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """The image's bands as uint16, in the layout's order."""
    level = levels[0]
    if layout == "nir4":
        return np.concatenate([rgb, made_band(level, rgb, rng)[None]]).astype(np.uint16)
    if layout == "cases":  # B8A, red, green, blue, B11
        first, last = made_band(levels[0], rgb, rng)[None], made_band(levels[1], rgb, rng)[None]
        return np.concatenate([first, rgb, last]).astype(np.uint16)
    out = []
    for name in MS13:
        if name in ("B04", "B03", "B02"):
            out.append(rgb[("B04", "B03", "B02").index(name)].astype(np.float64))
        elif name in ("B8A", "B11"):  # the signal: the split class's two levels
            out.append(made_band(level, rgb, rng))
        else:  # the same for every class: a level of its own per image, unrelated to the classes
            out.append(made_band(float(rng.uniform(800, 3000)), rgb, rng))
    return np.stack(out).astype(np.uint16)


def geotiff(pixels: np.ndarray) -> bytes:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    count, height, width = pixels.shape
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": "uint16"}
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as memory:
        with memory.open(**profile, photometric="MINISBLACK") as dst:
            dst.write(pixels)
        return memory.read()


def parts_of(layout: str) -> int:
    """How many classes the split class becomes."""
    return len(CASES) if layout == "cases" else 2


def images(
    source: Path, layout: str, classes: tuple[str, ...], per_class: int, seed: int, balanced: bool = False
) -> Iterator[tuple[Path, bytes]]:
    """``(class folder / file name, GeoTIFF bytes)`` for the chosen classes (the first is split).
    ``balanced``: the split class takes ``per_class`` images per part, so that every class the model
    sees has as many (otherwise each part is a minority class, and the classifier's prior leans
    against it on the images whose red, green and blue look like another class)."""
    rng = np.random.default_rng(seed)
    split, taken = classes[0], dict.fromkeys(classes, 0)
    limit = {name: per_class for name in classes} | {split: per_class * (parts_of(layout) if balanced else 1)}
    for class_name, stem, jpeg in members(source, None):
        if class_name not in classes or taken[class_name] >= limit[class_name]:
            continue
        folder, levels = level_of(class_name, split, taken[class_name], rng, layout)
        taken[class_name] += 1
        yield Path(folder) / f"{stem}.tif", geotiff(bands_of(layout, reflectance_of(jpeg), levels, rng))


def write_dataset(
    source: Path, layout: str, out: Path, classes: tuple[str, ...], per_class: int, seed: int, balanced: bool = False
) -> Counter[str]:
    """Write the images; their count per class folder (a class the source has too few images of for
    ``per_class`` shows here with fewer, rather than passing unnoticed). They go to a sibling folder
    renamed to ``out`` at the end: a run killed half-way leaves no ``out``, which a later run would
    otherwise take as finished and train on."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    counts: Counter[str] = Counter()
    for name, data in images(source, layout, classes, per_class, seed, balanced):
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        (partial / name).write_bytes(data)
        counts[name.parent.name] += 1
    partial.rename(out)
    return counts


def apply_ablation(ablation: dict[str, str]) -> None:
    """Ablations of the adapted stem's rule, for measuring it (keys start with ``_``): ``_stem=frozen``
    (as before: the stem follows phase2_frozen_stages), ``_init=signs|mean|zero|random`` (how new-band filters
    start), ``_stem_scale=X`` (its rate as a multiple of the head's)."""
    from eurosat_pipeline.model import stem
    from eurosat_pipeline.training import module

    if ablation.get("_stem") == "frozen":
        module.stem_must_learn = lambda pretrained, roles: False
    if "_init" in ablation:
        stem.NEW_BANDS_START = ablation["_init"]
    if "_stem_scale" in ablation:
        from eurosat_pipeline.training import schedule

        schedule.STEM_RATE_SCALE = float(ablation["_stem_scale"])
        module.STEM_RATE_SCALE = schedule.STEM_RATE_SCALE


def train_and_test(data: Path, work: Path, overrides: dict[str, str]) -> dict[str, object]:
    """The CPU recipe (``eurosat demo --data``'s params) plus ``overrides`` on the class folders
    ``data``, through the pipeline's own stages in this process: test accuracy, the split pair's
    accuracy, training time."""
    import json

    from ruamel.yaml import YAML

    from eurosat_pipeline.cli.demo import REAL_DATA_OVERRIDES
    from eurosat_pipeline.core.config import Config, config_from_mapping
    from eurosat_pipeline.data.dataset import prepare_dataset
    from eurosat_pipeline.data.split import split_archive
    from eurosat_pipeline.reporting.evaluation import EvalPaths, evaluate
    from eurosat_pipeline.training.train import TrainPaths, train

    ablation = {key: value for key, value in overrides.items() if key.startswith("_")}
    apply_ablation(ablation)
    params = {key: value for key, value in overrides.items() if not key.startswith("_")}
    text = {**REAL_DATA_OVERRIDES, "wandb_mode": "disabled", "tsne_interval": "0", "resume": "false", **params}
    values = {key: YAML(typ="safe", pure=True).load(value) for key, value in text.items()}
    config = config_from_mapping({**Config().to_dict(), **values, "data_source": str(data)}, source="overrides")
    prepared = work / "data"
    if not (prepared / "split.csv").exists():
        prepare_dataset(str(data), prepared / "eurosat.zip", prepared / "dataset.json")
        split_archive(
            prepared / "eurosat.zip", prepared / "split.csv", 0.1, 0.1, 42, stats=prepared / "band_stats.json"
        )
    run = work / "runs" / "-".join(f"{k}={v}" for k, v in sorted(overrides.items())).replace("/", "_")
    paths = TrainPaths.under(prepared, run / "models", run / "reports")
    summary = train(config, paths)
    outputs = (run / "eval" / "metrics.json", run / "eval" / "per_class.csv", run / "eval" / "predictions.csv")
    metrics = evaluate(EvalPaths(paths.best, paths.archive, paths.split, paths.dataset_info, *outputs))
    result = {
        "overrides": overrides,
        "test_acc": metrics["test"]["acc"],
        **split_class_accuracy(outputs[2]),
        "train_seconds": summary["wall_seconds"],
        "stem": summary.get("stem_adaptation"),
        "hardware": summary["hardware"],
    }
    print(json.dumps(result), flush=True)
    return result


def split_class_accuracy(predictions: Path) -> dict[str, object]:
    """``pair_acc``: the accuracy on the split class's images (named ``<class>-<part>``: only the made
    bands tell those apart), and ``recall``: each of its parts' own."""
    rows = [line.split(",") for line in predictions.read_text().splitlines()[1:]]
    split = [(actual, predicted) for _, actual, predicted, _ in rows if "-" in actual]
    parts = sorted({actual for actual, _ in split})
    recall = {part: sum(p == a for a, p in split if a == part) / sum(a == part for a, _ in split) for part in parts}
    return {"pair_acc": sum(a == p for a, p in split) / max(1, len(split)), "recall": recall}


def seed_loop(data: Path, work: Path, overrides: dict[str, str], seeds: list[int]) -> None:
    """Train once per seed (``seed=``, one at a time) and print the split class's accuracy per seed,
    its mean and its worst, then the same for each of its parts (each band case) alone: the goal is
    a mean of 95 % and a worst of 90 %, for the pair and for every case."""
    import json

    runs = [train_and_test(data, work, {**overrides, "seed": str(seed)}) for seed in seeds]
    accuracies = [run["pair_acc"] for run in runs]
    line = {"overrides": overrides, "seeds": seeds, "pair_acc": accuracies}
    line |= {"mean": float(np.mean(accuracies)), "worst": min(accuracies)}
    parts = sorted(runs[0]["recall"])
    line["per_part"] = {part: mean_and_worst([run["recall"][part] for run in runs]) for part in parts}
    print(json.dumps(line), flush=True)


def mean_and_worst(values: list[float]) -> dict[str, object]:
    return {"per_seed": values, "mean": float(np.mean(values)), "worst": min(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", type=Path, default=Path("../shared/eurosat/EuroSAT.zip"))
    parser.add_argument("--layout", choices=LAYOUTS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the class folders into")
    parser.add_argument("--classes", nargs="+", help="real classes to use; the first is split in two")
    parser.add_argument("--per-class", type=int, default=600, help="real images of each class (default: 600)")
    parser.add_argument(
        "--balanced",
        action="store_true",
        help="the split class takes --per-class images per part (each class the model sees has as many)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the made bands' seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="with --train: train once per training seed")
    parser.add_argument(
        "--train",
        nargs="*",
        metavar="KEY=VALUE",
        help="then train the CPU recipe on it with these params changed (under OUT.work/), and print the result",
    )
    args = parser.parse_args()
    classes = tuple(args.classes or DEFAULT_CLASSES[args.layout])
    if not args.out.exists():
        written = write_dataset(args.zip, args.layout, args.out, classes, args.per_class, args.seed, args.balanced)
        names = ", ".join(classes)
        print(f"{written.total()} images, {args.layout}, classes {names} ({classes[0]} split) -> {args.out}")
        print("per class folder: " + ", ".join(f"{name} {count}" for name, count in sorted(written.items())))
    if args.train is not None:
        overrides = dict(item.split("=", 1) for item in args.train)
        work = args.out.with_name(args.out.name + ".work")
        if args.seeds:
            seed_loop(args.out, work, overrides, args.seeds)
        else:
            train_and_test(args.out, work, overrides)


if __name__ == "__main__":
    main()
