"""Figures for the offline report page: inline SVG charts, embedded PNGs, HTML tables.

Everything returns an HTML fragment that needs nothing outside the page: charts are SVG written
here (no plotting library, no script), images are `data:` URIs. `semsynth report` assembles them
(pipeline/report.py); the Prefect dataset report (flows/report.py) reuses the sample grid.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.shards import iter_split, load_class_table

# Series colours (colour-blind safe, Okabe-Ito): real data first, synthetic second.
SERIES = ("#0072b2", "#e69f00", "#009e73", "#cc79a7")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# ---- images --------------------------------------------------------------------------------
def png_data_uri(image: Image.Image | np.ndarray | bytes) -> str:
    """A PNG as a `data:` URI, so the page carries its images inside itself."""
    if isinstance(image, bytes):
        data = image
    else:
        pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def img_tag(image: Image.Image | np.ndarray | Path, alt: str, width: int = 480) -> str:
    """<img> of at most `width` CSS pixels; small images are scaled up with hard pixel edges
    (`pixelated`): label maps should be read pixel by pixel, not blurred."""
    pil = Image.open(image).convert("RGB") if isinstance(image, Path) else image
    pil = Image.fromarray(pil) if isinstance(pil, np.ndarray) else pil
    scale = max(1, width // max(pil.width, 1))
    w, h = pil.width * scale, pil.height * scale
    if w > width:  # a large image: shrink to `width`, keep the aspect
        w, h = width, round(pil.height * width / pil.width)
    return f'<img src="{png_data_uri(pil)}" alt="{esc(alt)}" width="{w}" height="{h}" class="pix">'


def tile(images: Sequence[np.ndarray], cols: int, gap: int = 2) -> np.ndarray:
    """uint8 [H, W, 3] tiles → one image, `cols` a row, white `gap`-pixel gaps."""
    h, w, _ = images[0].shape
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = im
    return canvas


def sample_grid(root: Path, split: str, n: int = 8, cols: int = 4) -> Image.Image | None:
    """The first `n` samples of a shard dataset as (image | colourised mask) tiles, `cols` pairs
    a row; None for an empty split."""
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
    # 2-pixel gaps right and below every tile (the layout the dataset report always had)
    return Image.fromarray(np.pad(tile(tiles, cols), ((0, 2), (0, 2), (0, 0)), constant_values=255))


# ---- tables --------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    """An HTML table; cells are escaped unless they are already markup (`Markup`)."""
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Markup(str):
    """A string that is already HTML (a swatch, a link): `table` does not escape it."""


def _cell(value: object) -> str:
    return value if isinstance(value, Markup) else esc(value)


def swatch(rgb: Sequence[int]) -> Markup:
    r, g, b = (int(v) for v in rgb)
    return Markup(f'<span class="sw" style="background:rgb({r},{g},{b})"></span>')


# ---- charts --------------------------------------------------------------------------------
def bars_svg(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    fmt: str = "{:.1%}",
    label_colors: Sequence[Sequence[int]] | None = None,
    bar: int = 11,
    width: int = 640,
) -> str:
    """Horizontal grouped bars: one group per label, one bar per series (name, values), a legend
    on top. Values are >= 0; the longest bar spans the plot."""
    label_w, value_w, legend_h = 130, 64, 22
    plot_w = width - label_w - value_w
    top = max((v for _, vals in series for v in vals if _finite(v)), default=0) or 1.0
    group_h = bar * len(series) + 8
    height = legend_h + group_h * len(labels) + 4
    out = [_svg_open(width, height, "bar chart: " + ", ".join(n for n, _ in series))]
    out += _legend([n for n, _ in series], label_w)
    for i, label in enumerate(labels):
        y0 = legend_h + i * group_h
        mid = y0 + group_h / 2
        if label_colors is not None:
            r, g, b = (int(v) for v in label_colors[i])
            out.append(
                f'<rect x="{label_w - 18}" y="{mid - 5:.1f}" width="10" height="10" '
                f'fill="rgb({r},{g},{b})" stroke="#555" stroke-width="0.5"/>'
            )
        anchor_x = label_w - (22 if label_colors is not None else 6)
        out.append(f'<text x="{anchor_x}" y="{mid + 4:.1f}" text-anchor="end">{esc(label)}</text>')
        for j, (name, values) in enumerate(series):
            v = values[i]
            y = y0 + 4 + j * bar
            w = plot_w * v / top if _finite(v) else 0.0
            text = fmt.format(v) if _finite(v) else "n/a"
            out.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 2}" '
                f'fill="{SERIES[j % len(SERIES)]}"><title>{esc(f"{label}, {name}: {text}")}'
                "</title></rect>"
            )
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 3}">{esc(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def curve_svg(
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    x_fmt: str = "{:.0%}",
    y_fmt: str = "{:.1%}",
    width: int = 640,
    height: int = 300,
) -> str:
    """Lines with points over shared x values (a data-efficiency curve), axes with ticks."""
    left, right, top, bottom = 64, 16, 30, 40
    ys = [v for _, vals in series for v in vals if _finite(v)]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 0.01
    lo, hi = lo - pad, hi + pad
    x_lo, x_hi = min(xs), max(xs)
    x_span = (x_hi - x_lo) or 1.0

    def px(x: float) -> float:
        return left + (width - left - right) * (x - x_lo) / x_span

    def py(y: float) -> float:
        return top + (height - top - bottom) * (hi - y) / (hi - lo)

    out = [_svg_open(width, height, "curve: " + ", ".join(n for n, _ in series))]
    out += _legend([n for n, _ in series], left)
    out += _axes(xs, (lo, hi), px, py, x_fmt, y_fmt, (left, width - right, height - bottom))
    for j, (name, values) in enumerate(series):
        color = SERIES[j % len(SERIES)]
        pts = [(px(x), py(v), x, v) for x, v in zip(xs, values, strict=True) if _finite(v)]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b, _, _ in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for a, b, x, v in pts:
            tip = f"{name} at {x_fmt.format(x)}: {y_fmt.format(v)}"
            out.append(
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="{color}">'
                f"<title>{esc(tip)}</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


def _axes(xs, y_range, px, py, x_fmt, y_fmt, box) -> list[str]:
    """Gridlines and tick labels: every x value, five y ticks."""
    x0, x1, y_base = box
    lo, hi = y_range
    out = [f'<line x1="{x0}" y1="{y_base}" x2="{x1}" y2="{y_base}" stroke="#333"/>']
    for x in xs:
        out.append(
            f'<text x="{px(x):.1f}" y="{y_base + 16}" text-anchor="middle">'
            f"{esc(x_fmt.format(x))}</text>"
        )
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        out.append(
            f'<line x1="{x0}" y1="{py(y):.1f}" x2="{x1}" y2="{py(y):.1f}" stroke="#ddd"/>'
            f'<text x="{x0 - 6}" y="{py(y) + 4:.1f}" text-anchor="end">'
            f"{esc(y_fmt.format(y))}</text>"
        )
    return out


def _legend(names: Sequence[str], x0: int) -> list[str]:
    out, x = [], x0
    for j, name in enumerate(names):
        out.append(
            f'<rect x="{x}" y="4" width="12" height="12" fill="{SERIES[j % len(SERIES)]}"/>'
            f'<text x="{x + 16}" y="14">{esc(name)}</text>'
        )
        x += 28 + 7 * len(name)
    return out


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}" class="chart">'
    )


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
