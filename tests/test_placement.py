"""How many processes a run starts, its DDP strategy and its CPU threads, on machines the tests
describe by their GPU count (no GPU is needed)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.platform import placement as placement_module
from eurosat_pipeline.platform.placement import (
    Placement,
    config_devices,
    devices_per_node,
    place_devices,
    share_cpu_cores,
    strategy_for,
    world_size,
)


@pytest.fixture(autouse=True)
def not_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)


@pytest.mark.parametrize(
    ("devices", "accelerator", "gpus", "processes"),
    [
        ("auto", "cuda", 4, 4),
        ("auto", "cpu", 4, 1),  # a CPU run on a GPU machine is one process, not one per GPU
        ("auto", "mps", 0, 1),
        (2, "cpu", 0, 2),
        ("3", "cuda", 8, 3),
        ([1, 3], "cuda", 4, 2),
    ],
)
def test_processes_per_machine(devices: object, accelerator: str, gpus: int, processes: int) -> None:
    assert devices_per_node(devices, accelerator, gpus) == processes  # type: ignore[arg-type]
    assert place_devices(devices, accelerator, gpus).per_node == processes  # type: ignore[arg-type]


def test_a_list_of_gpu_ids_becomes_lightnings_list() -> None:
    assert config_devices("0,2") == [0, 2]
    assert config_devices("auto") == "auto" and config_devices(2) == 2


def test_ddp_over_frozen_layers_finds_unused_parameters() -> None:
    two_gpus = Placement([0, 1], per_node=2)
    frozen_first = Config(phase1_epochs=1)
    chosen = strategy_for(frozen_first, two_gpus)
    assert isinstance(chosen, DDPStrategy) and chosen._ddp_kwargs == {"find_unused_parameters": True}
    assert strategy_for(Config(phase1_epochs=0, phase2_frozen_stages=0), two_gpus) == "auto"
    assert strategy_for(frozen_first, Placement("auto", per_node=1)) == "auto"  # one process: no DDP
    # Two nodes of one GPU each is DDP too.
    assert isinstance(strategy_for(frozen_first.replace(num_nodes=2), Placement(1)), DDPStrategy)
    assert world_size(frozen_first.replace(num_nodes=3), two_gpus) == 6


def test_cpu_ddp_processes_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(placement_module, "flush_denormals", lambda: None)
    monkeypatch.setattr(placement_module, "core_share", lambda processes, cores=None: 8 // processes)
    assert share_cpu_cores("cpu", Placement(4, per_node=4)) == 2 and set_to == [2]
    assert share_cpu_cores("cpu", Placement("auto", per_node=1)) is None  # torch's own default
    assert share_cpu_cores("cuda", Placement(4, per_node=4)) is None and set_to == [2]
