"""OASIS: label map → image with adversarial supervision only (Schönfeld et al. 2021, arXiv 2012.04781).

Generator: SPADE ResNet blocks (Park et al. 2019) fed with the one-hot label map concatenated with
3D noise (a z per image broadcast to every pixel, or a z per pixel), nearest (the paper) or
bilinear upsampling between blocks, spectral norm on the block convolutions, tanh output. Discriminator: a U-Net of residual blocks that
segments its input into N+1 classes per pixel (channel 0 = fake). Losses (class-balanced N+1
cross-entropy, LabelMix) are standalone functions in `models/oasis_losses.py`; the training loop
is in `pipeline/train_images.py`.

Speed: the networks compute exactly the published functions, with fewer FLOPs where linear algebra
allows (SPADE's noise conv on one channel, the discriminator's resampling folded into its 3x3
convs), and avoid large temporaries. On CPUs with AMX / AVX512-BF16 they run under bf16 autocast
with channels-last activations; the spectral-norm power iteration stays in fp32 with autocast off.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------------------------
# blocks


class SNConv2d(nn.Conv2d):
    """Conv2d with spectral normalisation (Miyato et al. 2018): W / sigma(W), sigma by power iteration.

    One power-iteration step per forward in training mode (like torch's spectral_norm); eval mode
    reuses the stored vectors. The iteration and sigma are computed in fp32 outside autocast.
    Where the output is smaller than the weight (deep, low-resolution layers), the output is divided
    by sigma instead of the weight: the same function, without weight-sized work per call.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__(cin, cout, kernel_size, padding=padding, bias=bias)
        self.register_buffer("u", F.normalize(torch.randn(cout), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(cin * kernel_size * kernel_size), dim=0))

    def sigma(self) -> torch.Tensor:
        """sigma(W) of the weight as a [Cout, Cin*k*k] matrix, in fp32 outside autocast."""
        with torch.autocast(self.weight.device.type, enabled=False):
            w = self.weight.float()
            # the matrix in the weight's memory order, a view: a channels-last weight puts Cin
            # last, which permutes the columns (not sigma); v is read and stored permuted alike
            cl = not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
            order = (1, 2, 0) if cl else (0, 1, 2)  # memory order of v's [Cin, k, k] axes
            mat = w.permute(0, *(i + 1 for i in order)).flatten(1)  # [Cout, Cin*k*k]
            v_view = self.v.view(w.shape[1:]).permute(order)
            if self.training:
                with torch.no_grad():
                    v = F.normalize(mat.t() @ self.u, dim=0, eps=1e-12)
                    v_view.copy_(v.view(v_view.shape))
                    self.u.copy_(F.normalize(mat @ v, dim=0, eps=1e-12))
            # clones: later forwards update u, v in place while this graph may still need them
            return self.u.clone() @ (mat @ v_view.flatten().clone())

    def normalized_weight(self) -> torch.Tensor:
        return self.weight / self.sigma()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv(x, W / sigma) = conv(x, W) / sigma: divide the smaller (stride 1, "same" padding)
        if x.shape[0] * self.out_channels * x.shape[2] * x.shape[3] >= self.weight.numel():
            return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding)
        out = F.conv2d(x, self.weight, None, self.stride, self.padding) / self.sigma()
        return out if self.bias is None else out + self.bias.to(out.dtype)[:, None, None]


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
        """relu(shared conv of [z broadcast, seg]); z [B, Z], or None when seg already holds it."""
        if z is None:
            return F.relu(self.shared(seg), inplace=True)
        w = self.shared.weight  # [O, Z + C, 3, 3]
        n_z = w.shape[1] - seg.shape[1]
        out = F.conv2d(seg, w[:, n_z:], self.shared.bias, padding=1)  # [B, O, H, W]
        with torch.autocast(seg.device.type, enabled=False):  # tiny: keep the weight's precision
            k = torch.einsum("oiyx,bi->boyx", w[:, :n_z], z.to(w.dtype))  # per image [B, O, 3, 3]
            # the terms below, summed in fp32 (autocast would also upcast sums), then cast to
            # out's dtype: an fp32 operand makes an in-place op on a bf16 map upcast the whole
            # map and cast it back (two full copies per op; 60% of bf16 synthesis time, profiled)
            total = k.sum((2, 3))[:, :, None, None]
            rows, cols = k.sum(3, keepdim=True), k.sum(2)[:, :, :, None]  # [B, O, 3, 1] each
            total, rows, cols, k = (t.to(out.dtype) for t in (total, rows, cols, k))
            # k on an all-ones map, zero padded: all 9 taps inside, minus the kernel row
            # (column) that falls outside on the first / last row (column), plus each corner
            # tap removed twice. In place on `out`: no [B, O, H, W] temporary; any H, W >= 1.
            out += total
            out[:, :, 0] -= rows[:, :, 0]
            out[:, :, -1] -= rows[:, :, 2]
            out[:, :, :, 0] -= cols[:, :, 0]
            out[:, :, :, -1] -= cols[:, :, 2]
            out[:, :, 0, 0] += k[:, :, 0, 0]
            out[:, :, 0, -1] += k[:, :, 0, 2]
            out[:, :, -1, 0] += k[:, :, 2, 0]
            out[:, :, -1, -1] += k[:, :, 2, 2]
        return F.relu(out, inplace=True)

    def forward(
        self, x: torch.Tensor, seg: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        gamma, beta = self.gamma_beta(self.label_features(seg, z)).chunk(2, dim=1)
        return torch.addcmul(beta, self.norm(x), 1 + gamma)  # norm(x) * (1 + gamma) + beta


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


# Nearest 2x upsampling, 2x2 average pooling and convolutions are all linear, so a resampling next
# to a 3x3 conv folds into the conv's kernel, 4 taps per axis. Conv then pool: a pooled pixel sees
# 4 input pixels per axis, SPREAD[t, k] = 1 where 3x3 tap k of one of its 2 conv outputs reaches
# input t. Upsample then conv is the adjoint (transposed conv): SPREAD flipped.
SPREAD = ((1, 0, 0), (1, 1, 0), (0, 1, 1), (0, 0, 1))


def conv3x3_pool2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """avg_pool2d(conv2d(x, 3x3 weight, padding 1), 2) as one 4x4 stride-2 conv: 4/9 of the MACs."""
    with torch.autocast(x.device.type, enabled=False):  # fold the taps in the weight's precision
        s = weight.new_tensor(SPREAD) / 2  # / 2 per axis: the 2x2 average
        w4 = torch.einsum("ty,sx,oiyx->oits", s, s, weight)  # [O, I, 4, 4]
    return F.conv2d(x, w4, bias, stride=2, padding=1)


def conv3x3_up2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(nearest 2x upsampling of x, 3x3 weight, padding 1) as one 4x4 stride-2 transposed conv.

    Output row 2i + a sees input rows (i - 1, i) (a = 0) or (i, i + 1) (a = 1), each weighted by
    the sum of the 3x3 taps landing on it: per axis the kernel [W2, W1 + W2, W0 + W1, W0], 16
    instead of 36 MACs per input pixel and no upsampled copy of x.
    """
    with torch.autocast(x.device.type, enabled=False):
        s = weight.new_tensor(SPREAD).flip(0)
        w4 = torch.einsum("ty,sx,oiyx->iots", s, s, weight)  # [I, O, 4, 4] (transposed conv)
    return F.conv_transpose2d(x, w4, bias, stride=2, padding=1)


class DResBlock(nn.Module):
    """Residual block of the U-Net discriminator; "down" average-pools at the end, "up" upsamples first.

    Convs, average pooling and nearest upsampling are all linear, so (fast=True, the default) the
    shortcut pools before (or upsamples after) its 1x1 conv, and each resampling is folded into
    the 3x3 conv next to it (`conv3x3_pool2`, `conv3x3_up2`): the same function as OASIS's order,
    the big convs at 4/9 of the cost. fast=False computes it in OASIS's order.
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

    def shortcut(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        conv = self.conv_s if self.conv_s is not None else nn.Identity()
        if self.down and (fast or self.first):
            return conv(F.avg_pool2d(x, 2))
        if self.down:  # OASIS: convolve at full resolution, then pool
            return F.avg_pool2d(conv(x), 2)
        if fast:
            return F.interpolate(conv(x), scale_factor=2.0, mode="nearest")
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def forward(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        dx = x if self.first else F.leaky_relu(x, 0.2)
        # fold the resampling into its conv where the full-resolution map is >= 16 px a side:
        # below that, folding the weights costs more than the smaller conv saves (CPU, measured)
        fold = fast and min(x.shape[2:]) * (1 if self.down else 2) >= 16
        if self.down:
            dx = F.leaky_relu(self.conv_1(dx), 0.2)
            if fold:
                dx = conv3x3_pool2(dx, self.conv_2.normalized_weight(), self.conv_2.bias)
            else:
                dx = F.avg_pool2d(self.conv_2(dx), 2)
        else:
            if fold:
                dx = conv3x3_up2(dx, self.conv_1.normalized_weight(), self.conv_1.bias)
            else:
                dx = self.conv_1(F.interpolate(dx, scale_factor=2.0, mode="nearest"))
            dx = self.conv_2(F.leaky_relu(dx, 0.2))
        return self.shortcut(x, fast) + dx


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

# Generator feature upsampling between blocks. Nearest is the paper's; bilinear is smoother where
# an undertrained G shows the block grid of its small start map (CamVid: 12x16 → 96x128).
UPSAMPLE_MODES = ("nearest", "bilinear")


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
        upsample: str = "nearest",
    ):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample {upsample!r}; valid: {', '.join(UPSAMPLE_MODES)}")
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
        self.spatial_noise, self.upsample = spatial_noise, upsample
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
            "upsample": self.upsample,  # absent from older checkpoints: nearest, the default
        }

    def upsample_features(self, x: torch.Tensor) -> torch.Tensor:
        """2x upsampling between blocks (the label maps stay nearest: they are class ids)."""
        if self.upsample == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

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
        if self.z_dim and (z is None or tuple(z.shape) != (b, *self.noise_shape())):
            got = None if z is None else list(z.shape)
            raise ValueError(f"z must have shape {[b, *self.noise_shape()]}, got {got}")
        z = z if self.z_dim else None
        cl = onehot.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format

        def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return t if tuple(t.shape[2:]) == size else F.interpolate(t, size=size)  # nearest

        def label_map(size: tuple[int, int]) -> torch.Tensor:
            """The published SPADE input at `size`: [z broadcast (or resized), one-hot] (nearest)."""
            seg = resize(onehot, size)
            if z is None:
                return seg
            zs = z[:, :, None, None].expand(-1, -1, *size) if z.dim() == 2 else resize(z, size)
            return torch.cat([zs.to(seg.dtype), seg], dim=1).contiguous(memory_format=fmt)

        # SPADEs take the one-hot map and a per-image z apart (fast path, see SPADE)
        split = fast_noise and z is not None and z.dim() == 2
        pyramid: dict[tuple[int, int], torch.Tensor] = {}  # each block's label map, once per size

        x = self.fc(label_map(self.init_size))  # [B, widths[0], *init_size]
        for i, block in enumerate(self.blocks):
            size = tuple(x.shape[2:])
            if size not in pyramid:
                pyramid[size] = resize(onehot, size) if split else label_map(size)
            x = block(x, pyramid[size], z if split else None)
            if i < len(self.blocks) - 1:
                x = self.upsample_features(x)
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

    def arch(self) -> dict:
        """What the checkpoint records of this discriminator (its kind and widths)."""
        return {"kind": "oasis", "num_classes": self.num_classes, "widths": self.widths}

    def forward(self, image: torch.Tensor, fast_resample: bool = True) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] → logits [B, N+1, H, W]; H, W divisible by 2^levels.

        fast_resample=False pools and upsamples feature maps where the published code does; the
        default computes the same function with fewer FLOPs (see DResBlock).
        """
        h, w = image.shape[2:]
        if h % 2 ** len(self.down) or w % 2 ** len(self.down):
            raise ValueError(
                f"discriminator input {h}x{w} must be divisible by 2^{len(self.down)}; "
                "change the image size or use fewer discriminator levels"
            )
        skips = []
        x = image
        for block in self.down:
            x = block(x, fast_resample)
            skips.append(x)
        x = self.up[0](x, fast_resample)
        for i, block in enumerate(self.up[1:], start=1):
            x = block(torch.cat([skips[-1 - i], x], dim=1), fast_resample)
        return self.to_logits(x)
