"""bench.segmenter_budget: real-only runs through the CLI at SHARE:STEPS, rows merged and saved
after each run, the doubling table computed from the saved rows."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

import bench.common
from bench import segmenter_budget as sb


def test_runs_spec_is_parsed_and_bad_items_are_named():
    assert sb.parse_runs("0.25:800, 1:1600,") == [(0.25, 800), (1.0, 1600)]
    with pytest.raises(SystemExit, match="'0.25-800' is not SHARE:STEPS"):
        sb.parse_runs("0.25-800")


def test_doubling_pairs_each_budget_with_twice_it():
    rows = [
        {"share": 0.1, "seed": 0, "steps": 400, "miou": 0.30},
        {"share": 0.1, "seed": 0, "steps": 800, "miou": 0.335},
        {"share": 0.1, "seed": 0, "steps": 1600, "miou": 0.34},
        {"share": 1.0, "seed": 0, "steps": 800, "miou": 0.5},  # no 1600 row: no pair
    ]
    table = sb.doubling(rows)
    assert [(d["steps"], d["change_pp"], d["converged"]) for d in table] == [
        ("400 -> 800", 3.5, False),
        ("800 -> 1600", 0.5, True),
    ]


def test_bench_trains_each_row_and_merges_reruns(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    params = {"train_segmenter": {"encoder_weights": None, "batch_size": 4, "bf16": False,
                                  "device": "cpu", "augment": {"scale": [1.0, 1.0]}}}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["x", "--data", str(tiny_shapes), "--params", "params.yaml", "--name", "b"]
    monkeypatch.setattr(sys, "argv", [*argv, "--runs", "0.5:2,0.5:4"])
    sb.main()
    monkeypatch.setattr(sys, "argv", [*argv, "--runs", "0.5:2", "--append"])
    sb.main()  # replaces the (0.5, 2, seed 0) row, keeps the other
    saved = json.loads((tmp_path / "results/b.json").read_text())
    rows = saved["rows"]
    assert [(r["share"], r["steps"]) for r in rows] == [(0.5, 2), (0.5, 4)]
    for r in rows:  # 24 of the 48 training pairs; steps x batch images seen
        assert r["n_real_train"] == 24 and r["real_images_seen"] == 4 * r["steps"]
        assert r["epochs"] == pytest.approx(r["real_images_seen"] / 24, abs=0.05)
        assert 0 <= r["miou"] <= 1 and "iou_background" in r
    (pair,) = saved["doubling"]
    assert pair["change_pp"] == pytest.approx(100 * (rows[1]["miou"] - rows[0]["miou"]), abs=0.01)
