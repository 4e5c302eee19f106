"""OASIS variants trained on one budget and scored on the held-out split (issue #17's table).

Each variant is a dict of `train_images` overrides on the base params (`--params`, section
`train_images`, plus `--base KEY=VALUE`). Every variant gets the same budget: `--images N` real
images each, or `--minutes M` of training on THIS machine (a short throughput probe per variant
first, then M minutes' worth of its images: a cheaper discriminator buys more images). Per row:
FID and KID (Inception on the held-out split; the real features are computed once per run) of the
EMA generator and of the raw one (`fid_raw`, `kid_raw`: the checkpoint holds both), diversity
across seeds for the same mask (`ms_ssim_seeds`, mean MS-SSIM between two noise draws: 1.0 =
identical, lower = more diverse), with `--segmenter` synth_miou_ratio (mIoU on synthesised held-out
images / on the real ones), the images and minutes trained, img/s, and the share of the CPU other
processes took (`other_cpu`). KID is MMD^2 as is (papers often print x 1000); its subsets hold
min(1000, held-out images) samples, so with CamVid's 101 held-out frames every subset is the whole
split and `kid_std` is 0.

Sets (`--set`, `--list` prints one): `ablation` (LabelMix x 3D noise), `precision` (bf16 vs fp32,
2 seeds each), `d17` (issue #17: discriminator, DiffAugment, G upsampling, EMA). `--variants`
picks rows by name or number; the JSON (bench/results/NAME.json, `--name`) is written after every
row, and `--append` merges the new rows into it (a row of the same name is replaced), so a long
comparison can run a few rows per session.

    python -m bench.oasis_ablation --data data/prepared [--images 6000] [--segmenter PATH]
    python -m bench.oasis_ablation --quick      # tiny budget: a smoke run, numbers meaningless
    python -m bench.oasis_ablation --set precision --name oasis_precision
                                                # bf16 vs fp32 training, 2 seeds each: is the
                                                # FID difference within seed-to-seed noise?
    python -m bench.oasis_ablation --set d17 --list
    python -m bench.oasis_ablation --data data/camvid96 --params docs/params_camvid96.yaml \\
        --set d17 --minutes 24 --segmenter data/seg_camvid96/real-seed0 --name images_camvid96 \\
        --variants 'oasis D,pretrained D frozen' --append        # ~25 min per CamVid row
    python -m bench.oasis_ablation --data data/camvid192 --minutes 5 --name gpu_images \\
        --with discriminator=pretrained --with diffaug=true       # one ad-hoc variant
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from bench.common import OtherLoad, previous_rows, print_table, save
from models.oasis import OASISGenerator
from pipeline.checkpoint import load_checkpoint
from pipeline.config import build, load_params, section, to_dict
from pipeline.device import pick_device
from pipeline.errors import ConfigError
from pipeline.metrics.fid import fid_kid_from_features, frechet_distance, inception_features
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
# Issue #17. "oasis D" is the OASIS-faithful settings (EMA half-life 2000 images, ramp-up 0.1);
# the EMA rows change only the EMA of that row. Every row names D, DiffAugment and G's upsampling,
# so a row means the same on any base params (docs/params_camvid96.yaml ships the pretrained D
# with DiffAugment and bilinear G). `ema_halflife_share` is a bench key: the half-life becomes
# that share of the variant's total images once the budget is known (with the ramp-up kept, the
# half-life is then 10% of the images seen all along, never capped at 2000).
_OASIS = {"discriminator": "oasis", "diffaug": False, "g_upsample": "nearest"}
_PRE = {**_OASIS, "discriminator": "pretrained", "d_encoder": "frozen"}
D17 = {
    "oasis D": _OASIS,
    "oasis D + diffaug": {**_OASIS, "diffaug": True},
    "pretrained D frozen": _PRE,
    "pretrained D finetune": {**_PRE, "d_encoder": "finetune"},
    "pretrained D frozen + diffaug": {**_PRE, "diffaug": True},
    "pretrained D frozen + diffaug + bilinear G": {
        **_PRE,
        "diffaug": True,
        "g_upsample": "bilinear",
    },
    "oasis D + bilinear G": {**_OASIS, "g_upsample": "bilinear"},
    "oasis D, EMA ramp-up 0.05": {**_OASIS, "ema_rampup": 0.05},
    "oasis D, EMA half-life 10% of budget": {**_OASIS, "ema_halflife_share": 0.1},
}
SETS = {"ablation": VARIANTS, "precision": PRECISION, "d17": D17}
BENCH_KEYS = ("ema_halflife_share",)  # variant keys the bench resolves, not TrainImagesConfig's
KID_SUBSETS = 100


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


# -----------------------------------------------------------------------------------------------
# variants and budgets


def variant_config(
    base: TrainImagesConfig, change: dict[str, Any], total_images: int
) -> TrainImagesConfig:
    """`base` with a variant's overrides and its budget, checked as strictly as params.yaml
    (an unknown key or a wrong type is an error naming it); bench keys resolved."""
    change = dict(change)
    share = change.pop("ema_halflife_share", None)
    if share is not None:
        change["ema_halflife_images"] = max(1, round(share * total_images))
    return build(
        TrainImagesConfig, {**to_dict(base), **change, "total_images": total_images}, "train_images"
    )


def select(variants: dict[str, dict], spec: str | None) -> dict[str, dict]:
    """The variants named in `spec` ("name,name" or 1-based numbers "1,3"); all when None."""
    if not spec:
        return variants
    names, out = list(variants), {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name = names[int(item) - 1] if item.isdigit() and 0 < int(item) <= len(names) else item
        if name not in variants:
            valid = "; ".join(f"{i}: {n}" for i, n in enumerate(names, 1))
            raise SystemExit(f"--variants: no variant {item!r} in this set; valid: {valid}")
        out[name] = variants[name]
    return out


def run_stage(cfg: TrainImagesConfig, data: str, out: Path, progress: bool) -> dict[str, float]:
    """train_images into `out` from scratch, metrics and curves kept inside `out`."""
    return train_images(cfg, data, out, progress, out / "metrics.json", out / "live", restart=True)


def probe_rate(cfg: TrainImagesConfig, data: str, out: Path, steps: int, warmup: int) -> float:
    """Training images/s of `cfg` on this machine: `warmup` steps from scratch, then `steps`
    more resumed from them (train_images times only the resumed part, so start-up and the first
    slow steps stay out of the rate)."""
    quiet = dataclasses.replace(
        cfg,
        fid_images=0,
        bn_refresh_batches=0,
        grid_rows=1,
        grid_seeds=1,
        checkpoint_every_images=0,
        total_images=warmup * cfg.batch_size,
    )
    run_stage(quiet, data, out, progress=False)
    total = (warmup + steps) * cfg.batch_size
    more = dataclasses.replace(quiet, total_images=total)
    m = train_images(more, data, out, False, out / "metrics.json", out / "live")
    return float(m["train_images_per_s"])


def images_for(minutes: float, rate: float, batch: int) -> int:
    """Images that `minutes` of training at `rate` img/s buys, in whole batches (>= 1)."""
    return max(1, round(minutes * 60 * rate / batch)) * batch


# -----------------------------------------------------------------------------------------------
# evaluation


@dataclasses.dataclass
class HeldOut:
    """The held-out split every variant is scored on, with what costs the most computed once per
    bench run: Inception features of the real images, the segmenter's mIoU on them."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    masks: np.ndarray  # uint8 [N, H, W]
    real_features: np.ndarray  # Inception pool3 [n_fid, 2048] of images[:n_fid]
    n_div: int  # masks for the diversity score
    device: torch.device
    miou: Callable[[np.ndarray], float] | None = None  # images[:N] → mIoU against masks
    miou_real: float = float("nan")


