"""DDP helpers: the same training code runs alone or under `torchrun --nproc_per_node N`.

Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE set) `init()` joins the process group, gloo on
CPU and nccl on GPU, one GPU per local rank. Without torchrun every helper is a no-op: rank 0 of
a world of 1, the model unwrapped, batch norm left alone, the sampler None, metrics returned as
they are. A stage uses it like this, with no second code path:

    proc = distributed.init(cfg.device)                  # DistInfo(rank, world_size, device, ...)
    batch = distributed.per_rank_batch(cfg.batch_size)   # this rank's share of the global batch
    model = distributed.sync_batch_norm(model.to(proc.device))  # BN over the global batch
    ddp = distributed.wrap(model, proc)                  # forward/backward through ddp
    rng = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed))
    ...
    metrics = distributed.all_reduce_mean(metrics)       # same numbers on every rank
    if proc.main:                                        # write checkpoints, metrics, DVCLive
        ...
    distributed.cleanup()                                # in the stage's `cli`, once per process
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.device import pick_device
from pipeline.errors import ConfigError

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True when torchrun (or any launcher setting its env vars) started this process."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def init(device: str | torch.device = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group under torchrun (idempotent); alone, just pick the device."""
    device = pick_device(device) if isinstance(device, str) else device
    if not under_torchrun():
        return DistInfo(0, 0, 1, device, None)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        # One GPU per process: local rank i drives cuda:i, and nccl needs it set before init.
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank, local_rank, world, device, backend)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


