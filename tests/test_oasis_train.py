"""A tiny OASIS training run on the tiny shapes dataset: losses move, outputs, resume, config."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.checkpoint import load_checkpoint
from pipeline.config import ConfigError, build
from pipeline.sampling import load_image_generator, synthesize
from pipeline.shards import ShardWriter, iter_split, load_class_table, shard_name, splits
from pipeline.train_images import TrainImagesConfig, grid_indices, train_images

TINY = dict(
    g_ch=4,
    d_ch=4,
    spade_hidden=8,
    z_dim=8,
    batch_size=4,
    total_images=40,
    log_every_images=4,
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
    # KID and the raw generator's scores too; the EMA and G are different networks here
    assert {"kid", "kid_std", "fid_raw", "kid_raw"} <= set(metrics)
    assert np.isfinite(metrics["kid"]) and metrics["fid_raw"] != metrics["fid"]
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


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_weights(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    cfg = TrainImagesConfig(**{**TINY, "total_images": 32, "fid_images": 0})

    def run(name: str, **kw) -> dict:
        out = tmp_path / name
        train_images(cfg, tiny_shapes, out, False, out / "m.json", out / "live", **kw)
        return torch.load(out / "checkpoint.pt", weights_only=True)

    straight = run("straight")
    part = run("resumed", stop_after_images=12)
    assert part["images_seen"] == 12 and part["finished"] is False
    resumed = run("resumed")
    assert resumed["images_seen"] == straight["images_seen"] == 32 and resumed["finished"]
    for net in ("model", "ema", "discriminator"):
        for k, v in straight[net].items():
            torch.testing.assert_close(resumed[net][k], v, rtol=0, atol=0, msg=f"{net}.{k}")
    for opt in ("g", "d"):
        for i, st in straight["optimizer"][opt]["state"].items():
            assert torch.equal(
                resumed["optimizer"][opt]["state"][i]["exp_avg_sq"], st["exp_avg_sq"]
            )
    assert torch.equal(resumed["rng"], straight["rng"])


def test_resume_refuses_other_training_settings_unless_restart(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    cfg = TrainImagesConfig(**{**TINY, "total_images": 8, "fid_images": 0})
    out, live = tmp_path / "o", tmp_path / "live"
    train_images(cfg, tiny_shapes, out, False, tmp_path / "m.json", live)
    other = dataclasses.replace(cfg, lr_d=1e-3, spade_hidden=4)
    with pytest.raises(ConfigError, match=r"arch\.spade_hidden.*train_images\.lr_d.*--restart"):
        train_images(other, tiny_shapes, out, False, tmp_path / "m.json", live)
    m = train_images(other, tiny_shapes, out, False, tmp_path / "m.json", live, restart=True)
    assert m["resumed_at_images"] == 0 and m["images_seen"] == 8


def _with_void(src: Path, dst: Path, void: int) -> Path:
    """`src` rewritten with a class table whose void id is `void`, and a void square per mask."""
    table = dataclasses.replace(load_class_table(src), ignore_index=void)
    dst.mkdir(parents=True)
    for split in splits(src):
        samples = list(iter_split(src, split))
        with ShardWriter(dst / shard_name(split, 0), table) as w:
            for s in samples:
                mask = s.mask.copy()
                mask[:6, :6] = void
                w.write(dataclasses.replace(s, mask=mask))
    table.save(dst / "classes.json")
    return dst


def test_a_void_id_other_than_255_is_ignored_by_the_losses(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    # The class table may put void anywhere in [C, 255]: OASIS's losses and LabelMix must
    # ignore the table's id (a hard-coded 255 made 250 a target class out of range).
    data = _with_void(tiny_shapes, tmp_path / "void250", 250)
    cfg = TrainImagesConfig(**{**TINY, "total_images": 8, "fid_images": 4})
    out = tmp_path / "o"
    m = train_images(cfg, data, out, False, tmp_path / "m.json", tmp_path / "live")
    assert np.isfinite(m["loss_d"]) and np.isfinite(m["loss_g"]) and np.isfinite(m["fid"])
    g = load_image_generator(out / "checkpoint.pt")
    assert g.ignore_index == 250
    masks = np.full((1, 32, 32), 250, np.uint8)
    assert synthesize(g, masks, seed=0).shape == (1, 1, 32, 32, 3)  # void, not a bad id
    with pytest.raises(ValueError, match="255"):
        synthesize(g, np.full((1, 32, 32), 255, np.uint8), seed=0)


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
    out = capsys.readouterr().out
    for key in ("labelmix_weight", "discriminator", "d_encoder_lr_mult", "diffaug_policy"):
        assert key in out
    assert "g_upsample" in out and "nearest | bilinear" in out


def test_grid_rows_spread_over_the_split() -> None:
    # CamVid's val split is one video: the first 6 frames are one scene, spread rows are not
    assert grid_indices(101, 6).tolist() == [0, 20, 40, 60, 80, 100]
    assert grid_indices(3, 6).tolist() == [0, 1, 2]  # fewer samples than rows: each once
    assert grid_indices(1, 6).tolist() == [0]


@pytest.mark.parametrize(
    "options",
    [
        {"discriminator": "pretrained", "d_encoder": "frozen"},
        {"discriminator": "pretrained", "d_encoder": "finetune", "diffaug": True},
        {"diffaug": True, "g_upsample": "bilinear"},
    ],
    ids=["pretrained-frozen", "pretrained-finetune-diffaug", "oasis-diffaug-bilinear"],
)
def test_discriminator_diffaug_and_upsampling_options_train_and_checkpoint(
    tiny_shapes: Path, tmp_path: Path, options: dict
) -> None:
    from pipeline.pretrained import encoder_state_dict

    cfg = TrainImagesConfig(
        **{**TINY, "total_images": 12, "fid_images": 0, "d_decoder_channels": (8, 8, 8, 4, 4)},
        **options,
    )
    out = tmp_path / "o"
    m = train_images(cfg, tiny_shapes, out, False, tmp_path / "m.json", tmp_path / "live")
    assert m["images_seen"] == 12 and np.isfinite(m["loss_d"]) and np.isfinite(m["loss_g"])
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["discriminator_arch"]["kind"] == cfg.discriminator
    assert ckpt["config"]["diffaug"] is cfg.diffaug
    assert load_image_generator(out / "checkpoint.pt").upsample == cfg.g_upsample
    if cfg.discriminator == "pretrained":
        stem = ckpt["discriminator"]["encoder.conv_stem.weight"]
        imagenet = encoder_state_dict("efficientnet-lite0", "imagenet")["_conv_stem.weight"]
        assert torch.equal(stem, imagenet) is (cfg.d_encoder == "frozen")
    # resuming with another discriminator is refused, the key named
    other = "oasis" if cfg.discriminator == "pretrained" else "pretrained"
    with pytest.raises(ConfigError, match=r"train_images\.discriminator.*--restart"):
        train_images(
            dataclasses.replace(cfg, discriminator=other), tiny_shapes, out, False,
            tmp_path / "m.json", tmp_path / "live",
        )  # fmt: skip


def test_diffaug_run_resumes_to_exactly_the_uninterrupted_weights(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    # every DiffAugment draw comes from the stage's stream, which the checkpoint holds
    cfg = TrainImagesConfig(**{**TINY, "total_images": 16, "fid_images": 0, "diffaug": True})

    def run(name: str, **kw) -> dict:
        out = tmp_path / name
        train_images(cfg, tiny_shapes, out, False, out / "m.json", out / "live", **kw)
        return torch.load(out / "checkpoint.pt", weights_only=True)

    straight = run("straight")
    run("resumed", stop_after_images=8)
    resumed = run("resumed")
    for net in ("model", "discriminator"):
        for k, v in straight[net].items():
            torch.testing.assert_close(resumed[net][k], v, rtol=0, atol=0, msg=f"{net}.{k}")


def test_new_options_are_checked(tiny_shapes: Path) -> None:
    from pipeline.train_images import build_state

    for key, bad in [
        ("discriminator", "resnet"), ("d_encoder", "thawed"), ("g_upsample", "cubic"),
        ("diffaug_policy", ("translation", "flip")), ("d_decoder_channels", (8, 8)),
        ("d_encoder_lr_mult", 0.0),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"train_images.{key}"):
            TrainImagesConfig(**{key: bad})
    with pytest.raises(ConfigError, match="diffaug_policy"):
        TrainImagesConfig(diffaug=True, diffaug_policy=())
    cfg = TrainImagesConfig(**{**TINY, "discriminator": "pretrained"})
    with pytest.raises(ConfigError, match="divisible by 32.*discriminator=oasis"):
        build_state(cfg, 7, (48, 64), torch.device("cpu"))
