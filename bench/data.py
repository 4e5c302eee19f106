"""Benchmark the streaming data path: segmenter training memory and speed vs the synthetic pool.

    python -m bench.data [--quick] [--pools 1000 20000] [--steps 40]

Writes a real dataset (train 200, val 50) and synthetic pools of 1k and 20k pairs at 96x128 as
shards (procedural scenes: the speed and memory do not depend on what is drawn), then runs
`semsynth train-segmenter --mode real_synth` on each pool in a fresh process, twice: reading each
batch from the shards (`in_memory: false`, the default) and decoding every pair into RAM first
(`in_memory: true`, the path all training stages took before). Peak RSS is the child's own
(from `os.wait4`'s rusage), training images/s from the run's metrics.
Targets: streaming peak RSS 20k / 1k <= 1.2, and streaming images/s >= 0.9x in-memory's at 1k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import OtherLoad, print_table, save
from pipeline.classes import ClassTable
from pipeline.shards import Sample, ShardedWriter

SIZE = (96, 128)
REPO = Path(__file__).resolve().parents[1]


def table(n: int = 6) -> ClassTable:
    colors = [[40 * i % 256, 90 * i % 256, 160 * i % 256] for i in range(n)]
    return ClassTable.from_dict(
        {"classes": [{"name": f"c{i}", "color": c} for i, c in enumerate(colors)]}
    )


def scene(rng: np.random.Generator, t: ClassTable) -> tuple[np.ndarray, np.ndarray]:
    """A mask of random rectangles over a background and its noisy colour-coded image."""
    h, w = SIZE
    mask = np.zeros(SIZE, np.uint8)
    for _ in range(rng.integers(2, 6)):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        mask[y : y + rng.integers(8, 40), x : x + rng.integers(8, 50)] = rng.integers(1, 6)
    image = t.colors[mask].astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(root: Path, splits: dict[str, int], seed: int) -> None:
    t, rng = table(), np.random.default_rng(seed)
    root.mkdir(parents=True)
    t.save(root / "classes.json")
    for split, n in splits.items():
        with ShardedWriter(root, split, per_shard=1000, table=t) as w:
            for i in range(n):
                image, mask = scene(rng, t)
                w.write(Sample(key=f"{split}_{i:07d}", mask=mask, image=image))


def run(work: Path, pool: int, in_memory: bool, steps: int) -> dict:
    """One training run in a fresh process; its metrics, peak RSS and wall time."""
    name = f"pool{pool}-{'memory' if in_memory else 'stream'}"
    params = {
        "train_segmenter": {
            "encoder_weights": None, "steps": steps, "batch_size": 16, "synth_fraction": 0.5,
            "checkpoint_every": 0, "in_memory": in_memory, "real_dir": str(work / "real"),
            "synth_dir": str(work / f"synth{pool}"), "out": str(work / "runs" / name),
            "metrics_dir": str(work / "metrics" / name), "live_dir": str(work / "live" / name),
        }
    }  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "pipeline.cli", "train-segmenter", "--params", str(path),
           "--mode", "real_synth", "--restart", "-q"]  # fmt: skip
    other, t0 = OtherLoad(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(err.decode()[-3000:])
    metrics = json.loads(out)
    return {
        "pool": pool,
        "path": "in memory" if in_memory else "streamed",
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "train_img_per_s": metrics["train_images_per_s"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "other_cpu": other.share(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pools of 100 and 1000, 10 steps")
    ap.add_argument("--pools", type=int, nargs=2, default=None, help="small and large pool")
    ap.add_argument("--steps", type=int, default=None, help="training steps a run (default 40)")
    args = ap.parse_args()
    pools = args.pools or ([100, 1000] if args.quick else [1000, 20000])
    steps = args.steps or (10 if args.quick else 40)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        write_dataset(work / "real", {"train": 200, "val": 50}, seed=0)
        for i, n in enumerate(pools):
            write_dataset(work / f"synth{n}", {"train": n}, seed=1 + i)
        print(f"wrote the datasets in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows = [run(work, n, mem, steps) for n in pools for mem in (False, True)]
    print_table(rows)
    by = {(r["pool"], r["path"]): r for r in rows}
    small, large = pools
    rss_ratio = by[large, "streamed"]["peak_rss_mib"] / by[small, "streamed"]["peak_rss_mib"]
    speed_ratio = (
        by[small, "streamed"]["train_img_per_s"] / by[small, "in memory"]["train_img_per_s"]
    )
    summary = {
        "streamed_peak_rss_ratio": round(rss_ratio, 3),
        "streamed_vs_memory_speed": round(speed_ratio, 3),
    }
    name = "data_quick" if args.quick else "data"
    save(name, {"pools": pools, "steps": steps, "size": list(SIZE), "rows": rows, **summary})
    print(
        f"streamed peak RSS {large} / {small} pairs: {rss_ratio:.2f}x (target <= 1.2); "
        f"streamed vs in-memory training speed at {small}: {speed_ratio:.2f}x (target >= 0.9)"
    )


if __name__ == "__main__":
    main()
