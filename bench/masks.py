"""Benchmark the mask generator: training images/s and sampling masks/s at 64x64 and 96x128,
and sampling FLOP/s as a fraction of a plain matmul's FLOP/s measured in the same run.

    python -m bench.masks [--quick] [--device cpu]

Training speed comes from the real `train_masks` loop (its `train_img_per_s`, which excludes
setup and evaluation) on procedural shapes data prepared at each size; widths are the
params.yaml defaults. Sampling runs `sample_masks` (fp32, the default) and the same in bf16.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import print_table, save
from models.semgan import count_flops_per_sample
from pipeline.device import bf16_supported, pick_device
from pipeline.prepare import PrepareConfig, prepare
from pipeline.sampling import GAN_CHECKPOINT, load_mask_generator, sample_masks_and_distance
from pipeline.train_masks import TrainMasksConfig, train_masks


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sampling_rate(g: torch.nn.Module, n: int, batch: int, bf16: bool) -> float:
    sample_masks_and_distance(g, batch, seed=0, batch_size=batch, bf16=bf16)  # warm-up
    t = time.perf_counter()
    sample_masks_and_distance(g, n, seed=1, batch_size=batch, bf16=bf16)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a few steps and samples (smoke run)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    args = ap.parse_args()
    device = pick_device(args.device)
    train_images = 128 if args.quick else 1000
    n_sample = 64 if args.quick else 512
    defaults = TrainMasksConfig()

    flops = {
        "fp32": matmul_flops(device, torch.float32),
        "bf16": matmul_flops(device, torch.bfloat16) if bf16_supported(device) else None,
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [(64, 64), (96, 128)]:
            tag = f"{size[0]}x{size[1]}"
            data = Path(tmp) / f"shapes{tag}"
            prepare(
                PrepareConfig(
                    dataset="shapes",
                    options={"n_train": 64, "n_val": 16, "seed": 0},
                    size=size,
                    workers=0,
                    out=str(data),
                    metrics=str(Path(tmp) / f"prepare{tag}.json"),
                ),
                progress=False,
            )
            for kind in ("semgan", "rgb"):
                out = Path(tmp) / f"{kind}{tag}"
                cfg = TrainMasksConfig(
                    kind=kind,
                    data=str(data),
                    out=str(out),
                    metrics=str(out / "m.json"),
                    live_dir=str(out / "live"),
                    total_images=train_images,
                    eval_samples=16,
                    checkpoint_every_images=0,  # only at the end
                    device=str(device),
                )
                m = train_masks(cfg, restart=True, progress=False)
                g = load_mask_generator(out / GAN_CHECKPOINT, device)
                f = count_flops_per_sample(g, torch.zeros(1, g.latent_dim, device=device))
                row = {
                    "size": tag,
                    "kind": kind,
                    "train_img_s": m["train_img_per_s"],
                    "G_gflop_per_mask": f / 1e9,
                }
                for prec in ("fp32", "bf16"):
                    if flops[prec] is None:
                        continue
                    rate = sampling_rate(g, n_sample, defaults.batch_size * 2, prec == "bf16")
                    row[f"sample_{prec}_masks_s"] = rate
                    row[f"sample_{prec}_flop_frac"] = rate * f / flops[prec]
                rows.append(row)
    print_table(rows)
    matmul = {k: (v / 1e9 if v else None) for k, v in flops.items()}
    print(f"matmul GFLOP/s: {matmul}")
    path = save(
        "masks",
        {
            "quick": args.quick,
            "device": str(device),
            "train_kimg": train_images / 1000,  # key kept: committed results use it
            "matmul_gflop_s": matmul,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    s = next(r for r in rows if r["size"] == "64x64" and r["kind"] == "semgan")
    print(
        f"summary: SemGAN 64x64 trains at {s['train_img_s']:.1f} img/s and samples at "
        f"{s['sample_fp32_masks_s']:.0f} masks/s (fp32) = {s['sample_fp32_flop_frac']:.1%} "
        "of matmul FLOP/s"
    )


if __name__ == "__main__":
    main()
