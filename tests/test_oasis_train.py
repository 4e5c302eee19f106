"""A tiny OASIS training run on the tiny shapes dataset: losses move, outputs, resume, config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.checkpoint import load_checkpoint
from pipeline.config import ConfigError, build
from pipeline.train_images import (
    TrainImagesConfig,
    grid_indices,
    load_image_generator,
    synthesize,
    train_images,
)

TINY = dict(
    g_ch=4,
    d_ch=4,
    spade_hidden=8,
    z_dim=8,
    batch_size=4,
    total_images=40,
    log_every_images=4,
    sample_every_images=0,
    checkpoint_every_images=0,
    bn_refresh_batches=2,
    fid_images=4,
    grid_rows=2,
    grid_seeds=2,
    ema_halflife_images=20,
)


def _curve(live: Path, name: str) -> list[float]:
    with open(live / "plots" / "metrics" / "train" / f"{name}.tsv") as f:
        return [float(r[name]) for r in csv.DictReader(f, delimiter="\t")]


def test_tiny_training_run_resume_and_outputs(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = TrainImagesConfig(**TINY)
    out, live = tmp_path / "images", tmp_path / "live"
    metrics = train_images(
        cfg, tiny_shapes, out, progress=False, metrics_path=tmp_path / "m.json", live_dir=live
    )
    # both losses were logged at every step and changed during training
    loss_g, loss_d = _curve(live, "loss_g"), _curve(live, "loss_d")
    assert len(loss_g) == 10 and len(loss_d) == 10
    assert np.ptp(loss_g) > 1e-3 and np.ptp(loss_d) > 1e-3
    assert _curve(live, "loss_labelmix")[-1] > 0
    # metrics: FID on the held-out split, finite
    written = json.loads((tmp_path / "m.json").read_text())
    assert written == metrics and np.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert metrics["images_seen"] == 40
    # grid: 2 rows x (label | real | 2 seeds) of 32x32 tiles with a 1-pixel border
    assert Image.open(out / "grid.png").size == (4 * 34, 2 * 34)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert {"model", "ema", "optimizer", "step", "config"} <= set(ckpt)
    assert ckpt["step"] == 10

    # the EMA generator loads and synthesises the val masks
    g = load_image_generator(out / "checkpoint.pt")
    masks = np.zeros((2, 32, 32), np.uint8)
    assert synthesize(g, masks, seed=0).shape == (2, 1, 32, 32, 3)

    # resume: a longer run continues from the checkpoint instead of starting over
    longer = TrainImagesConfig(**{**TINY, "total_images": 48, "fid_images": 0})
    m2 = train_images(
        longer, tiny_shapes, out, progress=False, metrics_path=tmp_path / "m2.json", live_dir=live
    )
    assert m2["images_seen"] == 48 and m2["resumed_at_images"] == 40
    assert metrics["resumed_at_images"] == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 12
    assert len(_curve(live, "loss_g")) == 12  # 10 steps + 2 resumed ones


def test_config_is_strict_and_checked() -> None:
    with pytest.raises(ConfigError, match="train_images.preset"):
        TrainImagesConfig(preset="huge")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainImagesConfig(batch_size=1)
    with pytest.raises(ConfigError, match="labelmix_weight"):
        TrainImagesConfig(labelmix_weight=-1.0)
    with pytest.raises(ConfigError, match="lr_gg"):
        build(TrainImagesConfig, {"lr_gg": 1.0}, "train_images")


def test_size_that_does_not_fit_the_networks_is_a_config_error(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    # 32x32 data cannot go through 6 discriminator levels (32 / 2^6 < 1)
    cfg = TrainImagesConfig(**{**TINY, "preset": "paper", "g_ch": 1, "d_ch": 2})
    with pytest.raises(ConfigError, match="divisible"):
        train_images(cfg, tiny_shapes, tmp_path / "o", progress=False, live_dir=tmp_path / "l")


def test_cli_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-images", "--help"])
    assert e.value.code == 0
    assert "labelmix_weight" in capsys.readouterr().out


def test_grid_rows_spread_over_the_split() -> None:
    # CamVid's val split is one video: the first 6 frames are one scene, spread rows are not
    assert grid_indices(101, 6).tolist() == [0, 20, 40, 60, 80, 100]
    assert grid_indices(3, 6).tolist() == [0, 1, 2]  # fewer samples than rows: each once
    assert grid_indices(1, 6).tolist() == [0]
