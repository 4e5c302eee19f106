"""The downstream table (issue #18): one row per (label share, policy, trust filter, mask source)
from an evaluated chain, kept in bench/results/NAME.json.

    dvc exp run -S prepare.train_fraction=0.25 -S train_segmenter.synth_policy=add ...
    python -m bench.downstream --metrics metrics/segmentation.json --params params.yaml \\
        --name downstream_camvid96 [--default]

A row's identity comes from the params that produced the metrics: the share of the real labels
(`prepare.train_fraction` x `train_segmenter.real_fraction`), `train_segmenter.synth_policy`,
`trust_filter`, `generate.mask_source`, `generate.balance.strength` and the dataset's root
(`prepare.options.root`: val and a sequence-disjoint split are different rows). Recording the
same identity again replaces its row; `--default` marks the row as the shipped default (and
unmarks the others). The rare-class gain is
the mean IoU change over `--rare` classes (CamVid's five rarest by default) that the metrics have.

`--control NAME` adds the gain over real-only runs with as many optimisation steps as the real +
synthetic run took (`steps` + `pretrain_steps` under `pretrain`), paired by seed, from the
`bench.segmenter_budget` rows of bench/results/NAME.json with the row's share (run them with the
chain's segmenter params). The issue's gain holds real exposure equal; a `pretrain` run also
takes more steps, and this column tells the pairs' effect from the extra steps'.

Rows from several sessions share one file, and sessions run on different CPUs (fp32 on AVX2-only
hosts, bf16 with AMX): each row keeps the `machine` it was recorded on (run this command where the
chain ran) and whether the segmenter's bf16 autocast was active there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from bench.common import machine, previous_rows, save
from pipeline.device import bf16_supported, pick_device
from pipeline.metrics.segmentation import mean_std_ci95
from pipeline.predict import run_name

RARE = ("pole", "sign", "fence", "pedestrian", "bicyclist")
# A chain is one row per what it varies: the GANs' budgets and the segmenter's steps (the
# synthetic phase's too) included, since a longer OASIS run or a converged schedule is a new
# experiment, not a rerun of the old one.
IDENTITY = (
    "share",
    "policy",
    "filter",
    "mask_source",
    "balance",
    "data_root",
    "steps",
    "pretrain_steps",
    "gan_images",
)


def row_from(metrics: dict[str, float], params: dict[str, Any], rare: tuple[str, ...]) -> dict:
    """The table row of one evaluated chain; a clear error when the chain lacks a key."""
    if "miou_gain" not in metrics:
        raise SystemExit("the metrics have no miou_gain: evaluate after the real_synth runs")
    seg, gen = params.get("train_segmenter", {}), params.get("generate", {})
    prep = params.get("prepare", {})
    share = prep.get("train_fraction", 1.0) * seg.get("real_fraction", 1.0)
    gains = {
        c: metrics[f"iou_real_synth_{c}"] - metrics[f"iou_real_{c}"]
        for c in rare
        if f"iou_real_{c}" in metrics and f"iou_real_synth_{c}" in metrics
    }
    return {
        "share": round(share, 4),
        "policy": seg.get("synth_policy", "replace"),
        "filter": bool(seg.get("trust_filter", False)),
        "mask_source": gen.get("mask_source", "semgan"),
        "balance": gen.get("balance", {}).get("strength", 0.0),
        "data_root": prep.get("options", {}).get("root"),
        "seeds": int(metrics["n_seeds"]),
        "miou_real": metrics["miou_real"],
        "miou_real_synth": metrics["miou_real_synth"],
        "gain": metrics["miou_gain"],
        "ci_low": metrics.get("miou_gain_ci95_low"),  # absent with one seed
        "ci_high": metrics.get("miou_gain_ci95_high"),
        "real_images_seen": metrics.get("real_images_seen_real_synth"),
        "synth_images_seen": metrics.get("synth_images_seen_real_synth"),
        "rare_gain": sum(gains.values()) / len(gains) if gains else None,
        "rare_class_gains": gains,
        "steps": seg.get("steps"),
        "pretrain_steps": seg.get("pretrain_steps")
        if seg.get("synth_policy") == "pretrain"
        else None,
        "gan_images": {  # the GANs' training budgets: rows with other budgets are not comparable
            "masks": params.get("train_masks", {}).get("total_images"),
            "images": params.get("train_images", {}).get("total_images"),
        },
        "trust_tolerance": seg.get("trust_tolerance") if seg.get("trust_filter") else None,
        "synth_miou_ratio": metrics.get("synth_miou_ratio"),
        "machine": recorded_on(bool(seg.get("bf16", True)), seg.get("device", "auto")),
        "default": False,
    }


def recorded_on(bf16_param: bool, device: str) -> dict[str, Any]:
    """This machine, as a row keeps it: the file's own `machine` is its last writer's only."""
    info = {k: v for k, v in machine().items() if k != "load_avg_1min"}
    # the segmenter's own rule: bf16 autocast only where the device computes it natively
    info["segmenter_bf16"] = bf16_param and bf16_supported(pick_device(device))
    return info


def equal_steps_control(row: dict, seeds: list[int], runs: Path, budget: list[dict]) -> dict:
    """The row's gain over real-only runs of equal optimisation steps, paired by seed: each
    seed's real + synthetic mIoU (`runs`/real_synth-seedS.json) minus the budget row of the same
    share, steps and seed, over the seeds that have both (`control_seeds` names them)."""
    steps = (row["steps"] or 0) + (row["pretrain_steps"] or 0)
    control = {
        r["seed"]: r["miou"]
        for r in budget
        if abs(r["share"] - row["share"]) < 1e-6 and r["steps"] == steps
    }
    files = {s: runs / f"{run_name('real_synth', s)}.json" for s in seeds}
    paired = [s for s in seeds if s in control and files[s].is_file()]
    if len(paired) < len(seeds):
        print(
            f"--control: seeds {[s for s in seeds if s not in paired]} have no real-only run at "
            f"share {row['share']:g}, {steps} steps (`python -m bench.segmenter_budget --runs "
            f"{row['share']:g}:{steps} --seed S --append`) or no metrics in {runs}"
        )
    if not paired:
        raise SystemExit("--control: no seed has both runs; nothing to compare")
    gains = [json.loads(files[s].read_text())["miou"] - control[s] for s in paired]
    mean, _, lo, hi = mean_std_ci95(gains)
    return {
        "control_steps": steps,
        "control_seeds": paired,
        "miou_real_control": sum(control[s] for s in paired) / len(paired),
        "gain_vs_control": mean,
        "control_ci_low": lo if len(paired) > 1 else None,
        "control_ci_high": hi if len(paired) > 1 else None,
    }


def merge(rows: list[dict], row: dict, default: bool) -> list[dict]:
    """`rows` with `row` in place of any row of the same identity; one default at most."""
    key = tuple(row[k] for k in IDENTITY)
    out = [r for r in rows if tuple(r.get(k) for k in IDENTITY) != key]
    if default:
        out = [{**r, "default": False} for r in out]
    out.append({**row, "default": default})
    return sorted(out, key=lambda r: (r["share"], *(str(r.get(k)) for k in IDENTITY[1:])))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--metrics", default="metrics/segmentation.json", help="evaluate's output")
    p.add_argument("--params", default="params.yaml", help="the params that produced it")
    p.add_argument("--name", default="downstream", help="bench/results/NAME.json")
    p.add_argument("--default", action="store_true", help="this row is the shipped default")
    p.add_argument("--rare", default=",".join(RARE), help="classes of the rare-class gain")
    p.add_argument("--control", help="bench/results/NAME.json of bench.segmenter_budget rows")
    p.add_argument("--runs-dir", help="per-run metrics (default: METRICS' folder/segmenter)")
    a = p.parse_args(argv)
    for f in (a.metrics, a.params):
        if not Path(f).is_file():
            raise SystemExit(f"{f} does not exist: run the chain (dvc repro / dvc exp run) first")
    metrics = json.loads(Path(a.metrics).read_text())
    params = yaml.safe_load(Path(a.params).read_text()) or {}
    row = row_from(metrics, params, tuple(filter(None, a.rare.split(","))))
    if a.control:
        # evaluate.seeds, where set, chose the paired seeds the metrics hold
        evaluated = (params.get("evaluate") or {}).get("seeds")
        seeds = evaluated or params.get("train_segmenter", {}).get("seeds", [0])
        runs = Path(a.runs_dir) if a.runs_dir else Path(a.metrics).parent / "segmenter"
        row |= equal_steps_control(row, seeds, runs, previous_rows(a.control))
    rows = merge(previous_rows(a.name), row, a.default)
    path = save(a.name, {"rows": rows})
    lo, hi = row["ci_low"], row["ci_high"]
    ci = f", 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None else " (one seed)"
    print(
        f"summary: share {row['share']:g}, {row['policy']}, filter {row['filter']}, masks "
        f"{row['mask_source']}, balance {row['balance']:g}: real {100 * row['miou_real']:.2f}, "
        f"real+synth {100 * row['miou_real_synth']:.2f}, gain {100 * row['gain']:+.2f}{ci} over "
        f"{row['seeds']} seeds ({len(rows)} rows in {path.name})"
    )
    if "gain_vs_control" in row:  # real + synthetic over the control's seeds: control + gain
        real, gain = row["miou_real_control"], row["gain_vs_control"]
        print(
            f"equal steps (seeds {row['control_seeds']}): real-only at {row['control_steps']} "
            f"steps {100 * real:.2f}, real+synth {100 * (real + gain):.2f}, gain {100 * gain:+.2f}"
        )


if __name__ == "__main__":
    main()
