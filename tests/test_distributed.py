"""Two-process DDP on the CPU (gloo) through the train stage's own entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.records import read_history, read_tsne_csv
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.loading import load_splits
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.checkpoints import load_classifier
from eurosat_pipeline.model.inference import predict_logits
from eurosat_pipeline.platform.cores import core_share

from .conftest import REPO_ROOT, RGB, tiny_config

TRAIN_STAGE = REPO_ROOT / "stages" / "train.py"

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


def run_train_stage(
    root: Path, config: Config, script: Path = TRAIN_STAGE, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``script`` (the train stage, or a wrapper of it) as DVC runs it, on tiny synthetic data."""
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(
        data / "eurosat.zip", data / "split.csv", config.val_fraction, config.test_fraction, config.split_seed
    )
    params = root / "params.yaml"
    params.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.to_dict().items()) + "\n")
    paths = {
        "archive": data / "eurosat.zip",
        "split": data / "split.csv",
        "dataset-info": data / "dataset.json",
        "checkpoints": root / "models" / "checkpoints",
        "best": root / "models" / "best.ckpt",
        "history": root / "reports" / "history.csv",
        "summary": root / "reports" / "summary.json",
        "live-dir": root / "reports" / "live",
        "tsne": root / "reports" / "tsne.csv",
        "scratch": root / ".scratch" / "train",
    }
    command = [sys.executable, str(script), "--params", str(params)]
    for name, path in paths.items():
        command += [f"--{name}", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "WANDB_MODE": "disabled", **(env or {})}
    started = time.perf_counter()
    # A session of its own: afterwards, any rank still alive is found by its process group.
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    stdout, stderr = process.communicate(timeout=600)
    return {
        "paths": paths,
        "log": stdout + stderr,
        "stderr": stderr,
        "returncode": process.returncode,
        "seconds": time.perf_counter() - started,
        "process_group": process.pid,
    }


def alive_in_group(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = run_train_stage(tmp_path_factory.mktemp("ddp"), DDP)
    assert run["returncode"] == 0, run["log"][-6000:]
    return run


def test_two_processes_really_ran(ddp_run: dict[str, Any]) -> None:
    assert "distributed_backend=gloo" in ddp_run["log"]
    assert re.search(r"All distributed processes registered\. Starting with 2 processes", ddp_run["log"])
    summary = json.loads(ddp_run["paths"]["summary"].read_text())
    assert summary["world_size"] == 2 and summary["hardware"].startswith("2 x CPU")
    # Two processes on one CPU: each takes its share of the cores, not all of them.
    assert summary["hardware"].endswith(f", {core_share(2)} threads")


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
    val = load_splits(paths["archive"], paths["split"], ("val",), RGB)["val"]
    assert len(val) == 11
    for checkpoint in paths["checkpoints"].iterdir():
        epoch = int(checkpoint.name[5:8])
        model, _ = load_classifier(checkpoint)
        logits = predict_logits(model, val.images, device=torch.device("cpu"))
        accuracy = (logits.argmax(1) == val.labels).float().mean().item()
        assert accuracy == pytest.approx(history[epoch], abs=1e-6), checkpoint.name


# ----- a non-finite loss on one rank stops every rank, at once, with one clear error ---------------
POISON_STEP = 7  # 88 training images, 44 per rank, 5 steps of 8 per epoch: phase 2's second step


@pytest.fixture(scope="module")
def nan_on_rank_one(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ddp-nan")
    checks = root / "feature-checks"
    checks.mkdir()
    config = DDP.replace(phase1_cached_features=True, phase2_epochs=3, tsne_interval=0)
    env = {"POISON_RANK": "1", "POISON_STEP": str(POISON_STEP), "FEATURE_CHECK_DIR": str(checks)}
    run = run_train_stage(root, config, REPO_ROOT / "tests" / "ddp_poison.py", env)
    deadline = time.monotonic() + 10
    while alive_in_group(run["process_group"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    run["ranks_left"] = alive_in_group(run["process_group"])
    if run["ranks_left"]:
        os.killpg(run["process_group"], 9)
    run["feature_checks"] = {p.stem: p.read_text().split("\n")[:-1] for p in checks.iterdir()}
    return run


def test_a_nan_on_one_rank_stops_all_ranks_with_status_2(nan_on_rank_one: dict[str, Any]) -> None:
    run = nan_on_rank_one
    assert run["returncode"] == 2, run["log"][-4000:]
    assert not run["ranks_left"], "a rank outlived the main process"
    assert run["seconds"] < 120


def test_the_error_is_printed_once_without_a_traceback(nan_on_rank_one: dict[str, Any]) -> None:
    stderr = nan_on_rank_one["stderr"]
    expected = f"error: The training loss became non-finite (NaN or inf) at epoch 2, optimizer step {POISON_STEP}."
    assert stderr.count("error: ") == 1 and expected in stderr, stderr[-3000:]
    assert "Traceback" not in stderr


def test_no_checkpoint_of_the_broken_epoch(nan_on_rank_one: dict[str, Any]) -> None:
    paths = nan_on_rank_one["paths"]
    assert [r["epoch"] for r in read_history(paths["history"])] == [1]
    assert not paths["checkpoints"].exists()  # a failed run publishes nothing; its resume state:
    [work] = paths["scratch"].iterdir()
    assert [p.name[:8] for p in (work / "checkpoints").iterdir()] == ["best-001"]


def test_the_phase1_feature_pass_is_sharded_and_gathered_exactly(nan_on_rank_one: dict[str, Any]) -> None:
    checks = nan_on_rank_one["feature_checks"]
    assert sorted(checks) == ["rank0", "rank1"]
    for lines in checks.values():
        sizes = [line.split()[0] for line in lines]
        assert sizes == ["88", "11"], lines  # train, then validation: every image, on every rank
        assert all(float(line.split()[-1]) < 1e-4 for line in lines), lines
