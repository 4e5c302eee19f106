"""Print the results table of a pipeline run (what `make demo` ends with).

python -m pipeline.summary [metrics/segmentation.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def format_table(metrics: dict[str, float]) -> str:
    """mIoU real / real + synthetic / gain with stds and the 95% interval, per-class IoU below."""

    def f(key: str, pct: bool = True) -> str:
        v = metrics.get(key)
        return "-" if v is None else (f"{100 * v:6.2f}" if pct else f"{v:.3g}")

    n = int(metrics.get("n_seeds", 0))
    lines = [
        f"Held-out mIoU (%), {n} seed(s), {int(metrics.get('n_heldout', 0))} held-out images",
        f"  real only          {f('miou_real')} ± {f('miou_real_std')}",
        f"  real + synthetic   {f('miou_real_synth')} ± {f('miou_real_synth_std')}",
        f"  gain               {f('miou_gain')}   95% CI [{f('miou_gain_ci95_low')}, {f('miou_gain_ci95_high')}]",
    ]
    if "synth_miou_ratio" in metrics:
        lines.append(f"  synth_miou_ratio   {f('synth_miou_ratio', pct=False)}  (OASIS protocol)")
    curve = sorted(
        (k for k in metrics if k.startswith("miou_gain_frac")), key=lambda k: float(k[14:])
    )
    if curve:
        lines.append(
            "  gain by share of real labels: "
            + ", ".join(f"{k[14:]}%: {f(k).strip()}" for k in curve)
        )
    classes = [
        k[len("iou_real_") :]
        for k in metrics
        if k.startswith("iou_real_") and not k.startswith("iou_real_synth_")
    ]
    if classes:
        lines.append("  per-class IoU (%)  " + "  ".join(f"{c}" for c in classes))
        lines.append(
            "    real             "
            + "  ".join(f"{f('iou_real_' + c).strip():>{len(c)}}" for c in classes)
        )
        lines.append(
            "    real + synth     "
            + "  ".join(f"{f('iou_real_synth_' + c).strip():>{len(c)}}" for c in classes)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0] if argv else "metrics/segmentation.json")
    if not path.is_file():
        print(f"{path} does not exist: run `dvc repro` (or `make demo`) first", file=sys.stderr)
        return 2
    print(format_table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
