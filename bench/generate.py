"""Benchmark `generate` and `export` on CPU: is the I/O hidden behind the models?

    python -m bench.generate [--quick] [--mask-checkpoint P --image-checkpoint P]

Rows, each in a fresh process (so its peak RSS is its own):
- model only: sample_masks + synthesize for N pairs, nothing else (the ceiling);
- end to end: `generate` for the same N (masks + filters + synthesis + PNG + shard writes);
  the key figure is its pairs/s as a ratio to the model-only pairs/s (aim >= 0.8);
- masks only: sample_masks alone, masks/s;
- memory: `generate` with narrow models at 32x32 (so that N = 20k fits a CPU run) for N = 1k
  and N = 20k: peak RSS must not grow with N;
- export: seconds for the 1k-pair dataset per format.

Without checkpoints given, untrained networks with the stages' default architectures stand in:
the same compute as trained ones. Filters are computed but set to keep everything, so every
row processes exactly N masks.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.common import PEAK_RSS, print_table, run_child, save

THREADS = "import torch; torch.set_num_threads({threads})\n"

GEN_CHILD = (
    PEAK_RSS
    + THREADS
    + """
import json, time
from pipeline.config import build
from pipeline.device import pick_device
from pipeline.generate import GenerateConfig, _model, checkpoint_hashes, generate, synthesize_images
from pipeline.sampling import sample_masks
cfg = build(GenerateConfig, json.loads({cfg!r}), "generate")
# warm-up on the cached models (oneDNN picks kernels on first use), as the model-only row does
dev = pick_device(cfg.device)
h = checkpoint_hashes(cfg)
mg = _model("mask", cfg.mask_checkpoint, h["mask"], dev)
ig = _model("image", cfg.image_checkpoint, h["image"], dev)
synthesize_images(ig, sample_masks(mg, cfg.image_batch_size, 999, cfg.mask_batch_size), cfg, 0)
t = time.perf_counter()
m = generate(cfg, progress=False)
dt = time.perf_counter() - t
main, _ = peak_rss_mib()
print(json.dumps({{"pairs": m["samples"], "seconds": dt, "pairs_per_s": m["samples"] / dt,
                  "rss_main_mib": main}}))
"""
)

MODEL_CHILD = (
    PEAK_RSS
    + THREADS
    + """
import json, time
from pipeline.config import build
from pipeline.device import pick_device
from pipeline.generate import GenerateConfig, _model, checkpoint_hashes, synthesize_images
from pipeline.sampling import sample_masks
cfg = build(GenerateConfig, json.loads({cfg!r}), "generate")
dev = pick_device(cfg.device)
h = checkpoint_hashes(cfg)
mg = _model("mask", cfg.mask_checkpoint, h["mask"], dev)
ig = _model("image", cfg.image_checkpoint, h["image"], dev)
synthesize_images(ig, sample_masks(mg, cfg.image_batch_size, 999, cfg.mask_batch_size), cfg, 0)
n, bs = cfg.n_samples, cfg.mask_batch_size
t_masks = t_images = 0.0
for start in range(0, n, bs):
    t = time.perf_counter()
    masks = sample_masks(mg, min(bs, n - start), cfg.seed, bs, start)
    t_masks += time.perf_counter() - t
    t = time.perf_counter()
    synthesize_images(ig, masks, cfg, start)
    t_images += time.perf_counter() - t
main, _ = peak_rss_mib()
print(json.dumps({{"pairs": n * cfg.images_per_mask, "seconds": t_masks + t_images,
                  "pairs_per_s": n * cfg.images_per_mask / (t_masks + t_images),
                  "masks_per_s": n / t_masks, "rss_main_mib": main}}))
