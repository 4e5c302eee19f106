"""The parameters of stage `train_segmenter` (params.yaml section `train_segmenter`), checked on
construction: a wrong value fails before any data is read, naming its key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.segmenter import ARCHS, ENCODERS
from pipeline.augment import AugmentConfig
from pipeline.config import ConfigError

SECTION = "train_segmenter"


@dataclass(frozen=True)
class TrainSegmenterConfig:
    arch: str = field(default="unet", metadata={"help": f"one of {sorted(ARCHS)}"})
    encoder: str = field(
        default="efficientnet-lite0", metadata={"help": f"one of {sorted(ENCODERS)}"}
    )
    encoder_weights: Literal["imagenet"] | None = field(
        default="imagenet", metadata={"help": "imagenet (offline package weights) or null"}
    )
    decoder_channels: list[int] = field(
        default_factory=lambda: [128, 64, 32, 16, 16],
        metadata={
            "help": "unet decoder widths, 1/16 -> full size (5 values); [] = smp's default "
            "[256, 128, 64, 32, 16] (about 1.5x slower per image on 2 CPU cores)"
        },
    )
    loss: Literal["ce", "dice_ce"] = field(
        default="ce", metadata={"help": "ce, or dice_ce (cross-entropy + Dice)"}
    )
    steps: int = field(default=150, metadata={"help": "optimizer steps (images = steps x batch)"})
    batch_size: int = 16
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW lr (warmup, cosine decay)"})
    weight_decay: float = 1e-4
    synth_policy: Literal["replace", "add", "pretrain"] = field(
        default="replace",
        metadata={
            "help": "how real_synth uses synthetic pairs: replace (synth_fraction of every batch; "
            "fewer real images than the real-only run), add (the real-only run's batch + "
            "synth_batch_size synthetic pairs per step), pretrain (pretrain_steps on synthetic "
            "pairs, then the real-only run's schedule)"
        },
    )
    synth_fraction: float = field(
        default=0.5, metadata={"help": "replace: share of images seen that are synthetic"}
    )
    synth_weight: float = field(
        default=1.0, metadata={"help": "add: loss = CE(real) + synth_weight x CE(synthetic)"}
    )
    synth_batch_size: int = field(
        default=0, metadata={"help": "add: synthetic pairs per step; 0 = batch_size"}
    )
    pretrain_steps: int = field(
        default=0,
        metadata={"help": "pretrain: synthetic-only steps (batch_size pairs each); 0 = steps"},
    )
    synth_budget: int = field(
        default=0, metadata={"help": "synthetic pairs to draw from (seeded subset); 0 = all"}
    )
    trust_filter: bool = field(
        default=False,
        metadata={
            "help": "real_synth: the finished real-only run of the same seed scores the "
            "synthetic pairs and their implausible pixels become void (FreeMask)"
        },
    )
    trust_tolerance: float = field(
        default=1.25,
        metadata={
            "help": "a synthetic pixel of class c becomes void when its loss exceeds "
            "trust_tolerance x the mean loss over the synthetic pixels of class c"
        },
    )
    trust_drop_fraction: float = field(
        default=0.0,
        metadata={"help": "share of synthetic images with the highest mean loss dropped; 0 = none"},
    )
    real_fraction: float = field(
        default=1.0, metadata={"help": "seeded share of real training labels kept"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "seeds of the DVC matrix"}
    )
    curve_fractions: list[float] = field(
        default_factory=lambda: [0.1, 0.25, 0.5],
        metadata={"help": "real_fraction values of the data-efficiency curve (DVC matrix)"},
    )
    curve_seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "seeds of the curve's DVC matrix"}
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    eval_every: int = field(
        default=0, metadata={"help": "steps between held-out mIoU logs; 0 = at the end only"}
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast where fast"})
    in_memory: bool = field(
        default=False,
        metadata={
            "help": "decode the training pairs into RAM up front instead of reading each batch "
            "from the shards (memory then grows with the data)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    real_dir: str = "data/prepared"
    synth_dir: str = "data/synthetic"
    out: str = field(
        default="data/segmenter",
        metadata={"help": "runs go to OUT/RUN/model.pt (the trust filter reads OUT/real-*)"},
    )
    metrics_dir: str = field(default="metrics/segmenter", metadata={"help": "RUN.json per run"})
    live_dir: str = field(default="dvclive/segmenter", metadata={"help": "DVCLive logs per run"})

    def __post_init__(self) -> None:
        k = SECTION
        if self.arch not in ARCHS:
            raise ConfigError(f"{k}.arch {self.arch!r} is unknown; valid: {sorted(ARCHS)}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"{k}.encoder {self.encoder!r} is unknown; valid: {sorted(ENCODERS)}")
        if self.decoder_channels and (
            self.arch != "unet" or len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1
        ):
            raise ConfigError(
                f"{k}.decoder_channels {self.decoder_channels} sets the unet decoder: five "
                f"widths >= 1, or [] for the arch's default (arch is {self.arch!r})"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"{k}.steps and {k}.batch_size must be >= 1")
        if not 0 <= self.synth_fraction < 1:
            raise ConfigError(f"{k}.synth_fraction {self.synth_fraction} must be in [0, 1)")
        if self.synth_budget < 0 or self.synth_batch_size < 0 or self.pretrain_steps < 0:
            raise ConfigError(f"{k}.synth_budget, synth_batch_size, pretrain_steps must be >= 0")
        if self.synth_weight <= 0:
            raise ConfigError(f"{k}.synth_weight {self.synth_weight} must be > 0")
        if self.synth_weight != 1 and self.synth_policy != "add":
            raise ConfigError(
                f"{k}.synth_weight weighs the synthetic loss of synth_policy add only; "
                f"set it to 1.0 for {self.synth_policy!r} (replace mixes by synth_fraction)"
            )
        if self.trust_tolerance <= 0 or not 0 <= self.trust_drop_fraction < 1:
            raise ConfigError(f"{k}.trust_tolerance must be > 0, trust_drop_fraction in [0, 1)")
        for f in [self.real_fraction, *self.curve_fractions]:
            if not 0 < f <= 1:
                raise ConfigError(f"{k}.real_fraction / curve_fractions {f} must be in (0, 1]")
        if self.lr <= 0 or self.checkpoint_every < 0 or self.eval_every < 0:
            raise ConfigError(f"{k}.lr must be > 0; checkpoint_every, eval_every >= 0")
