"""Training data: label subsets, exact real/synthetic mixing, resume, the CLI run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.train_segmenter as ts
from pipeline.augment import AugmentConfig
from pipeline.checkpoint import load_checkpoint
from pipeline.errors import DatasetError
from pipeline.predict import run_name
from pipeline.segmenter_schedule import batch_indices
from pipeline.shards import Sample, ShardWriter, label_subset, load_class_table, load_split
from pipeline.train_segmenter import TrainSegmenterConfig, train_segmenter

SYNTH_VALUE = 7  # the synthetic stand-in's images are flat grey 7: real images never are


def tiny_cfg(tmp: Path, **kw) -> TrainSegmenterConfig:
    base = dict(
        encoder_weights=None,
        steps=4,
        batch_size=6,
        bf16=False,
        device="cpu",
        checkpoint_every=0,
        metrics_dir=str(tmp / "metrics"),
        live_dir=str(tmp / "live"),
    )
    return TrainSegmenterConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def synth_dir(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic stand-in: the real masks with flat images, 10 pairs in two shards."""
    root = tmp_path_factory.mktemp("synth")
    table = load_class_table(tiny_shapes)
    _, masks, _ = load_split(tiny_shapes, "val")
    shutil.copy(tiny_shapes / "classes.json", root / "classes.json")
    for shard in range(2):
        with ShardWriter(root / f"train-{shard:06d}.tar", table) as w:
            for i in range(5):
                image = np.full((*masks.shape[1:], 3), SYNTH_VALUE, np.uint8)
                w.write(Sample(f"s{shard}_{i}", masks[shard * 5 + i], image))
    return root


def test_label_subsets_are_deterministic_nested_and_sized():
    a = label_subset(200, 0.25, seed=3)
    assert np.array_equal(a, label_subset(200, 0.25, seed=3))
    assert len(a) == 50 and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, label_subset(200, 0.25, seed=4))
    assert set(label_subset(200, 0.1, seed=3)) <= set(a)  # 10% lies inside 25%
    assert len(label_subset(5, 0.01, seed=0)) == 1  # never empty
    assert np.array_equal(label_subset(7, 1.0, seed=9), np.arange(7))


def test_batches_mix_exactly_and_cover_every_sample():
    b, f, steps = 8, 0.3, 50
    per_batch = []
    real_all, synth_all = [], []
    for step in range(steps):
        r, s = batch_indices(step, b, f, n_real=13, n_synth=7, seed=1)
        assert len(r) + len(s) == b
        per_batch.append(len(s))
        real_all += r.tolist()
        synth_all += s.tolist()
    assert sum(per_batch) == round(steps * b * f) == 120
    assert set(per_batch) <= {2, 3}  # floor or ceil of 2.4 in every batch
    # whole epochs: each real item equally often (±1 for the unfinished epoch)
    counts = np.bincount(real_all, minlength=13)
    assert counts.max() - counts.min() <= 1 and len(real_all) == 280
    assert np.bincount(synth_all, minlength=7).min() >= 120 // 7
    again = batch_indices(17, b, f, 13, 7, seed=1)
    assert all(
        np.array_equal(x, y) for x, y in zip(again, batch_indices(17, b, f, 13, 7, 1), strict=True)
    )
    assert not np.array_equal(batch_indices(17, b, f, 13, 7, seed=2)[0], again[0])


def test_real_synth_run_sees_the_configured_share(tiny_shapes, synth_dir, tmp_path, monkeypatch):
    seen = []  # (real, synthetic) per batch, counted from the pixels the model is fed

    real_augment = ts.augment

    def counting(x, y, *args, **kw):
        flat = (x * 255).round().eq(SYNTH_VALUE).flatten(1).all(1)
        seen.append((int((~flat).sum()), int(flat.sum())))
        return real_augment(x, y, *args, **kw)

    monkeypatch.setattr(ts, "augment", counting)
    cfg = tiny_cfg(tmp_path, steps=5, batch_size=6, synth_fraction=0.3, real_fraction=0.5)
    m = train_segmenter(
        cfg, tiny_shapes, synth_dir, tmp_path / "run", "real_synth", 0, progress=False
    )
    assert len(seen) == 5
    assert sum(s for _, s in seen) == 9 and sum(r for r, _ in seen) == 21  # round(30 * 0.3)
    assert all(s in (1, 2) for _, s in seen)
    assert (m["real_seen"], m["synth_seen"]) == (21.0, 9.0)
    assert m["n_real_train"] == 24 and m["n_synth_pool"] == 10
    saved = json.loads((tmp_path / "metrics" / "real_synth-frac0.5-seed0.json").read_text())
    assert saved["miou"] == m["miou"] and 0 <= m["miou"] <= 1
    assert (tmp_path / "live" / "real_synth-frac0.5-seed0" / "metrics.json").is_file()


