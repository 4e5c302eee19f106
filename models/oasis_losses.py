"""OASIS losses (Schönfeld et al. 2021): class-balanced N+1 cross-entropy and LabelMix.

Masks are long tensors [B, H, W] of class ids 0..N-1, with `ignore_index` for void. The
discriminator's logits are [B, N+1, H, W]: channel 0 is "fake", channel c+1 is class c. All
losses compute in fp32 (logits from a bf16 network are upcast here).

`valid` (optional, bool [B, H, W]) marks the pixels that came from the image: DiffAugment's
shifted-in and cut-out pixels are False and count in no loss term. The real loss sees them as
`ignore_index` in the (augmented) mask; the fake and LabelMix losses average over valid pixels.
Without `valid` every pixel counts, as in OASIS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_balance_weights(
    mask: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-class weights [N]: w_c = B·H·W / (K·n_c), K = classes present in the batch, 0 if absent."""
    valid = mask != ignore_index
    counts = torch.bincount(mask[valid].long(), minlength=num_classes)[:num_classes].float()
    present = counts > 0
    k = present.sum().clamp(min=1)
    return torch.where(present, mask.numel() / (k * counts.clamp(min=1)), torch.zeros_like(counts))


def n1_targets(mask: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Real N+1 targets [B, H, W]: class c → c + 1; void → 0 (its weight is 0, see `real_loss`)."""
    mask = mask.long()
    return torch.where(mask == ignore_index, torch.zeros_like(mask), mask + 1)


def real_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Class-balanced CE toward target class + 1, averaged over all pixels; void pixels weigh 0."""
    num_classes = logits.shape[1] - 1
    weights = class_balance_weights(mask, num_classes, ignore_index)
    # weight map: void pixels index the extra 0 at the end
    per_pixel_weight = torch.cat([weights, weights.new_zeros(1)])[
        torch.where(mask == ignore_index, num_classes, mask.long())
    ]
    ce = F.cross_entropy(logits.float(), n1_targets(mask, ignore_index), reduction="none")
    return (ce * per_pixel_weight).mean()


def fake_loss(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """CE toward the fake class (channel 0), unweighted: mean over every (or every valid) pixel."""
    target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long, device=logits.device)
    if valid is None:
        return F.cross_entropy(logits.float(), target)
    ce = F.cross_entropy(logits.float(), target, reduction="none")  # [B, H, W]
    return valid_mean(ce, valid)


def valid_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [B, (K,) H, W] over the pixels where `valid` [B, H, W] is True."""
    v = valid if values.dim() == 3 else valid[:, None].expand_as(values)
    return torch.where(v, values, 0).sum() / v.sum().clamp(min=1)


def discriminator_loss(
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    mask: torch.Tensor,
    ignore_index: int = 255,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """N+1 loss of the discriminator: real pixels to their class + 1, fake pixels to 0."""
    return real_loss(logits_real, mask, ignore_index) + fake_loss(logits_fake, valid)


def generator_loss(
    logits_fake: torch.Tensor, mask: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """The generator wants its images segmented as the real classes of the label map it was given."""
    return real_loss(logits_fake, mask, ignore_index)


def labelmix(
    real: torch.Tensor,
    fake: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise binary mix: (mixed image [B, 3, H, W], mix map [B, 1, H, W] with 1 = real).

    Each (image, class) pair takes all its pixels from the real or the fake image by a coin flip;
    void pixels are one more "class".
    """
    b = mask.shape[0]
    coins = torch.randint(0, 2, (b, num_classes + 1), generator=generator, device="cpu")
    coins = coins.to(device=real.device, dtype=real.dtype)
    ids = torch.where(mask == ignore_index, num_classes, mask.long())  # [B, H, W]
    mix = torch.gather(coins, 1, ids.flatten(1)).view(b, 1, *mask.shape[1:])  # [B, 1, H, W]
    return mix * real + (1 - mix) * fake, mix


def labelmix_loss(
    logits_mixed: torch.Tensor,
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    mix: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between D(mix of images) and the same mix of D(real) and D(fake) (consistency),
    over every (or every valid) pixel and logit."""
    mix = mix.float()
    target = mix * logits_real.float() + (1 - mix) * logits_fake.float()
    if valid is None:
        return F.mse_loss(logits_mixed.float(), target)
    return valid_mean((logits_mixed.float() - target).square(), valid)
