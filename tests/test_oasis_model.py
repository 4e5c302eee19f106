"""OASIS networks: shapes, the fast-noise path, spectral norm, presets, synthesize and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.oasis import OASISGenerator, SNConv2d, UNetDiscriminator, preset_widths
from pipeline.checkpoint import save_checkpoint
from pipeline.train_images import load_image_generator, onehot, synthesize


def _generator(**kw) -> OASISGenerator:
    torch.manual_seed(0)
    args = dict(num_classes=5, height=16, width=24, widths=[32, 16, 8], z_dim=8, spade_hidden=16)
    return OASISGenerator(**{**args, **kw})


def test_generator_and_discriminator_shapes_non_square() -> None:
    g = _generator()
    mask = torch.randint(0, 5, (3, 16, 24))
    img = g(onehot(mask, 5), torch.randn(3, 8))
    assert img.shape == (3, 3, 16, 24) and img.abs().max() <= 1
    d = UNetDiscriminator(5, [8, 16, 16])
    assert d(img).shape == (3, 6, 16, 24)  # N+1 channels per pixel
    with pytest.raises(ValueError, match="divisible"):
        OASISGenerator(5, 17, 24, [32, 16, 8])
    with pytest.raises(ValueError, match="divisible"):
        d(torch.zeros(1, 3, 12, 24))
    with pytest.raises(ValueError, match="z must have shape"):
        g(onehot(mask, 5))


def test_fast_noise_path_equals_concatenation() -> None:
    # The per-image-kernel trick must be the published layer (concat z to the label map) exactly.
    g = _generator()
    with torch.no_grad():  # realistic BN running stats, then eval (no power-iteration updates)
        g(onehot(torch.randint(0, 5, (8, 16, 24)), 5), torch.randn(8, 8))
    g.eval()
    mask = torch.randint(0, 5, (2, 16, 24))
    mask[0, :3] = 255  # void rows: all-zero one-hot
    lab, z = onehot(mask, 5), torch.randn(2, 8)
    with torch.no_grad():
        fast, slow = g(lab, z), g(lab, z, fast_noise=False)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.allclose(g(lab, z), g(lab, torch.randn(2, 8)))


def test_spatial_noise_and_no_noise() -> None:
    g = _generator(spatial_noise=True)
    assert g.noise_shape() == (8, 16, 24)
    assert g(onehot(torch.zeros(2, 16, 24), 5), torch.randn(2, 8, 16, 24)).shape == (2, 3, 16, 24)
    g0 = _generator(z_dim=0)
    assert g0(onehot(torch.zeros(2, 16, 24), 5)).shape == (2, 3, 16, 24)


def test_spectral_norm_bounds_largest_singular_value() -> None:
    torch.manual_seed(0)
    conv = SNConv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(10)
    for _ in range(30):
        conv(torch.zeros(1, 4, 5, 5))  # training-mode power iterations
    sigma = torch.linalg.matrix_norm(conv.normalized_weight().flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # power iteration stays fp32 under autocast
        assert conv.normalized_weight().dtype == torch.float32


def test_presets() -> None:
    g, d = preset_widths("paper", 64, 64)
    assert g == [1024, 1024, 1024, 512, 256, 128, 64] and d == [128, 128, 256, 256, 512, 512]
    with pytest.raises(ValueError, match="paper"):
        preset_widths("huge", 8, 8)


def test_synthesize_deterministic_batch_independent_and_multimodal(tmp_path) -> None:
    g = _generator()
    g.train()
    with torch.no_grad():  # non-trivial BN running stats
        g(onehot(torch.randint(0, 5, (8, 16, 24)), 5), torch.randn(8, 8))
    masks = np.random.default_rng(0).integers(0, 5, (5, 16, 24)).astype(np.uint8)
    masks[0, 0, :4] = 255
    a = synthesize(g, masks, seed=3, n_per_mask=2, batch_size=3, bf16=False)
    assert a.shape == (5, 2, 16, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, synthesize(g, masks, seed=3, n_per_mask=2, batch_size=10, bf16=False))
    # sharding: masks 2..4 with start=2 give the same images as in the full run
    part = synthesize(g, masks[2:], seed=3, n_per_mask=2, start=2, bf16=False)
    assert np.array_equal(part, a[2:])
    # different copies / seeds differ; eval mode restored to the caller's mode
    assert np.abs(a[:, 0].astype(int) - a[:, 1]).mean() > 1
    assert not np.array_equal(a, synthesize(g, masks, seed=4, n_per_mask=2, bf16=False))
    assert g.training
    with pytest.raises(ValueError, match="not a class id"):
        synthesize(g, np.full((1, 16, 24), 7, np.uint8), seed=0)

    # load_image_generator rebuilds the EMA generator from a checkpoint, in eval mode
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "ema": g.state_dict(), "arch": g.arch()})
    loaded = load_image_generator(tmp_path / "c.pt")
    assert not loaded.training and (loaded.num_classes, loaded.height, loaded.width) == (5, 16, 24)
    again = synthesize(loaded, masks, seed=3, n_per_mask=2, bf16=False)
    assert np.abs(again.astype(int) - a).max() <= 1  # channels-last kernels may round apart
