"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded weights-only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import SemsynthError
from pipeline.io_utils import atomic_write_bytes


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save `{"model": sd, "ema": sd, "optimizer": sd, "step": n, "config": {...}}` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise SemsynthError(
            f"checkpoint {path} does not exist; run the training stage that writes it"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or one holding pickled objects
        raise SemsynthError(f"checkpoint {path} cannot be loaded weights-only: {e}") from None
