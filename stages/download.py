"""DVC stage: fetch the data source, verify every image, write the canonical archive."""

from __future__ import annotations

import argparse

from eurosat_pipeline.core.config import load_config
from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.data.dataset import prepare_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--archive", required=True, help="canonical zip to write")
    parser.add_argument("--info", required=True, help="JSON description of the data to write")
    parser.add_argument("--images", required=True, help="decoded array (.npy) to write")
    args = parser.parse_args()
    config = load_config(args.params)
    info = prepare_dataset(
        config.data_source,
        args.archive,
        args.info,
        config.synthetic_images_per_class,
        images=args.images,
        max_image_pixels=config.max_image_pixels,
    )
    note = " (SYNTHETIC)" if info["synthetic"] else ""
    bands = ", ".join(info["band_names"]) if info["band_names"] else f"{info['bands']} unnamed band(s)"
    print(
        f"{info['num_images']} images of {len(info['classes'])} classes from {info['source']}{note} "
        f"({bands}, {info['dtype']}) -> {args.archive}, {args.images}"
    )
    skipped = info.get("skipped_files")
    if skipped:
        print(f"skipped {skipped['count']} file(s) that are not images, e.g. {', '.join(skipped['examples'][:3])}")


if __name__ == "__main__":
    run_stage(main)
