"""OASIS's N+1 segmenting discriminator on an ImageNet-pretrained encoder.

With a few hundred images a discriminator trained from scratch memorises the real set; one that
judges pretrained features (Projected GAN, Sauer et al. 2021, arXiv 2111.01007; Vision-aided GAN,
Kumari et al. 2022) learns from far fewer. This U-Net keeps OASIS's output and losses (N+1
classes per pixel, channel 0 = fake; `models/oasis_losses.py`) and swaps the encoder for an
ImageNet EfficientNet-Lite0 built by segmentation-models-pytorch, with a light decoder trained
from scratch.

- The encoder's batch norms always use their ImageNet statistics (eval mode), also when the
  encoder is fine-tuned: D sees real and fake images in separate batches, and batch statistics
  would let it tell them apart by the batch rather than the image.
- A frozen encoder (`trainable_encoder=False`) has requires_grad False: no weight gradients, but
  gradients still flow through it to the image for G's step.
- The decoder convs are spectrally normalised by default (as OASIS's whole D is): Projected GAN
  notes a D on strong features easily dominates G; the 1 Lipschitz bound on the new layers
  keeps its logits from growing sharp. No batch norm in the decoder, for the reason above.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from models.oasis import SNConv2d
from models.segmenter import ENCODERS, EncoderSpec, load_encoder_state

# the encoder's output strides: features at /2, /4, /8, /16, /32 (smp depth 5)
ENCODER_DEPTH = 5
STRIDE = 2**ENCODER_DEPTH
# light enough for CPU at 64x64; widest at the lowest resolution, where pixels are few
DEFAULT_DECODER_CHANNELS = (64, 48, 32, 24, 16)


class DecoderBlock(nn.Module):
    """Nearest 2x upsampling, concatenation with the encoder skip, two 3x3 convs + leaky ReLU."""

    def __init__(self, cin: int, skip: int, cout: int, spectral_norm: bool):
        super().__init__()

        def conv(i: int, o: int) -> nn.Module:
            return SNConv2d(i, o, 3, padding=1) if spectral_norm else nn.Conv2d(i, o, 3, padding=1)

        self.conv_1 = conv(cin + skip, cout)
        self.conv_2 = conv(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1)
        x = F.leaky_relu(self.conv_1(x), 0.2)
        return F.leaky_relu(self.conv_2(x), 0.2)


class PretrainedUNetDiscriminator(nn.Module):
    """U-Net D segmenting images into N+1 classes (0 = fake) on a pretrained smp encoder."""

    def __init__(
        self,
        num_classes: int,
        encoder: str = "efficientnet-lite0",
        decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
        encoder_state: dict[str, torch.Tensor] | None = None,
        trainable_encoder: bool = False,
        spectral_norm: bool = True,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; valid: {sorted(ENCODERS)}")
        if len(decoder_channels) != ENCODER_DEPTH:
            raise ValueError(
                f"decoder_channels needs {ENCODER_DEPTH} widths (one per encoder level, "
                f"/16 up to full size), got {list(decoder_channels)}"
            )
        spec: EncoderSpec = ENCODERS[encoder]
        self.num_classes, self.encoder_name = num_classes, encoder
        self.decoder_channels, self.spectral_norm = list(decoder_channels), spectral_norm
        self.trainable_encoder = trainable_encoder
        with warnings.catch_warnings():  # smp deprecates `timm-` names; ours is pinned
            warnings.filterwarnings("ignore", "`timm-` encoders are deprecated")
            self.encoder = get_encoder(
                spec.smp_name, in_channels=3, depth=ENCODER_DEPTH, weights=None
            )
        if encoder_state is not None:
            load_encoder_state(self.encoder, encoder_state)
        # smp keeps timm's 1x1 head conv (320 → 1280) but never runs it: drop it, so it is not
        # trained, checkpointed, or reported unused by DDP
        for name in ("conv_head", "bn2"):
            if hasattr(self.encoder, name):
                setattr(self.encoder, name, nn.Identity())
        self.encoder.requires_grad_(trainable_encoder)
        # [-1, 1] → the encoder's input normalisation: (x + 1) / 2 → (x - mean) / std, one affine
        mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.register_buffer("in_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        # skips from /16 down to full size; the last "skip" is the (normalised) image itself
        enc = self.encoder.out_channels  # [3, c/2, c/4, c/8, c/16, c/32]
        skips, cins = enc[-2::-1], [enc[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderBlock(ci, s, co, spectral_norm)
            for ci, s, co in zip(cins, skips, decoder_channels, strict=True)
        )
        self.to_logits = nn.Conv2d(decoder_channels[-1], num_classes + 1, 1)
        self.train()

    def arch(self) -> dict:
        """What the checkpoint records of this discriminator."""
        return {
            "kind": "pretrained",
            "num_classes": self.num_classes,
            "encoder": self.encoder_name,
            "decoder_channels": self.decoder_channels,
            "trainable_encoder": self.trainable_encoder,
            "spectral_norm": self.spectral_norm,
        }

    def train(self, mode: bool = True) -> PretrainedUNetDiscriminator:
        super().train(mode)
        self.encoder.eval()  # ImageNet BN statistics always (see the module docstring)
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] → logits [B, N+1, H, W]; H, W divisible by 32."""
        h, w = image.shape[2:]
        if h % STRIDE or w % STRIDE:
            raise ValueError(
                f"pretrained discriminator input {h}x{w} must be divisible by {STRIDE} (the "
                "encoder's stride); prepare the data at such a size or use the OASIS discriminator"
            )
        x = image * self.in_scale.to(image.dtype) + self.in_shift.to(image.dtype)
        features = self.encoder(x)  # [x, /2, /4, /8, /16, /32]
        x = features[-1]
        for block, skip in zip(self.decoder, features[-2::-1], strict=True):
            x = block(x, skip)
        return self.to_logits(x)
