"""Loading checkpoints safely, rebuilding the model from one, and deciding whether to resume.

Checkpoints are loaded with ``weights_only=True``: a file that carries a pickled payload (code that
would run on load) is refused, not executed. Nothing but plain data and tensors is ever needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eurosat_pipeline.core.config import Config, stored_config
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.core.errors import CheckpointError, ConfigError, first_line
from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.model.classifier import Classifier, build_model
from eurosat_pipeline.model.preprocessing import Preprocessing

log = logging.getLogger(__name__)
RETRAIN = "it was written by an older train stage: run `dvc repro train` to retrain it."

# Keys that change what training computes; the others (tracking, resume itself) do not.
_NOT_TRAINING = {"wandb_mode", "wandb_project", "wandb_entity", "resume", "tsne_interval"}
FINGERPRINT_KEY = "pipeline_fingerprint"
PREPROCESSING_KEY = "preprocessing"
WEIGHTS_KEY = "pretrained_weights"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of this pipeline as plain data, refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. Train first (`dvc repro train`).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it contains Python objects outside the allow-list for "
            f"weights-only loading, which could run code ({first_line(err)}). Use a checkpoint "
            "written by this pipeline."
        ) from err
    except Exception as err:  # a random file fails inside torch's unpickler in many ways
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {first_line(err)}).") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict').")
    if "config" not in checkpoint.get("hyper_parameters", {}):
        raise CheckpointError(f"{path}: not a checkpoint of this pipeline (no stored config).")
    return checkpoint


@dataclass(frozen=True)
class StoredModel:
    """What a checkpoint says about its model, read without building it (the model card's facts)."""

    config: Config
    data: DataSpec
    preprocessing: Preprocessing
    pretrained_weights: dict[str, Any] | None


def read_stored_model(path: str | Path, checkpoint: dict[str, Any] | None = None) -> StoredModel:
    """The stored config, classes and bands, preprocessing and weights record of a checkpoint; a
    checkpoint without them is from an older train stage and gets an error that says to retrain."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    try:
        config = stored_config(checkpoint["hyper_parameters"]["config"], source=f"{path} (stored config)")
        data = stored_data(checkpoint, path)
        if PREPROCESSING_KEY not in checkpoint:
            raise CheckpointError(f"{path}: no stored preprocessing; {RETRAIN}")
        preprocessing = Preprocessing.from_dict(checkpoint[PREPROCESSING_KEY])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its stored config is not usable: {err}") from err
    return StoredModel(config, data, preprocessing, checkpoint.get(WEIGHTS_KEY))


def load_classifier(path: str | Path) -> tuple[Classifier, Config]:
    """Rebuild the model from what the checkpoint stores (:func:`read_stored_model`) and load its weights."""
    checkpoint = load_checkpoint(path)
    stored = read_stored_model(path, checkpoint)
    config, data = stored.config, stored.data
    try:
        model = build_model(config, data, load_pretrained=False)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its stored config is not usable: {err}") from err
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: its weights do not fit a {config.model_name} classifier with "
            f"{data.num_classes} classes and {data.in_chans} bands ({first_line(err)})."
        ) from err
    model.preprocessing = stored.preprocessing
    model.pretrained_weights = stored.pretrained_weights
    return model.eval(), config


def stored_data(checkpoint: dict[str, Any], path: str | Path) -> DataSpec:
    """The classes and bands a checkpoint was trained on."""
    data = checkpoint["hyper_parameters"].get("data")
    if not data:
        raise CheckpointError(f"{path}: no stored classes and bands; {RETRAIN}")
    return DataSpec.from_dict(data)


def fingerprint(config: Config, *inputs: Path, code: str = "") -> str:
    """What a run computes from: its training params, the bytes of its inputs and ``code`` (a
    digest of the code that trains)."""
    digest = hashlib.sha256(code.encode())
    params = {k: v for k, v in config.to_dict().items() if k not in _NOT_TRAINING}
    digest.update(json.dumps(params, sort_keys=True).encode())
    for path in inputs:
        digest.update(bytes.fromhex(sha256_of(path)))
    return digest.hexdigest()


def resumable(last: Path, run_fingerprint: str, max_epochs: int) -> Path | None:
    """``last`` if it is an unfinished run of exactly this config and data, else ``None``."""
    if not last.is_file():
        return None
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means: start afresh
        log.warning("Not resuming: %s is unreadable (%s); training from the start.", last, first_line(err))
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get(FINGERPRINT_KEY) != run_fingerprint:
        log.warning("Not resuming from %s: params or data changed since it was written.", last)
        return None
    if checkpoint.get("epoch", 0) + 1 >= max_epochs:
        return None
    log.warning("Resuming from %s (after epoch %d).", last, checkpoint["epoch"] + 1)
    return last
