"""OASIS: label map → image with adversarial supervision only (Schönfeld et al. 2021, arXiv 2012.04781).

Generator: SPADE ResNet blocks (Park et al. 2019) fed with the one-hot label map concatenated with
3D noise (a z per image broadcast to every pixel, or a z per pixel), nearest upsampling, spectral
norm on the block convolutions, tanh output. Discriminator: a U-Net of residual blocks that
segments its input into N+1 classes per pixel (channel 0 = fake). Losses (class-balanced N+1
cross-entropy, LabelMix) are standalone functions in `models/oasis_losses.py`; the training loop
is in `pipeline/train_images.py`.

Mixed precision: every module runs under bf16 autocast with channels-last tensors; the spectral
norm power iteration is done in fp32 with autocast off.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------------------------
# blocks


class SNConv2d(nn.Conv2d):
    """Conv2d with spectral normalisation (Miyato et al. 2018): W / sigma(W), sigma by power iteration.

    One power-iteration step per forward in training mode (like torch's spectral_norm); eval mode
    reuses the stored vectors. The iteration and sigma are computed in fp32 outside autocast.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__(cin, cout, kernel_size, padding=padding, bias=bias)
        self.register_buffer("u", F.normalize(torch.randn(cout), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(cin * kernel_size * kernel_size), dim=0))

    def normalized_weight(self) -> torch.Tensor:
        with torch.autocast(self.weight.device.type, enabled=False):
            w = self.weight.float().flatten(1)  # [Cout, Cin*k*k]
            if self.training:
                with torch.no_grad():
                    self.v.copy_(F.normalize(w.t() @ self.u, dim=0, eps=1e-12))
                    self.u.copy_(F.normalize(w @ self.v, dim=0, eps=1e-12))
            # clones: later forwards update u, v in place while this graph may still need them
            sigma = self.u.clone() @ (w @ self.v.clone())
            return self.weight / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding)


@functools.lru_cache(maxsize=64)
def _border_taps(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[9, H*W]: 1 where tap t of a 3x3 kernel centred on pixel p lies inside the image."""
    with torch.inference_mode(False):  # cached: must also be usable by autograd later
        return F.unfold(torch.ones(1, 1, h, w, dtype=dtype, device=device), 3, padding=1)[0]


class SPADE(nn.Module):
    """Parameter-free batch norm, then a per-pixel scale and shift predicted from the label map.

    The label map is [z broadcast to every pixel, one-hot]. A 3x3 conv of a per-image constant z
    is that image's kernel sum(W_z · z) applied to an all-ones map (zero padding only drops the
    taps that fall outside), so we compute that part on one channel instead of z_dim channels:
    exactly the same function, ~(C + z_dim) / C times cheaper for the first conv.
    """

    def __init__(self, channels: int, label_channels: int, hidden: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Conv2d(label_channels, hidden, 3, padding=1)
        # gamma and beta from one conv (2x the outputs): same function, one bigger GEMM
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)

    def label_features(self, seg: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """shared conv of [z broadcast, seg] (z [B, Z] or None: seg already holds everything)."""
        if z is None:
            return self.shared(seg)
        w = self.shared.weight
        n_z = w.shape[1] - seg.shape[1]
        out = F.conv2d(seg, w[:, n_z:], self.shared.bias, padding=1)
        b, h, wd = seg.shape[0], seg.shape[2], seg.shape[3]
        kernels = torch.einsum("oikl,bi->bokl", w[:, :n_z], z.to(w.dtype)).flatten(2)  # [B, O, 9]
        # taps[t, p] = 1 where tap t of pixel p falls inside the image (zero padding elsewhere)
        taps = _border_taps(h, wd, kernels.dtype, seg.device)  # [9, H*W]
        if out.is_contiguous(memory_format=torch.channels_last):
            z_part = (taps.t() @ kernels.transpose(1, 2)).view(b, h, wd, -1)  # [B, H, W, O]
            return out + z_part.permute(0, 3, 1, 2)  # a channels-last view: no layout copy
        return out + (kernels @ taps).view(b, -1, h, wd)  # [B, O, H, W]

    def forward(
        self, x: torch.Tensor, seg: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        gamma, beta = self.gamma_beta(F.relu(self.label_features(seg, z))).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
    """SPADE → lrelu → SN conv, twice, plus a (SPADE → 1x1 SN conv) shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, label_channels: int, hidden: int):
        super().__init__()
        mid = min(cin, cout)
        self.norm_0 = SPADE(cin, label_channels, hidden)
        self.conv_0 = SNConv2d(cin, mid, 3, padding=1)
        self.norm_1 = SPADE(mid, label_channels, hidden)
        self.conv_1 = SNConv2d(mid, cout, 3, padding=1)
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            self.norm_s = SPADE(cin, label_channels, hidden)
            self.conv_s = SNConv2d(cin, cout, 1, bias=False)

    def forward(
        self, x: torch.Tensor, seg: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        s = self.conv_s(self.norm_s(x, seg, z)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg, z), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg, z), 0.2))
        return s + dx