def test_synth_budget_picks_its_pairs_before_reading_any(
    tiny_shapes, synth_dir, tmp_path, monkeypatch
):
    from pipeline.data import ShardIndex

    reads = []
    real_sample = ShardIndex.sample

    def counting(self, i, *args, **kw):
        reads.append((self.root, i))
        return real_sample(self, i, *args, **kw)

    monkeypatch.setattr(ShardIndex, "sample", counting)
    cfg = tiny_cfg(tmp_path, synth_budget=4)
    data = ts.load_run_data(cfg, tiny_shapes, synth_dir, "real_synth", 0.5, seed=0)
    assert len(data.real) == 24 and len(data.synth) == 4
    # Before training only the size probes (sample 0 of each) are read: no pixels of the pool.
    assert sorted({i for _, i in reads}) == [0] and len(reads) <= 3
    reads.clear()
    images, masks = data.synth.get(np.arange(4))
    assert images.shape == (4, 32, 32, 3) and all(images.reshape(4, -1).max(1) == SYNTH_VALUE)
    assert sorted(i for root, i in reads if root == synth_dir) == sorted(data.synth.rows.tolist())
    mem = ts.load_run_data(tiny_cfg(tmp_path, synth_budget=4, in_memory=True), tiny_shapes,
                           synth_dir, "real_synth", 0.5, seed=0)  # fmt: skip
    assert np.array_equal(mem.synth.get(np.arange(4))[1], masks)  # the same pairs either way


def test_real_mode_never_sees_synthetic(tiny_shapes, synth_dir, tmp_path):
    m = train_segmenter(
        tiny_cfg(tmp_path, steps=2),
        tiny_shapes,
        synth_dir,
        tmp_path / "r",
        "real",
        0,
        progress=False,
    )
    assert m["synth_seen"] == 0 and m["real_seen"] == 12


def test_missing_synthetic_data_says_what_to_run(tiny_shapes, tmp_path):
    with pytest.raises(DatasetError, match="semsynth generate"):
        train_segmenter(
            tiny_cfg(tmp_path),
            tiny_shapes,
            tmp_path / "nope",
            tmp_path / "r",
            "real_synth",
            0,
            progress=False,
        )


def test_resume_continues_exactly(tiny_shapes, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, steps=4, checkpoint_every=2, augment=AugmentConfig(scale=(0.8, 1.25)))
    full = tmp_path / "full"
    train_segmenter(cfg, tiny_shapes, None, full, "real", 0, progress=False)

    calls = {"n": 0}
    real_augment = ts.augment

    def crash_at_step_3(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_augment(*args, **kw)

    part = tmp_path / "part"
    monkeypatch.setattr(ts, "augment", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(cfg, tiny_shapes, None, part, "real", 0, progress=False)
    assert load_checkpoint(part / "model.pt")["step"] == 2
    monkeypatch.setattr(ts, "augment", real_augment)
    m = train_segmenter(cfg, tiny_shapes, None, part, "real", 0, progress=False)
    assert m["real_seen"] == 24  # the seen counts continue too
    a, b = load_checkpoint(full / "model.pt"), load_checkpoint(part / "model.pt")
    assert a["step"] == b["step"] == 4 and "optimizer" not in b
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k


def test_a_run_leaves_the_callers_global_random_state_alone(tiny_shapes, tmp_path):
    # smp's init and EfficientNet's stochastic depth draw from torch's global generator; a
    # Prefect worker that trains several runs in one process must not inherit the seeds.
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_segmenter(tiny_cfg(tmp_path, steps=1), tiny_shapes, None, tmp_path / "r", "real", 0,
                    progress=False)  # fmt: skip
    assert torch.equal(torch.get_rng_state(), before)


def test_cli_flags_override_params(tiny_shapes, tmp_path, monkeypatch):
    import yaml

    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    params = {
        "train_segmenter": {
            "encoder_weights": None,
            "steps": 2,
            "batch_size": 4,
            "bf16": False,
            "device": "cpu",
            "real_dir": str(tiny_shapes),
            "augment": {"scale": [1.0, 1.0]},
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["train-segmenter", "--seed", "3", "--real-fraction", "0.25", "--quiet"]) == 0
    name = run_name("real", 3, 0.25)
    assert name == "real-frac0.25-seed3"
    assert (tmp_path / "data/segmenter" / name / "model.pt").is_file()
    saved = json.loads((tmp_path / "metrics/segmenter" / f"{name}.json").read_text())
    assert saved["n_real_train"] == 12 and saved["real_seen"] == 8
    assert main(["train-segmenter", "--set", "train_segmenter.arch=segformer"]) == 2
