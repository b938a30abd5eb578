"""The GPU and DDP paths' defects, each pinned on the CPU: CUDA's answers mocked, fp16 run on the CPU.

No GPU is needed: ``torch.cuda``'s probes are monkeypatched to describe a T4, a V100, an A100, a
machine whose driver is too old for the installed torch, and so on. Tests marked ``gpu`` run the
same paths for real where a CUDA device exists.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torchmetrics import MeanMetric

from eurosat_pipeline.core.config import config_from_mapping
from eurosat_pipeline.core.errors import ConfigError
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.loading import index_tensor
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.model.augment import BatchTransform
from eurosat_pipeline.platform import accelerators as hardware
from eurosat_pipeline.platform import nvidia
from eurosat_pipeline.platform.accelerators import (
    HardwareError,
    choose_precision,
    resolve_accelerator,
)
from eurosat_pipeline.platform.cores import core_share
from eurosat_pipeline.training.datamodule import EuroSATDataModule
from eurosat_pipeline.training.module import LandUseClassifier
from eurosat_pipeline.training.train import TrainPaths, _log_interval, train

from .conftest import RGB, tiny_config

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-readiness") / "data"
    prepare_dataset("synthetic", folder / "eurosat.zip", folder / "dataset.json", 12)
    split_archive(folder / "eurosat.zip", folder / "split.csv", 0.1, 0.1, 42)
    return folder


def fake_gpu(
    monkeypatch: pytest.MonkeyPatch,
    capability: tuple[int, int],
    arches: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
) -> None:
    """torch.cuda answers as on a machine with one GPU of ``capability``; emulated bf16 counts as support."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arches))
    monkeypatch.setattr(
        torch.cuda, "get_device_name", lambda device=None: f"Fake GPU sm_{capability[0]}{capability[1]}"
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


# ----- 1. precision follows the GPU generation --------------------------------------------------------
@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"), ((8, 9), "bf16-mixed"), ((7, 5), "16-mixed"), ((6, 1), "32-true")],
)
def test_auto_precision_follows_the_compute_capability_not_emulated_bf16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    fake_gpu(monkeypatch, capability)
    choice = choose_precision("auto", "cuda")
    assert choice.precision == expected
    assert f"{capability[0]}.{capability[1]}" in choice.reason


def test_a_t4_gets_fp16_with_a_reason_that_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, (7, 5))
    assert "emulated" in choose_precision("auto", "cuda").reason


def test_cpu_precision_and_explicit_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_precision("auto", "cpu").precision == "32-true"
    assert choose_precision("bf16-mixed", "cpu") == hardware.PrecisionChoice("bf16-mixed", "set in params.yaml")
    # Lightning would silently swap 16-mixed for bf16-mixed on the CPU: refused instead.
    with pytest.raises(ConfigError, match="'precision': 16-mixed needs a CUDA GPU"):
        choose_precision("16-mixed", "cpu")


def test_the_benchmark_chooses_precision_with_the_same_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import run as bench

    fake_gpu(monkeypatch, (7, 0), arches=("sm_70", "sm_75"))
    monkeypatch.setattr(nvidia, "driver_version", lambda: "580.65.06")
    assert bench._precision() == "16-mixed" == choose_precision("auto", resolve_accelerator("auto")).precision


def test_summary_and_model_card_say_which_precision_and_why(data: Path, tmp_path: Path) -> None:
    from eurosat_pipeline.model.checkpoints import read_stored_model
    from eurosat_pipeline.reporting.model_card import model_card

    paths = TrainPaths.under(data, tmp_path, tmp_path)
    summary = train(tiny_config(phase1_epochs=0, phase2_epochs=1), paths)
    assert summary["precision"] == "32-true" and summary["precision_reason"].startswith("CPU")
    metrics = {
        "test": {"acc": 0.5, "macro_f1": 0.5, "images": 12},
        "test_tta": {"acc": 0.5, "macro_f1": 0.5, "views": 8},
    }
    card = model_card(read_stored_model(paths.best), summary, metrics, [], data / "split.csv")
    assert f"(32-true precision: {summary['precision_reason']})" in card


