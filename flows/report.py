"""The end-of-run report of a generated dataset: counts, class frequencies and a sample grid.

From the stats.json that `generate` writes and the first shard, as a markdown text and table rows
that `generate-dataset` publishes as Prefect artifacts.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.shards import iter_split, load_class_table, splits


def sample_grid(root: Path, split: str, n: int = 8, cols: int = 4) -> Image.Image | None:
    """The first `n` samples as (image | colourised mask) tiles, `cols` pairs a row."""
    table = load_class_table(root)
    tiles = []
    for sample in iter_split(root, split):
        mask_rgb = table.colorize(sample.mask)
        image = sample.image if sample.image is not None else np.zeros_like(mask_rgb)
        tiles.append(np.concatenate([image, mask_rgb], axis=1))
        if len(tiles) == n:
            break
    if not tiles:
        return None
    h, w, _ = tiles[0].shape
    rows = (len(tiles) + cols - 1) // cols
    grid = np.full((rows * (h + 2), min(cols, len(tiles)) * (w + 2), 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
    return Image.fromarray(grid)


def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


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
