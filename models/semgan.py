"""SemGAN mask generator and discriminator (Azadi et al. 2019, arXiv 1906.12195), and its baseline.

The SemGAN generator maps a latent vector to C-channel logits; a per-pixel softmax makes `argmax`
a valid class map by construction. The "standard GAN" baseline of the paper is the same backbone
drawing a 3-channel colour-coded map (tanh), quantised to the nearest class colour when sampled.
Both are DCGAN / progressive-style upsampling networks with CoordConv (Liu et al. 2018) layers, so
position-dependent layouts (sky on top, road at the bottom) are easy to learn.

Losses are standalone functions at the end of this file; the training loop is in
`pipeline/train_masks.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("semgan", "rgb")

# -----------------------------------------------------------------------------------------------
# blocks


class CoordConv2d(nn.Module):
    """Conv2d that also sees two coordinate channels (y, x in [-1, 1]).

    conv([x, coords]) = conv_x(x) + conv_c(coords); the second term does not depend on the
    batch, so it is computed once per call at batch size 1 and broadcast (no concatenation).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding)
        self.coord = nn.Conv2d(2, cout, kernel_size, stride, padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None]  # [1, 2, H, W]
        return self.conv(x) + self.coord(coords)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PGGAN's pixelwise feature normalisation: no batch statistics, so samples are independent."""
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + eps)


NORMS = ("batch", "pixel")


class UpBlock(nn.Module):
    """x2 nearest upsampling, then two 3x3 convs (the first a CoordConv), each normalised and
    followed by LeakyReLU.

    norm "batch" (DCGAN): conv → BatchNorm → LeakyReLU. norm "pixel" (PGGAN): conv → LeakyReLU →
    pixel norm. Batch norm is the default because it is what kept G from collapsing here: with
    pixel norm both the softmax and the RGB generator collapsed to one map (all background)
    within ~100 steps on `shapes`, while the same G with batch norm kept the real class count
    and diversity (README, "SemGAN collapse"). Batch statistics couple the samples of a batch,
    which penalises a batch of identical maps directly.
    """

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        self.norm = norm
        self.conv1 = CoordConv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        # Identity for pixel norm keeps that variant's state-dict keys those of a plain block.
        self.n1 = nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity()
        self.n2 = nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.norm == "batch":
            x = F.leaky_relu(self.n1(self.conv1(x)), 0.2)
            return F.leaky_relu(self.n2(self.conv2(x)), 0.2)
        x = pixel_norm(F.leaky_relu(self.conv1(x), 0.2))
        return pixel_norm(F.leaky_relu(self.conv2(x), 0.2))


