"""OASIS ablation in one command: LabelMix on/off x 3D noise on/off (or bf16 vs fp32 training).

Trains each variant with the same settings (params.yaml `train_images`, shorter by default) on a
prepared dataset and reports FID on the held-out split, diversity across seeds for the same mask
(mean MS-SSIM between two noise draws: 1.0 = identical, lower = more diverse), and, when a real-
trained segmenter is given, synth_miou_ratio (mIoU on synthesised held-out images / on real ones).

    python -m bench.oasis_ablation --data data/prepared [--images 6000] [--segmenter PATH]
    python -m bench.oasis_ablation --quick      # tiny budget: a smoke run, numbers meaningless
    python -m bench.oasis_ablation --set precision --name oasis_precision
                                                # bf16 vs fp32 training, 2 seeds each: is the
                                                # FID difference within seed-to-seed noise?
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import print_table, save
from pipeline.config import load_params, section
from pipeline.metrics.fid import fid as fid_score
from pipeline.sampling import GAN_CHECKPOINT, load_image_generator, synthesize
from pipeline.shards import load_class_table, load_split
from pipeline.train_images import TrainImagesConfig, train_images

VARIANTS = {
    "full (LabelMix + 3D noise)": {"labelmix_weight": 10.0, "z_dim": 64},
    "no LabelMix": {"labelmix_weight": 0.0, "z_dim": 64},
    "no 3D noise": {"labelmix_weight": 10.0, "z_dim": 0},
    "neither": {"labelmix_weight": 0.0, "z_dim": 0},
}
# bf16 autocast (where the CPU / GPU is fast at it) against fp32, two training seeds each, so the
# precision's effect on FID can be read against the seed-to-seed spread
PRECISION = {
    f"{'bf16' if bf16 else 'fp32'} seed {seed}": {"bf16": bf16, "seed": seed}
    for bf16 in (True, False)
    for seed in (0, 1)
}
SETS = {"ablation": VARIANTS, "precision": PRECISION}


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ms_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MS-SSIM (Wang et al. 2003) per image pair, uint8 [N, H, W, 3]; as many scales as fit."""
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double()
    g = _gaussian()
    win = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)  # depthwise 11x11 Gaussian
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scales = max(1, min(5, int(np.log2(min(a.shape[1:3]) / 11)) + 1))
    w = weights[:scales] / weights[:scales].sum()
    values = []
    for s in range(scales):
        mu_x, mu_y = F.conv2d(x, win, groups=3), F.conv2d(y, win, groups=3)
        sxx = F.conv2d(x * x, win, groups=3) - mu_x**2
        syy = F.conv2d(y * y, win, groups=3) - mu_y**2
        sxy = F.conv2d(x * y, win, groups=3) - mu_x * mu_y
        cs = ((2 * sxy + c2) / (sxx + syy + c2)).mean(dim=(1, 2, 3))
        if s == scales - 1:
            lum = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)).mean(dim=(1, 2, 3))
            values.append((lum * cs).clamp(min=0))
        else:
            values.append(cs.clamp(min=0))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.stack([v ** w[i] for i, v in enumerate(values)]).prod(0).numpy()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/prepared", help="prepared dataset")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--images", type=int, default=None, help="training images per variant")
    p.add_argument("--segmenter", default=None, help="real-trained segmenter for synth_miou_ratio")
    p.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    p.add_argument("--set", default="ablation", choices=list(SETS), help="which variants to train")
    p.add_argument("--name", default="oasis_ablation", help="result file name")
    args = p.parse_args()

    base = section(load_params(args.params), "train_images", TrainImagesConfig)
    images = args.images or (64 if args.quick else base.total_images)
    base = dataclasses.replace(
        base,
        total_images=images,
        checkpoint_every_images=0,
        fid_images=32 if args.quick else base.fid_images,
        bn_refresh_batches=2 if args.quick else base.bn_refresh_batches,
    )
    val_images, val_masks, _ = load_split(args.data, "val")
    table = load_class_table(args.data)
    n_div = min(len(val_masks), 16 if args.quick else 64)

    seg = None
    if args.segmenter:
        from pipeline.metrics.segmentation import confusion_matrix, mean_iou
        from pipeline.predict import load_segmenter, predict

        seg = load_segmenter(args.segmenter)

        def miou(imgs: np.ndarray) -> float:
            cm = confusion_matrix(
                predict(seg, imgs), val_masks, table.num_classes, table.ignore_index
            )
            return mean_iou(cm)

        miou_real = miou(val_images)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, change in SETS[args.set].items():
            cfg = dataclasses.replace(base, **change)
            out = Path(tmp) / name.replace(" ", "_")
            m = train_images(
                cfg,
                args.data,
                out,
                progress=True,
                metrics_path=out / "m.json",
                live_dir=out / "live",
            )
            g = load_image_generator(out / GAN_CHECKPOINT)
            bf16 = cfg.bf16  # synthesis in the precision the variant trained in
            pair = synthesize(g, val_masks[:n_div], seed=1, n_per_mask=2, bf16=bf16)
            row = {
                "variant": name,
                "fid": m.get("fid", float("nan")),
                "ms_ssim_between_seeds": float(ms_ssim(pair[:, 0], pair[:, 1]).mean()),
                "train_img_s": m["train_images_per_s"],
            }
            if seg is not None:
                fake = synthesize(g, val_masks, seed=0, bf16=bf16)[:, 0]
                row["synth_miou_ratio"] = miou(fake) / miou_real
            if args.set == "precision":
                # the same weights synthesising in each precision: isolates inference numerics
                # from training (the training comparison above also carries seed noise)
                n = min(cfg.fid_images, len(val_images))
                for tag, b in (("bf16", True), ("fp32", False)):
                    fake = synthesize(g, val_masks[:n], seed=cfg.seed, batch_size=32, bf16=b)
                    row[f"fid_synth_{tag}"] = fid_score(val_images[:n], fake[:, 0])
            rows.append(row)
            print_table([row])
    print()
    print_table(rows)
    path = save(
        args.name,
        {
            "rows": rows,
            "set": args.set,
            "data": args.data,
            "total_images": images,
            "quick": args.quick,
        },
    )
    print(f"wrote {path}")
    if args.set == "precision":
        by = {k: [r for r in rows if r["variant"].startswith(k)] for k in ("bf16", "fp32")}
        fid = {k: [r["fid"] for r in v] for k, v in by.items()}
        speed = {k: float(np.mean([r["train_img_s"] for r in v])) for k, v in by.items()}
        spread = max(abs(v[0] - v[1]) for v in fid.values())
        gap = abs(float(np.mean(fid["bf16"])) - float(np.mean(fid["fp32"])))
        synth_gap = max(abs(r["fid_synth_bf16"] - r["fid_synth_fp32"]) for r in rows)
        print(
            f"FID bf16 {np.mean(fid['bf16']):.1f} vs fp32 {np.mean(fid['fp32']):.1f} (gap {gap:.1f}; "
            f"seed-to-seed spread up to {spread:.1f}); same weights synthesising in bf16 vs fp32: "
            f"FID differs by at most {synth_gap:.2f}; training {speed['bf16'] / speed['fp32']:.2f}x "
            "fp32's img/s"
        )
        return
    full, no_noise = rows[0], rows[2]
    print(
        f"FID full {full['fid']:.1f} vs no LabelMix {rows[1]['fid']:.1f}; MS-SSIM between seeds "
        f"{full['ms_ssim_between_seeds']:.3f} with 3D noise vs {no_noise['ms_ssim_between_seeds']:.3f} without"
    )


if __name__ == "__main__":
    main()
