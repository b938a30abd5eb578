"""Which device and number format a run uses, and why; a GPU the installed torch cannot use is an error.

``precision: auto`` follows the GPU generation, not ``torch.cuda.is_bf16_supported()``: in the
locked torch that call counts *emulated* bf16 as support, so a T4 or V100 (compute capability 7.x)
would train in slow emulated bf16. Native bf16 needs capability 8.0 (Ampere) or newer; 7.x GPUs have
fp16 tensor cores, used with Lightning's gradient scaler (``16-mixed``); older GPUs train in fp32.

``accelerator: auto`` on a machine with an NVIDIA GPU that the installed torch cannot drive (driver
too old for its CUDA version, or a GPU generation it has no kernels for) stops with an error instead
of training on the CPU for days; ``accelerator: cpu`` opts into the CPU on purpose.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from eurosat_pipeline.core.errors import ConfigError, PipelineError
from eurosat_pipeline.platform import nvidia

# The oldest Linux driver of each CUDA major version (NVIDIA's CUDA toolkit release notes, table 3,
# "minor version compatibility").
MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}
TORCH_INSTALL_HELP = "https://pytorch.org/get-started/previous-versions/"


class HardwareError(PipelineError):
    """This machine's GPU cannot be used by the installed torch (or the asked-for setting)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The Lightning ``precision`` a run uses and a sentence saying why."""

    precision: str
    reason: str


def resolve_accelerator(requested: str) -> str:
    """``cuda`` or ``cpu`` (or what was asked for); refuses to fall back to the CPU past a GPU it cannot use."""
    if requested == "cpu":
        return "cpu"
    if requested in ("gpu", "cuda"):
        usable_gpu_or_raise(required=True)
        return "cuda"
    if requested == "auto":
        return "cuda" if usable_gpu_or_raise(required=False) else "cpu"
    return requested  # mps: Lightning checks it


def usable_gpu_or_raise(required: bool) -> bool:
    """True when torch can train on a CUDA GPU here; raises when an NVIDIA GPU is present but unusable."""
    if torch.cuda.is_available():
        problem = unsupported_architecture()
        if problem:
            raise HardwareError(problem + _ESCAPE)
        return True
    driver = nvidia.driver_version()
    if driver is None:
        if required:
            raise HardwareError(
                "accelerator asks for a GPU, but there is no NVIDIA GPU (no driver found) and torch sees none. "
                "Set accelerator: auto or cpu."
            )
        return False
    raise HardwareError(_driver_problem(driver) + _ESCAPE)


_ESCAPE = " To train on the CPU instead (days at 224 px, not minutes), set accelerator: cpu on purpose."


def _driver_problem(driver: str) -> str:
    cuda = torch.version.cuda
    if cuda is None:
        return (
            f"This machine has an NVIDIA GPU (driver {driver}), but the installed torch {torch.__version__} is a "
            f"CPU-only build. Install a CUDA build of torch: {_install_hint(None)}."
        )
    cuda_major = int(cuda.split(".")[0])
    needed = MIN_DRIVER_FOR_CUDA.get(cuda_major)
    driver_major = int(driver.split(".")[0]) if driver[:1].isdigit() else None
    too_old = needed is not None and driver_major is not None and driver_major < needed
    reason = (
        f"its CUDA {cuda} needs NVIDIA driver {needed} or newer, and this machine has driver {driver}"
        if too_old
        else f"torch.cuda.is_available() is False with NVIDIA driver {driver} (CUDA {cuda} build)"
    )
    return (
        f"This machine has an NVIDIA GPU that the installed torch {torch.__version__} cannot use: {reason}. "
        f"Upgrade the driver, or install a torch built for the CUDA version your driver serves: "
        f"{_install_hint(driver_major)}."
    )


def unsupported_architecture() -> str | None:
    """Why torch has no kernels for GPU 0, or None when it has (same-major binaries run on later minors)."""
    major, minor = torch.cuda.get_device_capability(0)
    arches = torch.cuda.get_arch_list()
    if not arches or _runs_on(major, minor, arches):
        return None
    name = torch.cuda.get_device_name(0)
    return (
        f"The GPU {name} (compute capability {major}.{minor}, sm_{major}{minor}) has no kernels in the installed "
        f"torch {torch.__version__} (built for {' '.join(arches)}). Install a torch build that includes "
        f"sm_{major}{minor}: {_install_hint(None)}, then check torch.cuda.get_arch_list()."
    )


def _runs_on(major: int, minor: int, arches: list[str]) -> bool:
    for arch in arches:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)a?", arch)
        if not match:
            continue
        arch_major, arch_minor = int(match.group(2)), int(match.group(3))
        if match.group(1) == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if match.group(1) == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True  # PTX, compiled for this GPU when first loaded
    return False


def _install_hint(driver_major: int | None) -> str:
    cuda_tag = "cu126" if driver_major is None or driver_major >= MIN_DRIVER_FOR_CUDA[12] else "cu118"
    return (
        f"after `make install`, run `.tools/uv/bin/uv pip install --python .venv --reinstall "
        f"--index-url https://download.pytorch.org/whl/{cuda_tag} torch=={_base(torch.__version__)} "
        f"torchvision` (pick the CUDA tag your driver serves: {TORCH_INSTALL_HELP})"
    )


