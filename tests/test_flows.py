"""Flow plumbing without a server: params → config, DVC versioning helpers, the run report."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import common, report
from flows.generate_dataset import task_runner
from pipeline.errors import ConfigError
from pipeline.shards import load_class_table

PARAMS = """\
# top comment stays
prepare:
  dataset: shapes   # inline comment stays
  size: [64, 64]
  options: {}
generate:
  n_samples: 800
"""


def test_stage_config_applies_overrides_like_the_cli(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS)
    cfg = common.stage_config(
        "pipeline.prepare", tmp_path / "params.yaml", ["prepare.size=[32,48]"]
    )
    assert cfg.size == (32, 48) and cfg.dataset == "shapes"
    with pytest.raises(ConfigError, match="bogus"):
        common.stage_config("pipeline.prepare", tmp_path / "params.yaml", ["prepare.bogus=1"])


def test_persist_overrides_keeps_comments_and_sets_nested_values(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    common.persist_overrides(path, ["generate.n_samples=16", "prepare.options.n_train=8"])
    text = path.read_text()
    assert "# top comment stays" in text and "# inline comment stays" in text
    import yaml

    data = yaml.safe_load(text)
    assert data["generate"]["n_samples"] == 16
    assert data["prepare"]["options"] == {"n_train": 8}
    assert data["prepare"]["size"] == [64, 64]
    with pytest.raises(ConfigError, match="nosuch"):
        common.persist_overrides(path, ["nosuch.key=1"])
    assert yaml.safe_load(path.read_text()) == data  # a bad override leaves the file alone


def test_dvc_version_refuses_what_it_cannot_record_truthfully(tmp_path: Path) -> None:
    out = common.dvc_version(["generate"], params=tmp_path / "params.yaml", repo=tmp_path)
    assert out["versioned"] is False and "no .dvc" in out["reason"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    common.dvc("init", "-q", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    other = tmp_path / "other.yaml"
    out = common.dvc_version(["generate"], params=other, repo=tmp_path)
    assert out["versioned"] is False and "other.yaml" in out["reason"]


def test_dvc_errors_name_the_command_and_folder(tmp_path: Path) -> None:
    with pytest.raises(common.SemsynthError, match="dvc status"):
        common.dvc("status", cwd=tmp_path)


def test_task_runner_picks_threads_or_dask() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner(None, 3), ThreadPoolTaskRunner)
    local = task_runner("local", 2)
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["processes"]
    remote = task_runner("tcp://127.0.0.1:8786")
    assert remote.address == "tcp://127.0.0.1:8786"


@pytest.fixture
def synthetic(tiny_shapes: Path, tmp_path: Path) -> Path:
    """A shard dataset with a stats.json shaped like the one `generate` writes."""
    root = tmp_path / "synthetic"
    shutil.copytree(tiny_shapes, root)
    table = load_class_table(root)
    c = table.num_classes
    freq = np.linspace(1, 2, c) / np.linspace(1, 2, c).sum()
    stats = {
        "counts": {"train": 48, "val": 16},
        "masks": 48,
        "candidates": 60,
        "images_per_mask": 1,
        "rejected_reasons": {"spurious": 12, "hist": 0},
        "class_frequency": {"synthetic": freq.tolist(), "real": freq[::-1].tolist()},
        "class_presence": {"synthetic": [1.0] * c, "real": [0.5] * c},
    }
    (root / "stats.json").write_text(json.dumps(stats))
    return root


def test_report_has_counts_frequencies_and_a_decodable_sample_grid(synthetic: Path) -> None:
    markdown, rows = report.dataset_report(synthetic, exported={"coco": 48})
    table = load_class_table(synthetic)
    assert [r["class"] for r in rows] == table.names
    assert rows[0]["synthetic_pixel_share"] == pytest.approx(
        json.loads((synthetic / "stats.json").read_text())["class_frequency"]["synthetic"][0],
        abs=1e-4,
    )
    assert "**train**: 48 image/label pairs" in markdown
    assert "48 masks kept of 60 candidates" in markdown and "spurious 12" in markdown
    assert "exported coco: 48 samples" in markdown
    assert all(f"| {name} |" in markdown for name in table.names)
    # The grid is an inline PNG: 8 samples, 4 per row, each image | colourised mask.
    uri = markdown.split("![samples](")[1].split(")")[0]
    import base64
    import io

    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert grid.shape == (2 * 34, 4 * 66, 3)  # 32x32 tiles, image + mask side by side, 2px gaps
    first_mask = grid[:32, 32:64]
    colours = {tuple(c) for c in first_mask.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in table.colors.tolist()} | {tuple(table.ignore_color)}
