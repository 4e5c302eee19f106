"""Segmenter runs: where a run lives (`run_name`), its checkpoint → model loader, and prediction.

`train_segmenter` writes `OUT/{run_name}/model.pt`; `evaluate` loads the runs and predicts with
them through this module, so scoring does not depend on the training loop's code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.segmenter import build_segmenter
from pipeline.checkpoint import load_checkpoint
from pipeline.device import autocast

MODES = ("real", "real_synth")


def run_name(mode: str, seed: int, real_fraction: float = 1.0) -> str:
    """`real-seed0`, or `real-frac0.1-seed0` for a 10% label subset (as dvc.yaml spells it)."""
    frac = "" if real_fraction >= 1 else f"-frac{real_fraction:g}"
    return f"{mode}{frac}-seed{seed}"


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A trained segmenter from its `model.pt` (weights only), in eval mode."""
    ckpt = load_checkpoint(path)
    meta = ckpt["config"]
    # checkpoints from before decoder_channels existed used smp's default decoder
    decoder = meta.get("decoder_channels")
    model = build_segmenter(meta["arch"], meta["encoder"], meta["num_classes"], None, decoder)
    model.load_state_dict(ckpt["model"])
    model.meta = meta  # class names, ignore index, mode, seed, fraction
    return model.to(device).eval()


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: np.ndarray, batch_size: int = 32, bf16: bool = False
) -> np.ndarray:
    """uint8 [N, H, W, 3] → uint8 [N, H, W] class ids (argmax)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"predict wants uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}"
        )
    model.eval()
    device = next(model.parameters()).device
    out = np.empty(images.shape[:3], dtype=np.uint8)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2)
        with autocast(device, bf16):
            logits = model(x.float() / 255)
        out[i : i + batch_size] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out
