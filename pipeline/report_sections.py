"""The sections of the report page, each built from whatever evidence a run left behind.

A section is a title, one line on how to read it (what good looks like) and an HTML body. Every
input is optional: a section (or a part of one) whose metrics file or data folder is missing says
"not run" with the command that produces it, so the page builds after any subset of the stages.
Metric keys are read by name where the page explains them; every other key still appears in the
provenance section's "all metrics" tables, so keys added later are never lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classes import ClassTable
from pipeline.errors import DatasetError
from pipeline.report_figures import (
    Markup,
    bars_svg,
    curve_svg,
    esc,
    img_tag,
    sample_grid,
    swatch,
    table,
    tile,
)
from pipeline.shards import heldout_split, iter_split, splits

# metrics/<name>.json → the command that writes it (for "not run" lines)
PRODUCERS = {
    "prepare": "semsynth prepare",
    "train_masks": "semsynth train-masks",
    "train_images": "semsynth train-images",
    "generate": "semsynth generate",
    "export": "semsynth export",
    "segmentation": "semsynth train-segmenter ... && semsynth evaluate",
}


@dataclass
class Evidence:
    """Everything the page shows, loaded once; absent inputs are empty / None."""

    metrics: dict[str, dict[str, Any]]  # metrics/<name>.json by name, flat keys
    plots: dict[str, list[dict[str, Any]]]  # metrics/segmentation_plots/<name>.json
    runs: dict[str, dict[str, Any]]  # metrics/segmenter/<run>.json
    table: ClassTable | None
    prepared: Path
    synthetic: Path
    masks: Path
    images: Path
    lock: Path = Path("dvc.lock")
    lock_stages: dict[str, Any] = field(default_factory=dict)  # dvc.lock's `stages`
    params: dict[str, Any] = field(default_factory=dict)
    real_masks: int = 32
    samples: int = 8
    files: dict[str, Path] = field(default_factory=dict)  # metrics name → the file read
    problems: list[str] = field(default_factory=list)  # unreadable inputs, shown on the page

    def m(self, name: str) -> dict[str, Any]:
        return self.metrics.get(name, {})


@dataclass
class Section:
    key: str  # the anchor
    title: str
    read: str  # how to read it: what good looks like
    body: str
    ran: bool = True


# ---- formatting ----------------------------------------------------------------------------
def num(v: Any, fmt: str = "{:.3g}") -> str:
    return fmt.format(v) if isinstance(v, int | float) else "–"


def pct(v: Any, digits: int = 2) -> str:
    return f"{100 * v:.{digits}f}%" if isinstance(v, int | float) else "–"


def pp(v: Any) -> str:
    """A difference of two shares in percentage points, signed."""
    return f"{100 * v:+.2f} pp" if isinstance(v, int | float) else "–"


def not_run(what: str, name: str | None = None, how: str | None = None) -> str:
    how = how or (PRODUCERS.get(name, "") if name else "")
    hint = f" (run <code>{esc(how)}</code>, or <code>dvc repro</code>)" if how else ""
    return f'<p class="notrun">not run: {esc(what)}{hint}</p>'


def figure(inner: str, caption: str) -> str:
    return f"<figure>{inner}<figcaption>{esc(caption)}</figcaption></figure>"


def json_file(path: Path, problems: list[str]) -> Any:
    """The parsed file, or None when absent; an unreadable file is noted, not fatal."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path}: {e}")
        return None


# ---- the verdict ---------------------------------------------------------------------------
def verdict(seg: dict[str, Any]) -> tuple[str, str]:
    """(css class, sentence) from the gain and its 95% interval over seeds."""
    gain, lo, hi = (seg.get(k) for k in ("miou_gain", "miou_gain_ci95_low", "miou_gain_ci95_high"))
    n = int(seg.get("n_seeds", 0) or 0)
    if not isinstance(gain, int | float):
        return "neutral", "No verdict yet: the downstream evaluation has not run."
    if not (isinstance(lo, int | float) and isinstance(hi, int | float)):
        return "neutral", f"Gain {pp(gain)} from {n} seed(s): too few seeds for an interval."
    ci = f"95% CI [{pp(lo)}, {pp(hi)}] over {n} seeds"
    if lo > 0:
        return "good", f"Use it: real + synthetic beat real only by {pp(gain)} mIoU ({ci})."
    if hi < 0:
        return "bad", f"Do not use it as is: it cost {pp(gain)} mIoU ({ci})."
    return "neutral", f"No measurable effect: gain {pp(gain)} mIoU, {ci} includes zero."


