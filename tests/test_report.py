"""Stage `report`: the page builds from a whole run and from any part of one, carries every image
inside itself, is well-formed HTML, and (slow) renders in headless Chromium without errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.cli import main as semsynth
from pipeline.report import ReportConfig, build_report, markdown
from pipeline.report_figures import tile
from pipeline.report_sections import stale_stages, verdict
from pipeline.shards import load_class_table

REPO = Path(__file__).resolve().parents[1]

# The keys a demo run writes (values from one), by metrics file.
DEMO = {
    "prepare": {"n_train": 48.0, "n_val": 16.0, "seconds": 2.6},
    "train_masks": {
        "kimg": 6.0,
        "train_img_per_s": 31.0,
        "spurious_rate": 0.0024,
        "spurious_rate_real": 0.0013,
        "class_js": 0.0186,
        "presence_error": 0.0915,
        "swd": 74.0,
        "ms_ssim": 0.1195,
        "ms_ssim_real": 0.1128,
    },
    "train_images": {"images_seen": 4000.0, "train_images_per_s": 9.4, "fid": 303.4},
    "generate": {
        "masks": 48.0,
        "candidates": 50.0,
        "kept_fraction": 0.96,
        "rejected_spurious": 0.0,
        "rejected_few_classes": 2.0,
        "rejected_histogram": 0.0,
        "class_freq_distance": 0.11,
        "seconds": 36.7,
    },
    "export": {"coco_samples": 48.0, "coco_seconds": 1.5},
    "segmentation": {
        "miou_real": 0.1155,
        "miou_real_std": 0.0124,
        "miou_real_synth": 0.1047,
        "miou_real_synth_std": 0.0008,
        "miou_gain": -0.0109,
        "miou_gain_std": 0.0116,
        "miou_gain_ci95_low": -0.0398,
        "miou_gain_ci95_high": 0.0180,
        "n_seeds": 3.0,
        "n_heldout": 16.0,
        "synth_miou_ratio": 0.9325,
        "iou_real_background": 0.74,
        "iou_real_synth_background": 0.73,
        "iou_real_disc": 0.06,
        "iou_real_synth_disc": 0.002,
    },
}
CURVE = [
    {"real_fraction": f, "miou_real": 0.1 + f / 10, "miou_real_synth": 0.1, "miou_gain": -f / 10}
    | {"n_seeds": 1}
    for f in (0.25, 0.5, 1.0)
]


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_run(root: Path, prepared: Path) -> ReportConfig:
    """A finished run's files around a tiny prepared dataset: metrics, a synthetic dataset with
    its stats.json, both sample grids and checkpoints, dvc.lock."""
    for name, m in DEMO.items():
        write_json(root / "metrics" / f"{name}.json", m)
    write_json(root / "metrics/segmentation_plots/data_efficiency.json", CURVE)
    for run in ("real-seed0", "real_synth-seed0"):
        write_json(root / f"metrics/segmenter/{run}.json", {"miou": 0.11, "seconds": 40.0})
    table = load_class_table(prepared)
    synth = root / "data/synthetic"
    shutil.copytree(prepared, synth)
    hashes = {}
    for which in ("masks", "images"):
        folder = root / "data" / which
        folder.mkdir(parents=True)
        masks = np.random.default_rng(0).integers(0, table.num_classes, (16, 8, 8), np.uint8)
        Image.fromarray(tile(list(table.colorize(masks)), cols=8)).save(folder / "grid.png")
        (folder / "checkpoint.pt").write_bytes(which.encode())
        hashes[which[:-1]] = hashlib.sha256(which.encode()).hexdigest()
    stats = json.loads((prepared / "stats.json").read_text())
    stats |= {
        "class_presence": {"synthetic": [1.0] * 7, "real": [0.5] * 7},
        "checkpoints": hashes,
    }
    write_json(synth / "stats.json", stats)
    lock = {"stages": {"generate": {"outs": [{"path": "data/synthetic", "md5": "a.dir"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return config(root, prepared)


def config(root: Path, prepared: Path) -> ReportConfig:
    return ReportConfig(
        metrics_dir=str(root / "metrics"),
        prepared=str(prepared),
        synthetic=str(root / "data/synthetic"),
        masks=str(root / "data/masks"),
        images=str(root / "data/images"),
        lock=str(root / "dvc.lock"),
        out=str(root / "report"),
    )


# ---- what "valid HTML" means here ----------------------------------------------------------
VOID = {"meta", "link", "img", "br", "hr", "input", "source", "wbr", "col"}
HTML_TAGS = VOID | set(
    "html head title style body h1 h2 h3 nav a section p div span b i code pre table thead "
    "tbody tr th td figure figcaption details summary".split()
)
SVG_TAGS = {"svg", "rect", "text", "line", "polyline", "circle", "title"}
BLOCK = {"div", "table", "figure", "p", "section", "h1", "h2", "h3", "pre", "details", "nav"}


class StrictHTML(HTMLParser):
    """Well-formedness as the HTML spec's parser sees it, stricter: known tags only, every
    non-void element closed explicitly and in order, no block inside <p>, unique ids, and
    self-closing syntax only for void elements or inside SVG."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._check(tag, dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._check(tag, dict(attrs))
        if tag not in VOID and "svg" not in self.stack:
            self.errors.append(f"<{tag}/> outside SVG")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def _check(self, tag: str, attrs: dict) -> None:
        in_svg = "svg" in self.stack
        if tag not in (SVG_TAGS if in_svg else HTML_TAGS | {"svg"}):
            self.errors.append(f"unknown element <{tag}>")
        if "p" in self.stack and tag in BLOCK:
            self.errors.append(f"<{tag}> inside <p>")
        if "id" in attrs:
            if attrs["id"] in self.ids:
                self.errors.append(f"duplicate id {attrs['id']}")
            self.ids.add(attrs["id"])
        self.urls += [attrs[a] for a in ("src", "href") if attrs.get(a) is not None]