class Dtypes(L.Callback):
    """The dtype of the head's first Linear output (fp16 under fp16 autocast) and the scaler's scale."""

    def __init__(self) -> None:
        self.head_dtypes: set[torch.dtype] = set()
        self.scales: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.model.head[1].register_forward_hook(lambda m, a, out: self.head_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.scales.append(float(scaler.get_scale()))


def _fit(data: Path, plugin: Any | None) -> tuple[list[float], Dtypes]:
    """The recipe's module (label smoothing, the head's BatchNorm, both phases) for a few epochs."""
    L.seed_everything(0, verbose=False)
    config = tiny_config(phase1_epochs=1, phase2_epochs=2, channels_last=False)
    module = LandUseClassifier(config.to_dict(), RGB.to_dict(), load_pretrained=False)
    losses: list[float] = []
    watch = Dtypes()

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=config.max_epochs,
        plugins=[plugin] if plugin else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Losses(), watch],
    )
    trainer.fit(
        module,
        datamodule=EuroSATDataModule(data / "eurosat.zip", data / "split.csv", config, module.model.data),
    )
    return losses, watch


def test_the_recipe_trains_stably_in_fp16_with_the_gradient_scaler(data: Path) -> None:
    """What 16-mixed does on a T4 or V100 (fp16 autocast + Lightning's GradScaler), run on the CPU."""
    fp32, _ = _fit(data, None)
    fp16, watch = _fit(data, MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu")))
    assert watch.head_dtypes == {torch.float16}, "fp16 autocast really ran"
    assert all(np.isfinite(fp16)) and len(fp16) == len(fp32)
    # The scaler calibrates once (its first scale, 2**16, overflows fp16 gradients and that step is
    # skipped, as designed) and never has to back off again; the losses follow fp32's.
    assert min(watch.scales) >= 2.0**15
    assert np.allclose(fp16, fp32, rtol=0.05, atol=0.02), (fp16, fp32)


# ----- 2, 3. settings that cannot work are refused --------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("strategy", "ddp_spawn", r"'strategy': ddp_spawn cannot work here: .* Use strategy: ddp"),
        ("precision", "bf16-true", r"'precision': bf16-true is not supported: .* Use bf16-mixed"),
        ("precision", "16-true", r"'precision': 16-true is not supported"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_reason(key: str, value: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config_from_mapping({key: value}, source="params.yaml")


# ----- 4. tiny test runs stay on the CPU on a GPU machine -------------------------------------------
def test_tiny_runs_stay_on_the_cpu_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, (8, 0))
    assert resolve_accelerator("auto") == "cuda"
    assert resolve_accelerator(tiny_config().accelerator) == "cpu"
    assert choose_precision(tiny_config().precision, "cpu").precision == "32-true"


# ----- 5. the benchmark takes one device --------------------------------------------------------------
def test_the_benchmark_trains_on_one_device(monkeypatch: pytest.MonkeyPatch, data: Path) -> None:
    from benchmarks import run as bench

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)

        def fit(self, *args: Any, **kwargs: Any) -> None:
            return None

    monkeypatch.setattr(bench.L, "Trainer", Recorder)
    bench._train_rate(tiny_config(), data, batches=2, warmup=1)
    assert seen["devices"] == 1


# ----- 6. predict and map move uint8 to the device, preprocess there --------------------------------
def test_predict_ships_uint8_and_preprocesses_on_the_device(
    monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path
) -> None:
    from eurosat_pipeline.inference.engines import TorchPredictor

    paths = TrainPaths.under(data, tmp_path, tmp_path)
    train(tiny_config(phase1_epochs=0, phase2_epochs=1), paths)
    # The meta device stands in for a GPU: it keeps shapes, dtypes and devices, no values.
    predictor = TorchPredictor(paths.best, device="cpu")
    predictor.device = torch.device("meta")
    predictor.transform.to("meta")
    seen: list[tuple[torch.dtype, str]] = []
    original = BatchTransform.forward

    def spy(self: BatchTransform, images: torch.Tensor, train: bool) -> torch.Tensor:
        seen.append((images.dtype, images.device.type, self.mean.device.type))
        return original(self, images, train)

    monkeypatch.setattr(BatchTransform, "forward", spy)

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append((x.dtype, x.device.type, "model"))
        return torch.zeros(len(x), 10)

    predictor.model = model
    predictor.format = predictor.format.__class__("fp32", "test")
    predictor.classify(np.zeros((5, 3, 64, 64), dtype=np.uint8))
    assert seen == [(torch.uint8, "meta", "meta"), (torch.float32, "meta", "model")]


@pytest.mark.parametrize("text", ["gpu", "cuda:7", "tpu"])
def test_a_device_this_machine_lacks_is_a_clear_error(text: str) -> None:
    from eurosat_pipeline.core.errors import PipelineError
    from eurosat_pipeline.inference.engines import parse_device

    if text == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(PipelineError, match=rf"--device {text}"):
        parse_device(text)


# ----- 7. --onnx on a GPU machine says it runs on the CPU --------------------------------------------
def test_onnx_on_a_gpu_machine_says_it_runs_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, data: Path, tmp_path: Path
) -> None:
    import onnxruntime

    from eurosat_pipeline.inference.engines import OnnxPredictor
    from eurosat_pipeline.inference.export import export_onnx

    paths = TrainPaths.under(data, tmp_path, tmp_path)
    train(tiny_config(phase1_epochs=0, phase2_epochs=1), paths)
    onnx_file = tmp_path / "model.onnx"
    export_onnx(paths.best, onnx_file, tmp_path / "export.json", data / "eurosat.zip", data / "split.csv")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    monkeypatch.setattr(nvidia, "gpu_present", lambda: True)
    with caplog.at_level(logging.WARNING):
        OnnxPredictor(onnx_file)
    assert "--onnx runs on the CPU" in caplog.text and "onnxruntime-gpu" in caplog.text