def _base(version: str) -> str:
    return version.split("+")[0]


def choose_precision(requested: str, accelerator: str) -> PrecisionChoice:
    """``requested`` made concrete for ``accelerator`` (``cuda``/``cpu``), with the reason."""
    on_gpu = accelerator in ("cuda", "gpu")
    if requested != "auto":
        if requested == "16-mixed" and not on_gpu:
            raise ConfigError(
                "key 'precision': 16-mixed needs a CUDA GPU (fp16 autocast with a gradient scaler); "
                "on the CPU use 32-true or bf16-mixed."
            )
        return PrecisionChoice(requested, "set in params.yaml")
    if not on_gpu:
        return PrecisionChoice("32-true", CPU_PRECISION_REASON)
    major, minor = torch.cuda.get_device_capability(0)
    if major >= 8:
        return PrecisionChoice("bf16-mixed", f"compute capability {major}.{minor}: native bf16 tensor cores")
    if major == 7:
        return PrecisionChoice(
            "16-mixed",
            f"compute capability {major}.{minor}: fp16 tensor cores with a gradient scaler "
            "(bf16 would only be emulated, far slower)",
        )
    return PrecisionChoice("32-true", f"compute capability {major}.{minor}: no tensor cores")


def choose_compile(requested: bool, accelerator: str) -> str:
    """Why ``compile`` is what it is, for the run's summary."""
    if requested:
        return "set in params.yaml"
    if accelerator == "cpu":
        return (
            "CPU: torch.compile (inductor) gained nothing over eager channels_last for EfficientNet training "
            "here and took 30-65 s to compile (benchmarks/README.md)"
        )
    return "off by default: set compile: true for faster GPU steps after a slow first one"


CPU_PRECISION_REASON = (
    "CPU: fp32 with channels_last trains EfficientNet fastest (bf16 autocast measured slower; benchmarks/README.md)"
)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as Linux reports it.

    oneDNN also runs bf16 on plain AVX-512 or AVX2 by emulation, far slower than fp32: that does not count.
    """
    return cpu_kind().native_bf16


CPUINFO = Path("/proc/cpuinfo")
# The instruction sets that decide CPU speed here (2-3x apart on the machines measured), newest last.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CPUKind:
    """What a timing on this CPU must name: the model and the vector instruction sets it has."""

    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def isa(self) -> list[str]:
        return [flag for flag in ISA_FLAGS if flag in self.flags]

    @property
    def label(self) -> str:
        """A short name for file names and tables: ``amx``, ``avx512-bf16``, ``avx512``, ``avx2`` or ``baseline``."""
        if "amx_bf16" in self.flags:
            return "amx"
        if "avx512_bf16" in self.flags:
            return "avx512-bf16"
        if "avx512f" in self.flags:
            return "avx512"
        return "avx2" if "avx2" in self.flags else "baseline"

    def describe(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else "bf16 emulated (no native bf16)"
        return f"{self.model} ({', '.join(self.isa) or 'no AVX2'}; {bf16})"


# What oneDNN may use under ONEDNN_MAX_CPU_ISA (set to emulate an older CPU on a newer one): the
# instruction sets above the cap are as good as absent, for speed and for native bf16.
_ABOVE_CAP = {
    "SSE41": set(ISA_FLAGS),
    "AVX": set(ISA_FLAGS),
    "AVX2": {"avx512f", "avx512_bf16", "amx_bf16"},
    "AVX2_VNNI": {"avx512f", "avx512_bf16", "amx_bf16"},
    "AVX2_VNNI_2": {"avx512f", "avx512_bf16", "amx_bf16"},
    "AVX512_CORE": {"avx512_bf16", "amx_bf16"},
    "AVX512_CORE_VNNI": {"avx512_bf16", "amx_bf16"},
    "AVX512_CORE_BF16": {"amx_bf16"},
}


def cpu_kind() -> CPUKind:
    """This CPU's model name and instruction sets, from Linux's /proc/cpuinfo (unknown elsewhere),
    less those above ``ONEDNN_MAX_CPU_ISA`` when that cap is set."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return CPUKind("unknown CPU", frozenset())
    model_line = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.*)$", text, flags=re.MULTILINE)
    model = model_line.group(1).strip() if model_line else "unknown CPU"
    flags = set(flags_line.group(1).split() if flags_line else ())
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in _ABOVE_CAP and flags & _ABOVE_CAP[cap]:
        flags -= _ABOVE_CAP[cap]
        model += f", capped by ONEDNN_MAX_CPU_ISA={cap}"
    return CPUKind(model, frozenset(flags))


def flush_denormals() -> None:
    """Treat denormal floats as zero on this CPU (for the whole process).

    x86 CPUs compute on denormals (below ~1e-38) in microcode, 10-100x slower per operation; decayed
    weights and small gradients can produce them. On the 2-core machine the gain was within
    run-to-run noise (benchmarks/README.md), so this is insurance, not a measured speed-up. Values
    that small change no prediction.
    """
    torch.set_flush_denormal(True)
