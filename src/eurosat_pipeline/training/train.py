"""``train(config, paths)``: the train stage as a function that returns its summary."""

from __future__ import annotations

import logging
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.dataspec import DataSpec, data_spec
from eurosat_pipeline.core.errors import DatasetError, TrainingError
from eurosat_pipeline.core.files import atomic_path, read_json, write_json, writing
from eurosat_pipeline.data.dataset import images_path_for, read_info
from eurosat_pipeline.data.split import read_split, stats_path_for
from eurosat_pipeline.model.checkpoints import fingerprint, resumable
from eurosat_pipeline.model.stem import stem_must_learn
from eurosat_pipeline.platform.accelerators import (
    PrecisionChoice,
    choose_compile,
    choose_precision,
    cpu_kind,
    resolve_accelerator,
)
from eurosat_pipeline.platform.placement import Placement, place_run, share_cpu_cores, strategy_for, world_size
from eurosat_pipeline.training.callbacks import (
    BestCheckpoints,
    EpochLines,
    HistoryWriter,
    PhaseTwoEMA,
    own_checkpoint_folders,
)
from eurosat_pipeline.training.datamodule import EuroSATDataModule
from eurosat_pipeline.training.embeddings import TSNELogger
from eurosat_pipeline.training.module import LandUseClassifier
from eurosat_pipeline.training.resume import (
    ScratchFolder,
    code_digest,
    launched_as_rank_zero,
    publish_folder,
    scratch_folder,
    scratch_root,
)
from eurosat_pipeline.training.tracking import finish_loggers, make_loggers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPaths:
    """Where the train stage reads and writes; ``dvc.yaml`` passes every one of them."""

    archive: Path
    split: Path
    dataset_info: Path
    checkpoints: Path
    best: Path
    history: Path
    summary: Path
    live_dir: Path
    tsne: Path
    #: Resume state of unfinished runs, one folder per configuration (:mod:`eurosat_pipeline.training.resume`).
    scratch: Path
    #: The check stage's record of the pretrained weights: their bytes are part of a run's identity.
    weights_info: Path | None = None
    #: The decoded array (default: ``images.npy`` beside the archive) and the split's band statistics
    #: (default: ``band_stats.json`` beside the split).
    images: Path | None = None
    band_stats: Path | None = None

    @property
    def images_file(self) -> Path:
        return self.images or images_path_for(self.archive)

    @property
    def band_stats_file(self) -> Path:
        return self.band_stats or stats_path_for(self.split)

    @classmethod
    def under(cls, data: Path, models: Path, reports: Path) -> TrainPaths:
        """The layout ``dvc.yaml`` uses, rooted elsewhere (tests, notebooks)."""
        return cls(
            archive=data / "eurosat.zip",
            split=data / "split.csv",
            dataset_info=data / "dataset.json",
            checkpoints=models / "checkpoints",
            best=models / "best.ckpt",
            history=reports / "history.csv",
            summary=reports / "summary.json",
            live_dir=reports / "live",
            tsne=reports / "tsne.csv",
            scratch=models.parent / ".scratch" / "train",
            weights_info=models / "pretrained.json",
            images=data / "images.npy",
            band_stats=data / "band_stats.json",
        )

    def inputs(self) -> list[Path]:
        """The files a run computes from (images.npy is decoded from the archive, so the archive stands for it)."""
        given = [self.archive, self.split, self.dataset_info, self.weights_info, self.band_stats_file]
        return [path for path in given if path is not None and path.is_file()]