# ----- 8. an NVIDIA GPU that the locked torch cannot use stops the run --------------------------------
def no_cuda_but_a_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, driver_line: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    proc = tmp_path / "version"
    proc.write_text(driver_line)
    monkeypatch.setattr(nvidia, "NVIDIA_PROC", proc)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_a_driver_too_old_for_the_locked_cuda_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_cuda_but_a_driver(
        monkeypatch,
        tmp_path,
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023",
    )
    with pytest.raises(HardwareError) as caught:
        resolve_accelerator("auto")
    message = str(caught.value)
    assert "CUDA 13.0 needs NVIDIA driver 580 or newer" in message and "driver 535.104.05" in message
    assert "download.pytorch.org/whl/cu126" in message and "accelerator: cpu" in message
    assert resolve_accelerator("cpu") == "cpu"  # on purpose: no probe, no error


def test_open_kernel_module_driver_lines_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_cuda_but_a_driver(
        monkeypatch, tmp_path, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build"
    )
    with pytest.raises(HardwareError, match=r"is_available\(\) is False with NVIDIA driver 580\.65\.06"):
        resolve_accelerator("auto")


def test_nvidia_smi_is_asked_when_proc_has_no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(nvidia, "NVIDIA_PROC", tmp_path / "absent")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 470.82.01\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HardwareError, match=r"driver 470\.82\.01"):
        resolve_accelerator("gpu")


def test_a_gpu_generation_without_kernels_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, (7, 0))  # a V100: the lock's torch starts at sm_75
    with pytest.raises(HardwareError, match=r"compute capability 7\.0, sm_70\) has no kernels .* sm_75 sm_80"):
        resolve_accelerator("auto")


@pytest.mark.parametrize(
    ("capability", "arches"),
    [((8, 9), ("sm_80", "sm_86")), ((9, 0), ("sm_90a",)), ((12, 0), ("sm_90", "compute_90")), ((7, 5), ("sm_75",))],
)
def test_gpus_the_build_serves_pass(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], arches: tuple[str, ...]
) -> None:
    fake_gpu(monkeypatch, capability, arches)
    assert resolve_accelerator("auto") == "cuda"


