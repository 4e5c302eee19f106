"""What the flows publish as Prefect artifacts at the end of a run.

`dataset_report`: a generated dataset's counts, class frequencies and a sample grid (from the
stats.json that `generate` writes and the first shard), as markdown and table rows.
`attach_report`: the `report` stage's page (pipeline/report.py), built by the stage's own
function, attached as a markdown artifact with its verdict, key figures and path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.common import stage_config
from pipeline.config import load_params
from pipeline.report_figures import png_data_uri, sample_grid
from pipeline.shards import load_class_table, splits


def dataset_report(
    synth_dir: Path, exported: dict[str, Any] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """(markdown, table rows): counts, class frequencies synthetic vs real, a sample grid.

    The numbers are the ones `generate` wrote to the dataset's stats.json, not recomputed.
    """
    synth_dir = Path(synth_dir)
    table = load_class_table(synth_dir)
    stats = json.loads((synth_dir / "stats.json").read_text())
    freq, presence = stats["class_frequency"], stats["class_presence"]
    rows = [
        {
            "class": name,
            "synthetic_pixel_share": round(freq["synthetic"][i], 4),
            "real_pixel_share": round(freq["real"][i], 4),
            "synthetic_presence": round(presence["synthetic"][i], 4),
            "real_presence": round(presence["real"][i], 4),
        }
        for i, name in enumerate(table.names)
    ]

    lines = [f"# Generated dataset `{synth_dir}`", ""]
    lines += [f"- **{split}**: {n} image/label pairs" for split, n in stats["counts"].items()]
    lines.append(
        f"- {stats['masks']} masks kept of {stats['candidates']} candidates, "
        f"{stats['images_per_mask']} image(s) per mask"
    )
    rejected = {k: v for k, v in stats.get("rejected_reasons", {}).items() if v}
    if rejected:
        lines.append("- rejected: " + ", ".join(f"{k} {v}" for k, v in rejected.items()))
    lines += [f"- exported {fmt}: {n} samples" for fmt, n in (exported or {}).items()]
    lines += ["", "## Class frequencies", ""]
    lines += ["| class | pixels synthetic | pixels real | present synthetic | present real |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['synthetic_pixel_share']:.1%} | {r['real_pixel_share']:.1%} "
            f"| {r['synthetic_presence']:.0%} | {r['real_presence']:.0%} |"
        )
    grid = next((sample_grid(synth_dir, s) for s in splits(synth_dir)), None)
    if grid is not None:
        lines += ["", "## Samples (image | label map)", "", f"![samples]({png_data_uri(grid)})"]
    return "\n".join(lines) + "\n", rows


def attach_report(params: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Build the report page as `semsynth report` does; attach its summary as an artifact."""
    from prefect.artifacts import create_markdown_artifact

    from pipeline import report as report_stage

    cfg = stage_config(report_stage, params, overrides)
    summary = report_stage.build_report(cfg, load_params(params, list(overrides)))
    create_markdown_artifact(
        report_stage.markdown(summary), key="semsynth-report", description="semsynth report"
    )
    return summary
