"""Stage `report`: one offline HTML page that says whether the synthetic data is any good.

    semsynth report                      # data/report/index.html from metrics/ and data/
    semsynth report --out /tmp/report    # somewhere else

Reads what the other stages left behind (metrics/*.json, the prepared and synthetic shards, the
sample grids of both generators, dvc.lock) and writes `OUT/index.html`: the verdict and key
figures, the dataset's classes and frequencies real vs synthetic, SemGAN masks beside real ones
with the mask metrics and the real data's own values, OASIS images with FID / KID and
synth_miou_ratio, the downstream mIoU table, per-class IoU and data-efficiency curve, and the
provenance (revision, machine, checkpoint hashes, stage times, params). Each section says in one
line what good looks like; a section whose inputs are missing says "not run" instead of failing.

The page is self-contained: images are PNG data URIs, charts inline SVG, no script, nothing
fetched. `OUT/summary.json` holds the verdict and key figures for machines (the Prefect flows'
artifacts). `make report-check` renders the page in headless Chromium.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, section
from pipeline.errors import DatasetError
from pipeline.io_utils import atomic_output_dir, atomic_write_json
from pipeline.report_figures import esc
from pipeline.report_provenance import provenance_section
from pipeline.report_sections import (
    PRODUCERS,
    SECTIONS,
    Evidence,
    Section,
    json_file,
    key_figures,
    verdict,
)
from pipeline.shards import load_class_table

SECTION = "report"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    metrics_dir: str = field(
        default="metrics", metadata={"help": "where the stages wrote <stage>.json"}
    )
    prepared: str = field(default="data/prepared", metadata={"help": "the real shard dataset"})
    synthetic: str = field(default="data/synthetic", metadata={"help": "the generated dataset"})
    masks: str = field(default="data/masks", metadata={"help": "SemGAN's grid.png, checkpoint"})
    images: str = field(default="data/images", metadata={"help": "OASIS's grid.png, checkpoint"})
    lock: str = field(default="dvc.lock", metadata={"help": "output hashes for provenance"})
    out: str = field(default="data/report", metadata={"help": "the page: OUT/index.html"})
    real_masks: int = field(default=32, metadata={"help": "real maps shown beside SemGAN's"})
    samples: int = field(default=8, metadata={"help": "synthetic pairs shown"})

    def __post_init__(self) -> None:
        if self.real_masks < 1 or self.samples < 1:
            raise ConfigError(
                f"report.real_masks ({self.real_masks}) and report.samples ({self.samples}) "
                "must be >= 1"
            )


Config = ReportConfig


# ---- evidence ------------------------------------------------------------------------------
def load_evidence(cfg: ReportConfig, params: dict[str, Any] | None = None) -> Evidence:
    """Every input the page can show; missing ones stay empty (the page says "not run")."""
    problems: list[str] = []
    metrics_dir = Path(cfg.metrics_dir)
    files = {p.stem: p for p in sorted(metrics_dir.glob("*.json"))}
    metrics = {}
    for name, path in files.items():
        data = json_file(path, problems)
        if isinstance(data, dict):
            metrics[name] = data
    plots = {
        p.stem: data
        for p in sorted((metrics_dir / "segmentation_plots").glob("*.json"))
        if isinstance(data := json_file(p, problems), list)
    }
    runs = {
        p.stem: data
        for p in sorted((metrics_dir / "segmenter").glob("*.json"))
        if isinstance(data := json_file(p, problems), dict)
    }
    return Evidence(
        metrics=metrics,
        plots=plots,
        runs=runs,
        table=class_table(cfg, problems),
        prepared=Path(cfg.prepared),
        synthetic=Path(cfg.synthetic),
        masks=Path(cfg.masks),
        images=Path(cfg.images),
        lock=Path(cfg.lock),
        lock_stages=lock_stages(Path(cfg.lock), problems),
        params=params or {},
        real_masks=cfg.real_masks,
        samples=cfg.samples,
        files={k: v for k, v in files.items() if k in metrics},
        problems=problems,
    )


def lock_stages(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError) as e:
        problems.append(f"{path}: {e}")
        return {}
    return stages if isinstance(stages, dict) else {}


def class_table(cfg: ReportConfig, problems: list[str]):
    for root in (cfg.prepared, cfg.synthetic):
        if (Path(root) / "classes.json").is_file():
            try:
                return load_class_table(root)
            except DatasetError as e:
                problems.append(str(e))
    return None


# ---- the page ------------------------------------------------------------------------------
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 max-width:1120px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:26px;margin:8px 0 4px}h2{margin:36px 0 4px;border-bottom:2px solid #ddd}
h3{margin:22px 0 6px;font-size:16px}nav a{margin-right:14px}
.read{color:#555;font-style:italic;margin:2px 0 12px}.meta{color:#666}
.notrun{background:#fff4d6;border-left:4px solid #e6a700;padding:6px 10px}
.verdict{font-size:19px;font-weight:600;padding:10px 14px;border-radius:4px}
.good{background:#e3f4e8;border-left:6px solid #2e9a4b}
.bad{background:#fbe4e1;border-left:6px solid #c8412b}
.neutral{background:#eef1f5;border-left:6px solid #7a8696}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:4px;padding:8px 12px;min-width:120px}
.card .v{font-size:20px;font-weight:600}.card .k{color:#333}.card .g{color:#777;font-size:12px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #e4e4e4;
 padding:3px 10px;text-align:left;font-variant-numeric:tabular-nums}th{background:#f5f5f5}
.kv th{display:none}.sw{display:inline-block;width:14px;height:14px;border:1px solid #555;
 vertical-align:middle}
.row{display:flex;flex-wrap:wrap;gap:16px}figure{margin:8px 0}
figcaption{color:#555;font-size:13px}img.pix{image-rendering:pixelated;max-width:100%;height:auto}
svg.chart{font-size:12px;max-width:100%;height:auto}pre{background:#f7f7f7;padding:8px;overflow:auto}
code{background:#f2f2f2;padding:0 3px}
"""


