"""What the pipeline picks by itself depends on the CPU only where it must: bf16 only where it is
native. Each CPU kind seen on our machines is mocked through /proc/cpuinfo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eurosat_pipeline.model.inference import feature_format
from eurosat_pipeline.platform import accelerators as hardware
from eurosat_pipeline.reporting.evaluation import _bf16_agreement

# Flags lines trimmed from the three kinds of machine this project has run on.
CPUS = {
    "avx2": ("AMD EPYC 7B13", "fpu sse sse2 avx fma avx2 bmi2"),
    "avx512-bf16": ("AMD EPYC 9B14", "fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni"),
    "amx": ("Intel(R) Xeon(R) Platinum 8481C", "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"),
    "avx512": ("Intel(R) Xeon(R) CPU @ 2.00GHz", "fpu avx2 avx512f avx512bw"),
}


def fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    model, flags = CPUS[kind]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the machine's own cap is not the mocked CPU's


@pytest.mark.parametrize("kind", sorted(CPUS))
def test_cpu_kind_names_the_model_and_instruction_sets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str):
    fake_cpu(monkeypatch, tmp_path, kind)
    cpu = hardware.cpu_kind()
    assert cpu.label == kind and cpu.model == CPUS[kind][0]
    assert cpu.model in cpu.describe() and "avx2" in cpu.isa
    native = kind in ("avx512-bf16", "amx")
    assert hardware.cpu_has_native_bf16() is native
    assert ("emulated" in cpu.describe()) is not native


def test_an_unreadable_cpuinfo_means_no_native_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert hardware.cpu_kind().label == "baseline" and not hardware.cpu_has_native_bf16()


@pytest.mark.parametrize(
    ("kind", "expected"), [("avx2", "fp32"), ("avx512", "fp32"), ("avx512-bf16", "bf16"), ("amx", "bf16")]
)
def test_the_feature_pass_uses_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, expected: str
) -> None:
    fake_cpu(monkeypatch, tmp_path, kind)
    assert feature_format(torch.device("cpu")).dtype == expected


def test_evaluate_measures_bf16_agreement_only_where_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_cpu(monkeypatch, tmp_path, "avx2")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    result = _bf16_agreement(model, images, torch.device("cpu"), torch.zeros(4, 4), torch.zeros(4, dtype=torch.long))
    assert result == {"bf16": "not measured: this CPU has no native bf16"}


def test_a_onednn_isa_cap_counts_as_the_older_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AMX machine emulates the AVX2 one: no native bf16 there."""
    fake_cpu(monkeypatch, tmp_path, "amx")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    cpu = hardware.cpu_kind()
    assert cpu.label == "avx2" and "ONEDNN_MAX_CPU_ISA=AVX2" in cpu.model
    assert not hardware.cpu_has_native_bf16() and feature_format(torch.device("cpu")).dtype == "fp32"


def test_importing_the_package_asks_for_huge_pages_unless_told_otherwise() -> None:
    show = "import eurosat_pipeline, os; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    default = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == "1"
    off = subprocess.run(
        [sys.executable, "-c", show],
        env={**env, "THP_MEM_ALLOC_ENABLE": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert off.stdout.strip() == "0"
