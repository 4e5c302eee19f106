"""Mask metrics on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.classes import ClassInfo, ClassTable
from pipeline.metrics.masks import (
    _sliced_distance,
    class_histogram,
    class_presence,
    js_divergence,
    laplacian_pyramid,
    mask_quality,
    ms_ssim,
    off_palette_rate,
    pairwise_ms_ssim,
    sliced_wasserstein,
    spurious_pixel_rate,
)


def _table(n: int = 3) -> ClassTable:
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    return ClassTable(
        classes=tuple(ClassInfo(i, f"c{i}", colors[i]) for i in range(n)),
        ignore_color=(255, 255, 255),
    )


def test_spurious_pixel_rate_counts_small_4_connected_components():
    m = np.zeros((1, 10, 10), np.uint8)
    m[0, :5, :5] = 1  # 25-pixel component: not spurious
    m[0, 8, 8] = 2  # isolated pixel
    m[0, 7, 7] = 2  # touches (8, 8) only diagonally: a separate component under 4-connectivity
    m[0, 0, 9] = 1  # isolated pixel of a class that also has a big component
    rate = spurious_pixel_rate(m, min_size=2)
    assert rate.shape == (1,)
    assert rate[0] == pytest.approx(3 / 100)
    # The background (class 0) forms one big component; with min_size 26 the 25-pixel block
    # also counts.
    assert spurious_pixel_rate(m, min_size=26)[0] == pytest.approx(28 / 100)
    assert spurious_pixel_rate(m, min_size=1)[0] == 0


def test_spurious_pixel_rate_never_joins_components_across_masks():
    m = np.zeros((2, 6, 6), np.uint8)
    m[:, 3, 3] = 1  # the same pixel in both masks: two components of size 1, not one of size 2
    m[1, 0, 0] = 2
    rate = spurious_pixel_rate(m, min_size=2)
    np.testing.assert_allclose(rate, [1 / 36, 2 / 36])


def test_spurious_pixel_rate_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        spurious_pixel_rate(np.zeros((1, 4, 4), np.int64), 2)


def test_off_palette_rate():
    d = np.array([[[0.0, 50.0], [10.0, 100.0]]])
    np.testing.assert_allclose(off_palette_rate(d, 40.0), [0.5])


def test_js_divergence_known_values():
    assert js_divergence([0.2, 0.8], [0.2, 0.8]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    kl_p = math.log2(1 / 0.75)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(0.5 * (kl_p + kl_q))


def test_class_histogram_and_presence_ignore_void():
    m = np.array([[[0, 0], [1, 255]], [[0, 0], [0, 0]]], np.uint8)
    np.testing.assert_allclose(class_histogram(m, 3), [6 / 7, 1 / 7, 0])
    np.testing.assert_allclose(class_presence(m, 3), [1.0, 0.5, 0.0])


def test_laplacian_pyramid_of_constant_image_has_zero_bands():
    x = np.full((2, 64, 64, 3), 100, np.uint8)
    import torch

    levels = laplacian_pyramid(torch.from_numpy(x).permute(0, 3, 1, 2).float())
    assert [tuple(lv.shape[-2:]) for lv in levels] == [(64, 64), (32, 32), (16, 16)]
    for band in levels[:-1]:
        assert band.abs().max() < 1e-4
    assert levels[-1].mean() == pytest.approx(100, abs=1e-3)


def test_sliced_distance_of_a_shift_is_the_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 1)).astype(np.float32)
    assert _sliced_distance(a, a, rng, 8) == 0
    # One dimension: every direction is ±1, so the 1-D Wasserstein distance is the shift.
    assert _sliced_distance(a, a + 0.5, rng, 8) == pytest.approx(0.5, abs=1e-5)


def _blobs(n: int, rng: np.random.Generator) -> np.ndarray:
    """Masks of large rectangles: smooth structure."""
    m = np.zeros((n, 64, 64), np.uint8)
    for i in range(n):
        for c in (1, 2):
            y, x = rng.integers(0, 40, 2)
            m[i, y : y + 24, x : x + 24] = c
    return m


def test_swd_same_distribution_is_much_smaller_than_different():
    rng = np.random.default_rng(0)
    table = _table()
    a, b = table.colorize(_blobs(32, rng)), table.colorize(_blobs(32, rng))
    noise = table.colorize(rng.integers(0, 3, (32, 64, 64)).astype(np.uint8))
    same, levels = sliced_wasserstein(a, b, seed=1)
    diff, _ = sliced_wasserstein(a, noise, seed=1)
    assert len(levels) == 3
    assert same * 3 < diff


def test_ms_ssim_identical_is_one_and_noise_is_low():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    y = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(ms_ssim(x, x), 1.0, atol=1e-5)
    # Independent noise: structure terms near 0 at fine scales (pooled coarse scales keep some).
    assert ms_ssim(x, y).max() < 0.3
    near = np.clip(x.astype(int) + rng.integers(-8, 9, x.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(x, near).min() > 0.9
    # Diversity: a set of copies of one map scores 1, independent noise scores near 0.
    assert pairwise_ms_ssim(np.repeat(x[:1], 8, 0), pairs=20) == pytest.approx(1.0)
    assert pairwise_ms_ssim(np.concatenate([x, y]), pairs=20) < 0.3


def test_mask_quality_of_real_against_itself():
    rng = np.random.default_rng(0)
    table = _table()
    real = _blobs(16, rng)
    q = mask_quality(real, real, table, min_size=4, distance=np.zeros((16, 64, 64)))
    assert q["spurious_rate"] == q["spurious_rate_real"] == 0
    assert q["class_js"] == pytest.approx(0, abs=1e-12)
    assert q["presence_error"] == 0
    assert q["off_palette_rate"] == 0
    assert q["ms_ssim"] == pytest.approx(q["ms_ssim_real"])
    assert all(isinstance(v, float) for v in q.values())