def key_figures(ev: Evidence) -> list[tuple[str, str, str]]:
    """(label, value, what good looks like) for the head of the page and the flow artifacts."""
    seg, masks, gen = ev.m("segmentation"), ev.m("train_masks"), ev.m("generate")
    return [
        ("mIoU real only", pct(seg.get("miou_real")), "held-out real split"),
        ("mIoU real + synthetic", pct(seg.get("miou_real_synth")), "higher than real only"),
        ("gain", pp(seg.get("miou_gain")), "> 0, interval above 0"),
        ("synth_miou_ratio", num(seg.get("synth_miou_ratio")), "near 1"),
        ("FID (images)", num(ev.m("train_images").get("fid"), "{:.1f}"), "lower"),
        ("class JS (masks)", num(masks.get("class_js")), "near 0"),
        ("masks kept", pct(gen.get("kept_fraction"), 1), "near 100%"),
    ]


def summary_section(ev: Evidence) -> Section:
    cls, sentence = verdict(ev.m("segmentation"))
    cards = "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div>'
        f'<div class="g">good: {esc(g)}</div></div>'
        for k, v, g in key_figures(ev)
    )
    body = f'<p class="verdict {cls}">{esc(sentence)}</p><div class="cards">{cards}</div>'
    if ev.problems:
        body += '<p class="notrun">unreadable inputs: ' + esc("; ".join(ev.problems)) + "</p>"
    return Section(
        "summary",
        "Should I use this dataset?",
        "The downstream gain decides: an interval above zero says train on it; one that "
        "includes zero says it did not measurably help at this budget. The rest of the page "
        "says why.",
        body,
        ran="miou_gain" in ev.m("segmentation"),
    )


# ---- the dataset ---------------------------------------------------------------------------
def pixel_shares(root: Path, names: list[str], split: str = "train") -> list[float] | None:
    """Each class's share of the labelled pixels of `split`, from the dataset's stats.json."""
    stats = json_file(root / "stats.json", [])
    counts = (stats or {}).get("pixel_counts", {}).get(split)
    if not counts:
        return None
    c = np.asarray(counts[: len(names)], dtype=np.float64)  # void (last) left out
    return (c / c.sum()).tolist() if c.sum() else None


def dataset_section(ev: Evidence) -> Section:
    read = (
        "the orange (synthetic) bars should track the blue (real) ones for every class; a "
        "class drawn much less often is a class the synthetic data will barely teach."
    )
    if ev.table is None:
        body = not_run(f"no class table in {ev.prepared} or {ev.synthetic}", "prepare")
        return Section("dataset", "The dataset", read, body, ran=False)
    names = ev.table.names
    real = pixel_shares(ev.prepared, names)
    synth = pixel_shares(ev.synthetic, names)
    presence = (json_file(ev.synthetic / "stats.json", []) or {}).get("class_presence", {})
    rows = [
        (
            swatch(c.color),
            c.id,
            c.name,
            pct(real[i] if real else None),
            pct(synth[i] if synth else None),
            pct(_at(presence.get("real"), i), 0),
            pct(_at(presence.get("synthetic"), i), 0),
        )
        for i, c in enumerate(ev.table.classes)
    ]
    header = ["", "id", "class", "pixels real", "pixels synthetic", "in real maps", "in synth maps"]
    body = counts_line(ev) + table(header, rows)
    series = [("real (train)", real)] if real else []
    series += [("synthetic", synth)] if synth else []
    if series:
        chart = bars_svg(names, series, label_colors=ev.table.colors.tolist())
        body += figure(chart, "share of labelled pixels per class")
    if synth is None:
        body += not_run(f"no synthetic dataset in {ev.synthetic}", "generate")
    return Section("dataset", "The dataset", read, body, ran=real is not None)


def counts_line(ev: Evidence) -> str:
    parts = []
    for label, root in (("real", ev.prepared), ("synthetic", ev.synthetic)):
        counts = (json_file(root / "stats.json", []) or {}).get("counts")
        if counts:
            each = ", ".join(f"{split} {n}" for split, n in counts.items())
            parts.append(f"<b>{label}</b> <code>{esc(root)}</code>: {esc(each)} pairs")
    ignore = f"; void pixels are id {ev.table.ignore_index}" if ev.table else ""
    return f"<p>{' · '.join(parts)}{esc(ignore)}</p>" if parts else ""


