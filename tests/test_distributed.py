"""Two-process DDP on the CPU (gloo) through the train stage's own entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import torch

from eurosat_pipeline.callbacks import read_history
from eurosat_pipeline.checkpoints import load_classifier
from eurosat_pipeline.dataset import prepare_dataset
from eurosat_pipeline.embeddings import read_tsne_csv
from eurosat_pipeline.inference import predict_logits
from eurosat_pipeline.loading import load_splits
from eurosat_pipeline.split import split_archive

from .conftest import REPO_ROOT, tiny_config

# 11 validation images: the two ranks get shards of 6 and 5, which a padding sampler would distort.
DDP = tiny_config(
    synthetic_images_per_class=11,
    phase1_epochs=1,
    phase2_epochs=2,
    batch_size=8,
    tsne_interval=1,
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    val_fraction=0.1,
    test_fraction=0.1,
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", DDP.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", DDP.val_fraction, DDP.test_fraction, DDP.split_seed)
    params = root / "params.yaml"
    params.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in DDP.to_dict().items()) + "\n")
    paths = {
        "archive": data / "eurosat.zip",
        "split": data / "split.csv",
        "dataset-info": data / "dataset.json",
        "checkpoints": root / "models" / "checkpoints",
        "best": root / "models" / "best.ckpt",
        "last": root / "models" / "last.ckpt",
        "history": root / "reports" / "history.csv",
        "summary": root / "reports" / "summary.json",
        "live-dir": root / "reports" / "live",
        "tsne": root / "reports" / "tsne.csv",
    }
    command = [sys.executable, str(REPO_ROOT / "stages" / "train.py"), "--params", str(params)]
    for name, path in paths.items():
        command += [f"--{name}", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "WANDB_MODE": "disabled"}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"paths": paths, "log": result.stdout + result.stderr}


def test_two_processes_really_ran(ddp_run: dict[str, Any]) -> None:
    assert "distributed_backend=gloo" in ddp_run["log"]
    assert re.search(r"All distributed processes registered\. Starting with 2 processes", ddp_run["log"])
    summary = json.loads(ddp_run["paths"]["summary"].read_text())
    assert summary["world_size"] == 2 and summary["hardware"].startswith("2 x CPU")


def test_outputs_are_complete_and_written_once(ddp_run: dict[str, Any]) -> None:
    paths = ddp_run["paths"]
    assert [r["epoch"] for r in read_history(paths["history"])] == [1, 2, 3]
    assert len(list(paths["checkpoints"].iterdir())) == 3 and paths["best"].is_file()
    assert sorted(p.name for p in (paths["live-dir"] / "plots" / "images" / "tsne").iterdir()) == [
        "1.png",
        "2.png",
        "3.png",
    ]
    tsne = read_tsne_csv(paths["tsne"])
    assert sorted({r["epoch"] for r in tsne}) == [1, 2, 3]
    assert len(tsne) == 3 * 11, "every validation image of both shards, once per picture"
    live = json.loads((paths["live-dir"] / "metrics.json").read_text())
    assert live["epochs"] == 3


def test_validation_accuracy_equals_one_process_on_the_same_checkpoint(ddp_run: dict[str, Any]) -> None:
    paths = ddp_run["paths"]
    history = {r["epoch"]: r["val_acc"] for r in read_history(paths["history"])}
    val = load_splits(paths["archive"], paths["split"], ("val",))["val"]
    assert len(val) == 11
    for checkpoint in paths["checkpoints"].iterdir():
        epoch = int(checkpoint.name[5:8])
        model, _ = load_classifier(checkpoint)
        logits = predict_logits(model, val.images, device=torch.device("cpu"))
        accuracy = (logits.argmax(1) == val.labels).float().mean().item()
        assert accuracy == pytest.approx(history[epoch], abs=1e-6), checkpoint.name