def test_no_nvidia_gpu_means_the_cpu_unless_a_gpu_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(nvidia, "NVIDIA_PROC", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_accelerator("auto") == "cpu"
    with pytest.raises(HardwareError, match="asks for a GPU, but there is no NVIDIA GPU"):
        resolve_accelerator("cuda")


def test_the_train_stage_stops_before_touching_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: Path
) -> None:
    no_cuda_but_a_driver(monkeypatch, tmp_path, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01")
    paths = TrainPaths.under(data, tmp_path / "models", tmp_path / "reports")
    paths.checkpoints.mkdir(parents=True)
    (paths.checkpoints / "best-001-0.500.ckpt").write_bytes(b"the user's")
    with pytest.raises(HardwareError, match=r"driver 470\.82\.01"):
        train(tiny_config(accelerator="auto"), paths)
    assert (paths.checkpoints / "best-001-0.500.ckpt").read_bytes() == b"the user's"


# ----- 9. no host sync per step ------------------------------------------------------------------------
class HostSync(AssertionError):
    pass


def _no_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor's value read on the host (``bool(t)``, ``t.item()``, ``t.tolist()``) or an output
    whose size depends on the values (``torch.unique``) raises: on a GPU each is a sync that stalls
    the step."""

    def refuse(self: torch.Tensor, *args: Any) -> Any:
        raise HostSync("a tensor value was read back on the host")

    for name in ("__bool__", "item", "tolist", "unique"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "unique", refuse)


def test_metrics_do_not_read_values_back_per_update(monkeypatch: pytest.MonkeyPatch) -> None:
    module = LandUseClassifier(tiny_config().to_dict(), RGB.to_dict(), load_pretrained=False)
    logits, labels, loss = torch.randn(4, 10), torch.tensor([0, 1, 2, 3]), torch.tensor(0.7)
    _no_reads_back(monkeypatch)
    module.train_loss.update(loss)
    module.val_loss.update(loss)
    module.val_acc.update(logits, labels)
    # The check catches what it is for: MeanMetric's default NaN check looks at every value.
    with pytest.raises(HostSync):
        MeanMetric().update(loss)


def test_batch_indices_go_to_a_gpu_without_a_synchronous_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert index_tensor([3, 1, 2], torch.device("cpu")).dtype == torch.long
    calls: list[tuple[str, Any]] = []

    def pin(self: torch.Tensor) -> torch.Tensor:
        calls.append(("pin_memory", self.dtype))
        return self

    def to(self: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        calls.append(("to", (device, non_blocking)))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    index_tensor([3, 1, 2], torch.device("cuda", 0))
    assert calls == [("pin_memory", torch.long), ("to", (torch.device("cuda", 0), True))]


@gpu
@pytest.mark.gpu
def test_a_gpu_training_step_never_syncs_with_the_host(data: Path, tmp_path: Path) -> None:
    """torch's sync debug mode raises on any synchronising call inside the training steps."""

    class NoSync(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
            if i >= 1:  # the first step builds the optimizer state
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            torch.cuda.set_sync_debug_mode("default")

    config = tiny_config(accelerator="cuda", phase1_epochs=0, phase2_epochs=1)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(LandUseClassifier, "nonfinite_check_interval", lambda self, device: 10**9)
    try:
        train(config, TrainPaths.under(data, tmp_path, tmp_path), extra_callbacks=[NoSync()])
    finally:
        monkey.undo()
        torch.cuda.set_sync_debug_mode("default")


@gpu
@pytest.mark.gpu
def test_auto_precision_on_this_gpu_trains(data: Path, tmp_path: Path) -> None:
    summary = train(tiny_config(accelerator="auto"), TrainPaths.under(data, tmp_path, tmp_path))
    expected = choose_precision("auto", "cuda")
    assert summary["precision"] == expected.precision and summary["precision_reason"] == expected.reason
    assert "CPU" not in summary["hardware"]


# ----- also: the log interval and CPU threads under DDP -------------------------------------------------
def test_log_interval_counts_the_steps_each_rank_takes(data: Path) -> None:
    # 96 training images: 6 steps of 16 on one process, 3 per rank on two, 1 on eight (floor 1).
    assert _log_interval(data / "split.csv", 16, 1) == 1
    assert _log_interval(data / "split.csv", 4, 1) == 6
    assert _log_interval(data / "split.csv", 4, 2) == 3
    assert _log_interval(data / "split.csv", 4, 8) == 1


def test_processes_sharing_the_cpu_get_a_share_of_the_cores() -> None:
    assert core_share(2, cores=2) == 1
    assert core_share(2, cores=16) == 8
    assert core_share(4, cores=2) == 1
    assert core_share(1, cores=2) == 2
