"""pipeline.distributed: no-op alone, real DDP under torchrun (2 gloo processes on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline import distributed

REPO = Path(__file__).resolve().parents[1]


def test_alone_everything_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    info = distributed.init("cpu")
    assert not info.distributed and info.main and info.world_size == 1
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, info) is model
    assert distributed.sampler(torch.utils.data.TensorDataset(torch.zeros(4))) is None
    assert distributed.all_reduce_mean({"loss": 2, "acc": 0.5}) == {"loss": 2.0, "acc": 0.5}
    assert distributed.shard(range(5)) == [0, 1, 2, 3, 4]
    assert distributed.per_rank_batch(8) == 8


# One tiny training run: each rank sees its DistributedSampler share of different data, DDP
# averages the gradients, so the weights must stay identical on both ranks and equal to a
# single-process run on the full batch. Metrics are all-reduced; only rank 0 writes the file.
SCRIPT = textwrap.dedent(
    """
    import copy, json, sys
    import torch
    from pipeline import distributed
    from pipeline.errors import ConfigError

    dist = distributed.init("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    data = torch.utils.data.TensorDataset(x, y)
    sampler = distributed.sampler(data, shuffle=False)
    loader = torch.utils.data.DataLoader(
        data, batch_size=distributed.per_rank_batch(8), sampler=sampler, shuffle=False
    )
    torch.manual_seed(1)
    model = distributed.wrap(torch.nn.Linear(3, 1).to(dist.device), dist)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = 0
    for step in range(5):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(xb)
    metrics = distributed.all_reduce_mean({"loss": loss.item(), "rank": dist.rank, "seen": seen})
    weights = distributed.unwrap(model).weight.detach().flatten().tolist()
    out = {"metrics": metrics, "weights": weights, "world": dist.world_size,
           "backend": dist.backend, "main": dist.main}

    # Batch norm over the global batch: each rank normalises its half of x with the statistics of
    # all of it, so outputs, gradients and running stats equal plain BN on the whole batch
    # (parameter gradients summed over ranks; DDP would average them). timm's fused BN + act too.
    from timm.layers import BatchNormAct2d
    torch.manual_seed(2)
    full = torch.nn.Sequential(torch.nn.BatchNorm2d(3), BatchNormAct2d(3, act_layer=torch.nn.ReLU))
    with torch.no_grad():
        for p in full.parameters():
            p.uniform_(0.5, 1.5)
    synced = distributed.sync_batch_norm(copy.deepcopy(full))
    x = torch.randn(8, 3, 5, 5, generator=g) * 2 + 3
    w = torch.randn(8, 3, 5, 5, generator=g)
    x_all, x_mine = x.clone().requires_grad_(True), x[dist.rank::dist.world_size].clone().requires_grad_(True)
    ref = full(x_all)
    (ref * w).sum().backward()
    y = synced(x_mine)
    (y * w[dist.rank::dist.world_size]).sum().backward()
    err = lambda a, b: float((a - b).abs().max())
    bn = {"types": [type(m).__name__ for m in synced],
          "out": err(y, ref[dist.rank::dist.world_size]),
          "grad_x": err(x_mine.grad, x_all.grad[dist.rank::dist.world_size]),
          "grad_w": max(err(distributed.all_reduce_sum(a.grad.clone()), b.grad)
                        for a, b in zip(synced.parameters(), full.parameters())),
          "stats": max(err(a, b) for a, b in zip(synced.buffers(), full.buffers())),
          "keys": list(synced.state_dict()) == list(full.state_dict())}
    out["bn"] = bn

    # Random streams: distinct per rank, checkpointed together, restored exactly.
    rng = torch.Generator().manual_seed(distributed.rank_seed(5))
    state = distributed.rng_state(rng)
    draw = torch.rand(3, generator=rng).tolist()
    again = torch.Generator()
    exact = distributed.set_rng_state(again, state, seed=5, step=0)
    out["rng"] = {"shape": list(state.shape), "draw": draw, "exact": exact,
                  "restored": torch.rand(3, generator=again).tolist() == draw}
    # Replica check: equal states pass; a state that differs on one rank is named.
    same = {"w": torch.arange(4.0), "n": torch.tensor(3)}
    distributed.check_replicas_agree(model=same, ema=same)
    try:
        distributed.check_replicas_agree(model=same, ema={"w": torch.full((4,), float(dist.rank))})
        out["diverged"] = None
    except RuntimeError as e:
        out["diverged"] = str(e)
    try:
        distributed.per_rank_batch(7, "stage.batch_size")
        out["odd_batch"] = None
    except ConfigError as e:
        out["odd_batch"] = str(e)
    with open(f"{sys.argv[1]}/rank{dist.rank}.json", "w") as f:
        json.dump(out, f)
    distributed.cleanup()
    """
)


def run_script(tmp_path: Path, nproc: int | None) -> list[dict]:
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out{nproc}"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if nproc is None:
        cmd = [sys.executable, str(script), str(out)]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", str(script), str(out),
        ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def test_torchrun_two_gloo_processes_train_like_one(tmp_path: Path) -> None:
    ranks = run_script(tmp_path, nproc=2)
    (single,) = run_script(tmp_path, nproc=None)
    assert len(ranks) == 2
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["main"] for r in ranks] == [True, False]
    # DDP synchronised the gradients: both ranks hold the same weights ...
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=1e-6)
    # ... equal to one process on the whole batch (each rank saw half of it).
    assert ranks[0]["weights"] == pytest.approx(single["weights"], abs=1e-5)
    # all_reduce_mean: the same numbers everywhere, the mean of the ranks' values.
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["metrics"]["rank"] == pytest.approx(0.5)
    assert ranks[0]["metrics"]["seen"] == pytest.approx(20.0)  # 5 steps x 4 samples per rank
    assert single["metrics"]["seen"] == pytest.approx(40.0)
    assert single["backend"] is None
    # SyncBatchNorm2d: the full batch's BN (and plain BN alone), same state dict keys.
    assert ranks[0]["bn"]["types"] == ["SyncBatchNorm2d", "SyncBatchNorm2d"]
    assert single["bn"]["types"] == ["BatchNorm2d", "BatchNormAct2d"]  # alone: untouched
    for r in [*ranks, single]:
        assert r["bn"]["keys"]
        assert max(r["bn"][k] for k in ("out", "grad_x", "grad_w", "stats")) < 1e-4, r["bn"]
    # Random streams: one per rank (rank 0's is the run alone's), all saved, each restored.
    assert [r["rng"]["shape"][0] for r in ranks] == [2, 2] and len(single["rng"]["shape"]) == 1
    assert ranks[0]["rng"]["draw"] == single["rng"]["draw"] != ranks[1]["rng"]["draw"]
    assert all(r["rng"]["exact"] and r["rng"]["restored"] for r in [*ranks, single])
    assert "stage.batch_size 7 does not divide over 2 processes" in ranks[0]["odd_batch"]
    assert single["odd_batch"] is None
    assert all("ranks disagree on ['ema']" in r["diverged"] for r in ranks)
    assert single["diverged"] is None  # alone there is nothing to compare
