"""OASIS networks: shapes, the fast-noise path, spectral norm, presets, synthesize and loading."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.oasis import (
    OASISGenerator,
    SNConv2d,
    UNetDiscriminator,
    conv3x3_pool2,
    conv3x3_up2,
    preset_widths,
)
from pipeline.checkpoint import save_checkpoint
from pipeline.sampling import load_image_generator, onehot, synthesize


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


def test_fast_noise_path_at_1_pixel_and_in_training() -> None:
    # init size 1x2: the border corrections of the noise conv overlap (first row = last row);
    # training mode: batch statistics, one power iteration per forward, the same gradients
    g = _generator(height=8, width=16, widths=[16, 16, 8, 8, 8])
    assert g.init_size == (1, 2)
    lab, z = onehot(torch.randint(0, 5, (3, 8, 16)), 5), torch.randn(3, 8)
    g_slow = copy.deepcopy(g)
    fast, slow = g(lab, z), g_slow(lab, z, fast_noise=False)
    assert torch.allclose(fast, slow, atol=1e-5)
    fast.square().sum().backward()
    slow.square().sum().backward()
    for (name, p), q in zip(g.named_parameters(), g_slow.parameters(), strict=True):
        # (fc.bias: zero up to rounding, BN removes it)
        assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm() + 1e-4, name


@pytest.mark.parametrize("size", [(5, 7), (1, 3), (8, 8)])
def test_resampling_folded_into_3x3_convs(size) -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, *size), torch.randn(4, 6, 3, 3), torch.randn(4)
    up = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
    assert torch.allclose(conv3x3_up2(x, w, b), up, atol=1e-4)
    assert torch.allclose(conv3x3_up2(x, w, None), up - b[:, None, None], atol=1e-4)
    x2 = torch.randn(2, 6, 2 * size[0], 2 * size[1])
    pooled = F.avg_pool2d(F.conv2d(x2, w, b, padding=1), 2)
    assert torch.allclose(conv3x3_pool2(x2, w, b), pooled, atol=1e-4)


def test_discriminator_fast_resampling_equals_published_order() -> None:
    # 32x32 input, 3 levels: folded convs at the 32 and 16 px levels, plain ones below
    torch.manual_seed(0)
    d = UNetDiscriminator(5, [8, 16, 16])
    d_slow = copy.deepcopy(d)
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    fast, slow = d(img), d_slow(img, fast_resample=False)  # training mode: power iterations
    assert torch.allclose(fast, slow, atol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), [img, *d.parameters()])
    g_slow = torch.autograd.grad(slow.square().sum(), [img, *d_slow.parameters()])
    for a, b in zip(g_fast, g_slow, strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-5


def test_spectral_norm_output_scaling_and_channels_last_weights() -> None:
    # a 1x1 map: the conv divides its output by sigma instead of the weight (same function);
    # a channels-last weight runs the power iteration on a permuted view, same u, v and sigma
    torch.manual_seed(0)
    conv = SNConv2d(16, 8, 3, padding=1)
    conv_cl = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 1, 1)
    for _ in range(3):
        y, y_cl = conv(x), conv_cl(x.contiguous(memory_format=torch.channels_last))
    conv.eval()  # sigma from the stored u, v: those of the last training forward
    ref = F.conv2d(x, conv.normalized_weight(), conv.bias, padding=1)
    assert torch.allclose(y, ref, atol=1e-6) and torch.allclose(y_cl, y, atol=1e-6)
    assert torch.allclose(conv.u, conv_cl.u, atol=1e-6) and torch.allclose(
        conv.v, conv_cl.v, atol=1e-6
    )


def test_bf16_channels_last_fast_path_matches_fp32_published_path() -> None:
    # the fast path (bf16 autocast, channels-last, folded noise and resampling) against fp32 NCHW
    # computed in the published order, on warmed-up networks: bf16 tolerance
    g = _generator(height=32, width=32, widths=[32, 16, 16, 8])
    d = UNetDiscriminator(5, [8, 16, 16])
    mask, z = torch.randint(0, 5, (4, 32, 32)), torch.randn(4, 8)
    with torch.no_grad():
        for _ in range(3):  # power iterations and BN statistics
            d(g(onehot(mask, 5), z))
    g.eval()
    d.eval()
    with torch.no_grad():
        ref_img = g(onehot(mask, 5), z, fast_noise=False)
        ref_logits = d(ref_img, fast_resample=False)
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = g(onehot(mask, 5, channels_last=True), z)
            logits = d(ref_img.contiguous(memory_format=torch.channels_last))
    assert img.is_contiguous(memory_format=torch.channels_last)
    assert (img.float() - ref_img).abs().max() < 0.02  # measured 0.005, as bf16 in OASIS order
    rel = (logits.float() - ref_logits).norm() / ref_logits.norm()
    assert rel < 0.01  # measured 0.003


def test_bf16_generator_never_mixes_fp32_into_full_size_maps() -> None:
    # An fp32 operand in an op on a bf16 activation makes the kernel upcast the whole map and
    # cast it back: that once cost 60% of bf16 synthesis time (the SPADE noise term). Record
    # every op on activations of at least one full block map and require one float dtype per op.
    from torch.utils._python_dispatch import TorchDispatchMode

    g = _generator(height=32, width=32, widths=[32, 16, 16, 8]).eval()
    g.to(memory_format=torch.channels_last)
    mask, z = torch.randint(0, 5, (4, 32, 32)), torch.randn(4, 8)
    big = 4 * 8 * 32 * 32  # the smallest full-resolution activation
    mixed: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            # batch norm's kernel takes bf16 maps with fp32 statistics natively (no copies)
            native = "batch_norm" in str(func)
            if (
                not native
                and any(t.numel() >= big for t in tensors)
                and len({t.dtype for t in tensors}) > 1
            ):
                mixed.append(f"{func}: {[(t.dtype, tuple(t.shape)) for t in tensors]}")
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), Record():
        img = g(onehot(mask, 5, channels_last=True), z)
    assert img.dtype == torch.bfloat16
    assert not mixed, mixed


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


def test_bilinear_upsampling_option_and_checkpoints_without_it_load_as_nearest(tmp_path) -> None:
    near, bil = _generator(), _generator(upsample="bilinear")
    assert near.arch()["upsample"] == "nearest" and bil.arch()["upsample"] == "bilinear"
    bil.load_state_dict(near.state_dict())  # same weights: only the resampling differs
    lab, z = onehot(torch.randint(0, 5, (2, 16, 24)), 5), torch.randn(2, 8)
    with torch.no_grad():
        assert not torch.allclose(near(lab, z), bil(lab, z))
    with pytest.raises(ValueError, match="upsample.*nearest, bilinear"):
        _generator(upsample="cubic")
    # a checkpoint written before the option existed has no "upsample" in its arch
    old_arch = {k: v for k, v in near.arch().items() if k != "upsample"}
    save_checkpoint(tmp_path / "old.pt", {"model": {}, "ema": near.state_dict(), "arch": old_arch})
    assert load_image_generator(tmp_path / "old.pt").upsample == "nearest"
    save_checkpoint(tmp_path / "b.pt", {"model": {}, "ema": bil.state_dict(), "arch": bil.arch()})
    assert load_image_generator(tmp_path / "b.pt").upsample == "bilinear"