# Stages read their rank from `init()`'s DistInfo; these two serve the helpers below, which run
# where no DistInfo is at hand (inside a batch-norm layer, a sampler).
def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def wrap(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel when distributed, else the model itself.

    Unwrap with `unwrap(model)` before saving a state dict so checkpoints have the same keys
    whether or not they were trained under torchrun. `find_unused_parameters` only for models
    holding parameters their forward never uses (it costs a graph search every step).
    """
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sampler(
    dataset: torch.utils.data.Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> torch.utils.data.DistributedSampler | None:
    """A DistributedSampler giving each rank a disjoint share; None when alone (use shuffle=)."""
    if not active():
        return None
    return torch.utils.data.DistributedSampler(
        dataset,
        num_replicas=world_size(),
        rank=rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's strided share of `indices` (rank r takes r, r + W, r + 2W, ...)."""
    return list(indices[rank() :: world_size()])


def per_rank_batch(global_batch: int, key: str = "batch size") -> int:
    """Split a global batch size over ranks, so the effective batch is the same with N processes.

    Equal shares also make DDP's gradient average (a mean of per-rank means) the global mean.
    """
    w = world_size()
    if global_batch % w:
        raise ConfigError(
            f"{key} {global_batch} does not divide over {w} processes; "
            f"use a multiple of {w} or another --nproc_per_node"
        )
    return global_batch // w


def rank_seed(seed: int) -> int:
    """Seed of this rank's random stream: `seed` itself on rank 0 (so a run alone is unchanged),
    a distinct seed derived from (seed, rank) on the others, so ranks draw different data."""
    r = rank()
    return seed if r == 0 else _derived_seed(seed, r)


def _derived_seed(*parts: int) -> int:
    """A well-mixed non-negative 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def all_reduce_mean(metrics: Mapping[str, float]) -> dict[str, float]:
    """Mean of each metric over ranks (reduced in fp64, in sorted key order so every rank packs
    the same tensor); identity when alone."""
    if not active():
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= world_size()
    mean = dict(zip(keys, t.tolist(), strict=True))
    return {k: mean[k] for k in metrics}  # the caller's key order, as alone


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (e.g. confusion matrices, pixel counts); returns it.

    nccl only reduces GPU tensors: a CPU tensor makes a round trip through the GPU.
    """
    if not active():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.cuda()
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        tensor.copy_(on_gpu)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` stacked into [world_size, *shape] (on every rank); [1, ...] alone."""
    if not active():
        return tensor[None].clone()
    device = "cuda" if dist.get_backend() == "nccl" else tensor.device
    local = tensor.to(device).contiguous()
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.stack(out).to(tensor.device)


# ---- random streams in checkpoints ------------------------------------------------------------


def rng_state(rng: torch.Generator) -> torch.Tensor:
    """The checkpointable state of each rank's CPU generator: [S] alone (as before), [W, S] under
    torchrun (rank r's state in row r). A collective: every rank must call it."""
    state = rng.get_state()
    return state if not active() else all_gather(state)


def set_rng_state(rng: torch.Generator, state: torch.Tensor, seed: int, step: int) -> bool:
    """Restore this rank's generator from `rng_state`'s output; True when exact.

    A checkpoint from a different number of processes cannot be continued exactly: each rank
    then starts a fresh stream seeded by (seed, step, rank) and False is returned.
    """
    if state.dim() == 1 and world_size() == 1:
        rng.set_state(state)
        return True
    if state.dim() == 2 and len(state) == world_size():
        rng.set_state(state[rank()].clone())  # a copy: set_state crashes on a view
        return True
    rng.manual_seed(rank_seed(_derived_seed(seed, step)))
    return False


# ---- batch norm over the global batch ---------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) for autograd: every rank's input feeds every rank's output, so the input's
    gradient is the sum over ranks of the output's gradients (another all_reduce)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch (every rank's share).

    torch's nn.SyncBatchNorm refuses CPU tensors, so gloo runs could not use it; this one works on
    both backends. Each rank computes its per-channel mean and variance (two-pass, stable), the
    [W, 2C + 1] table of (mean, var, count) is filled by an autograd-aware all-reduce, and the
    rows are combined with the parallel-variance formula. Backward all-reduces the statistics'
    gradients, as torch's SyncBatchNorm does, so every rank must run the same training-mode
    forwards. Eval mode (running stats) is plain BatchNorm2d and talks to no one. `post` holds
    what a fused norm-act layer (timm's BatchNormAct2d) applies after normalising. The state dict
    keys are BatchNorm2d's, so checkpoints do not change.
    """

    def __init__(self, bn: nn.BatchNorm2d, post: nn.Module | None = None):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.weight, self.bias = bn.weight, bn.bias  # the same Parameters: optimisers stay valid
        self.running_mean, self.running_var = bn.running_mean, bn.running_var
        self.num_batches_tracked = bn.num_batches_tracked
        self.post = post if post is not None else nn.Identity()
        self.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return self.post(super().forward(x))
        c = x.shape[1]
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)  # [C] each
        count = xf.new_full((1,), xf.numel() // c)
        table = xf.new_zeros(world_size(), 2 * c + 1)
        table[rank()] = torch.cat([mean, var, count])
        table = _AllReduceSum.apply(table)  # [W, 2C + 1]: every rank's row
        means, variances, counts = table[:, :c], table[:, c : 2 * c], table[:, 2 * c :]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (counts * (variances + (means - mean).square())).sum(0) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:  # cumulative average, as BatchNorm2d does
                    momentum = 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1), momentum)  # unbiased
        y = (xf - mean[:, None, None]) * torch.rsqrt(var + self.eps)[:, None, None]
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return self.post(y.to(x.dtype))


def sync_batch_norm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d in `module` for `SyncBatchNorm2d` when more than one process trains;
    the module itself, untouched, alone. Call before wrapping in DDP; returns `module`."""
    if world_size() == 1:
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
                setattr(parent, name, SyncBatchNorm2d(child, _after_norm(child)))
    return module


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What a BatchNorm2d applies after normalising: nothing, or timm's BatchNormAct2d drop + act."""
    if type(bn) is nn.BatchNorm2d:
        return None
    from timm.layers import BatchNormAct2d

    tail = nn.Sequential(bn.drop, bn.act) if type(bn) is BatchNormAct2d else None
    if tail is None or any(True for _ in tail.state_dict()):
        raise TypeError(
            f"cannot synchronise {type(bn).__name__}: only nn.BatchNorm2d and timm's "
            "BatchNormAct2d with a stateless activation are supported"
        )
    return tail


def check_replicas_agree(**state_dicts: Mapping[str, torch.Tensor]) -> None:
    """Raise when the ranks' copies of the named state dicts (e.g. model, ema, discriminator)
    are not bit-identical; a no-op alone. A collective: every rank must call it.

    DDP keeps replicas equal only if every rank applies the same updates; a rank that drew
    different noise for a batch-norm refresh, or skipped a step, would otherwise go unnoticed
    and rank 0 would checkpoint weights the others never had.
    """
    if not active():
        return
    digests = torch.tensor([_digest(sd) for sd in state_dicts.values()], dtype=torch.int64)
    table = all_gather(digests)  # [W, nets]
    differ = [
        name for j, name in enumerate(state_dicts) if not bool((table[:, j] == table[0, j]).all())
    ]
    if differ:
        raise RuntimeError(f"ranks disagree on {differ} after training: DDP replicas diverged")


def _digest(state_dict: Mapping[str, torch.Tensor]) -> int:
    """A 63-bit hash of a state dict's names and exact tensor bytes."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def cleanup() -> None:
    if active():
        dist.destroy_process_group()