def train(config: Config, paths: TrainPaths, extra_callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fine-tune on the train split, validate every epoch, keep the best checkpoints.

    Work happens in a scratch folder of this configuration (resumed from when an earlier run of it
    was killed); the declared outputs are written when training has finished.
    """
    # First: a GPU that torch cannot use stops the run before anything is touched.
    accelerator = resolve_accelerator(config.accelerator)
    run_fingerprint = run_key(config, paths)
    scratch = scratch_root(paths.scratch)
    # The resume state (lock, Lightning's checkpoints) is written there: a full disk names the folder.
    with writing(scratch), scratch_folder(scratch, run_fingerprint) as work:
        return _train_in(config, paths, work, run_fingerprint, accelerator, extra_callbacks)


def run_key(config: Config, paths: TrainPaths) -> str:
    """What a run computes from (training params, input files, code): a killed run resumes only
    into a run of the same key."""
    return fingerprint(config, *paths.inputs(), code=code_digest())


def scratch_for(config: Config, paths: TrainPaths) -> ScratchFolder:
    """Where a run of ``config`` keeps its resume state while it is unfinished."""
    return ScratchFolder.of(scratch_root(paths.scratch), run_key(config, paths))


def _train_in(
    config: Config,
    paths: TrainPaths,
    work: ScratchFolder,
    run_fingerprint: str,
    accelerator: str,
    extra_callbacks: Sequence[Callback],
) -> dict[str, Any]:
    started = time.perf_counter()
    precision = choose_precision(config.precision, accelerator)
    placement = place_run(config, accelerator)
    L.seed_everything(config.seed, workers=True)
    dataset_info = read_info(paths.dataset_info)
    data = data_spec(dataset_info, read_band_stats(paths.band_stats_file), config.bands, config.band_names)
    asked_cached = config.phase1_cached_features
    config = phase1_for_bands(config, data)
    resume_from = resumable(work.last, run_fingerprint, config.max_epochs) if config.resume else None
    if resume_from is None and launched_as_rank_zero():
        work.clear()
    module = _module(config, data, run_fingerprint, resumed=resume_from is not None)
    share_cpu_cores(accelerator, placement)
    history = HistoryWriter(paths.history)
    best, last = BestCheckpoints(work.checkpoints), last_checkpoint(work.last)
    callbacks = _callbacks(config, paths, history, best, last, extra_callbacks)
    trainer = _trainer(config, paths, work, accelerator, placement, precision.precision, callbacks, resume_from)
    datamodule = EuroSATDataModule(paths.archive, paths.split, config, data, paths.images_file)
    try:
        with own_checkpoint_folders(best, last):
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    except BaseException:
        finish_loggers(trainer.loggers, failed=True)
        raise
    finish_loggers(trainer.loggers)
    if not trainer.is_global_zero:
        return {}
    facts = _run_facts(config, accelerator, placement, precision, module, data, datamodule)
    if asked_cached and not config.phase1_cached_features:
        facts["freezing"] += f"; {PHASE1_ON_IMAGES}"
    fit = FinishedFit(trainer, best, history, time.perf_counter() - started, resume_from)
    return _publish(config, paths, work, fit, {**facts, "data": dataset_info})


PHASE1_ON_IMAGES = (
    "phase 1 on images, not on cached features (phase1_cached_features): bands beyond RGB need the "
    "adapted stem to learn from the start"
)


def phase1_for_bands(config: Config, data: DataSpec) -> Config:
    """The config as trained: a cached phase 1 trains the head on what the frozen network's start
    shows, so with bands beyond RGB (an adapted stem that must learn) phase 1 runs on images, the
    stem learning with the head. Measured on real EuroSAT with made band differences over 5 seeds
    (docs/your-own-data.md): mean pair accuracy 93.5 -> 97.0 % (worst 85 -> 92.5 %), about a third
    more training time; RGB models are unchanged."""
    if config.phase1_cached_features and stem_must_learn(config.pretrained, data.rgb_roles):
        log.info("%s", PHASE1_ON_IMAGES)
        return config.replace(phase1_cached_features=False)
    return config


def _module(config: Config, data: DataSpec, run_fingerprint: str, resumed: bool) -> LandUseClassifier:
    """The Lightning module, with ImageNet weights unless it resumes (the checkpoint has its own)."""
    module = LandUseClassifier(config.to_dict(), data.to_dict(), load_pretrained=not resumed)
    module.fingerprint = run_fingerprint
    if config.compile:
        module.model.backbone.compile()
        module.model.head.compile()
    if config.channels_last:
        module.model.to(memory_format=torch.channels_last)
    return module


def _callbacks(
    config: Config,
    paths: TrainPaths,
    history: HistoryWriter,
    best: BestCheckpoints,
    last: ModelCheckpoint,
    extra_callbacks: Sequence[Callback],
) -> list[Callback]:
    # A progress bar only on a terminal; in DVC's and CI's logs one line per epoch instead.
    lines = [] if sys.stdout.isatty() else [EpochLines(history, config.max_epochs)]
    # EMA (ema_decay): validation and the checkpoints see the average of the phase-2 weights.
    averaging = [PhaseTwoEMA(config.ema_decay)] if config.ema_decay else []
    return [
        *averaging,
        best,
        last,
        LearningRateMonitor(logging_interval="step"),
        history,
        RunSummary(history),
        TSNELogger(config.tsne_interval, paths.tsne),
        *lines,
        *extra_callbacks,
    ]


def _trainer(
    config: Config,
    paths: TrainPaths,
    work: ScratchFolder,
    accelerator: str,
    placement: Placement,
    precision: str,
    callbacks: list[Callback],
    resume_from: Path | None,
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator=accelerator,
        devices=placement.devices,
        num_nodes=config.num_nodes,
        strategy=strategy_for(config, placement),
        precision=precision,
        logger=make_loggers(config, work.live, resume=resume_from is not None),
        callbacks=callbacks,
        # Bit-exact reruns on CPU; on a GPU cuDNN's autotuner is worth more than bit-exactness.
        deterministic=accelerator == "cpu",
        benchmark=accelerator != "cpu",
        log_every_n_steps=_log_interval(paths.split, config.batch_size, world_size(config, placement)),
        # Cached phase-1 features: the loaders switch from features to images when phase 2 starts.
        reload_dataloaders_every_n_epochs=1 if config.phase1_cached_features and config.phase1_epochs else 0,
        enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),
        default_root_dir=str(work.root),
    )
    # Deterministic mode also fills every new tensor with NaN (a debugging aid that catches reads of
    # uninitialised memory; results do not depend on it), a large share of a CPU training step
    # (benchmarks/README.md, "Where a phase-2 step's time goes"). Determinism itself stays on.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def _run_facts(
    config: Config,
    accelerator: str,
    placement: Placement,
    precision: PrecisionChoice,
    module: LandUseClassifier,
    data: DataSpec,
    datamodule: EuroSATDataModule,
) -> dict[str, Any]:
    """How the run was done, in the summary: where, in which number format, with which weights,
    preprocessing and augmentation, and why each was chosen."""
    return {
        "placement": placement.describe(),
        "phase1_feature_seconds": datamodule.feature_seconds,
        "precision_reason": precision.reason,
        "compile": config.compile,
        "compile_reason": choose_compile(config.compile, accelerator),
        "pretrained_weights": module.model.pretrained_weights,
        "stem_adaptation": module.model.stem_adaptation,
        "freezing": module.describe_freezing(),
        "preprocessing": module.model.preprocessing.to_dict(),
        "model_input": data.to_dict(),
        "augmentation": _augmentation(config, data),
        "image_placement": datamodule.placement,
    }


@dataclass(frozen=True)
class FinishedFit:
    """What a finished ``trainer.fit`` leaves for the outputs: the trainer, its best checkpoints,
    the per-epoch history, the seconds it took and the checkpoint it resumed from (if any)."""

    trainer: L.Trainer
    best: BestCheckpoints
    history: HistoryWriter
    wall_seconds: float
    resumed_from: Path | None


def _publish(
    config: Config, paths: TrainPaths, work: ScratchFolder, fit: FinishedFit, facts: dict[str, Any]
) -> dict[str, Any]:
    """The declared outputs, from the scratch folder once training has finished: checkpoints,
    DVCLive's folder, best.ckpt and the summary (each written whole, or not at all)."""
    trainer, best, history = fit.trainer, fit.best, fit.history
    if not best.best_model_path:
        raise TrainingError("Training finished without a checkpoint: no validation epoch completed.")
    with writing(paths.checkpoints):
        publish_folder(work.checkpoints, paths.checkpoints)
    with writing(paths.live_dir):
        publish_folder(work.live, paths.live_dir)
    with atomic_path(paths.best) as tmp:
        shutil.copyfile(paths.checkpoints / Path(best.best_model_path).name, tmp)
    summary = {
        "best_checkpoint": Path(best.best_model_path).name,
        "best_val_acc": max(r["val_acc"] for r in history.rows),
        "final_val_acc": history.rows[-1]["val_acc"],
        "epochs": len(history.rows),
        "resumed_after_epoch": history.resumed_after if fit.resumed_from else None,
        "wall_seconds": fit.wall_seconds,
        "hardware": _hardware(trainer),
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        **facts,
        "config": config.to_dict(),
    }
    write_json(paths.summary, summary)
    return summary


def read_band_stats(path: Path) -> dict[str, Any]:
    """The split stage's band statistics, or an error that says which stage writes them."""
    if not path.is_file():
        raise DatasetError(f"{path} not found: the split stage writes it; run `dvc repro split`.")
    return read_json(path)


def _augmentation(config: Config, data: DataSpec) -> str:
    """Which jitter the run used, in words (for the summary and the model card)."""
    used = {"flips": config.random_flips, "quarter-turns": config.random_quarter_turns}
    moves = [name for name, on in used.items() if on]
    flips = f"random {' and '.join(moves)}, " if moves else ""
    if data.is_rgb8:
        return f"{flips}colour jitter (brightness, contrast, saturation, hue) on 8-bit RGB"
    return f"{flips}band jitter (one brightness factor per image, contrast per band); no hue or saturation (not RGB)"


def last_checkpoint(path: Path) -> ModelCheckpoint:
    """Writes ``path`` after every epoch, for resuming. It has no metric and one fixed name: it only
    ever replaces its own file, never the others in its folder."""
    return ModelCheckpoint(dirpath=path.parent, filename=path.stem, enable_version_counter=False)


class RunSummary(Callback):
    """Run-level numbers for `dvc exp show` (DVCLive's metrics.json) and the W&B run summary."""

    def __init__(self, history: HistoryWriter) -> None:
        self.history = history

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self.history.rows
        if not rows or not trainer.is_global_zero:
            return
        numbers = {
            "best_val_acc": max(r["val_acc"] for r in rows),
            "final_val_acc": rows[-1]["val_acc"],
            "epochs": len(rows),
        }
        for phase in (1, 2):
            phase_rows = [r for r in rows if r["phase"] == phase]
            if phase_rows:
                numbers[f"epoch_seconds_phase{phase}"] = statistics.median(r["train_seconds"] for r in phase_rows)
                numbers[f"images_per_s_phase{phase}"] = statistics.median(r["images_per_s"] for r in phase_rows)
        for logger in trainer.loggers:
            experiment = logger.experiment
            if hasattr(experiment, "log_metric"):  # DVCLive
                for name, value in numbers.items():
                    experiment.log_metric(name, value, plot=False)
            elif hasattr(experiment, "summary"):  # W&B
                experiment.summary.update(numbers)


def _log_interval(split_csv: Path, batch_size: int, world_size: int = 1) -> int:
    """Every 50 steps, but at least four points per epoch so short runs (and many GPUs, which share
    an epoch's batches) still draw curves."""
    images = sum(1 for row in read_split(split_csv) if row.split == "train")
    steps = images // (batch_size * world_size)
    return max(1, min(50, steps // 4))


def _hardware(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{trainer.world_size} x {torch.cuda.get_device_name(device)}"
    # The CPU's kind, not just "CPU": AVX2, AVX-512 and AMX machines differ 2-3x in speed.
    return f"{trainer.world_size} x CPU: {cpu_kind().describe()}, {torch.get_num_threads()} threads"