def held_out(
    data: str, n_fid: int, n_div: int, device: torch.device, segmenter: str | None
) -> HeldOut:
    images, masks, _ = load_split(data, "val")
    real = inception_features(images[: min(n_fid, len(images))], device=device, progress=True)
    ev = HeldOut(images, masks, real, min(n_div, len(masks)), device)
    if segmenter:
        ev.miou = segmenter_miou(segmenter, data, masks, device)
        ev.miou_real = ev.miou(images)
    return ev


def segmenter_miou(
    path: str | Path, data: str, masks: np.ndarray, device: torch.device
) -> Callable[[np.ndarray], float]:
    """mIoU of a real-trained segmenter (its run folder or model.pt) on images of `masks`."""
    from pipeline.metrics.segmentation import confusion_matrix, mean_iou
    from pipeline.predict import load_segmenter, predict

    path = Path(path)
    seg = load_segmenter(path / "model.pt" if path.is_dir() else path, device)
    table = load_class_table(data)

    def miou(images: np.ndarray) -> float:
        pred = predict(seg, images)
        return mean_iou(confusion_matrix(pred, masks, table.num_classes, table.ignore_index))

    return miou


def load_generators(path: Path, device: torch.device) -> dict[str, OASISGenerator]:
    """The EMA generator of a train_images checkpoint ("") and the raw G it averages ("_raw").
    The raw G samples with the BN statistics it kept while training; the EMA's were
    re-estimated for its own weights at the end of the run."""
    ema = load_image_generator(path, device)
    raw = copy.deepcopy(ema)
    raw.load_state_dict(load_checkpoint(path, device)["model"])
    return {"": ema, "_raw": raw}


