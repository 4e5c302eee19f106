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
    assert distributed.is_main()


# One tiny training run: each rank sees its DistributedSampler share of different data, DDP
# averages the gradients, so the weights must stay identical on both ranks and equal to a
# single-process run on the full batch. Metrics are all-reduced; only rank 0 writes the file.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from pipeline import distributed

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
           "backend": dist.backend, "main": distributed.is_main()}
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