class DResBlock(nn.Module):
    """Residual block of the U-Net discriminator; "down" average-pools at the end, "up" upsamples first.

    1x1 convs, average pooling and nearest upsampling are all linear, so the shortcut pools before
    (or upsamples after) its 1x1 conv: the same function as OASIS's order at a fraction of the cost.
    """

    def __init__(self, cin: int, cout: int, direction: str, first: bool = False):
        super().__init__()
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
        self.down = direction == "down"
        self.first = first  # the first block sees the image: no activation before its conv
        self.conv_1 = SNConv2d(cin, cout, 3, padding=1)
        self.conv_2 = SNConv2d(cout, cout, 3, padding=1)
        self.conv_s = SNConv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x
        if self.down:
            s = F.avg_pool2d(s, 2)
        if self.conv_s is not None:
            s = self.conv_s(s)
        if not self.down:
            s = F.interpolate(s, scale_factor=2.0, mode="nearest")

        dx = x if self.first else F.leaky_relu(x, 0.2)
        if not self.down:
            dx = F.interpolate(dx, scale_factor=2.0, mode="nearest")
        dx = self.conv_2(F.leaky_relu(self.conv_1(dx), 0.2))
        if self.down:
            dx = F.avg_pool2d(dx, 2)
        return s + dx


# -----------------------------------------------------------------------------------------------
# presets: widths as multiples of a base width (generator `g_ch`, discriminator `d_ch`)

PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    # the paper: G 16ch,16ch,16ch,8ch,4ch,2ch,ch (six blocks, ch = 64); D 128,128,256,256,512,512
    "paper": {"g": (16, 16, 16, 8, 4, 2, 1), "d": (2, 2, 4, 4, 8, 8)},
    # CPU default: four G blocks, four D levels (with g_ch 16, d_ch 32: 128..16 and 32..128)
    "small": {"g": (8, 8, 4, 2, 1), "d": (1, 2, 4, 4)},
}