def fake_features(g: OASISGenerator, ev: HeldOut, seed: int, bf16: bool) -> np.ndarray:
    n = len(ev.real_features)
    fake = synthesize(g, ev.masks[:n], seed=seed, batch_size=32, bf16=bf16)[:, 0]
    return inception_features(fake, device=ev.device)


def evaluate(path: Path, ev: HeldOut, *, seed: int, bf16: bool) -> dict[str, float]:
    """Scores of a finished train_images checkpoint on the held-out split: FID, KID (mean and
    std over subsets) of the EMA and the raw generator, MS-SSIM between two noise seeds for the
    same masks, and synth_miou_ratio when `ev` has a segmenter. Synthesis in the precision the
    variant trained in."""
    gens, row = load_generators(path, ev.device), {}
    for suffix, g in gens.items():
        s = fid_kid_from_features(
            ev.real_features, fake_features(g, ev, seed, bf16), subsets=KID_SUBSETS
        )
        row[f"fid{suffix}"], row[f"kid{suffix}"] = round(s["fid"], 4), round(s["kid"], 6)
        if not suffix:
            row["kid_std"] = round(s["kid_std"], 6)
    ema = gens[""]
    if ev.miou is not None:
        fake = synthesize(ema, ev.masks, seed=0, bf16=bf16)[:, 0]
        row["synth_miou_ratio"] = round(ev.miou(fake) / ev.miou_real, 4)
    pair = synthesize(ema, ev.masks[: ev.n_div], seed=1, n_per_mask=2, bf16=bf16)
    row["ms_ssim_seeds"] = round(float(ms_ssim(pair[:, 0], pair[:, 1]).mean()), 4)
    return row


def precision_fids(path: Path, ev: HeldOut, seed: int) -> dict[str, float]:
    """The same EMA weights synthesising in bf16 and in fp32: isolates inference numerics from
    training (the training comparison also carries seed noise)."""
    g = load_image_generator(path, ev.device)
    return {
        f"fid_synth_{tag}": round(
            frechet_distance(ev.real_features, fake_features(g, ev, seed, b)), 4
        )
        for tag, b in (("bf16", True), ("fp32", False))
    }


# -----------------------------------------------------------------------------------------------
# one row


def d_label(cfg: TrainImagesConfig) -> str:
    kind = getattr(cfg, "discriminator", "oasis")  # configs from before issue #17: oasis only
    return f"{kind} ({cfg.d_encoder})" if kind == "pretrained" else kind


