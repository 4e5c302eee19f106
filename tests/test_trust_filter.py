"""The trust filter (FreeMask): the per-class rule on hand-made losses, the image drop, scoring a
pool with a model in two passes, the filtered reads and the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.trust_filter import (
    TrustedPairs,
    class_loss_sums,
    class_thresholds,
    dropped_images,
    fingerprint,
    image_mean_losses,
    load_result,
    rejected_pixels,
    save_result,
    score_pool,
    trust_metrics,
)

VOID = 255


def test_pixels_above_their_class_threshold_become_void():
    # two images, 2x3; class 0 losses 1, 1, 4 (mean 2); class 1 losses 2, 2, 2, 6 (mean 3);
    # class 2 absent; one void pixel with a huge loss that must not count anywhere
    masks = np.array([[[0, 0, 1], [1, 1, VOID]], [[0, 1, 0], [VOID, VOID, VOID]]], np.uint8)
    losses = np.array(
        [[[1.0, 1.0, 2.0], [2.0, 6.0, 99.0]], [[4.0, 2.0, 0.5], [9.0, 9.0, 9.0]]], np.float32
    )
    sums, counts = class_loss_sums(losses, masks, 3)
    assert counts.tolist() == [4, 4, 0]
    assert sums.tolist() == pytest.approx([6.5, 12.0, 0.0])
    thr = class_thresholds(sums, counts, tolerance=1.5)
    assert thr[0] == pytest.approx(1.5 * 6.5 / 4) and thr[1] == pytest.approx(1.5 * 3.0)
    assert thr[2] == np.inf  # absent class: never rejects
    rej = rejected_pixels(losses, masks, thr)
    # class 0 threshold 2.4375: only the 4.0; class 1 threshold 4.5: only the 6.0; void never
    expect = np.zeros_like(masks, bool)
    expect[0, 1, 1] = expect[1, 0, 0] = True
    assert np.array_equal(rej, expect)
    # tolerance 1: everything above the plain class mean (class 0 mean 1.625: the 4.0 only)
    assert rejected_pixels(losses, masks, class_thresholds(sums, counts, 1.0)).sum() == 2


def test_image_drop_takes_the_least_consistent_images():
    means = np.array([0.5, 3.0, 1.0, 3.0, 0.2, 2.0])
    assert dropped_images(means, 0.0).tolist() == []
    assert dropped_images(means, 0.34).tolist() == [1, 3]  # round(2.04): the two 3.0s
    assert dropped_images(means, 0.5).tolist() == [1, 3, 5]
    assert dropped_images(means, 0.9).tolist() == [0, 1, 2, 3, 5]  # at least one image stays
    # a tie at the cut goes to the later image
    assert dropped_images(np.array([1.0, 2.0, 2.0]), 0.34).tolist() == [2]
    masks = np.array([[[0, VOID]], [[1, 1]], [[VOID, VOID]]], np.uint8)
    losses = np.array([[[3.0, 50.0]], [[1.0, 2.0]], [[7.0, 7.0]]], np.float32)
    assert image_mean_losses(losses, masks, 2).tolist() == [3.0, 1.5, 0.0]


class Brightness(torch.nn.Module):
    """A stand-in segmenter: class 1's logit is 8 x (red - 0.5), class 0's is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = 8 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(one), one], 1)


class ArrayPairs:
    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images, self.masks, self.rows = images, masks, np.arange(len(masks)) + 100

    def __len__(self) -> int:
        return len(self.masks)

    def get(self, idx):
        return self.images[idx], self.masks[idx]


def test_scoring_a_pool_matches_the_rule_on_its_losses(tmp_path):
    rng = np.random.default_rng(0)
    n = 40  # more than one scoring batch
    images = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (n, 6, 5), dtype=np.uint8)
    masks[:, 0, 0] = VOID
    pairs = ArrayPairs(images, masks)
    result = score_pool(Brightness(), pairs, 2, VOID, tolerance=1.2, drop_fraction=0.25)

    # the same rule applied by hand to the losses of the whole pool at once
    logits = Brightness()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    y = torch.from_numpy(masks).long()
    losses = F.cross_entropy(logits, y, ignore_index=VOID, reduction="none").numpy()
    thr = class_thresholds(*class_loss_sums(losses, masks, 2), 1.2)
    np.testing.assert_allclose(result.thresholds, thr, rtol=1e-6)
    drop = dropped_images(image_mean_losses(losses, masks, 2), 0.25)
    assert len(drop) == 10 and result.keep.tolist() == sorted(set(range(n)) - set(drop))
    rej = rejected_pixels(losses, masks, thr)[result.keep]
    trusted = TrustedPairs(pairs, result, VOID)
    assert len(trusted) == 30 and trusted.rows.tolist() == (result.keep + 100).tolist()
    got_images, got_masks = trusted.get(np.arange(30))
    assert np.array_equal(got_images, images[result.keep])
    expect = masks[result.keep].copy()
    expect[rej] = VOID
    assert np.array_equal(got_masks, expect) and rej.any() and (got_masks != VOID).any()
    m = trust_metrics(result, ["a", "b"])
    assert (m["trust_pool_images"], m["trust_dropped_images"]) == (40, 10)
    kept = masks[result.keep]
    assert m["trust_ignored_share_b"] == pytest.approx(rej[kept == 1].mean())
    assert m["trust_ignored_share"] == pytest.approx(rej.sum() / (kept < 2).sum())
    assert m["trust_threshold_a"] == pytest.approx(thr[0])

    # the cache returns the same result for the same fingerprint only
    fp = fingerprint(model="abc", rows=pairs.rows, tolerance=1.2)
    save_result(tmp_path / "trust.npz", result, fp)
    back = load_result(tmp_path / "trust.npz", fp)
    assert back.shape == result.shape and back.pool == 40
    for name in ("keep", "reject", "thresholds", "class_pixels", "class_rejected"):
        assert np.array_equal(getattr(back, name), getattr(result, name)), name
    assert load_result(tmp_path / "trust.npz", fingerprint(model="abd")) is None
    assert load_result(tmp_path / "absent.npz", fp) is None
