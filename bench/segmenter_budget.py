"""Does the real-only segmenter converge? Val mIoU at a step budget and at twice that budget,
per share of the real labels (issue #18: "doubling the budget moves val mIoU by < 1 point").

    python -m bench.segmenter_budget --data data/camvid96 --params docs/params_camvid96.yaml \\
        --runs 0.25:800,0.25:1600 --name segmenter_budget_camvid96 --append

Each run is the product's own `semsynth train-segmenter --mode real` (same augmentation, lr
schedule, held-out scoring) in a child process, with `real_fraction` = SHARE and `steps` = STEPS;
the rest comes from --params. Rows are written to bench/results/NAME.json after every run
(--append keeps earlier rows, a row with the same share, steps and seed is replaced), so an
interrupted queue loses one run at most. The table ends with the change of val mIoU per doubling
of the budget at each share. Run it alone: two torch processes on 2 cores stall each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OtherLoad, previous_rows, print_table, save

KEEP = ("miou", "pixel_acc", "n_real_train", "real_images_seen", "train_images_per_s", "seconds")


def parse_runs(spec: str) -> list[tuple[float, int]]:
    """`0.25:800,1.0:1600` → [(0.25, 800), (1.0, 1600)]."""
    runs = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        share, _, steps = item.partition(":")
        try:
            runs.append((float(share), int(steps)))
        except ValueError:
            raise SystemExit(f"--runs: {item!r} is not SHARE:STEPS (e.g. 0.25:800)") from None
    return runs


def train_one(args: argparse.Namespace, share: float, steps: int, work: Path) -> dict[str, Any]:
    """One real-only run through the CLI; its metrics JSON, reduced to the row's columns."""
    metrics = work / "metrics"
    cmd = [sys.executable, "-m", "pipeline.cli", "train-segmenter", "--params", args.params]
    cmd += ["--mode", "real", "--seed", str(args.seed), "--restart", "--quiet"]
    cmd += ["--real-dir", args.data, "--real-fraction", str(share), "--out", str(work / "run")]
    for kv in [f"steps={steps}", f"metrics_dir={metrics}", f"live_dir={work / 'live'}"]:
        cmd += ["--set", f"train_segmenter.{kv}"]
    for kv in args.set or []:
        cmd += ["--set", kv]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"train-segmenter failed (share {share}, steps {steps}):\n{out.stderr}")
    (result,) = [json.loads(p.read_text()) for p in metrics.glob("*.json")]
    row = {"share": share, "steps": steps, "seed": args.seed}
    row |= {k: result[k] for k in KEEP if k in result}
    row["epochs"] = round(result["real_images_seen"] / max(result["n_real_train"], 1), 1)
    row["wall_s"] = round(time.perf_counter() - t, 1)
    row |= {k: v for k, v in result.items() if k.startswith("iou_")}
    return row


def doubling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Val mIoU change from each budget to twice it, per share and seed (points)."""
    by = {(r["share"], r["seed"], r["steps"]): r["miou"] for r in rows}
    out = []
    for (share, seed, steps), miou in sorted(by.items()):
        if (share, seed, 2 * steps) in by:
            gain = 100 * (by[(share, seed, 2 * steps)] - miou)
            out.append({"share": share, "seed": seed, "steps": f"{steps} -> {2 * steps}",
                        "miou": round(100 * miou, 2), "miou_2x": round(100 * miou + gain, 2),
                        "change_pp": round(gain, 2), "converged": abs(gain) < 1.0})  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/prepared", help="prepared dataset (real_dir)")
    p.add_argument("--params", default="params.yaml", help="base params (train_segmenter)")
    p.add_argument("--runs", required=True, help="SHARE:STEPS,... e.g. 0.1:800,0.1:1600")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", help="extra SECTION.KEY=VALUE for every run")
    p.add_argument("--name", default="segmenter_budget", help="bench/results/NAME.json")
    p.add_argument("--append", action="store_true", help="merge rows into an existing NAME.json")
    args = p.parse_args()

    rows = previous_rows(args.name) if args.append else []
    for share, steps in parse_runs(args.runs):
        other = OtherLoad()
        with tempfile.TemporaryDirectory(prefix="segbudget-") as work:
            row = train_one(args, share, steps, Path(work))
        row["other_cpu"] = other.share()
        key = (share, steps, args.seed)
        rows = [r for r in rows if (r["share"], r["steps"], r["seed"]) != key] + [row]
        rows.sort(key=lambda r: (r["share"], r["seed"], r["steps"]))
        save(args.name, {"data": args.data, "params": args.params, "extra_set": args.set or [],
                         "rows": rows, "doubling": doubling(rows)})  # fmt: skip
        print(f"share {share} steps {steps}: val mIoU {100 * row['miou']:.2f} ({row['wall_s']} s)")
    cols = ["share", "steps", "epochs", "miou", "train_images_per_s", "wall_s", "other_cpu"]
    print_table([{c: r.get(c) for c in cols} for r in rows])
    table = doubling(rows)
    print_table(table)
    moves = ", ".join(f"{d['share']:g}: {d['change_pp']:+.2f}" for d in table)
    print(f"summary: val mIoU change per budget doubling (share: pp): {moves or 'no pairs yet'}")


if __name__ == "__main__":
    main()