def run_variant(
    name: str,
    change: dict[str, Any],
    base: TrainImagesConfig,
    args: argparse.Namespace,
    out: Path,
    ev: HeldOut,
) -> dict[str, Any]:
    """Probe (with --minutes), train from scratch in `out`, evaluate: one result row."""
    t0, other = time.perf_counter(), OtherLoad()
    probe, total = None, base.total_images
    if args.minutes:
        cfg = variant_config(base, change, total)
        probe = probe_rate(cfg, args.data, out / "probe", args.probe_steps, args.probe_warmup)
        shutil.rmtree(out / "probe")
        total = images_for(args.minutes, probe, cfg.batch_size)
        print(f"{name}: probe {probe:.2f} img/s → {total} images for {args.minutes} min")
    cfg = variant_config(base, change, total)
    m = run_stage(cfg, args.data, out / "run", progress=True)
    other_cpu = other.share()  # probe + training: the contention that img/s saw
    seen, rate = int(m["images_seen"]), float(m["train_images_per_s"])
    ckpt = out / "run" / GAN_CHECKPOINT
    row: dict[str, Any] = {
        "variant": name,
        "discriminator": d_label(cfg),
        "train_minutes_planned": args.minutes,
        "train_minutes": round(seen / max(rate, 1e-9) / 60, 2),  # the training loop's wall
        "images_seen": seen,
        **evaluate(ckpt, ev, seed=cfg.seed, bf16=cfg.bf16),
        "train_img_s": rate,
        "probe_img_s": probe,
        "other_cpu": other_cpu,
    }
    if args.set == "precision" and not args.with_:
        row.update(precision_fids(ckpt, ev, cfg.seed))
    row["wall_minutes"] = round((time.perf_counter() - t0) / 60, 2)  # probe + train + eval
    row["overrides"] = change
    return row


# -----------------------------------------------------------------------------------------------
# results and summary


