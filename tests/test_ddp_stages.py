"""The three training stages under `torchrun --nproc_per_node 2` (gloo on CPU): one code path.

Each test launches a real 2-process run of `python -m pipeline.cli STAGE` (what the `semsynth`
console script runs) on tiny data and checks what DDP must get right: the run exits 0; rank 0
alone writes the checkpoint, the metrics and the curves; the checkpoint loads weights-only with
the keys of a run alone (no `module.` prefixes); the image budget is the global one, not doubled;
and both ranks end with identical weights: every training stage ends with
`distributed.check_replicas_agree`, which fails the run (non-zero exit) when they do not
(test_distributed shows that it catches a rank that diverged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline import distributed
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


# ---- helpers ----------------------------------------------------------------------------------


def write_params(folder: Path, section: str, values: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({section: values}))
    return path


def torchrun(stage: str, params: Path, *args: str, nproc: int = 2) -> tuple[str, str]:
    """Run `semsynth STAGE` as `nproc` gloo processes; its (stdout, stderr) (it must exit 0).
    Not quiet: the INFO lines on stderr show that rank 0 alone reports."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "pipeline.cli", stage,
        "--params", str(params), *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=params.parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, proc.stderr


def key_tree(obj: Any) -> Any:
    """The nested dict keys of a checkpoint (tensors and other values left out)."""
    if isinstance(obj, dict):
        return {k: key_tree(v) for k, v in obj.items()}
    return None


def assert_same_layout(ddp_ckpt: dict, alone_ckpt: dict, nets: tuple[str, ...]) -> None:
    assert key_tree(ddp_ckpt) == key_tree(alone_ckpt)
    for net in nets:
        assert not [k for k in ddp_ckpt[net] if k.startswith("module.")]
        for k, v in alone_ckpt[net].items():
            assert ddp_ckpt[net][k].shape == v.shape and ddp_ckpt[net][k].dtype == v.dtype, k


