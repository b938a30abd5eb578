"""One tiny real training run (two phases), observed from the inside by a probe callback."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch

from eurosat_pipeline.core.records import read_history
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.checkpoints import load_checkpoint, load_classifier
from eurosat_pipeline.platform.accelerators import cpu_kind
from eurosat_pipeline.training.callbacks import own_checkpoint_folders
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import REPO_ROOT, tiny_config


class Probe(L.Callback):
    """Records, at the first batch of every epoch, what the freeze logic has set up."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.step_losses: dict[int, list[float]] = {}
        self.backbone_before: dict[str, torch.Tensor] = {}
        self.backbone_after_phase1: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.backbone_before = {k: v.clone() for k, v in pl_module.model.backbone.state_dict().items()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx:
            return
        backbone, head = pl_module.model.backbone, pl_module.model.head
        bn = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.epochs.append(
            {
                "backbone_requires_grad": {p.requires_grad for p in backbone.parameters()},
                "head_requires_grad": {p.requires_grad for p in head.parameters()},
                "backbone_bn_training": {m.training for m in bn},
                "head_bn_training": head[2].training,
                "groups": {
                    g["name"]: (g["lr"], len(g["params"]), g["weight_decay"])
                    for g in trainer.optimizers[0].param_groups
                },
            }
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_losses.setdefault(trainer.current_epoch + 1, []).append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 0:
            self.backbone_after_phase1 = {k: v.clone() for k, v in pl_module.model.backbone.state_dict().items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train")
    config = tiny_config()
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(
        data / "eurosat.zip", data / "split.csv", config.val_fraction, config.test_fraction, config.split_seed
    )
    paths = TrainPaths.under(data, root / "models", root / "reports")
    (root / "models").mkdir()
    (root / "models" / "model.onnx").write_bytes(b"from an earlier run")  # models/ is not empty
    probe = Probe()
    stdout = io.StringIO()  # not a terminal, like DVC's and CI's logs
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        summary = train(config, paths, extra_callbacks=[probe])
    return {
        "config": config,
        "paths": paths,
        "probe": probe,
        "summary": summary,
        "stdout": stdout.getvalue(),
        "warnings": [str(w.message) for w in caught],
    }


def test_phase1_freezes_the_backbone_and_its_batchnorm(run: dict[str, Any]) -> None:
    phase1 = run["probe"].epochs[0]
    assert phase1["backbone_requires_grad"] == {False}
    assert phase1["backbone_bn_training"] == {False}
    assert phase1["head_requires_grad"] == {True}
    assert phase1["head_bn_training"] is True


def test_phase1_leaves_backbone_weights_and_statistics_untouched(run: dict[str, Any]) -> None:
    before, after = run["probe"].backbone_before, run["probe"].backbone_after_phase1
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


def test_phase2_unfreezes_everything(run: dict[str, Any]) -> None:
    for epoch in run["probe"].epochs[1:]:
        assert epoch["backbone_requires_grad"] == {True}
        assert epoch["backbone_bn_training"] == {True}


def test_optimizer_groups_and_rates_on_both_sides_of_the_boundary(run: dict[str, Any]) -> None:
    config = run["config"]
    phase1, phase2 = run["probe"].epochs[0]["groups"], run["probe"].epochs[1]["groups"]
    assert set(phase1) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert phase1["head"][2] == config.weight_decay and phase1["head_no_decay"][2] == 0.0
    assert phase1["backbone"][2] == config.weight_decay and phase1["backbone_no_decay"][2] == 0.0
    assert phase1["backbone"][0] == 0.0 and phase1["backbone_no_decay"][0] == 0.0
    assert 0 < phase1["head"][0] <= config.phase1_lr
    # Phase 2 starts a fresh schedule: the head at phase2_lr, the backbone at phase2_lr * scale.
    assert phase2["head"][0] == pytest.approx(config.phase2_lr)
    assert phase2["backbone"][0] == pytest.approx(config.phase2_lr * config.backbone_lr_scale)
    assert phase2["backbone_no_decay"][0] == pytest.approx(config.phase2_lr * config.backbone_lr_scale)


def test_history_has_one_row_per_trained_epoch_with_its_own_train_loss(run: dict[str, Any]) -> None:
    rows = read_history(run["paths"].history)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # no sanity-check row, no extra validate() row
    assert [r["phase"] for r in rows] == [1, 2, 2]
    for row in rows:
        losses = run["probe"].step_losses[row["epoch"]]
        assert row["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0 and row["images_per_s"] > 0
    assert rows[0]["lr_backbone"] == 0.0 and rows[1]["lr_backbone"] > 0


def test_checkpoint_names_carry_the_real_accuracy(run: dict[str, Any]) -> None:
    rows = {r["epoch"]: r["val_acc"] for r in read_history(run["paths"].history)}
    names = sorted(p.name for p in run["paths"].checkpoints.iterdir())
    assert len(names) == 3
    for name in names:
        match = re.fullmatch(r"best-(\d{3})-(\d\.\d{3})\.ckpt", name)
        assert match, name
        assert float(match.group(2)) == pytest.approx(rows[int(match.group(1))], abs=5e-4)


def test_best_pointer_is_the_best_epoch_and_rebuilds_from_itself(run: dict[str, Any]) -> None:
    paths, summary = run["paths"], run["summary"]
    rows = read_history(paths.history)
    assert summary["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert paths.best.read_bytes() == (paths.checkpoints / summary["best_checkpoint"]).read_bytes()
    checkpoint = load_checkpoint(paths.best)
    assert checkpoint["hyper_parameters"]["config"] == run["config"].to_dict()
    model, config = load_classifier(paths.best)
    assert config == run["config"] and not model.training


def test_summary_records_data_time_and_hardware(run: dict[str, Any]) -> None:
    summary = run["summary"]
    assert summary["data"]["synthetic"] is True
    assert summary["wall_seconds"] > 0 and summary["hardware"].startswith("1 x CPU: ")
    assert cpu_kind().model in summary["hardware"]  # timings name the CPU kind they were taken on
    # Deterministic mode without its NaN-filling of every new tensor (17 % of a CPU step).
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert summary["epochs"] == 3 and summary["precision"] == "32-true"


def test_off_a_terminal_each_epoch_prints_one_line(run: dict[str, Any]) -> None:
    lines = [line for line in run["stdout"].splitlines() if line.startswith("epoch ")]
    max_epochs = run["config"].max_epochs
    assert [line.split()[1] for line in lines] == [f"{e}/{max_epochs}" for e in range(1, max_epochs + 1)]
    pattern = (
        r"epoch \d+/\d+  phase [12]  train loss \d+\.\d{4}  val loss \d+\.\d{4}  val acc \d+\.\d{2}%  [\d,]+ images/s"
    )
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert "━" not in run["stdout"] and "it/s" not in run["stdout"]  # no progress bar


def test_training_leaves_other_files_in_models_alone_without_a_warning(run: dict[str, Any]) -> None:
    assert (run["paths"].best.parent / "model.onnx").read_bytes() == b"from an earlier run"
    assert not [w for w in run["warnings"] if "exists and is not empty" in w]


def test_only_the_runs_own_checkpoint_folders_are_spared_the_warning(tmp_path: Path) -> None:
    """A caller's own ModelCheckpoint into a non-empty folder is still warned about."""
    own, other = tmp_path / "own", tmp_path / "other"
    for folder in (own, other):
        folder.mkdir()
        (folder / "earlier.ckpt").write_bytes(b"")
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=folder) for folder in (own, other)]
    trainer = SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda value: value), is_global_zero=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with own_checkpoint_folders(callbacks[0]):
            for callback in callbacks:
                callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert [str(w.message) for w in caught if "not empty" in str(w.message)] == [
        f"Checkpoint directory {other.resolve()} exists and is not empty."
    ]


def test_lightning_is_extended_through_public_hooks_only() -> None:
    """Overriding a name-mangled private method (``_ModelCheckpoint__...``) breaks silently when
    Lightning renames it: no class in the package may define one."""
    mangled = re.compile(r"_[A-Z][A-Za-z0-9]*__[A-Za-z]")
    found = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"
        for path in sorted((REPO_ROOT / "src").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and mangled.match(node.name)
    ]
    assert found == []


def test_a_finished_run_leaves_no_resume_state(run: dict[str, Any]) -> None:
    scratch = run["paths"].scratch
    assert scratch.is_dir() and not list(scratch.iterdir())
    assert len(list(run["paths"].checkpoints.glob("best-*.ckpt"))) == 3