def merge(rows: list[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, Any]]:
    """`rows` with `row` in place of the row of the same variant, else appended."""
    names = [r["variant"] for r in rows]
    if row["variant"] in names:
        return [row if n == row["variant"] else r for n, r in zip(names, rows, strict=True)]
    return [*rows, row]


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The table without the overrides (the variant names stand for them); every column any row
    has (rows appended from other runs may differ)."""
    cols = list(dict.fromkeys(c for r in rows for c in r if c != "overrides"))
    print_table([{c: r.get(c, "") for c in cols} for r in rows])


def summary(rows: list[dict[str, Any]], set_name: str) -> str:
    by = {r["variant"]: r for r in rows}
    if set_name == "precision" and all(k in by for k in PRECISION):
        return precision_summary([by[k] for k in PRECISION])
    if set_name == "ablation" and all(k in by for k in VARIANTS):
        full, no_lm, no_noise = (by[k] for k in list(VARIANTS)[:3])
        div = lambda r: r.get("ms_ssim_seeds", r.get("ms_ssim_between_seeds"))  # noqa: E731  old name
        return (
            f"FID full {full['fid']:.1f} vs no LabelMix {no_lm['fid']:.1f}; MS-SSIM between "
            f"seeds {div(full):.3f} with 3D noise vs {div(no_noise):.3f} without"
        )
    best, first = min(rows, key=lambda r: r["fid"]), rows[0]
    get = lambda r, k: float(r.get(k, float("nan")))  # noqa: E731  rows from older runs
    return (
        f"best FID {best['fid']:.1f} ({best['variant']}: KID {1000 * get(best, 'kid'):.2f}e-3, "
        f"raw G FID {get(best, 'fid_raw'):.1f}, {get(best, 'images_seen'):.0f} images) vs "
        f"{first['fid']:.1f} ({first['variant']}) over {len(rows)} variants"
    )


def precision_summary(rows: list[dict[str, Any]]) -> str:
    by = {k: [r for r in rows if r["variant"].startswith(k)] for k in ("bf16", "fp32")}
    fid = {k: [r["fid"] for r in v] for k, v in by.items()}
    speed = {k: float(np.mean([r["train_img_s"] for r in v])) for k, v in by.items()}
    spread = max(abs(v[0] - v[1]) for v in fid.values())
    gap = abs(float(np.mean(fid["bf16"])) - float(np.mean(fid["fp32"])))
    synth_gap = max(abs(r["fid_synth_bf16"] - r["fid_synth_fp32"]) for r in rows)
    return (
        f"FID bf16 {np.mean(fid['bf16']):.1f} vs fp32 {np.mean(fid['fp32']):.1f} (gap {gap:.1f}; "
        f"seed-to-seed spread up to {spread:.1f}); same weights synthesising in bf16 vs fp32: "
        f"FID differs by at most {synth_gap:.2f}; training {speed['bf16'] / speed['fp32']:.2f}x "
        "fp32's img/s"
    )


# -----------------------------------------------------------------------------------------------
# command line


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/prepared", help="prepared dataset")
    p.add_argument("--params", default="params.yaml", help="base params (section train_images)")
    p.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="train_images override for every variant (YAML value); repeatable",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--images", type=int, default=None, help="training images per variant")
    budget.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training minutes per variant on this machine (probe, then images)",
    )
    p.add_argument("--probe-steps", type=int, default=None, help="timed probe steps (10)")
    p.add_argument("--probe-warmup", type=int, default=None, help="untimed steps first (2)")
    p.add_argument(
        "--segmenter", default=None, help="real-trained segmenter (run folder or model.pt)"
    )
    p.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    p.add_argument("--set", default="ablation", choices=list(SETS), help="which variants")
    p.add_argument("--variants", default=None, help="names or 1-based numbers, comma-separated")
    p.add_argument(
        "--with",
        dest="with_",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="train one ad-hoc variant with these overrides instead of a set",
    )
    p.add_argument("--label", default=None, help="row name of the --with variant")
    p.add_argument("--list", action="store_true", help="print the set's variants and exit")
    p.add_argument(
        "--name", "--out", dest="name", default="oasis_ablation", help="bench/results/NAME.json"
    )
    p.add_argument("--append", action="store_true", help="merge rows into an existing NAME.json")
    p.add_argument("--keep", default=None, help="train in KEEP/VARIANT (checkpoints, grids kept)")
    args = p.parse_args()
    args.probe_steps = args.probe_steps or (2 if args.quick else 10)
    args.probe_warmup = args.probe_warmup or (1 if args.quick else 2)
    if args.quick and args.name == "oasis_ablation":  # a smoke run keeps the real results
        args.name = "oasis_ablation_quick"
    return args


def chosen_variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if args.with_:
        change = {}
        for kv in args.with_:
            key, sep, value = kv.partition("=")
            if not sep:
                raise SystemExit(f"--with {kv!r}: expected KEY=VALUE")
            change[key.strip()] = yaml.safe_load(value)
        return {args.label or " ".join(args.with_): change}
    return select(SETS[args.set], args.variants)


def base_config(args: argparse.Namespace) -> tuple[TrainImagesConfig, int]:
    """The base config every variant changes, and the held-out images for FID / KID."""
    params = load_params(args.params, [f"train_images.{kv}" for kv in args.base])
    base = section(params, "train_images", TrainImagesConfig)
    n_fid = 16 if args.quick else base.fid_images
    base = dataclasses.replace(
        base,
        total_images=args.images or (64 if args.quick else base.total_images),
        checkpoint_every_images=0,
        fid_images=0,  # scored here, against real features computed once
        bn_refresh_batches=2 if args.quick else base.bn_refresh_batches,
    )
    return base, n_fid


def main() -> None:
    args = parse_args()
    variants = chosen_variants(args)
    if args.list:
        for i, (name, change) in enumerate(variants.items(), 1):
            print(f"{i}. {name}: {change}")
        return
    try:
        base, n_fid = base_config(args)
    except ConfigError as e:
        raise SystemExit(f"{args.params} with --base {args.base}: {e}") from None
    for name, change in variants.items():  # fail now, not after hours of other rows
        try:
            variant_config(base, change, base.total_images)
        except ConfigError as e:
            raise SystemExit(f"variant {name!r}: {e}") from None
    ev = held_out(
        args.data, n_fid, 16 if args.quick else 64, pick_device(base.device), args.segmenter
    )
    rows, whole = previous_rows(args.name) if args.append else [], OtherLoad()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for name, change in variants.items():
            row = run_variant(name, change, base, args, root / slug(name), ev)
            rows = merge(rows, row)
            print_rows([row])
            # the JSON after every row: an interrupted session keeps the rows it finished
            path = save(args.name, payload(args, rows, base.total_images, whole.share()))
    print()
    print_rows(rows)
    print(f"wrote {path}")
    print(summary(rows, args.set))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def payload(
    args: argparse.Namespace, rows: list[dict[str, Any]], images: int, other: float | None
) -> dict[str, Any]:
    return {
        "rows": rows,
        "set": "with" if args.with_ else args.set,
        "data": args.data,
        "params": args.params,
        "base_overrides": args.base,
        "budget": {"minutes": args.minutes, "images": None if args.minutes else images},
        "quick": args.quick,
        "other_cpu_share": other,  # of the whole run so far (bench.common.OtherLoad)
    }


if __name__ == "__main__":
    main()