"""
)

EXPORT_CHILD = """
import json, time
from pathlib import Path
from pipeline.export import ExportConfig, export
args = json.loads({args!r})
cfg = ExportConfig(formats=(args["format"],), workers=args["workers"], metrics=args["metrics"])
t = time.perf_counter()
m = export(cfg, Path(args["data"]), Path(args["out"]), progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "samples": sum(v for k, v in m.items() if k.endswith("_samples"))}}))
"""


def make_checkpoints(folder: Path, data: Path, narrow: bool) -> tuple[str, str]:
    """Untrained generators with the training stages' default (or narrow) architectures."""
    import torch

    from models.oasis import OASISGenerator, preset_widths
    from pipeline.checkpoint import save_checkpoint
    from pipeline.sampling import build_mask_generator
    from pipeline.shards import iter_split, load_class_table
    from pipeline.train_images import TrainImagesConfig
    from pipeline.train_masks import TrainMasksConfig

    table = load_class_table(data)
    h, w = next(iter_split(data, "train")).mask.shape
    torch.manual_seed(0)
    mcfg = TrainMasksConfig()
    arch = dict(
        kind="semgan", num_classes=table.num_classes, height=h, width=w,
        latent_dim=16 if narrow else mcfg.latent_dim, g_channels=32 if narrow else mcfg.g_channels,
        colors=table.colors.tolist(),
    )  # fmt: skip
    sd = build_mask_generator(arch).state_dict()
    masks = folder / ("masks_narrow.pt" if narrow else "masks.pt")
    save_checkpoint(
        masks, {"model": sd, "ema": sd, "step": 0, "images_seen": 0, "arch": arch, "config": {}}
    )
    images = folder / ("images_narrow.pt" if narrow else "images.pt")
    icfg = TrainImagesConfig()
    g_ch, hidden, z = (2, 8, 8) if narrow else (icfg.g_ch, icfg.spade_hidden, icfg.z_dim)
    widths, _ = preset_widths(icfg.preset, g_ch, icfg.d_ch)
    g = OASISGenerator(table.num_classes, h, w, widths, z, hidden, icfg.spatial_noise)
    sd = g.state_dict()
    save_checkpoint(
        images,
        {"model": sd, "ema": sd, "step": 0, "images_seen": 0, "arch": g.arch(), "config": {},
         "ignore_index": table.ignore_index},
    )  # fmt: skip
    return str(masks), str(images)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small N, for a smoke run")
    ap.add_argument("--mask-checkpoint", help="a trained train_masks checkpoint")
    ap.add_argument("--image-checkpoint", help="a trained train_images checkpoint")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--workers", type=int, default=2, help="PNG threads / export processes")
    args = ap.parse_args()
    n_main = 200 if args.quick else 1000
    n_mem = (300, 3000) if args.quick else (1000, 20000)

    from pipeline.prepare import PrepareConfig, prepare

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, size in (("prepared", 64), ("small", 32)):
            prepare(
                PrepareConfig(
                    options={"n_train": 200, "n_val": 20}, size=(size, size), workers=0,
                    out=str(tmp / name), metrics=str(tmp / f"{name}.json"),
                ),
                progress=False,
            )  # fmt: skip
        data = tmp / "prepared"
        if args.mask_checkpoint and args.image_checkpoint:
            full = (args.mask_checkpoint, args.image_checkpoint)
        else:
            full = make_checkpoints(tmp, data, narrow=False)
        narrow = make_checkpoints(tmp, tmp / "small", narrow=True)
        off = {"max_spurious_rate": 1.0, "min_classes": 1, "max_hist_distance": 1.0}

        def cfg(n: int, ckpts: tuple[str, str], out: str) -> dict:
            d = tmp / "small" if ckpts is narrow else data
            return {
                "n_samples": n, "images_per_mask": 1, "masks_per_shard": 200,
                "data": str(d), "mask_checkpoint": ckpts[0], "image_checkpoint": ckpts[1],
                "out": str(tmp / out), "metrics": str(tmp / f"{out}.json"), "filters": off,
                "device": "cpu", "workers": args.workers,
            }  # fmt: skip

        def child(code: str, c: dict) -> dict:
            return run_child(code.format(cfg=json.dumps(c), threads=args.threads))

        # model only before and after the end-to-end run: their mean brackets load drift
        before = child(MODEL_CHILD, cfg(n_main, full, "model"))
        e2e = child(GEN_CHILD, cfg(n_main, full, "e2e"))
        after = child(MODEL_CHILD, cfg(n_main, full, "model"))
        model = {k: (before[k] + after[k]) / 2 for k in before}
        ratio = e2e["pairs_per_s"] / model["pairs_per_s"]
        rows.append({"case": f"model only (before), N={n_main}", **before})
        rows.append({"case": f"end to end, N={n_main}", **e2e, "ratio_to_model": ratio})
        rows.append({"case": f"model only (after), N={n_main}", **after})
        mem = [child(GEN_CHILD, cfg(n, narrow, f"mem{n}")) for n in n_mem]
        for n, r in zip(n_mem, mem, strict=True):
            rows.append({"case": f"narrow models 32x32 end to end, N={n}", **r})
        for fmt in ("coco", "coco-panoptic", "cityscapes"):
            ex = {
                "format": fmt, "workers": args.workers, "data": str(tmp / "e2e"),
                "out": str(tmp / "export"), "metrics": str(tmp / "export.json"),
            }  # fmt: skip
            r = run_child(EXPORT_CHILD.format(args=json.dumps(ex)))
            rows.append({"case": f"export {fmt}, {int(r['samples'])} pairs", **r})

    rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print()
    print_table(rows)
    rss_growth = mem[1]["rss_main_mib"] / mem[0]["rss_main_mib"]
    save(
        "generate",
        {
            "rows": rows,
            "pairs_per_s_ratio_to_model": ratio,
            "masks_per_s": model["masks_per_s"],
            "rss_ratio_large_to_small_n": rss_growth,
            "threads": args.threads,
            "workers": args.workers,
        },
    )
    print(
        f"\nend-to-end / model-only throughput = {ratio:.2f} "
        f"({e2e['pairs_per_s']:.1f} vs {model['pairs_per_s']:.1f} pairs/s); masks only "
        f"{model['masks_per_s']:.0f} masks/s; peak RSS N={n_mem[1]} / N={n_mem[0]} = {rss_growth:.2f}"
    )


if __name__ == "__main__":
    main()
