"""Where a training run goes: the devices Lightning gets, how many processes that makes, the DDP
strategy and the CPU threads each process takes.

The train stage, the benchmarks and the tests ask this module, so they agree on one answer. Claims
of GPUs and counts of queue workers (the shared state between runs) live in :mod:`.slots`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.platform import slots
from eurosat_pipeline.platform.accelerators import flush_denormals
from eurosat_pipeline.platform.cores import available_cores, core_share

log = logging.getLogger(__name__)

#: What Lightning's ``devices`` takes: a count, ``"auto"``, or a list of GPU indices.
Devices = int | str | list[int]


@dataclass
class Placement:
    """The ``devices`` a run gives Lightning, the processes that makes on this machine, and, in a
    queued experiment, what it claimed."""

    devices: Devices
    per_node: int = 1
    gpus: slots.GPUClaim | None = None
    #: Threads for this run when the queue's workers share the CPU cores (``None``: not in a queue).
    threads: int | None = None
    workers: int = 1

    def describe(self) -> str:
        if self.gpus is not None:
            return f"queued experiment: GPU {', '.join(self.gpus.ids)} (claimed; lock files in {slots.slot_dir()})"
        if self.threads is not None:
            return f"queued experiment: {self.threads} of {available_cores()} CPU cores ({self.workers} queue workers)"
        return "as configured (devices: " + str(self.devices) + ")"


def config_devices(devices: int | str) -> Devices:
    """``params.yaml``'s ``devices`` as Lightning takes it: ``"0,1"`` becomes the list ``[0, 1]``."""
    if isinstance(devices, str) and "," in devices:
        return [int(part) for part in devices.split(",") if part.strip()]
    return devices


def devices_per_node(devices: Devices, accelerator: str, gpu_count: int) -> int:
    """Processes Lightning starts on this machine: ``auto`` means every GPU on ``cuda`` and one
    process on a CPU (or MPS), whatever GPUs the machine also has."""
    if devices == "auto":
        return max(1, gpu_count) if accelerator == "cuda" else 1
    return len(devices) if isinstance(devices, list) else int(devices)


def visible_gpu_count(accelerator: str) -> int:
    return torch.cuda.device_count() if accelerator == "cuda" else 0


def place_run(config: Config, accelerator: str, environ: Mapping[str, str] | None = None) -> Placement:
    """The devices this run trains on (see :func:`place_devices`)."""
    return place_devices(config_devices(config.devices), accelerator, visible_gpu_count(accelerator), environ)


def place_devices(
    devices: Devices, accelerator: str, gpu_count: int, environ: Mapping[str, str] | None = None
) -> Placement:
    """Outside a queued experiment, ``devices`` as configured. Inside one: ``auto`` (one GPU) or a
    count claims that many free GPUs; a list of ids wins as it is; on a CPU, a share of the cores."""
    as_configured = Placement(devices, devices_per_node(devices, accelerator, gpu_count))
    root = slots.queued_experiment_root(environ)
    if root is None or isinstance(devices, list):
        return as_configured
    if accelerator == "cpu":
        workers = slots.queue_worker_count(root)
        placement = Placement(
            devices, as_configured.per_node, threads=max(1, available_cores() // workers), workers=workers
        )
    else:
        wanted = 1 if devices == "auto" else int(devices)
        ids = slots.visible_gpu_ids(gpu_count, environ)
        if not 0 < wanted <= len(ids):
            return as_configured  # more than the machine has: Lightning says so
        claim = slots.claim_gpus(wanted, ids)
        placement = Placement(claim.indices, len(claim.indices), gpus=claim)
    log.info("%s", placement.describe())
    return placement


def world_size(config: Config, placement: Placement) -> int:
    """Processes across all nodes: each takes a share of an epoch's batches."""
    return placement.per_node * config.num_nodes


def strategy_for(config: Config, placement: Placement) -> str | Strategy:
    """``config.strategy``, except that DDP over frozen layers must be told to expect parameters
    without gradients (phase 1's backbone, or phase 2's leading stages)."""
    frozen_somewhere = config.phase1_epochs > 0 or config.phase2_frozen_stages > 0
    if world_size(config, placement) > 1 and config.strategy in ("auto", "ddp") and frozen_somewhere:
        return DDPStrategy(find_unused_parameters=True)
    return config.strategy


def share_cpu_cores(accelerator: str, placement: Placement) -> int | None:
    """On a CPU: denormals flushed (see :func:`.accelerators.flush_denormals`); under CPU DDP, which
    starts one process per device on one machine, and in queued experiments, whose workers run at
    once, each process gets its share of the cores. Returns the threads set, if any."""
    if accelerator != "cpu":
        return None
    flush_denormals()
    if placement.per_node <= 1 and placement.threads is None:
        return None
    threads = core_share(placement.per_node, cores=placement.threads)
    torch.set_num_threads(threads)
    log.info("%d CPU threads per training process", threads)
    return threads
