"""DiffAugment for a label-conditioned D: image and label map move alike, void where no pixel
came from, deterministic draws, differentiable, and the losses ignore the void."""

from __future__ import annotations

import pytest
import torch

from models.diffaug import POLICIES, Transform, draw_augmentation
from models.oasis import UNetDiscriminator
from models.oasis_losses import discriminator_loss, labelmix, labelmix_loss

VOID = 255


def _encoded(b: int = 6, h: int = 16, w: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Random label maps (5 classes) and images whose every channel encodes the label."""
    mask = torch.randint(0, 5, (b, h, w), generator=torch.Generator().manual_seed(3))
    return _encode(mask), mask


def _encode(mask: torch.Tensor) -> torch.Tensor:
    return (mask.float() * 0.2 - 0.3)[:, None].expand(-1, 3, -1, -1).contiguous()  # never 0


@pytest.mark.parametrize("policy", [["translation"], ["cutout"], ["translation", "cutout"]])
def test_geometric_transforms_keep_image_and_labels_aligned(policy: list[str]) -> None:
    image, mask = _encoded()
    t = draw_augmentation(policy, 6, (16, 24), torch.Generator().manual_seed(0))
    img_a, mask_a = t.image(image), t.labels(mask, VOID)
    kept = mask_a != VOID
    assert torch.equal(kept, t.valid)  # no void in these labels: void = from nowhere
    assert torch.equal(img_a, torch.where(kept[:, None], _encode(mask_a.clamp(max=4)), 0))
    assert (~kept).any() and kept.any()  # something moved or was cut in this draw


def test_translation_is_a_shift_by_at_most_an_eighth() -> None:
    h, w = 16, 24
    ids = torch.arange(h * w).view(1, h, w).expand(8, -1, -1)
    t = draw_augmentation(["translation"], 8, (h, w), torch.Generator().manual_seed(1))
    out = t.labels(ids, -1)
    shifts = set()
    for b in range(8):
        ys, xs = torch.nonzero(out[b] >= 0, as_tuple=True)
        src = out[b][ys, xs]
        dy, dx = (ys - src // w).unique(), (xs - src % w).unique()
        assert len(dy) == len(dx) == 1  # one shift for the whole image
        assert abs(int(dy)) <= 2 and abs(int(dx)) <= 3  # 16 / 8, 24 / 8
        shifts.add((int(dy), int(dx)))
        # everything the shift brings in from inside is kept: the valid area is the full overlap
        assert len(ys) == (h - abs(int(dy))) * (w - abs(int(dx)))
    assert len(shifts) > 1  # per-sample draws


def test_cutout_removes_a_half_size_box() -> None:
    t = draw_augmentation(["cutout"], 64, (16, 24), torch.Generator().manual_seed(2))
    cut = (~t.valid).sum((1, 2))
    assert cut.max() == 8 * 12 and cut.min() > 0  # whole box inside, or clipped at a border


def test_void_labels_stay_void_and_colour_touches_the_image_only() -> None:
    image, mask = _encoded()
    mask[:, :3] = VOID
    t = draw_augmentation(["color"], 6, (16, 24), torch.Generator().manual_seed(0))
    assert t.valid is None and torch.equal(t.labels(mask, VOID), mask)
    assert not torch.equal(t.image(image), image)
    t = draw_augmentation(POLICIES, 6, (16, 24), torch.Generator().manual_seed(0))
    assert (t.labels(mask, VOID)[t.valid] == VOID).any()  # void from the label map, kept


def test_draws_are_seeded_and_no_policy_is_the_identity() -> None:
    def one(seed: int) -> torch.Tensor:
        image, _ = _encoded()
        return draw_augmentation(POLICIES, 6, (16, 24), torch.Generator().manual_seed(seed)).image(
            image
        )

    assert torch.equal(one(5), one(5)) and not torch.equal(one(5), one(6))
    rng = torch.Generator().manual_seed(0)
    before = rng.get_state()
    t = draw_augmentation([], 6, (16, 24), rng)
    image, mask = _encoded()
    assert t == Transform() and t.image(image) is image and t.labels(mask, VOID) is mask
    assert torch.equal(rng.get_state(), before)  # nothing drawn: runs without it are unchanged
    with pytest.raises(ValueError, match="unknown DiffAugment policy.*valid: color"):
        draw_augmentation(["flip"], 6, (16, 24), rng)


def test_augmentation_is_differentiable_and_keeps_the_layout() -> None:
    image = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    image.requires_grad_(True)
    t = draw_augmentation(POLICIES, 4, (16, 16), torch.Generator().manual_seed(0))
    out = t.image(image)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.square().sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_cut_out_pixels_do_not_change_the_discriminator_loss() -> None:
    # D's full loss (N+1 real + fake + LabelMix) under one draw: neither what the images hold
    # under the cut-out box nor D's logits there may change it
    torch.manual_seed(0)
    d = UNetDiscriminator(5, [8, 16])
    real, mask = _encoded(4, 16, 16)
    with torch.no_grad():  # power iterations: sigma estimates near the true norms
        for _ in range(20):
            d(real)
    d.eval()
    fake = torch.randn(4, 3, 16, 16).clamp(-1, 1)
    t = draw_augmentation(["cutout"], 4, (16, 16), torch.Generator().manual_seed(0))
    cut = ~t.valid[:, None]

    def loss(real: torch.Tensor, fake: torch.Tensor, poke: float = 0.0, masked: bool = True):
        real_a, fake_a, mask_a = t.image(real), t.image(fake), t.labels(mask, VOID)
        with torch.no_grad():
            lr, lf = d(real_a), d(fake_a)
            mixed, mix = labelmix(real_a, fake_a, mask_a, 5, torch.Generator().manual_seed(1))
            lm = d(mixed)
        # logits at cut pixels changed, differently per channel and per input (a constant
        # over channels would leave softmax and LabelMix's difference unchanged anyway)
        w = torch.randn(3, 1, 6, 1, 1, generator=torch.Generator().manual_seed(2))
        lr, lf, lm = (x + poke * cut * wi for x, wi in zip((lr, lf, lm), w, strict=True))
        valid = t.valid if masked else None
        return discriminator_loss(lr, lf, mask_a, VOID, valid) + labelmix_loss(
            lm, lr, lf, mix, valid
        )

    base = loss(real, fake)
    noise = torch.randn(4, 3, 16, 16)
    assert torch.equal(loss(torch.where(cut, noise, real), torch.where(cut, -noise, fake)), base)
    torch.testing.assert_close(loss(real, fake, poke=7.0), base, rtol=0, atol=1e-6)
    assert not torch.allclose(loss(real, fake.flip(-1)), base)  # kept pixels do count
    # without the valid map, the poked logits would count
    assert not torch.allclose(
        loss(real, fake, poke=7.0, masked=False), loss(real, fake, 0.0, False)
    )
