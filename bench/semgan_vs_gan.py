"""SemGAN vs the "standard GAN" RGB baseline (Azadi et al. 2019, table 1), rerun here.

    python -m bench.semgan_vs_gan [--quick] [--images N] [--datasets shapes camvid96]

Both models get the same backbone widths and the same budget (N real maps shown to D); each
is scored on EMA samples against the held-out real masks: SWD (x1e3, Laplacian pyramid of the
colourised maps), MS-SSIM between sample pairs (lower = more diverse; the real data's own value
beside it), class-histogram JS divergence, class-presence error, spurious-pixel rate (pixels in
4-connected components below `min_component`), off-palette rate (baseline only) and FID of the
colourised maps. On `shapes` the SemGAN shortcut counters are compared as well: none, R1,
straight-through Gumbel-softmax, noise on the one-hot reals.

Datasets: `shapes` = data/prepared if it holds 64x64 shapes, else prepared here; `camvid96` =
data/camvid96 (see README: prepare CamVid at 96x128) if present, else skipped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import print_table, save
from pipeline.prepare import PrepareConfig, prepare
from pipeline.shards import load_class_table
from pipeline.train_masks import TrainMasksConfig, train_masks

REPO = Path(__file__).resolve().parents[1]

# (model label, TrainMasksConfig overrides). "semgan" is the shipped params.yaml setting:
# R1 plus straight-through Gumbel-softmax fakes; the counters are each tried alone.
MAIN = [("semgan", {"kind": "semgan", "gumbel": True}), ("rgb baseline", {"kind": "rgb"})]
COUNTERS = [
    ("semgan, R1 only", {"kind": "semgan"}),
    ("semgan, no counter", {"kind": "semgan", "r1_gamma": 0.0}),
    ("semgan, gumbel-ST", {"kind": "semgan", "r1_gamma": 0.0, "gumbel": True}),
    ("semgan, noisy reals", {"kind": "semgan", "r1_gamma": 0.0, "real_noise": 0.1}),
]
COLUMNS = [
    "swd",
    "ms_ssim",
    "ms_ssim_real",
    "class_js",
    "presence_error",
    "spurious_rate",
    "spurious_rate_real",
    "off_palette_rate",
    "fid",
    "train_img_per_s",
]


def shapes_data(tmp: Path) -> Path:
    default = REPO / "data" / "prepared"
    stats = default / "stats.json"
    if stats.is_file() and "disc" in load_class_table(default).names:
        h = json.loads((REPO / "metrics" / "prepare.json").read_text()).get("height")
        if h in (None, 64, 64.0):
            return default
    out = tmp / "shapes"
    prepare(PrepareConfig(dataset="shapes", out=str(out), metrics=str(tmp / "p.json")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny budget: a smoke run, not results")
    ap.add_argument(
        "--images", type=int, default=None, help="budget per model, in real maps (default 8000)"
    )
    ap.add_argument("--datasets", nargs="+", default=["shapes", "camvid96"])
    ap.add_argument("--no-counters", action="store_true", help="skip the shortcut-counter runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default="semgan_vs_gan", help="bench/results/NAME.json")
    args = ap.parse_args()
    images = args.images or (256 if args.quick else 8000)
    eval_samples = 64 if args.quick else 256

    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name in args.datasets:
            if name == "shapes":
                data = shapes_data(tmp)
            elif (REPO / "data" / name / "classes.json").is_file():
                data = REPO / "data" / name
            else:
                print(f"skipping {name}: data/{name} is not prepared (see the README)")
                continue
            runs = MAIN + (COUNTERS if name == "shapes" and not args.no_counters else [])
            for label, over in runs:
                out = tmp / f"{name}-{label}".replace(" ", "_").replace(",", "")
                cfg = TrainMasksConfig(
                    data=str(data),
                    out=str(out),
                    metrics=str(out / "m.json"),
                    live_dir=str(out / "live"),
                    total_images=images,
                    eval_samples=eval_samples,
                    eval_fid=True,
                    checkpoint_every_images=0,  # only at the end
                    device=args.device,
                    **over,
                )
                t = time.perf_counter()
                m = train_masks(cfg, restart=True, progress=True)
                row = {"dataset": name, "model": label}
                row.update({k: m[k] for k in COLUMNS if k in m})
                row["minutes"] = (time.perf_counter() - t) / 60
                rows.append(row)
                print_table([row])
    print_table(rows)
    path = save(
        args.name,
        {"quick": args.quick, "kimg": images / 1000, "eval_samples": eval_samples, "rows": rows},
    )
    print(f"wrote {path}")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        s = next((r for r in rows if r["dataset"] == name and r["model"] == "semgan"), None)
        b = next((r for r in rows if r["dataset"] == name and r["model"] == "rgb baseline"), None)
        if s and b:
            print(
                f"summary {name}: spurious-pixel rate SemGAN {s['spurious_rate']:.4f} vs "
                f"baseline {b['spurious_rate']:.4f} (real {s['spurious_rate_real']:.4f}); "
                f"FID {s.get('fid', float('nan')):.1f} vs {b.get('fid', float('nan')):.1f}"
            )


if __name__ == "__main__":
    main()