def render(sections: list[Section], title: str, built: str) -> str:
    """The whole page as one HTML document; nothing in it refers to another file."""
    nav = " ".join(f'<a href="#{s.key}">{esc(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no request may leave the page (also none for a favicon)
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f'<h1>{esc(title)}</h1><p class="meta">built {esc(built)}</p><nav>{nav}</nav>',
    ]
    for s in sections:
        status = "" if s.ran else ' <span class="meta">(not run)</span>'
        parts.append(
            f'<section id="{s.key}"><h2>{esc(s.title)}{status}</h2>'
            f'<p class="read">How to read: {esc(s.read)}</p>{s.body}</section>'
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def guarded(build: Callable[[Evidence], Section], ev: Evidence) -> Section:
    """One section; if it fails (a metrics key of an unexpected type, a corrupt shard), the
    page still builds and shows the error in its place: the report is the last stage of
    `dvc repro`, and one odd input should not cost the whole page."""
    try:
        return build(ev)
    except Exception as e:
        log.exception("report section %s failed", build.__name__)
        name = build.__name__.removesuffix("_section")
        body = (
            f'<p class="notrun">could not build this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        )
        return Section(name, name.capitalize(), "see the error below", body, ran=False)


def build_report(
    cfg: ReportConfig, params: dict[str, Any] | None = None, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Write OUT/index.html and OUT/summary.json; returns the summary (path, verdict, figures)."""
    out_dir = Path(out_dir or cfg.out)
    ev = load_evidence(cfg, params)
    sections = [guarded(build, ev) for build in [*SECTIONS, provenance_section]]
    built = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = render(sections, "semsynth report: is the synthetic data any good?", built)
    cls, sentence = verdict(ev.m("segmentation"))
    summary = {
        "path": str(out_dir / "index.html"),
        "verdict": sentence,
        "verdict_class": cls,
        "figures": {k: v for k, v, _ in key_figures(ev)},
        "sections_run": [s.title for s in sections if s.ran],
        "sections_not_run": [s.title for s in sections if not s.ran],
        "missing_metrics": sorted(set(PRODUCERS) - set(ev.metrics)),
        "built": built,
    }
    with atomic_output_dir(out_dir) as tmp:  # a failed build keeps the previous page
        (tmp / "index.html").write_text(page, encoding="utf-8")
        atomic_write_json(tmp / "summary.json", summary)
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Prefect markdown artifact: verdict, key figures, where the page is."""
    path = Path(summary["path"]).resolve()
    lines = [
        "# semsynth report",
        "",
        f"**{summary['verdict']}**",
        "",
        "| figure | value |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in summary["figures"].items()),
        "",
        f"Page: [{path}]({path.as_uri()}) (self-contained; open it in a browser).",
    ]
    if summary["sections_not_run"]:
        lines.append(f"Not run yet: {', '.join(summary['sections_not_run'])}.")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: report.out)")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, ReportConfig)
    summary = build_report(cfg, params, args.out)
    log.info("wrote %s: %s", summary["path"], summary["verdict"])
    if summary["sections_not_run"]:
        log.info("not run: %s", ", ".join(summary["sections_not_run"]))
    return {
        "sections_run": float(len(summary["sections_run"])),
        "sections_not_run": float(len(summary["sections_not_run"])),
    }