def run_alone(stage: str, params: Path) -> None:
    """`semsynth STAGE` in this process, on one thread like each torchrun worker (on a few shared
    cores more threads only spin and wait)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([stage, "--params", str(params), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- train_masks: SemGAN (G/D, lazy R1, EMA), and resume ---------------------------------------


def masks_params(tiny_shapes: Path, run: Path) -> dict[str, Any]:
    return {
        "data": str(tiny_shapes),
        "out": str(run / "out"),
        "metrics": str(run / "metrics" / "train_masks.json"),
        "live_dir": str(run / "live"),
        "total_images": 80,  # 10 global steps of 8 (4 per rank)
        "batch_size": 8,
        "latent_dim": 16,
        "g_channels": 32,
        "d_channels": 8,
        "r1_interval": 2,  # R1's double backward through DDP on every other D step
        "checkpoint_every_images": 40,
        "log_every_images": 16,
        "eval_samples": 16,
        "min_component": 4,
        "device": "cpu",
        "bf16": False,
        "gumbel": True,
        "real_noise": 0.05,
    }


def test_train_masks_under_torchrun_and_resume(tiny_shapes: Path, tmp_path: Path) -> None:
    # Stopped after 6 of 10 global steps, then resumed: every rank's random stream, the
    # optimisers and the EMA come back from rank 0's checkpoint. (test_distributed checks that the
    # streams are restored exactly; with them a straight 10-step run ends with the same weights.)
    run = tmp_path / "ddp"
    params = write_params(run, "train_masks", masks_params(tiny_shapes, run))
    torchrun("train-masks", params, "--set", "train_masks.total_images=48")
    assert load(run / "out" / "checkpoint.pt")["step"] == 6
    stdout, _ = torchrun("train-masks", params)

    # Rank 0 alone wrote: one checkpoint, one metrics file, one set of curves, one stdout report.
    assert files(run / "metrics") == ["train_masks.json"]
    assert files(run / "out") == [
        "checkpoint.pt", "grid.png", "samples/00000040.png", "samples/00000048.png",
        "samples/00000080.png",
    ]  # fmt: skip
    assert stdout.count('"images_seen"') == 1
    metrics = json.loads((run / "metrics" / "train_masks.json").read_text())
    ckpt = load(run / "out" / "checkpoint.pt")
    # The budget is the global one: 80 images in 10 steps of 8, not 160.
    assert (ckpt["images_seen"], ckpt["step"]) == (80, 10)
    assert metrics["images_seen"] == 80 and metrics["steps"] == 10 and metrics["finished"] == 1
    loss_curve = run / "live" / "plots" / "metrics" / "train" / "loss_d.tsv"
    assert len(loss_curve.read_text().split()) == 2 + 2 * 5  # one point per 16 global images
    # The checkpoint holds every rank's random stream.
    assert ckpt["rng"].shape[0] == 2 and not torch.equal(ckpt["rng"][0], ckpt["rng"][1])

    # Same checkpoint layout as a run alone (rng aside: one stream per rank).
    alone = tmp_path / "alone"
    params = write_params(alone, "train_masks", masks_params(tiny_shapes, alone))
    run_alone("train-masks", params)
    assert_same_layout(
        ckpt, load(alone / "out" / "checkpoint.pt"), ("model", "ema", "discriminator")
    )


# ---- train_images: OASIS (G/D, LabelMix, EMA with BN refresh, FID on rank 0) -------------------


def images_params(tiny_shapes: Path, run: Path) -> dict[str, Any]:
    return {
        "data": str(tiny_shapes),
        "out": str(run / "out"),
        "metrics": str(run / "metrics" / "train_images.json"),
        "live_dir": str(run / "live"),
        "g_ch": 4,
        "d_ch": 4,
        "spade_hidden": 8,
        "z_dim": 8,
        "batch_size": 4,  # 2 per rank: G's batch norm must see the global batch
        "total_images": 40,
        "log_every_images": 8,
        "checkpoint_every_images": 20,
        "bn_refresh_batches": 2,
        "fid_images": 4,
        "grid_rows": 2,
        "grid_seeds": 2,
        "ema_halflife_images": 20,
        "device": "cpu",
        "bf16": False,
    }


def test_train_images_under_torchrun(tiny_shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    params = write_params(run, "train_images", images_params(tiny_shapes, run))
    # Weights, EMA and every buffer (synchronised BN running stats, spectral-norm vectors) agree
    # on both ranks, or the run fails.
    stdout, stderr = torchrun("train-images", params)

    assert files(run / "metrics") == ["train_images.json"]
    assert files(run / "out") == [
        "checkpoint.pt", "grid.png", "samples/00000020.png", "samples/00000040.png",
    ]  # fmt: skip
    assert stderr.count("train_images: 40 images") == 1
    assert json.loads(stdout)["images_seen"] == 40  # stdout: rank 0's metrics JSON alone
    metrics = json.loads((run / "metrics" / "train_images.json").read_text())
    assert metrics["images_seen"] == 40 and metrics["fid"] > 0  # FID by rank 0
    ckpt = load(run / "out" / "checkpoint.pt")
    assert (ckpt["images_seen"], ckpt["step"]) == (40, 10)
    loss_curve = run / "live" / "plots" / "metrics" / "train" / "loss_g.tsv"
    assert len(loss_curve.read_text().split()) == 2 + 2 * 5  # one point per 8 global images

    alone = tmp_path / "alone"
    params = write_params(
        alone, "train_images", images_params(tiny_shapes, alone) | {"fid_images": 0}
    )
    run_alone("train-images", params)
    assert_same_layout(
        ckpt, load(alone / "out" / "checkpoint.pt"), ("model", "ema", "discriminator")
    )


# ---- train_segmenter: supervised smp model (SyncBN, sharded held-out score) --------------------


def segmenter_params(tiny_shapes: Path, run: Path) -> dict[str, Any]:
    return {
        "encoder_weights": None,
        "steps": 4,
        "batch_size": 6,
        "bf16": False,
        "device": "cpu",
        "checkpoint_every": 2,
        "eval_every": 2,
        "real_dir": str(tiny_shapes),
        "out": str(run / "out"),
        "metrics_dir": str(run / "metrics"),
        "live_dir": str(run / "live"),
    }


def test_train_segmenter_under_torchrun(tiny_shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    params = write_params(run, "train_segmenter", segmenter_params(tiny_shapes, run))
    # Parameters and batch-norm running stats agree (statistics over the global batch), or the
    # run fails.
    stdout, stderr = torchrun("train-segmenter", params)

    assert files(run / "metrics") == ["real-seed0.json"]
    assert files(run / "out") == ["real-seed0/model.pt"]
    assert stderr.count("held-out mIoU") == 1
    assert json.loads(stdout)["steps"] == 4
    metrics = json.loads((run / "metrics" / "real-seed0.json").read_text())
    assert metrics["real_seen"] == 24 and metrics["steps"] == 4  # 4 steps of 6, not 48
    assert 0 <= metrics["miou"] <= 1
    miou_curve = run / "live" / "real-seed0" / "plots" / "metrics" / "heldout" / "miou.tsv"
    assert len(miou_curve.read_text().split()) == 2 + 2 * 2  # step 2 (all ranks) and the end
    ckpt = load(run / "out" / "real-seed0" / "model.pt")
    assert ckpt["step"] == 4

    alone = tmp_path / "alone"
    params = write_params(alone, "train_segmenter", segmenter_params(tiny_shapes, alone))
    run_alone("train-segmenter", params)
    assert_same_layout(ckpt, load(alone / "out" / "real-seed0" / "model.pt"), ("model",))