def parse(page: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    return parser


def assert_self_contained_and_valid(page: str) -> StrictHTML:
    parser = parse(page)
    assert parser.doctype.lower() == "doctype html"
    assert parser.errors == [] and parser.stack == []
    # Every image is embedded; links only jump within the page.
    assert all(u.startswith(("data:", "#")) for u in parser.urls), parser.urls
    assert not re.search(r"(https?|file|ftp)://(?!www\.w3\.org/2000/svg)", page)
    assert "url(" not in page and "@import" not in page and "<script" not in page
    return parser


# ---- tests ---------------------------------------------------------------------------------
def test_report_of_a_whole_run(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = make_run(tmp_path, tiny_shapes)
    summary = build_report(cfg, params={"report": {"out": "data/report"}})
    page = (tmp_path / "report/index.html").read_text()
    parser = assert_self_contained_and_valid(page)

    assert summary["sections_not_run"] == [] and len(summary["sections_run"]) == 6
    assert summary["verdict"].startswith("No measurable effect: gain -1.09 pp")
    assert json.loads((tmp_path / "report/summary.json").read_text()) == summary
    images = [u for u in parser.urls if u.startswith("data:image/png;base64,")]
    assert len(images) == 4  # real masks, SemGAN grid, OASIS grid, synthetic pairs
    # the dataset: every class with its colour; masks: the metrics beside the real values
    for name in load_class_table(tiny_shapes).names:
        assert f"<td>{name}</td>" in page
    assert "<td>0.24%</td><td>0.13%</td>" in page  # spurious rate, SemGAN vs real
    assert "<td>0.0186</td><td>0 (by definition)</td>" in page
    assert "<td>few classes</td><td>2</td><td>4.0%</td>" in page  # a rejection reason
    # images and downstream
    assert "<td>FID</td><td>303</td>" in page and "<td>synth_miou_ratio</td><td>0.932</td>" in page
    assert "[-3.98 pp, +1.80 pp]" in page
    assert page.count("not run: ") == 1 and "not run: no trust-filter statistics" in page
    assert page.count("<polyline") == 2  # the data-efficiency curve, both series
    assert page.count("<td>yes</td>") == 2  # both checkpoints are the ones generate used
    for stage, time in [("prepare", "2.6"), ("train_masks", "193.5"), ("train_images", "425.5")]:
        assert f"<td>{stage}</td><td>{time} s</td>" in page  # stage times
    # every section says how to read it
    assert page.count('<p class="read">How to read: ') == 6
    md = markdown(summary)
    assert "| gain | -1.09 pp |" in md and (tmp_path / "report/index.html").as_uri() in md


def test_report_with_keys_and_files_missing_says_not_run(tiny_shapes: Path, tmp_path: Path):
    write_json(tmp_path / "metrics/prepare.json", DEMO["prepare"])
    write_json(tmp_path / "metrics/train_masks.json", {"class_js": 0.02})  # most keys missing
    write_json(tmp_path / "metrics/segmentation.json", {"miou_real": 0.1})  # no gain yet
    (tmp_path / "metrics/generate.json").write_text("{not json")
    summary = build_report(config(tmp_path, tiny_shapes))
    page = (tmp_path / "report/index.html").read_text()
    assert_self_contained_and_valid(page)

    assert summary["verdict"] == "No verdict yet: the downstream evaluation has not run."
    assert "Images: OASIS vs real" in summary["sections_not_run"]
    assert "not run: no sample grid" in page and "not run: no synthetic shards" in page
    assert "not run: the data-efficiency curve" in page
    assert "unreadable inputs" in page and "generate.json" in page  # noted, not fatal
    assert "<td>class JS divergence</td><td>0.02</td>" in page
    assert "real label maps" in page  # the real half of the masks section still shows


def test_odd_inputs_cost_one_section_not_the_page(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = make_run(tmp_path, tiny_shapes)
    (tmp_path / "data/images/grid.png").write_bytes(b"not a png")
    write_json(tmp_path / "metrics/generate.json", DEMO["generate"] | {"rejected_spurious": "x"})
    summary = build_report(cfg)
    page = (tmp_path / "report/index.html").read_text()
    assert_self_contained_and_valid(page)
    assert "data/images/grid.png is not a readable image" in page
    assert "could not build this section: ValueError" in page  # the filter table of masks
    assert "Masks" in summary["sections_not_run"] and len(summary["sections_run"]) == 5


def test_report_from_nothing_at_all(tmp_path: Path) -> None:
    cfg = config(tmp_path, tmp_path / "no-prepared")
    summary = build_report(cfg)
    page = (tmp_path / "report/index.html").read_text()
    assert_self_contained_and_valid(page)
    assert summary["sections_run"] == ["Provenance"]
    assert summary["missing_metrics"] == sorted(DEMO)
    assert page.count("not run: ") >= 6


def test_keys_added_later_show_up(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = make_run(tmp_path, tiny_shapes)
    write_json(tmp_path / "metrics/train_images.json", DEMO["train_images"] | {"kid": 0.0123})
    write_json(tmp_path / "metrics/trust_filter.json", {"trust_kept_fraction": 0.8})
    write_json(tmp_path / "metrics/train_masks.json", DEMO["train_masks"] | {"new_key": 7.0})
    build_report(cfg)
    page = (tmp_path / "report/index.html").read_text()
    assert "<td>KID</td><td>0.0123</td>" in page
    assert "<td>trust_filter</td><td>trust_kept_fraction</td><td>0.8</td>" in page
    assert "<td>new_key</td><td>7</td>" in page  # in the provenance's "all metrics"


@pytest.mark.parametrize(
    "seg, cls, start",
    [
        ({"miou_gain": 0.02, "miou_gain_ci95_low": 0.01, "miou_gain_ci95_high": 0.03}, "good", "Use it"),
        ({"miou_gain": -0.02, "miou_gain_ci95_low": -0.03, "miou_gain_ci95_high": -0.01}, "bad", "Do not"),
        ({"miou_gain": 0.01, "miou_gain_ci95_low": -0.01, "miou_gain_ci95_high": 0.03}, "neutral", "No measurable"),
        ({"miou_gain": 0.01, "n_seeds": 1.0}, "neutral", "Gain +1.00 pp from 1 seed"),
        ({}, "neutral", "No verdict yet"),
    ],
)  # fmt: skip
def test_verdict_follows_the_interval(seg: dict, cls: str, start: str) -> None:
    got_cls, sentence = verdict(seg)
    assert got_cls == cls and sentence.startswith(start)


def test_stale_stages_come_from_dvc_lock() -> None:
    lock = {
        "generate": {"outs": [{"path": "data/synthetic", "md5": "new.dir"}]},
        "train_segmenter_real_synth@0": {"deps": [{"path": "data/synthetic", "md5": "old.dir"}]},
        "export": {"deps": [{"path": "data/synthetic", "md5": "new.dir"}]},
    }
    assert stale_stages(lock) == [
        ("train_segmenter_real_synth@0", "data/synthetic", "old.dir", "new.dir")
    ]


def test_cli_writes_the_page(tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    cfg = make_run(tmp_path, tiny_shapes)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["report"] |= {k: getattr(cfg, k) for k in ("metrics_dir", "synthetic", "masks", "lock")}
    params["report"] |= {"prepared": str(tiny_shapes), "images": cfg.images}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "elsewhere"
    code = semsynth(["report", "--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    assert code == 0 and (out / "index.html").is_file()
    assert json.loads(capsys.readouterr().out) == {"sections_run": 6.0, "sections_not_run": 0.0}
    assert f"  metrics_dir: {cfg.metrics_dir}\n" in (out / "index.html").read_text()  # params


# ---- the page in a real browser (slow: starts Chromium) ------------------------------------
sys.path.insert(0, str(REPO / "scripts"))
import report_check  # noqa: E402


def chromium() -> None:
    try:
        report_check.find_browser()
    except report_check.ChromiumMissing as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_page_renders_in_chromium_without_errors(tiny_shapes: Path, tmp_path: Path) -> None:
    chromium()
    build_report(make_run(tmp_path, tiny_shapes))
    page, shot = tmp_path / "report/index.html", tmp_path / "shot.png"
    result = report_check.check(page, shot)
    assert result.problems(page.resolve().as_uri()) == []
    assert result.requests[0] == page.resolve().as_uri()
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height == result.size[1] > 2000
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50  # drawn, not blank


@pytest.mark.slow
def test_the_browser_check_catches_errors_and_outside_loads(tmp_path: Path) -> None:
    chromium()
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<img src="missing.png" alt="">'
        "<script>console.error('boom')</script></body></html>"
    )
    problems = report_check.check(page, None).problems(page.resolve().as_uri())
    assert any("boom" in p for p in problems)
    assert any("missing.png" in p for p in problems)  # a request outside the page
    assert any(p.startswith("failed load") for p in problems)
