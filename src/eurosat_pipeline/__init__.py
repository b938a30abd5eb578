"""Reproducible EuroSAT land-use classification: a DVC pipeline around Lightning and timm."""

import os

__version__ = "0.1.0"

# PyTorch's CPU allocator asks the kernel for transparent huge pages on large tensors when this is
# set (c10's alloc_cpu). A 224 px batch of 64 is 38.5 MB, above glibc's 32 MB mmap cap, so every
# batch is fresh memory: with 4 kB pages it is page-faulted in 9.4k pieces (what huge pages gain:
# benchmarks/README.md, "Huge pages for the batched transform"). Read once, at torch's first large
# allocation, so it is set here, before any module of the package imports torch. "0" turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
