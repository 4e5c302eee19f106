"""Downstream segmenter: a segmentation-models-pytorch network behind plain dict registries.

The segmenter is the judge of the synthetic data (OASIS, Schönfeld et al. 2021, §4): trained on
real pairs only, or on real + synthetic, and scored on held-out real pairs. Pretrained encoder
weights arrive as a state dict (`pipeline/pretrained.py` reads the file); this module does no I/O.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

# ---- registries ----------------------------------------------------------------------------

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "unet": smp.Unet,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "fpn": smp.FPN,
}


@dataclass(frozen=True)
class EncoderSpec:
    smp_name: str  # the name smp's get_encoder knows
    mean: tuple[float, float, float]  # input normalisation the weights were trained with
    std: tuple[float, float, float]


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ENCODERS: dict[str, EncoderSpec] = {
    # TF EfficientNet-Lite was trained on (x - 127.5) / 127.5 inputs
    "efficientnet-lite0": EncoderSpec("timm-tf_efficientnet_lite0", (0.5,) * 3, (0.5,) * 3),
    "resnet18": EncoderSpec("resnet18", *_IMAGENET),
    "resnet34": EncoderSpec("resnet34", *_IMAGENET),
    "mobilenet_v2": EncoderSpec("mobilenet_v2", *_IMAGENET),
}


def _lookup(registry: dict, name: str, what: str, key: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r} ({key}); valid: {sorted(registry)}")
    return registry[name]


# ---- pretrained weights --------------------------------------------------------------------


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy `state` into `encoder` by position: the two use different names for the same layers.

    The classifier (`_fc.*`, absent from a segmentation encoder) is dropped first. Every
    remaining tensor must match its counterpart's shape and the counts must agree, otherwise
    this raises rather than load a silently shifted network. Returns the tensors loaded.
    """
    src = [(k, v) for k, v in state.items() if not k.startswith(("_fc.", "fc.", "classifier."))]
    dst = list(encoder.state_dict().items())
    if len(src) != len(dst):
        raise ValueError(
            f"pretrained state has {len(src)} tensors but the encoder has {len(dst)}: "
            "the weight file does not belong to this encoder"
        )
    new = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(
                f"pretrained tensor {sk} {tuple(sv.shape)} does not fit encoder tensor {dk} "
                f"{tuple(dv.shape)}: the weight file does not belong to this encoder"
            )
        new[dk] = sv.to(dv.dtype)
    encoder.load_state_dict(new, strict=True)
    return len(new)


# ---- the network ---------------------------------------------------------------------------


class Segmenter(nn.Module):
    """An smp network with its input normalisation and padding to the encoder's stride."""

    def __init__(
        self,
        arch: str,
        encoder: str,
        num_classes: int,
        encoder_state: dict[str, torch.Tensor] | None = None,
        decoder_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        spec: EncoderSpec = _lookup(ENCODERS, encoder, "encoder", "train_segmenter.encoder")
        make = _lookup(ARCHS, arch, "arch", "train_segmenter.arch")
        self.arch, self.encoder_name, self.num_classes = arch, encoder, num_classes
        with warnings.catch_warnings():  # smp deprecates `timm-` names; ours is pinned
            warnings.filterwarnings("ignore", "`timm-` encoders are deprecated")
            # decoder_channels (unet only; None/empty = smp's default widths)
            extra = {"decoder_channels": tuple(decoder_channels)} if decoder_channels else {}
            self.net = make(
                encoder_name=spec.smp_name, encoder_weights=None, classes=num_classes, **extra
            )
        if encoder_state is not None:
            load_encoder_state(self.net.encoder, encoder_state)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.stride = 2 ** len(self.net.encoder.out_channels[1:])  # 32 for depth 5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [N, 3, H, W] in [0, 1] → logits [N, C, H, W] (any H, W)."""
        x = (images - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = -h % self.stride, -w % self.stride
        if ph or pw:  # smp needs multiples of the stride; reflect-pad and crop back
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return self.net(x)[..., :h, :w]


def build_segmenter(
    arch: str,
    encoder: str,
    num_classes: int,
    encoder_state: dict[str, torch.Tensor] | None = None,
    decoder_channels: Sequence[int] | None = None,
) -> Segmenter:
    """Factory: `arch` in ARCHS, `encoder` in ENCODERS; optional pretrained encoder state and
    unet decoder widths (None = smp's default)."""
    return Segmenter(arch, encoder, num_classes, encoder_state, decoder_channels)


# ---- losses --------------------------------------------------------------------------------


def cross_entropy_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Per-pixel cross-entropy in fp32; void pixels contribute nothing."""
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1.0
) -> torch.Tensor:
    """Soft multi-class Dice (Milletari et al. 2016) over classes present in the batch."""
    probs = logits.float().softmax(1)  # [N, C, H, W]
    valid = (target != ignore_index).unsqueeze(1)  # [N, 1, H, W]
    t = target.long().clamp_max(logits.shape[1] - 1)  # void → any class, masked out below
    onehot = F.one_hot(t, logits.shape[1]).permute(0, 3, 1, 2) * valid  # [N, C, H, W]
    probs = probs * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, kind: str = "ce"
) -> torch.Tensor:
    """`ce` or `dice_ce` (cross-entropy + Dice, equal weights)."""
    ce = cross_entropy_loss(logits, target, ignore_index)
    if kind == "ce":
        return ce
    if kind == "dice_ce":
        return ce + dice_loss(logits, target, ignore_index)
    raise ValueError(f"unknown loss {kind!r}; valid: ['ce', 'dice_ce']")
