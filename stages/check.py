"""DVC stage: validate params.yaml, hash the pretrained weights.

It depends on every key of params.yaml, so it reruns whenever the file changes: a key that no
other stage declares (a typo, a stale key) would change no stage's dependencies, and DVC would skip
everything and exit 0 as if the value had been used. The pretrained weights are named by a path or
package in params.yaml; DVC hashes the weights folder (``--weights-dir``, a dependency of this
stage), and their hash in ``--weights-info`` (a dependency of train) makes a changed file retrain.
"""

from __future__ import annotations

import argparse

from eurosat_pipeline.core.config import load_config
from eurosat_pipeline.core.stage import run_stage
from eurosat_pipeline.model.weights import check_pretrained_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--weights-info", required=True, help="JSON record of the pretrained weights to write")
    parser.add_argument("--weights-dir", required=True, help="the folder of local weights files DVC hashes")
    args = parser.parse_args()
    config = load_config(args.params)
    record = check_pretrained_weights(config, args.weights_info, args.weights_dir)
    print(f"{args.params}: every key valid; pretrained weights: {record['pretrained_weights'] or 'none'}")


if __name__ == "__main__":
    run_stage(main)
