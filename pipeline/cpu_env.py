"""CPU runtime defaults that must be in the environment before torch is imported.

- OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning between parallel regions.
  On cores shared with other processes a spinning thread keeps its core from the thread everyone
  waits for: 2-4x slower synthesis at load 5 on 2 cores (bench.images), a few µs per op when idle.
  libgomp reads it when torch loads it.
- THP_MEM_ALLOC_ENABLE=1: torch's CPU allocator backs large tensors with transparent huge pages;
  otherwise each fresh multi-MB activation is page-faulted in 4 KiB at a time (~25% of OASIS
  synthesis time on a 2-core VM).

This module imports nothing heavy, so entry points can call `apply_defaults()` first.
"""

from __future__ import annotations

import os

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}


def apply_defaults() -> None:
    """Set each default unless the user set the variable (theirs wins)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