def preset_widths(name: str, g_ch: int, d_ch: int) -> tuple[list[int], list[int]]:
    """(generator widths, discriminator widths) of a preset; paper sizes: g_ch 64, d_ch 64."""
    if name not in PRESETS:
        raise ValueError(f"unknown OASIS preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    return [m * g_ch for m in p["g"]], [m * d_ch for m in p["d"]]


# -----------------------------------------------------------------------------------------------
# networks


class OASISGenerator(nn.Module):
    """OASIS generator: SPADE ResNet from one-hot label map + 3D noise to an RGB image in [-1, 1]."""

    def __init__(
        self,
        num_classes: int,
        height: int,
        width: int,
        widths: list[int] | tuple[int, ...] = (128, 128, 64, 32, 16),
        z_dim: int = 64,
        spade_hidden: int = 128,
        spatial_noise: bool = False,
    ):
        super().__init__()
        n_up = len(widths) - 2  # one block per pair of widths, upsampling between blocks
        if len(widths) < 2:
            raise ValueError(f"widths needs at least 2 entries (1 block), got {list(widths)}")
        if height % 2**n_up or width % 2**n_up:
            raise ValueError(
                f"image size {height}x{width} must be divisible by 2^{n_up} = {2**n_up} for "
                f"{len(widths) - 1} generator blocks; change the size or the preset"
            )
        self.num_classes, self.height, self.width = num_classes, height, width
        self.widths, self.z_dim, self.spade_hidden = list(widths), z_dim, spade_hidden
        self.spatial_noise = spatial_noise
        self.init_size = (height // 2**n_up, width // 2**n_up)
        label_channels = num_classes + z_dim
        self.fc = nn.Conv2d(label_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            SPADEResBlock(widths[i], widths[i + 1], label_channels, spade_hidden)
            for i in range(len(widths) - 1)
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def arch(self) -> dict:
        """Constructor arguments: stored in checkpoints to rebuild the network."""
        return {
            "num_classes": self.num_classes,
            "height": self.height,
            "width": self.width,
            "widths": self.widths,
            "z_dim": self.z_dim,
            "spade_hidden": self.spade_hidden,
            "spatial_noise": self.spatial_noise,
        }

    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's z: [z_dim] (broadcast to every pixel) or [z_dim, H, W]."""
        return (self.z_dim, self.height, self.width) if self.spatial_noise else (self.z_dim,)

    def forward(
        self, onehot: torch.Tensor, z: torch.Tensor | None = None, fast_noise: bool = True
    ) -> torch.Tensor:
        """onehot [B, C, H, W] (void pixels all zero), z [B, *noise_shape()] → image [B, 3, H, W].

        fast_noise=False concatenates the broadcast z to the label map at every SPADE, as the
        published code does; the default computes the same function faster (see SPADE).
        """
        b, c, h, w = onehot.shape
        if c != self.num_classes or (h, w) != (self.height, self.width):
            raise ValueError(
                f"label map [B, {c}, {h}, {w}] does not fit this generator "
                f"([B, {self.num_classes}, {self.height}, {self.width}])"
            )
        seg, z_vec = onehot, None
        if self.z_dim:
            if z is None or tuple(z.shape) != (b, *self.noise_shape()):
                got = None if z is None else list(z.shape)
                raise ValueError(f"z must have shape {[b, *self.noise_shape()]}, got {got}")
            if z.dim() == 2:
                z_vec = z
                z = z[:, :, None, None].expand(b, self.z_dim, h, w)  # [B, Z] → [B, Z, H, W]
            seg = torch.cat([z.to(onehot.dtype), onehot], dim=1)  # [B, Z + C, H, W]
            if onehot.is_contiguous(memory_format=torch.channels_last):
                seg = seg.contiguous(memory_format=torch.channels_last)
        # SPADEs take the one-hot map and z apart when z is per image (fast path)
        block_seg, block_z = (onehot, z_vec) if fast_noise and z_vec is not None else (seg, None)

        # the label map at each block's resolution (nearest), computed once per size
        pyramid: dict[tuple[int, int], torch.Tensor] = {}

        def seg_at(size: tuple[int, int]) -> torch.Tensor:
            if size not in pyramid:
                pyramid[size] = block_seg if size == (h, w) else F.interpolate(block_seg, size=size)
            return pyramid[size]

        x = self.fc(F.interpolate(seg, size=self.init_size))
        for i, block in enumerate(self.blocks):
            x = block(x, seg_at(tuple(x.shape[2:])), block_z)
            if i < len(self.blocks) - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


class UNetDiscriminator(nn.Module):
    """OASIS discriminator: a residual U-Net segmenting images into N+1 classes (0 = fake)."""

    def __init__(self, num_classes: int, widths: list[int] | tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        n = len(widths)
        if n < 2:
            raise ValueError(f"discriminator widths need at least 2 levels, got {list(widths)}")
        self.num_classes, self.widths = num_classes, list(widths)
        cins = [3, *widths[:-1]]
        self.down = nn.ModuleList(
            DResBlock(cins[i], widths[i], "down", first=i == 0) for i in range(n)
        )
        # decoder: each level sees the previous level's output concatenated with the encoder skip
        ups = [DResBlock(widths[-1], widths[-2], "up")]
        ups += [DResBlock(2 * widths[-1 - i], widths[-2 - i], "up") for i in range(1, n - 1)]
        ups += [DResBlock(2 * widths[0], max(widths[0] // 2, 1), "up")]
        self.up = nn.ModuleList(ups)
        self.to_logits = nn.Conv2d(max(widths[0] // 2, 1), num_classes + 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] → logits [B, N+1, H, W]; H, W divisible by 2^levels."""
        h, w = image.shape[2:]
        if h % 2 ** len(self.down) or w % 2 ** len(self.down):
            raise ValueError(
                f"discriminator input {h}x{w} must be divisible by 2^{len(self.down)}; "
                "change the image size or use fewer discriminator levels"
            )
        skips = []
        x = image
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[0](x)
        for i, block in enumerate(self.up[1:], start=1):
            x = block(torch.cat([skips[-1 - i], x], dim=1))
        return self.to_logits(x)
