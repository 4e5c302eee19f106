"""Benchmark `prepare`: pairs/s on CamVid at full and reduced size; peak RSS vs dataset size.

    python -m bench.prepare [--quick]

Each configuration runs in a fresh process so its peak RSS is its own. Memory must not grow
with the dataset: shards stream sample by sample. Without ../shared/datasets/camvid the CamVid
rows are skipped and the memory comparison uses `shapes` only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import PEAK_RSS, print_table, run_child, save

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"

CHILD = (
    PEAK_RSS
    + """
import json, time
from pipeline.prepare import PrepareConfig, prepare
cfg = PrepareConfig(**json.loads({cfg!r}))
t = time.perf_counter()
m = prepare(cfg, progress=False)
dt = time.perf_counter() - t
n = sum(v for k, v in m.items() if k.startswith("n_"))
main, workers = peak_rss_mib()
print(json.dumps({{"pairs": n, "seconds": dt, "pairs_per_s": n / dt, "rss_main_mib": main, "rss_worker_mib": workers}}))
"""
)


def run(cfg: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {**cfg, "out": f"{tmp}/out", "metrics": f"{tmp}/m.json"}
        return run_child(CHILD.format(cfg=json.dumps(cfg)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    camvid = {"root": str(CAMVID), "class_table": str(REPO / "datasets/camvid.yaml")}
    rows = []
    cases = []
    if (CAMVID / "train").is_dir():
        cases += [
            (
                "camvid full 360x480",
                dict(dataset="paired_folders", options=camvid, size=[360, 480]),
            ),
            ("camvid 96x128", dict(dataset="paired_folders", options=camvid, size=[96, 128])),
            (
                "camvid 96x128, 1/10",
                dict(dataset="paired_folders", options=camvid, size=[96, 128], fraction=0.1),
            ),
        ]
        if args.quick:
            cases = cases[1:]
    n = 500 if args.quick else 5000
    cases += [
        (
            f"shapes 64x64 n={n}",
            dict(dataset="shapes", options={"n_train": n, "n_val": n // 5}, size=[64, 64]),
        ),
        (
            f"shapes 64x64 n={n // 10}",
            dict(dataset="shapes", options={"n_train": n // 10, "n_val": n // 50}, size=[64, 64]),
        ),
    ]
    for name, cfg in cases:
        r = run({**cfg, "workers": args.workers})
        rows.append({"case": name, **{k: round(v, 2) for k, v in r.items()}})
        print(f"{name}: {r['pairs_per_s']:.1f} pairs/s, peak RSS {r['rss_main_mib']:.0f} MiB")
    print()
    print_table(rows)
    by = {r["case"]: r for r in rows}
    summary = {}
    if "camvid 96x128" in by:
        full, tenth = by["camvid 96x128"], by["camvid 96x128, 1/10"]
        summary["camvid_rss_ratio_full_vs_tenth"] = full["rss_main_mib"] / tenth["rss_main_mib"]
    big, small = rows[-2], rows[-1]
    summary["shapes_rss_ratio_10x_data"] = big["rss_main_mib"] / small["rss_main_mib"]
    path = save("prepare", {"rows": rows, "summary": summary, "workers": args.workers})
    print(f"\nwrote {path}")
    line = ", ".join(
        f"{r['case']}: {r['pairs_per_s']:.0f} pairs/s" for r in rows if "1/10" not in r["case"]
    )
    print(
        f"SUMMARY prepare: {line}; peak RSS ratio for 10x the data: "
        + ", ".join(f"{k}={v:.2f}" for k, v in summary.items())
    )


if __name__ == "__main__":
    main()
