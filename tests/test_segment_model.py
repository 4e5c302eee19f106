"""Segmenter factory, offline pretrained encoder weights, losses, mask-exact augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.segmenter import (
    build_segmenter,
    dice_loss,
    load_encoder_state,
    segmentation_loss,
)
from pipeline.augment import AugmentConfig, augment, colour_jitter, geometric
from pipeline.checkpoint import save_checkpoint
from pipeline.errors import ConfigError
from pipeline.predict import load_segmenter, predict
from pipeline.pretrained import encoder_state_dict
from pipeline.train_segmenter import TrainSegmenterConfig


@pytest.fixture(scope="module")
def lite0_state():
    return encoder_state_dict("efficientnet-lite0", "imagenet")


def test_registry_errors_list_valid_names():
    with pytest.raises(ValueError, match=r"unknown arch 'segformer'.*deeplabv3plus.*unet"):
        build_segmenter("segformer", "efficientnet-lite0", 3)
    with pytest.raises(ValueError, match=r"unknown encoder 'vit'.*efficientnet-lite0"):
        build_segmenter("unet", "vit", 3)


def test_pretrained_weights_are_loaded_into_the_encoder(lite0_state):
    assert "_fc.weight" in lite0_state  # the classifier is in the file, dropped on load
    model = build_segmenter("unet", "efficientnet-lite0", 5, lite0_state)
    enc = model.net.encoder
    assert torch.equal(enc.conv_stem.weight, lite0_state["_conv_stem.weight"])
    assert torch.equal(enc.bn2.running_var, lite0_state["_bn1.running_var"])  # the last tensor
    blank = build_segmenter("unet", "efficientnet-lite0", 5)
    assert not torch.equal(blank.net.encoder.conv_stem.weight, lite0_state["_conv_stem.weight"])
    deeplab = build_segmenter("deeplabv3plus", "efficientnet-lite0", 5, lite0_state)
    assert torch.equal(deeplab.net.encoder.conv_stem.weight, lite0_state["_conv_stem.weight"])


def test_mismatched_weights_fail_loudly(lite0_state):
    with pytest.raises(ValueError, match="does not belong to this encoder"):
        build_segmenter("unet", "resnet18", 3, lite0_state)
    bad = dict(lite0_state)
    bad["_blocks.0._project_conv.weight"] = torch.zeros(17, 32, 1, 1)
    model = build_segmenter("unet", "efficientnet-lite0", 3)
    with pytest.raises(ValueError, match=r"_blocks.0._project_conv.weight \(17, 32, 1, 1\)"):
        load_encoder_state(model.net.encoder, bad)


def test_encoder_weights_options():
    assert encoder_state_dict("efficientnet-lite0", None) is None
    with pytest.raises(ConfigError, match="no offline ImageNet weights for encoder 'resnet18'"):
        encoder_state_dict("resnet18", "imagenet")


def test_forward_and_predict_on_sizes_off_the_stride():
    torch.manual_seed(0)
    model = build_segmenter("unet", "efficientnet-lite0", 4).eval()
    x = torch.rand(2, 3, 20, 30)
    assert model(x).shape == (2, 4, 20, 30)
    images = (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    pred = predict(model, images, batch_size=1)
    assert pred.dtype == np.uint8 and pred.shape == (2, 20, 30)
    with torch.no_grad():
        ref = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert np.array_equal(pred, ref.numpy())
    with pytest.raises(ValueError, match="uint8"):
        predict(model, images.astype(np.float32))


def test_losses_ignore_void_and_reward_the_truth():
    target = torch.tensor([[[0, 1], [2, 255]]])
    good = torch.nn.functional.one_hot(target.clamp_max(2), 3).permute(0, 3, 1, 2).float() * 20
    bad = good.roll(1, dims=1)
    assert segmentation_loss(good, target, 255, "ce") < 1e-6
    assert segmentation_loss(bad, target, 255, "ce") > 10
    assert dice_loss(good, target, 255) < 1e-6
    # the void pixel's logits change nothing
    good2 = good.clone()
    good2[..., 1, 1] = torch.tensor([0.0, 0.0, 50.0])
    assert torch.equal(
        segmentation_loss(good, target, 255, "dice_ce"),
        segmentation_loss(good2, target, 255, "dice_ce"),
    )
    with pytest.raises(ValueError, match="valid"):
        segmentation_loss(good, target, 255, "focal")


def _blocks(n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    small = torch.randint(0, 5, (n, size // 8, size // 8), generator=g)
    return small.repeat_interleave(8, 1).repeat_interleave(8, 2)  # 8x8 blocks of one class


def test_geometry_keeps_masks_exact_and_aligned_with_images():
    masks = _blocks()
    images = (masks.float() * 30 / 255).unsqueeze(1).repeat(1, 3, 1, 1)  # colour encodes the id
    cfg = AugmentConfig(scale=(0.7, 1.6))
    out_i, out_m = geometric(images, masks, cfg, torch.Generator().manual_seed(3), 255)
    assert set(out_m.unique().tolist()) <= set(masks.unique().tolist()) | {255}
    assert (out_m == 255).any()  # some zoom-out uncovered padding, marked void
    # inside uniform regions the bilinear image agrees with the nearest mask
    m = out_m.float().unsqueeze(1)
    uniform = (
        torch.nn.functional.max_pool2d(m, 3, 1, 1) == -torch.nn.functional.max_pool2d(-m, 3, 1, 1)
    ).squeeze(1)
    inside = uniform & (out_m != 255)
    assert inside.float().mean() > 0.3
    decoded = (out_i[:, 0] * 255 / 30).round().long()
    assert torch.equal(decoded[inside], out_m[inside])
    # flips really happen: without scaling, some sample equals the mirrored input
    plain = AugmentConfig(scale=(1.0, 1.0))
    _, fm = geometric(images, masks, plain, torch.Generator().manual_seed(0), 255)
    flipped = [
        torch.equal(fm[i], masks[i].flip(-1)) and not torch.equal(fm[i], masks[i]) for i in range(4)
    ]
    kept = [torch.equal(fm[i], masks[i]) for i in range(4)]
    assert any(flipped) and all(a or b for a, b in zip(flipped, kept, strict=True))


def test_colour_jitter_changes_images_only():
    masks = _blocks()
    images = torch.rand(4, 3, 32, 32)
    cfg = AugmentConfig()
    i1, m1 = augment(images, masks, cfg, torch.Generator().manual_seed(5), 255)
    i2, m2 = geometric(images, masks, cfg, torch.Generator().manual_seed(5), 255)
    assert torch.equal(m1, m2) and not torch.allclose(i1, i2)
    assert i1.min() >= 0 and i1.max() <= 1
    off = AugmentConfig(brightness=0, contrast=0, saturation=0)
    assert torch.allclose(colour_jitter(images, off, torch.Generator()), images, atol=1e-6)


def test_augment_config_validates():
    with pytest.raises(ConfigError, match="augment.scale"):
        AugmentConfig(scale=(2.0, 1.0))
    with pytest.raises(ConfigError, match="augment.brightness"):
        AugmentConfig(brightness=1.5)


def test_decoder_channels_set_the_unet_decoder_and_survive_a_reload(tmp_path):
    light = build_segmenter("unet", "efficientnet-lite0", 4, None, [64, 48, 32, 16, 8])
    default = build_segmenter("unet", "efficientnet-lite0", 4)
    assert light.net.segmentation_head[0].in_channels == 8
    assert default.net.segmentation_head[0].in_channels == 16  # smp's [256, ..., 16]
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in default.parameters())
    meta = {"arch": "unet", "encoder": "efficientnet-lite0", "num_classes": 4}
    for model, widths in [(light, [64, 48, 32, 16, 8]), (default, None)]:
        # a checkpoint without the key (written before it existed) is smp's default decoder
        cfg = {**meta, "decoder_channels": widths} if widths else meta
        save_checkpoint(tmp_path / "model.pt", {"config": cfg, "model": model.state_dict()})
        loaded = load_segmenter(tmp_path / "model.pt")
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_decoder_channels_are_checked():
    TrainSegmenterConfig(arch="deeplabv3plus", decoder_channels=[])
    with pytest.raises(ConfigError, match=r"decoder_channels .*\[\] for the arch's default"):
        TrainSegmenterConfig(arch="fpn")
    with pytest.raises(ConfigError, match="five widths"):
        TrainSegmenterConfig(decoder_channels=[32, 16])
