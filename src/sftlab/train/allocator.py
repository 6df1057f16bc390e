"""Freed memory kept in the process while training on CPU, instead of going back to the OS after every step.

glibc's ``malloc`` hands the top of its heap back to the OS once more than its trim threshold is free there. A
training step frees its activations and gradients at the end and allocates them again in the next one, so the
same few hundred MB go back and are mapped in again, page by page, every step: ~110,000 page faults per
SmolLM2-135M step on CPU (8 x 75 tokens). Within ``train()`` on CPU, blocks up to 32 MB come from the heap and
it is not trimmed; the pages stay mapped and are reused (what a caching allocator, jemalloc or tcmalloc do).
Measured in one process, steps alternated: 1.09 vs 1.18 s a step at 8 x 75 tokens, 4.60 vs 4.82 s at 8 x 300,
same peak RSS (benchmarks/README.md). Results are unchanged: only where the memory comes from differs.

When training ends the heap is trimmed once and the trim threshold set to what glibc's own adaptive setting
reaches (twice the 32 MB mmap threshold). Other C libraries (musl, macOS): nothing is changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import sys
from collections.abc import Iterator

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks above it are mapped and unmapped on their own
KEEP = 2**31 - 1  # a trim threshold no heap reaches here (mallopt takes an int)


def glibc():
    """The process's glibc (``ctypes``), or None on other C libraries and platforms."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def keep_freed_memory(device: torch.device) -> Iterator[bool]:
    """Within the block, glibc keeps freed memory (CPU ``device`` only); yields whether it does."""
    libc = glibc() if torch.device(device).type == "cpu" else None
    if libc is None or not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or not libc.mallopt(M_TRIM_THRESHOLD, KEEP):
        yield False
        return
    try:
        yield True
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
        libc.malloc_trim(0)
