"""Is there an NVIDIA GPU driver on this machine, and which version: read from the kernel, without torch.

Importing torch (the locked CUDA build) costs seconds and ~700 MB of resident memory; commands
that only need to know whether a GPU exists (to pick an inference engine) ask here instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

NVIDIA_PROC = Path("/proc/driver/nvidia/version")


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version (e.g. ``535.104.05``), or None when there is no NVIDIA driver."""
    if NVIDIA_PROC.is_file():
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", NVIDIA_PROC.read_text())
        if match:
            return match.group(1)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        result = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"  # nvidia-smi exists, so a GPU driver is installed, but it did not answer
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else "unknown"


def gpu_present() -> bool:
    """Whether an NVIDIA driver is loaded here (its GPU may still be unusable by the installed torch)."""
    return driver_version() is not None
