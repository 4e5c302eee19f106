"""OASIS losses against hand-computed values: class weights, N+1 targets, LabelMix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.oasis_losses import (
    class_balance_weights,
    discriminator_loss,
    fake_loss,
    generator_loss,
    labelmix,
    labelmix_loss,
    n1_targets,
    real_loss,
)

# 1 image, 2x3 pixels: class 0 x3, class 2 x2, void x1; class 1 absent (3 classes)
MASK = torch.tensor([[[0, 0, 2], [0, 2, 255]]])


def test_class_weights_hand_computed() -> None:
    # w_c = B·H·W / (K·n_c) with K = 2 present classes, B·H·W = 6 (void pixels included)
    w = class_balance_weights(MASK, num_classes=3)
    assert torch.allclose(w, torch.tensor([6 / (2 * 3), 0.0, 6 / (2 * 2)]))


def test_n1_targets_shift_classes_and_zero_void() -> None:
    assert n1_targets(MASK).tolist() == [[[1, 1, 3], [1, 3, 0]]]


def test_real_loss_hand_computed() -> None:
    # uniform logits: CE = log(4) everywhere; weighted mean = log4 · (3·1 + 2·1.5 + 0) / 6
    logits = torch.zeros(1, 4, 2, 3)
    assert real_loss(logits, MASK).item() == pytest.approx(math.log(4) * 6 / 6)
    # a confident correct prediction on every valid pixel → ~0; void pixels do not count
    good = F.one_hot(n1_targets(MASK), 4).permute(0, 3, 1, 2).float() * 50
    good[0, :, 1, 2] = torch.tensor([-50.0, 50, 50, 50])  # void pixel: anything
    assert real_loss(good, MASK).item() < 1e-6
    # the generator loss is the real loss on the fake's logits
    assert generator_loss(logits, MASK).item() == pytest.approx(real_loss(logits, MASK).item())


def test_real_loss_weights_rare_classes_up() -> None:
    # wrong only on the rare class (2 pixels, weight 1.5) costs more than wrong on class 0 (3, 1.0)
    base = F.one_hot(n1_targets(MASK), 4).permute(0, 3, 1, 2).float() * 10
    wrong_rare, wrong_common = base.clone(), base.clone()
    wrong_rare[0, :, 0, 2] = torch.tensor([10.0, 0, 0, 0])  # one class-2 pixel called fake
    wrong_common[0, :, 0, 0] = torch.tensor([10.0, 0, 0, 0])  # one class-0 pixel called fake
    assert real_loss(wrong_rare, MASK) / real_loss(wrong_common, MASK) == pytest.approx(
        1.5, rel=1e-3
    )


def test_fake_loss_targets_channel_zero() -> None:
    logits = torch.zeros(2, 4, 2, 3)
    assert fake_loss(logits).item() == pytest.approx(math.log(4))
    logits[:, 0] = 50.0
    assert fake_loss(logits).item() < 1e-6
    both = discriminator_loss(torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 2, 3), MASK)
    assert both.item() == pytest.approx(2 * math.log(4))


def test_labelmix_is_classwise_and_loss_hand_computed() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [0, 1]]])
    real, fake = torch.ones(2, 3, 2, 2), -torch.ones(2, 3, 2, 2)
    mixed, mix = labelmix(real, fake, mask, num_classes=3, generator=g)
    assert mix.shape == (2, 1, 2, 2)
    assert set(mix.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mixed, torch.where(mix.bool(), real, fake))
    for b in range(2):  # every pixel of one class takes the same side
        for c in mask[b].unique():
            assert mix[b, 0][mask[b] == c].unique().numel() == 1
    # the loss: MSE(D(mixed), mix·D(real) + (1-mix)·D(fake)), by hand on one pixel pattern
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    lr, lf, lm = torch.full((1, 2, 2, 2), 2.0), torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    # target = 2 where m = 1, 0 elsewhere; (1-2)² and (1-0)² → mean 1
    assert labelmix_loss(lm, lr, lf, m).item() == pytest.approx(1.0)
    assert labelmix_loss(m.expand(1, 2, 2, 2) * 2, lr, lf, m).item() == pytest.approx(0.0)


def test_labelmix_coins_come_from_the_generator() -> None:
    mask = torch.randint(0, 5, (4, 8, 8), generator=torch.Generator().manual_seed(1))
    real, fake = torch.ones(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)
    a = labelmix(real, fake, mask, 5, torch.Generator().manual_seed(7))[1]
    b = labelmix(real, fake, mask, 5, torch.Generator().manual_seed(7))[1]
    assert torch.equal(a, b)


def test_valid_map_all_true_is_the_unmasked_loss_and_false_pixels_do_not_count() -> None:
    g = torch.Generator().manual_seed(0)
    lr, lf, lm = (torch.randn(2, 4, 3, 5, generator=g) for _ in range(3))
    mix = torch.randint(0, 2, (2, 1, 3, 5), generator=g).float()
    everywhere = torch.ones(2, 3, 5, dtype=torch.bool)
    torch.testing.assert_close(fake_loss(lf, everywhere), fake_loss(lf))
    torch.testing.assert_close(
        labelmix_loss(lm, lr, lf, mix, everywhere), labelmix_loss(lm, lr, lf, mix)
    )
    # half the pixels invalid: the means run over the valid ones only, whatever the others hold
    valid = torch.rand(2, 3, 5, generator=g) < 0.5
    poked = torch.where(valid[:, None], lf, torch.randn(2, 4, 3, 5, generator=g) * 9)
    assert fake_loss(poked, valid).item() == pytest.approx(fake_loss(lf, valid).item())
    per_pixel = F.cross_entropy(lf, torch.zeros(2, 3, 5, dtype=torch.long), reduction="none")
    assert fake_loss(lf, valid).item() == pytest.approx(per_pixel[valid].mean().item())
    sq = (lm - (mix * lr + (1 - mix) * lf)).square()
    assert labelmix_loss(lm, lr, lf, mix, valid).item() == pytest.approx(
        sq.permute(0, 2, 3, 1)[valid].mean().item()
    )
    mask = torch.randint(0, 3, (2, 3, 5), generator=g)
    assert discriminator_loss(lr, lf, mask, valid=valid).item() == pytest.approx(
        (real_loss(lr, mask) + fake_loss(lf, valid)).item()
    )