class DownBlock(nn.Module):
    """DCGAN-style 4x4 stride-2 conv and LeakyReLU (no normalisation: R1 wants none)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.2)


def num_levels(height: int, width: int, min_side: int = 4, max_levels: int = 6) -> int:
    """How many x2 steps separate the smallest feature map (side >= min_side) from H x W."""
    n = 0
    while (
        n < max_levels
        and height % 2 ** (n + 1) == 0
        and width % 2 ** (n + 1) == 0
        and min(height, width) // 2 ** (n + 1) >= min_side
    ):
        n += 1
    return n


def _channels(base: int, level: int, minimum: int = 16) -> int:
    return max(base // 2**level, minimum)


# -----------------------------------------------------------------------------------------------
# networks


class MaskGenerator(nn.Module):
    """Latent [B, latent_dim] → C class logits (SemGAN) or a tanh RGB colour map (baseline).

    With norm "batch" the output depends on the batch in train mode only; sample in eval mode
    (running statistics, refreshed for EMA weights) so each sample depends on its latent alone.
    """

    def __init__(
        self,
        kind: str,
        num_classes: int,
        height: int,
        width: int,
        latent_dim: int = 128,
        channels: int = 256,
        colors: torch.Tensor | None = None,
        norm: str = "batch",
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown mask generator kind {kind!r}; valid kinds: {list(KINDS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown generator norm {norm!r}; valid norms: {list(NORMS)}")
        levels = num_levels(height, width)
        if levels == 0:
            raise ValueError(
                f"mask size {height}x{width} must be divisible by 2 and at least 8x8; "
                "prepare the data at a size like 64x64 or 96x128"
            )
        if kind == "rgb" and (colors is None or tuple(colors.shape) != (num_classes, 3)):
            raise ValueError("the rgb baseline needs `colors` [num_classes, 3] (uint8 RGB values)")
        self.kind, self.num_classes = kind, num_classes
        self.height, self.width, self.latent_dim = height, width, latent_dim
        self.h0, self.w0 = height // 2**levels, width // 2**levels

        self.fc = nn.Linear(latent_dim, channels * self.h0 * self.w0)
        self.blocks = nn.ModuleList(
            UpBlock(_channels(channels, i), _channels(channels, i + 1), norm) for i in range(levels)
        )
        out_channels = num_classes if kind == "semgan" else 3
        self.to_out = CoordConv2d(_channels(channels, levels), out_channels, 3, padding=1)
        # Class colours in the tanh range [-1, 1], so the baseline can quantise on its own.
        palette = torch.zeros(num_classes, 3) if colors is None else colors.float() / 127.5 - 1
        self.register_buffer("colors", palette)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits [B, C, H, W] (semgan) or RGB in [-1, 1] [B, 3, H, W] (rgb)."""
        x = self.fc(pixel_norm(z[:, :, None, None])[:, :, 0, 0])
        x = x.view(len(z), -1, self.h0, self.w0)  # [B, ch * h0 * w0] → [B, ch, h0, w0]
        x = pixel_norm(F.leaky_relu(x, 0.2))
        x = x.contiguous(memory_format=_memory_format(self.to_out.conv.weight))
        for block in self.blocks:
            x = block(x)
        x = self.to_out(x)
        return x if self.kind == "semgan" else torch.tanh(x)

    @torch.no_grad()
    def to_ids(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """forward() output → (class ids [B, H, W] int64, distance to the chosen colour or None).

        SemGAN: argmax of the logits. Baseline: nearest class colour; the distance (in 0..255 RGB
        units) measures how far off-palette each pixel was before quantisation.
        """
        if self.kind == "semgan":
            return out.argmax(1), None
        rgb = out.float().permute(0, 2, 3, 1)  # [B, H, W, 3]
        d = torch.cdist(rgb.reshape(len(rgb), -1, 3), self.colors.expand(len(rgb), -1, -1))
        dist, ids = d.min(-1)  # [B, H*W]
        shape = rgb.shape[:3]
        return ids.view(shape), dist.view(shape) * 127.5


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """PGGAN's minibatch standard deviation: append one channel holding the mean std of the
    features across a group of samples, so D can see a batch of identical samples (mode
    collapse) and G is pushed towards diversity. x [B, C, H, W] → [B, C + 1, H, W].
    """
    b, _, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)  # a divisor of B
    y = x.float().view(g, b // g, *x.shape[1:])  # [G, B/G, C, H, W]: groups across the batch
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [B/G]
    y = y.view(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w).to(x.dtype)
    return torch.cat([x, y], 1)


class MaskDiscriminator(nn.Module):
    """Map [B, in_channels, H, W] (one-hot / softmax / RGB) → real-vs-fake logit [B].

    `mbstd_group` > 0 adds a minibatch-stddev channel before the last conv (0 = off).
    """

    def __init__(
        self, in_channels: int, height: int, width: int, channels: int = 64, mbstd_group: int = 0
    ):
        super().__init__()
        levels = num_levels(height, width)
        self.mbstd_group = mbstd_group
        self.from_in = CoordConv2d(in_channels, channels, 3, padding=1)
        chans = [min(channels * 2**i, 256) for i in range(levels + 1)]
        self.blocks = nn.ModuleList(DownBlock(chans[i], chans[i + 1]) for i in range(levels))
        h0, w0 = height // 2**levels, width // 2**levels
        extra = 1 if mbstd_group > 0 else 0
        self.out_conv = nn.Conv2d(chans[-1] + extra, chans[-1], 3, padding=1)
        self.fc = nn.Linear(chans[-1] * h0 * w0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_in(x), 0.2)
        for block in self.blocks:
            x = block(x)
        if self.mbstd_group > 0:
            x = minibatch_stddev(x, self.mbstd_group)
        x = F.leaky_relu(self.out_conv(x), 0.2)
        return self.fc(x.flatten(1)).squeeze(1)  # [B, ch*h0*w0] → [B]


# -----------------------------------------------------------------------------------------------
# what the discriminator sees, and losses


def one_hot(ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ids [B, H, W] int64 → float one-hot [B, C, H, W]."""
    return F.one_hot(ids, num_classes).permute(0, 3, 1, 2).float()


def noisy_one_hot(onehot: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Move one-hot reals off the simplex corners: add |N(0, std)| per channel, renormalise.

    Softmax fakes are never exactly one-hot; without this a discriminator can tell them apart by
    that alone ("soft = fake").
    """
    if std <= 0:
        return onehot
    noise = torch.randn(onehot.shape, generator=generator, device=generator.device)
    noise = noise.to(onehot.device).abs() * std
    x = onehot + noise
    return x / x.sum(1, keepdim=True)


def gumbel_softmax_st(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Straight-through Gumbel-softmax (as in SB-GAN): one-hot forward, softmax gradient backward."""
    u = torch.rand(logits.shape, generator=generator, device=generator.device).to(logits.device)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))
    soft = F.softmax((logits.float() + gumbel) / tau, dim=1)
    hard = one_hot(soft.argmax(1), logits.shape[1])
    return hard + soft - soft.detach()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss for D (Goodfellow et al. 2014): -log D(real) - log(1 - D(fake))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: -log D(fake)."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on reals; `real_inputs` needs grad."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def ema_beta(batch_size: int, half_life_kimg: float) -> float:
    """EMA decay per step for a half-life measured in thousands of images (as in EDM/StyleGAN)."""
    return 0.5 ** (batch_size / max(half_life_kimg * 1000, 1e-8))


def count_flops_per_sample(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates x2 of the convs and linears in one forward pass of one sample."""
    flops = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(mod, nn.Conv2d):
            k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
            flops += 2 * k * out[0].numel()
        elif isinstance(mod, nn.Linear):
            flops += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return flops
