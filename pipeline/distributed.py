"""DDP helpers: the same training code runs alone or under `torchrun --nproc_per_node N`.

Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE set) `init()` joins the process group, gloo on
CPU and nccl on GPU, one GPU per local rank. Without torchrun every helper is a no-op: rank 0 of
a world of 1, the model unwrapped, the sampler None, metrics returned as they are. A stage uses it
like this, with no second code path:

    dist = distributed.init(cfg.device)                  # DistInfo(rank, world_size, device, ...)
    model = distributed.wrap(model.to(dist.device), dist)
    sampler = distributed.sampler(dataset, shuffle=True, seed=cfg.seed)  # None when alone
    ...
    metrics = distributed.all_reduce_mean(metrics)       # same numbers on every rank
    if distributed.is_main():                            # write checkpoints, metrics, DVCLive
        ...
    distributed.cleanup()
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline.device import pick_device

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


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only rank 0 writes files (checkpoints, metrics, DVCLive, shards)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel when distributed, else the model itself.

    Unwrap with `unwrap(model)` before saving a state dict so checkpoints have the same keys
    whether or not they were trained under torchrun.
    """
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


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


def per_rank_batch(global_batch: int) -> int:
    """Split a global batch size over ranks, so the effective batch is the same with N processes."""
    w = world_size()
    if global_batch % w:
        raise ValueError(
            f"batch size {global_batch} does not divide over {w} processes; "
            f"use a multiple of {w} or another --nproc_per_node"
        )
    return global_batch // w


def all_reduce_mean(metrics: Mapping[str, float]) -> dict[str, float]:
    """Mean of each metric over ranks (fp64, same key order on every rank); identity when alone."""
    if not active():
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (e.g. confusion matrices, pixel counts); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    if active():
        dist.destroy_process_group()
