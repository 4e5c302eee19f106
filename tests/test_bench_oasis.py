"""bench.oasis_ablation's plumbing: variants as strict overrides, budgets, rows merged and saved
after each one, both generators of a checkpoint. (Training and scoring run in the bench itself.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bench.common
from bench import oasis_ablation as ab
from models.oasis import OASISGenerator
from pipeline.checkpoint import save_checkpoint
from pipeline.errors import ConfigError
from pipeline.train_images import TrainImagesConfig


def test_variant_config_is_strict_and_resolves_the_budget_share() -> None:
    base = TrainImagesConfig()
    cfg = ab.variant_config(base, {"ema_halflife_share": 0.1, "z_dim": 0}, total_images=1600)
    assert (cfg.ema_halflife_images, cfg.z_dim, cfg.total_images) == (160, 0, 1600)
    assert cfg.betas == base.betas  # a tuple again after the round trip through a dict
    with pytest.raises(ConfigError, match="no_such_key"):
        ab.variant_config(base, {"no_such_key": 1}, 64)
    with pytest.raises(ConfigError, match="flip"):
        ab.variant_config(base, {"flip": "yes"}, 64)


def test_every_set_builds() -> None:
    # The d17 rows name keys of issue #17's TrainImagesConfig: a typo fails here, not after
    # hours of other rows.
    for variants in ab.SETS.values():
        for change in variants.values():
            ab.variant_config(TrainImagesConfig(), change, 64)


def test_select_by_name_or_number() -> None:
    variants = {"a": {}, "b c": {"z_dim": 0}, "d": {}}
    assert list(ab.select(variants, None)) == ["a", "b c", "d"]
    assert list(ab.select(variants, "d, 2")) == ["d", "b c"]
    with pytest.raises(SystemExit, match="1: a; 2: b c; 3: d"):
        ab.select(variants, "e")


def test_images_for_minutes() -> None:
    assert ab.images_for(1.0, 10.0, 16) == 608  # 600 images → 37.5 batches → 38
    assert ab.images_for(0.001, 1.0, 16) == 16  # at least one batch


def test_rows_merge_and_are_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    rows = ab.merge([], {"variant": "a", "fid": 3.0})
    rows = ab.merge(rows, {"variant": "b", "fid": 2.0})
    rows = ab.merge(rows, {"variant": "a", "fid": 1.0})  # replaced in place
    assert rows == [{"variant": "a", "fid": 1.0}, {"variant": "b", "fid": 2.0}]
    bench.common.save("x", {"rows": rows})
    assert ab.previous_rows("x") == rows
    assert json.loads((tmp_path / "x.json").read_text())["machine"]["cpus"] >= 1
    assert ab.previous_rows("missing") == []


def test_summary_generic_and_named() -> None:
    rows = [
        {"variant": "oasis D", "fid": 80.0, "kid": 0.05, "fid_raw": 90.0, "images_seen": 10},
        {"variant": "pretrained D", "fid": 60.0, "kid": 0.03, "fid_raw": 70.0, "images_seen": 20},
        {"variant": "old row", "fid": 70.0},  # from a JSON written before KID existed
    ]
    line = ab.summary(rows, "d17")
    assert line.startswith("best FID 60.0 (pretrained D: KID 30.00e-3, raw G FID 70.0")
    assert "vs 80.0 (oasis D) over 3 variants" in line
    ablation = [
        {"variant": k, "fid": 10.0 + i, "ms_ssim_seeds": 0.5} for i, k in enumerate(ab.VARIANTS)
    ]
    assert ab.summary(ablation, "ablation").startswith("FID full 10.0 vs no LabelMix 11.0")
    assert ab.summary(ablation[:2], "ablation").startswith("best FID 10.0")  # a subset


def test_load_generators_ema_and_raw(tmp_path: Path) -> None:
    g = OASISGenerator(3, 16, 16, widths=(8, 8, 8), z_dim=4, spade_hidden=8)
    raw = {k: v + 1 if v.is_floating_point() else v for k, v in g.state_dict().items()}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"arch": g.arch(), "ema": g.state_dict(), "model": raw})
    gens = ab.load_generators(path, torch.device("cpu"))
    assert set(gens) == {"", "_raw"}
    name, p = next(iter(g.named_parameters()))
    assert torch.equal(dict(gens[""].named_parameters())[name], p)
    assert torch.equal(dict(gens["_raw"].named_parameters())[name], p + 1)
    assert not gens["_raw"].training and gens["_raw"].ignore_index == 255
