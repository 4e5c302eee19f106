"""What each step of a segmenter run trains on: the real and synthetic batches, their seeds and
the learning rate, as pure functions of (seed, step) so that a resumed run sees exactly the
batches an uninterrupted one would (`pipeline.train_segmenter` runs them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.segmenter_config import TrainSegmenterConfig

# ---- data: subsets, mixing, batches ---------------------------------------------------------


def synth_seen_after(step: int, batch_size: int, synth_fraction: float) -> int:
    """Synthetic images in the first `step` batches: the running total stays exact."""
    return round(step * batch_size * synth_fraction)


def stream(n: int, start: int, count: int, seed: int, salt: int) -> np.ndarray:
    """Items start..start+count-1 of an endless stream of seeded permutations of range(n)."""
    pos = np.arange(start, start + count)
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(pos // n):
        perm = np.random.default_rng([seed, salt, int(epoch)]).permutation(n)
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def batch_indices(
    step: int, batch_size: int, synth_fraction: float, n_real: int, n_synth: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(real indices, synthetic indices) of batch `step`; a pure function of its arguments."""
    s0 = synth_seen_after(step, batch_size, synth_fraction) if n_synth else 0
    s1 = synth_seen_after(step + 1, batch_size, synth_fraction) if n_synth else 0
    real = stream(n_real, step * batch_size - s0, batch_size - (s1 - s0), seed, 0)
    synth = stream(n_synth, s0, s1 - s0, seed, 1) if n_synth else np.zeros(0, np.int64)
    return real, synth


def real_indices(step: int, batch_size: int, n_real: int, seed: int) -> np.ndarray:
    """The real batch of step `step` of the real-only run (its stream, with no synthetic share)."""
    return stream(n_real, step * batch_size, batch_size, seed, 0)


def cosine_lr(step: int, total: int, peak: float) -> float:
    """Linear warmup over total/20 steps, then cosine decay to 0 at `total`."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _lr(step: int, cfg: TrainSegmenterConfig) -> float:
    return cosine_lr(step, cfg.steps, cfg.lr)


# ---- the schedule: what each step trains on ---------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: the real and synthetic pool positions, the lr, and the seeds of its
    randomness. `seed` drives the augmentation of the real part (of the whole batch when `joint`)
    and, with the rank, stochastic depth; `synth_seed` the synthetic part's augmentation when it
    is augmented apart. `joint`: one augmentation draw and one loss over the whole batch
    (replace, and the single-source steps of pretrain), as before synth_policy existed."""

    real: np.ndarray
    synth: np.ndarray
    lr: float
    seed: int
    synth_seed: int = 0
    joint: bool = True
    fresh_optimizer: bool = False  # pretrain's first real step starts like the real-only run


def _real_seed(seed: int, real_step: int) -> int:
    # the real-only run's per-step seed: every policy's real part reuses it at the same real step
    return seed * 1_000_003 + real_step


def _synth_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0])  # 32 bits


@dataclass(frozen=True)
class Schedule:
    """What every global step of a run trains on: `pretrain` synthetic-only steps (pretrain
    policy), then `cfg.steps` steps that draw their real pairs, real augmentation and lr exactly
    as the real-only run of the same seed does (add, pretrain; mode real itself is `replace`
    without a synthetic pool)."""

    cfg: TrainSegmenterConfig
    policy: str
    n_real: int
    n_synth: int
    seed: int

    @property
    def pretrain(self) -> int:
        if self.policy != "pretrain":
            return 0
        return self.cfg.pretrain_steps or self.cfg.steps

    @property
    def total(self) -> int:
        return self.pretrain + self.cfg.steps

    def plan(self, step: int) -> StepPlan:
        cfg, seed, none = self.cfg, self.seed, np.zeros(0, np.int64)
        if self.policy == "replace":
            frac = cfg.synth_fraction if self.n_synth else 0.0
            real, synth = batch_indices(step, cfg.batch_size, frac, self.n_real, self.n_synth, seed)
            return StepPlan(real, synth, _lr(step, cfg), _real_seed(seed, step))
        if step < self.pretrain:  # the synthetic phase: its own warmup and cosine decay
            synth = stream(self.n_synth, step * cfg.batch_size, cfg.batch_size, seed, 1)
            lr = cosine_lr(step, self.pretrain, cfg.lr)
            return StepPlan(none, synth, lr, _synth_seed(seed, step))
        r = step - self.pretrain  # the real-only run's step
        real = real_indices(r, cfg.batch_size, self.n_real, seed)
        if self.policy == "pretrain":
            return StepPlan(real, none, _lr(r, cfg), _real_seed(seed, r), fresh_optimizer=r == 0)
        sb = cfg.synth_batch_size or cfg.batch_size
        synth = stream(self.n_synth, step * sb, sb, seed, 1)
        return StepPlan(
            real, synth, _lr(r, cfg), _real_seed(seed, r), _synth_seed(seed, step), joint=False
        )


def schedule(
    cfg: TrainSegmenterConfig, mode: str, n_real: int, n_synth: int, seed: int
) -> Schedule:
    """The run's schedule: mode real trains like replace with no synthetic pool."""
    policy = cfg.synth_policy if mode == "real_synth" else "replace"
    return Schedule(cfg, policy, n_real, n_synth if mode == "real_synth" else 0, seed)