def _at(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list) and i < len(values) else None


# ---- masks ---------------------------------------------------------------------------------
# (label, SemGAN key, real-data key or the real data's own value, how to read, format)
BY_DEFINITION = "0 (by definition)"
MASK_METRICS: list[tuple[str, str, str | None, str, str]] = [
    (
        "spurious-pixel rate",
        "spurious_rate",
        "spurious_rate_real",
        "near real; higher = noisy",
        "%",
    ),
    ("class JS divergence", "class_js", BY_DEFINITION, "0 = the real class histogram", ""),
    ("class presence error", "presence_error", BY_DEFINITION, "0 = classes as often as real", ""),
    ("MS-SSIM between samples", "ms_ssim", "ms_ssim_real", "near real; toward 1 = collapse", ""),
    ("SWD (x1e3)", "swd", None, "lower (real vs real is not 0: sampling noise)", ""),
    ("off-palette rate", "off_palette_rate", BY_DEFINITION, "RGB baseline; 0 = exact colours", "%"),
    ("FID (colourised maps)", "fid", None, "lower", ""),
]


def mask_metric_rows(m: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def show(v: Any, fmt: str) -> str:
        return pct(v) if fmt == "%" else num(v)

    rows = []
    for label, key, real, how, fmt in MASK_METRICS:
        if key not in m:
            continue
        if real == BY_DEFINITION:
            ref = real
        else:
            ref = show(m.get(real), fmt) if real else "–"
        rows.append((label, show(m[key], fmt), ref, how))
    return rows


def masks_section(ev: Evidence) -> Section:
    read = (
        "the SemGAN maps should look like the real ones (same layouts, clean edges, every "
        "class), each metric should be close to the real data's own value, and the filter "
        "should reject few masks."
    )
    m = ev.m("train_masks")
    grids = [real_mask_figure(ev), generated_grid(ev.masks, "SemGAN samples (EMA generator)")]
    body = '<div class="row">' + "".join(grids) + "</div>"
    if m:
        body += table(["metric", "SemGAN", "real data", "good"], mask_metric_rows(m))
    else:
        body += not_run("no mask metrics", "train_masks")
    body += "<h3>Quality filter (generate)</h3>" + filter_table(ev.m("generate"))
    return Section("masks", "Masks: SemGAN vs real", read, body, ran=bool(m))


def real_mask_figure(ev: Evidence) -> str:
    """Real label maps of the held-out split, spread over it, in SemGAN's grid layout."""
    if ev.table is None or not splits(ev.prepared):
        return not_run(f"no prepared dataset in {ev.prepared}", "prepare")
    try:
        split = heldout_split(ev.prepared)
    except DatasetError:
        split = "train"
    total = (json_file(ev.prepared / "stats.json", []) or {}).get("counts", {}).get(split, 0)
    step = max(1, int(total) // max(ev.real_masks, 1))
    picked = []
    for i, sample in enumerate(iter_split(ev.prepared, split)):
        if i % step == 0:
            picked.append(ev.table.colorize(sample.mask))
        if len(picked) == ev.real_masks:
            break
    grid = tile(picked, cols=8)
    return figure(img_tag(grid, "real label maps", 520), f"real label maps ({split} split)")


def generated_grid(folder: Path, caption: str, width: int = 520) -> str:
    path = folder / "grid.png"
    if not path.is_file():
        stage = "train_images" if "image" in caption.lower() else "train_masks"
        return not_run(f"no sample grid {path}", stage)
    try:
        return figure(img_tag(path, caption, width), f"{caption}, {path}")
    except OSError as e:  # a truncated or foreign file: say so, keep the page
        return not_run(f"{path} is not a readable image ({e})")


def filter_table(gen: dict[str, Any]) -> str:
    if not gen:
        return not_run("no generation metrics", "generate")
    reasons = sorted(k for k in gen if k.startswith("rejected_"))
    total = gen.get("candidates") or 0
    rows = [
        (k.removeprefix("rejected_").replace("_", " "), int(gen[k]), pct(gen[k] / total, 1))
        for k in reasons
        if total
    ]
    head = (
        f"<p>{int(gen.get('masks', 0))} masks kept of {int(total)} candidates "
        f"({pct(gen.get('kept_fraction'), 1)}); class-frequency distance to the real data "
        f"{num(gen.get('class_freq_distance'))} (total variation, 0 = identical).</p>"
    )
    return head + table(["rejected because", "masks", "of candidates"], rows)


# ---- images --------------------------------------------------------------------------------
IMAGE_METRICS: list[tuple[str, str, str, str]] = [
    ("FID", "train_images", "fid", "lower; real vs real is the floor"),
    ("KID", "train_images", "kid", "lower; 0 = the real distribution"),
    ("KID std", "train_images", "kid_std", "spread of KID over subsets"),
    ("held-out images scored", "train_images", "fid_images", "more = a steadier FID"),
    ("synth_miou_ratio", "segmentation", "synth_miou_ratio", "near 1 (OASIS protocol)"),
    ("mIoU on synthesised images", "segmentation", "miou_real_on_synth", "near mIoU on real"),
]


def images_section(ev: Evidence) -> Section:
    read = (
        "each synthesised image should follow its label map (shapes where the label says), the "
        "seeds should differ from each other, FID / KID be low and synth_miou_ratio near 1: a "
        "segmenter trained on real images then sees the synthetic ones as real."
    )
    caption = "OASIS: label | real | synthesised with several noise seeds"
    body = generated_grid(ev.images, caption, 660)
    rows = [
        (label, num(ev.m(src)[key]), how)
        for label, src, key, how in IMAGE_METRICS
        if key in ev.m(src)
    ]
    body += table(["metric", "value", "good"], rows) if rows else not_run("no image metrics")
    body += "<h3>The generated dataset</h3>" + synthetic_samples(ev)
    ran = bool(ev.m("train_images")) or (ev.images / "grid.png").is_file()
    return Section("images", "Images: OASIS vs real", read, body, ran=ran)


def synthetic_samples(ev: Evidence) -> str:
    if not splits(ev.synthetic):
        return not_run(f"no synthetic shards in {ev.synthetic}", "generate")
    grid = sample_grid(ev.synthetic, splits(ev.synthetic)[0], n=ev.samples)
    if grid is None:
        return not_run(f"{ev.synthetic} is empty", "generate")
    return figure(img_tag(grid, "synthetic pairs", 1060), "first pairs: image | label map")


# ---- downstream ----------------------------------------------------------------------------
def downstream_section(ev: Evidence) -> Section:
    read = (
        "real + synthetic should beat real only with the gain's 95% interval above zero; per "
        "class, gains on the rare classes are what synthetic data is for; on the curve, the gain "
        "should be largest where real labels are scarce."
    )
    seg = ev.m("segmentation")
    if not seg:
        body = not_run("no downstream evaluation", "segmentation")
        return Section("downstream", "Downstream: does it help a segmenter?", read, body, False)
    body = stale_warning(ev) + miou_table(seg) + per_class_figure(ev, seg)
    body += "<h3>Data efficiency</h3>" + curve_figure(ev.plots.get("data_efficiency") or [])
    body += "<h3>Trust filter</h3>" + trust_table(ev)
    body += "<h3>Segmenter runs</h3>" + runs_table(ev.runs)
    return Section("downstream", "Downstream: does it help a segmenter?", read, body)


def stale_stages(lock: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(stage, path, hash it read, hash its producer wrote last) for every dvc.lock dependency
    on another stage's output that has changed since: results computed from older data."""
    produced = {
        o["path"]: (name, str(o.get("md5", "")))
        for name, spec in lock.items()
        for o in spec.get("outs", [])
        if "path" in o
    }
    stale = []
    for name, spec in lock.items():
        for d in spec.get("deps", []):
            if d.get("path") in produced and str(d.get("md5", "")) != produced[d["path"]][1]:
                stale.append((name, d["path"], str(d.get("md5", "")), produced[d["path"]][1]))
    return stale


def stale_warning(ev: Evidence) -> str:
    """The downstream figures were computed from an older synthetic dataset or older runs."""
    stale = [s for s in stale_stages(ev.lock_stages) if s[0].startswith(("train_seg", "evaluate"))]
    if not stale:
        return ""
    which = ", ".join(sorted({f"{stage} (read an older {path})" for stage, path, _, _ in stale}))
    return (
        f'<p class="notrun">stale: {esc(which)}, per {esc(ev.lock)}; rerun <code>dvc repro</code> '
        "before trusting the figures below.</p>"
    )


def miou_table(seg: dict[str, Any]) -> str:
    lo, hi = seg.get("miou_gain_ci95_low"), seg.get("miou_gain_ci95_high")
    rows = [
        ("real only", pct(seg.get("miou_real")), pct(seg.get("miou_real_std")), ""),
        (
            "real + synthetic",
            pct(seg.get("miou_real_synth")),
            pct(seg.get("miou_real_synth_std")),
            "",
        ),
        ("gain", pp(seg.get("miou_gain")), pp(seg.get("miou_gain_std")), f"[{pp(lo)}, {pp(hi)}]"),
    ]
    note = (
        f"<p>{int(seg.get('n_seeds', 0))} paired seed(s), "
        f"{int(seg.get('n_heldout', 0))} held-out real images; pixel accuracy "
        f"{pct(seg.get('pixel_acc_real'))} vs {pct(seg.get('pixel_acc_real_synth'))}.</p>"
    )
    return table(["held-out mIoU", "mean", "std over seeds", "95% CI"], rows) + note


def per_class_figure(ev: Evidence, seg: dict[str, Any]) -> str:
    names = ev.table.names if ev.table else class_names_from_keys(seg)
    names = [n for n in names if f"iou_real_{n}" in seg]
    if not names:
        return not_run("no per-class IoU in the evaluation")
    real = [seg[f"iou_real_{n}"] for n in names]
    synth = [seg.get(f"iou_real_synth_{n}") for n in names]
    colors = None
    if ev.table is not None and names == ev.table.names:
        colors = ev.table.colors.tolist()
    chart = bars_svg(names, [("real only", real), ("real + synthetic", synth)], label_colors=colors)
    return figure(chart, "held-out IoU per class (mean over seeds)")


def class_names_from_keys(seg: dict[str, Any]) -> list[str]:
    return [
        k.removeprefix("iou_real_")
        for k in seg
        if k.startswith("iou_real_") and not k.startswith("iou_real_synth_")
    ]


def curve_figure(points: list[dict[str, Any]]) -> str:
    points = sorted(
        (p for p in points if isinstance(p.get("real_fraction"), int | float)),
        key=lambda p: p["real_fraction"],
    )
    if len(points) < 2:
        how = "dvc exp run -S 'train_segmenter.curve_fractions=[0.1,0.25,0.5]'"
        return not_run("the data-efficiency curve needs runs at other shares of labels", how=how)
    xs = [p["real_fraction"] for p in points]
    series = [
        ("real only", [p.get("miou_real") for p in points]),
        ("real + synthetic", [p.get("miou_real_synth") for p in points]),
    ]
    rows = [
        (pct(p["real_fraction"], 0), pct(p.get("miou_real")), pct(p.get("miou_real_synth")))
        + (pp(p.get("miou_gain")), int(p.get("n_seeds", 0)))
        for p in points
    ]
    chart = figure(curve_svg(xs, series), "held-out mIoU vs share of real labels")
    return chart + table(["real labels", "real only", "real + synthetic", "gain", "seeds"], rows)


def trust_table(ev: Evidence) -> str:
    """Any `trust` keys or metrics files (the trust filter's statistics), shown as they are."""
    rows = [
        (name, k, num(v, "{:.4g}"))
        for name, m in ev.metrics.items()
        for k, v in m.items()
        if "trust" in name or "trust" in k
    ]
    if not rows:
        return not_run("no trust-filter statistics in the metrics")
    return table(["file", "key", "value"], rows)


def runs_table(runs: dict[str, dict[str, Any]]) -> str:
    if not runs:
        return not_run("no per-run metrics", "segmentation")
    rows = [
        (name, pct(r.get("miou")), pct(r.get("pixel_acc")), num(r.get("seconds"), "{:.0f} s"))
        for name, r in sorted(runs.items())
    ]
    return table(["run", "held-out mIoU", "pixel acc", "time"], rows)


SECTIONS: list[Callable[[Evidence], Section]] = [
    summary_section,
    dataset_section,
    masks_section,
    images_section,
    downstream_section,
]
__all__ = ["SECTIONS", "Evidence", "Markup", "Section", "key_figures", "verdict"]
