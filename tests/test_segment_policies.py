"""synth_policy (replace | add | pretrain): equal real exposure between paired runs, the schedules,
resume inside pretrain's synthetic phase, replace unchanged; the trust filter inside a run."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.segmenter_data as sd
import pipeline.segmenter_schedule as ss
import pipeline.train_segmenter as ts
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import ConfigError
from pipeline.errors import DatasetError
from pipeline.predict import run_name
from pipeline.shards import Sample, ShardWriter, load_class_table, load_split
from pipeline.train_segmenter import TrainSegmenterConfig, schedule, train_segmenter

REPO = Path(__file__).resolve().parents[1]
BEFORE_SYNTH_POLICY = "9053a3b"  # the last commit whose train_segmenter had no synth_policy


def tiny_cfg(root: Path, **kw) -> TrainSegmenterConfig:
    base = dict(
        encoder_weights=None, steps=2, batch_size=4, bf16=False, device="cpu",
        checkpoint_every=0, out=str(root / "seg"), metrics_dir=str(root / "metrics"),
        live_dir=str(root / "live"),
    )  # fmt: skip
    return TrainSegmenterConfig(**{**base, **kw})


# ---- schedules (no training) ------------------------------------------------------------------


def test_add_and_pretrain_draw_the_real_only_runs_real_batches():
    cfg = TrainSegmenterConfig(steps=7, batch_size=4, synth_batch_size=3, pretrain_steps=5)
    real = schedule(cfg, "real", 13, 0, seed=2)
    add = schedule(replace(cfg, synth_policy="add"), "real_synth", 13, 9, seed=2)
    pre = schedule(replace(cfg, synth_policy="pretrain"), "real_synth", 13, 9, seed=2)
    assert (real.total, add.total, pre.total, pre.pretrain) == (7, 7, 12, 5)
    for r in range(cfg.steps):
        base, a, p = real.plan(r), add.plan(r), pre.plan(pre.pretrain + r)
        assert len(base.synth) == 0 and len(a.synth) == 3 and len(p.synth) == 0
        for other in (a, p):  # same pairs, same augmentation seed, same lr at the same real step
            assert np.array_equal(other.real, base.real)
            assert (other.seed, other.lr) == (base.seed, base.lr)
        assert p.fresh_optimizer == (r == 0) and not a.joint
    synthetic = [pre.plan(s) for s in range(pre.pretrain)]
    assert all(len(p.real) == 0 and len(p.synth) == 4 for p in synthetic)  # batch_size each
    assert [p.lr for p in synthetic] == [ss.cosine_lr(s, 5, cfg.lr) for s in range(5)]
    # the synthetic stream covers the pool before repeating a pair
    drawn = np.concatenate([add.plan(s).synth for s in range(3)])
    assert sorted(drawn) == list(range(9))
    with pytest.raises(ConfigError, match="synth_weight"):
        TrainSegmenterConfig(synth_weight=0.5)  # replace has no separate synthetic loss
    with pytest.raises(ConfigError, match="trust_drop_fraction"):
        TrainSegmenterConfig(trust_drop_fraction=1.0)


def test_replace_schedule_is_the_one_from_before_synth_policy():
    """Stored figures from the code before #18 (batch_indices(step, 8, 0.3, 13, 7, seed=1)):
    replace keeps its batches and seeds, so its runs stay bit-identical."""
    cfg = TrainSegmenterConfig(batch_size=8, synth_fraction=0.3)
    sched = schedule(cfg, "real_synth", 13, 7, seed=1)
    before = [
        ([1, 10, 7, 9, 12, 4], [6, 1]),
        ([5, 8, 0, 2, 11], [4, 0, 3]),
        ([6, 3, 10, 2, 6, 12], [2, 5]),
        ([8, 1, 5, 3, 4], [1, 5, 3]),
    ]
    for step, (real, synth) in enumerate(before):
        plan = sched.plan(step)
        assert (plan.real.tolist(), plan.synth.tolist()) == (real, synth)
        assert plan.joint and plan.seed == 1 * 1_000_003 + step and plan.lr == ss._lr(step, cfg)


# ---- paired runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_dir(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic stand-ins: the real val masks with colour-inverted val images."""
    root = tmp_path_factory.mktemp("policy_synth")
    images, masks, _ = load_split(tiny_shapes, "val")
    shutil.copy(tiny_shapes / "classes.json", root / "classes.json")
    with ShardWriter(root / "train-000000.tar", load_class_table(tiny_shapes)) as w:
        for i in range(10):
            w.write(Sample(f"s{i}", masks[i], (255 - images[i]).astype(np.uint8)))
    return root


def recording_make_batch(log: list):
    """Wrap make_batch: record each step's plan and the real part it fed the model."""
    real_make_batch = ts.make_batch

    def record(cfg, data, plan, proc):
        x, y, n_real = real_make_batch(cfg, data, plan, proc)
        real_x = x if n_real is None and len(plan.synth) == 0 else x[: n_real or 0]
        log.append((plan.real.tolist(), plan.synth.tolist(), real_x.clone()))
        return x, y, n_real

    return record


@pytest.fixture(scope="module")
def runs(tiny_shapes, synth_dir, tmp_path_factory) -> dict:
    """real, add (2 synthetic pairs a step) and pretrain (2 synthetic steps) runs of seed 0."""
    root = tmp_path_factory.mktemp("policies")
    jobs = {
        "real": ("real", {}),
        "add": ("real_synth", {"synth_policy": "add", "synth_batch_size": 2}),
        "pretrain": ("real_synth", {"synth_policy": "pretrain", "pretrain_steps": 2}),
    }
    out = {"root": root}
    for tag, (mode, kw) in jobs.items():
        log: list = []
        cfg = tiny_cfg(root, **kw)
        folder = Path(cfg.out) / (run_name(mode, 0) if tag == "real" else tag)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ts, "make_batch", recording_make_batch(log))
            m = train_segmenter(cfg, tiny_shapes, synth_dir, folder, mode, 0, progress=False)
        out[tag] = {"cfg": cfg, "metrics": m, "log": log, "folder": folder}
    return out


def test_paired_runs_see_exactly_the_same_real_images(runs):
    real, add, pre = runs["real"], runs["add"], runs["pretrain"]
    for r in (real, add, pre):
        assert r["metrics"]["real_images_seen"] == r["metrics"]["real_seen"] == 2 * 4
    assert real["metrics"]["synth_images_seen"] == 0
    assert add["metrics"]["synth_images_seen"] == 2 * 2  # steps x synth_batch_size
    assert pre["metrics"]["synth_images_seen"] == 2 * 4  # pretrain_steps x batch_size
    assert pre["metrics"]["pretrain_steps"] == 2 and add["metrics"]["pretrain_steps"] == 0
    # the pretrain run: 2 synthetic-only steps, then the real-only run's 2 steps
    assert [(len(r), len(s)) for r, s, _ in pre["log"]] == [(0, 4), (0, 4), (4, 0), (4, 0)]
    pre_real = [e for e in pre["log"] if e[0]]
    for other in (add["log"], pre_real):  # same positions and the same augmented pixels
        assert [r for r, _, _ in other] == [r for r, _, _ in real["log"]]
        for (_, _, a), (_, _, b) in zip(other, real["log"], strict=True):
            assert torch.equal(a, b)
    final = load_checkpoint(pre["folder"] / "model.pt")
    assert final["config"]["images_seen"] == {"real": 8, "synth": 8}
    assert final["config"]["synth"]["synth_policy"] == "pretrain"


def test_pretrain_resumes_inside_its_synthetic_phase(tiny_shapes, synth_dir, runs, monkeypatch):
    full = runs["pretrain"]
    cfg = replace(full["cfg"], checkpoint_every=1)
    part = runs["root"] / "pretrain-part"
    calls = {"n": 0}
    real_make_batch = ts.make_batch

    def crash_at_step_1(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_make_batch(*args)

    monkeypatch.setattr(ts, "make_batch", crash_at_step_1)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(cfg, tiny_shapes, synth_dir, part, "real_synth", 0, progress=False)
    ckpt = load_checkpoint(part / "model.pt")
    assert ckpt["step"] == 1 and ckpt["seen"] == [0, 4]  # inside the synthetic phase
    monkeypatch.setattr(ts, "make_batch", real_make_batch)
    m = train_segmenter(cfg, tiny_shapes, synth_dir, part, "real_synth", 0, progress=False)
    assert (m["real_images_seen"], m["synth_images_seen"]) == (8, 8)
    a, b = load_checkpoint(full["folder"] / "model.pt"), load_checkpoint(part / "model.pt")
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k


# ---- the trust filter inside a run ---------------------------------------------------------------


def test_trust_filter_uses_the_real_only_run_and_caches(tiny_shapes, synth_dir, runs, monkeypatch):
    from pipeline import distributed
    from pipeline.trust_filter import TrustResult, load_result

    cfg = tiny_cfg(runs["root"], steps=1, synth_policy="add", trust_filter=True,
                   trust_drop_fraction=0.2)  # fmt: skip
    out = runs["root"] / "trusted"
    m = train_segmenter(cfg, tiny_shapes, synth_dir, out, "real_synth", 0, progress=False)
    assert m["trust_pool_images"] == 10 and m["trust_dropped_images"] == 2
    assert m["n_synth_pool"] == 8 and 0 <= m["trust_ignored_share"] <= 1
    assert load_checkpoint(out / "model.pt")["config"]["trust"] == {
        k: v for k, v in m.items() if k.startswith("trust_")
    }
    # the cache is what a resumed run reads; recomputing it gives the same result
    data = ts.load_run_data(cfg, tiny_shapes, synth_dir, "real_synth", 1.0, 0)
    proc = distributed.init("cpu")
    monkeypatch.setattr(sd, "score_pool", lambda *a, **k: pytest.fail("the cache was not used"))
    cached, stats = ts.filter_synthetic(cfg, data, proc, out, 0, 1.0)
    assert stats == {k: v for k, v in m.items() if k.startswith("trust_")}
    monkeypatch.undo()
    again, _ = ts.filter_synthetic(cfg, data, proc, runs["root"] / "fresh", 0, 1.0, reuse=False)
    pos = np.arange(len(cached.synth))
    for x, y in zip(cached.synth.get(pos), again.synth.get(pos), strict=True):
        assert np.array_equal(x, y)
    result = load_result(out / sd.TRUST_CACHE, "wrong fingerprint")
    assert result is None and isinstance(cached.synth.result, TrustResult)


def test_trust_filter_needs_the_finished_real_only_run(tiny_shapes, tmp_path):
    table = load_class_table(tiny_shapes)
    cpu = torch.device("cpu")
    with pytest.raises(
        DatasetError, match=r"needs the real-only run of seed 3.*--mode real --seed 3"
    ):
        sd.real_only_model(tmp_path / "none.pt", 3, 1.0, table, cpu)
    meta = {"mode": "real", "seed": 3, "real_fraction": 0.5, "class_names": table.names}
    save_checkpoint(tmp_path / "part.pt", {"model": {}, "optimizer": {}, "step": 1, "config": meta})
    with pytest.raises(DatasetError, match=r"unfinished.*--real-fraction 0.5"):
        sd.real_only_model(tmp_path / "part.pt", 3, 0.5, table, cpu)
    save_checkpoint(tmp_path / "other.pt", {"model": {}, "step": 2, "config": {**meta, "seed": 4}})
    with pytest.raises(DatasetError, match="not the real-only run"):
        sd.real_only_model(tmp_path / "other.pt", 3, 0.5, table, cpu)


# ---- replace against the code before synth_policy ------------------------------------------------


@pytest.mark.slow
def test_replace_is_bit_identical_to_the_code_before_synth_policy(
    tiny_shapes, synth_dir, tmp_path, monkeypatch
):
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_SYNTH_POLICY}:pipeline/train_segmenter.py"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {BEFORE_SYNTH_POLICY} is not in this checkout")
    (tmp_path / "ts_before.py").write_text(source)
    spec = importlib.util.spec_from_file_location("ts_before", tmp_path / "ts_before.py")
    before = importlib.util.module_from_spec(spec)
    sys.modules["ts_before"] = before  # dataclasses look their module up
    try:
        spec.loader.exec_module(before)
    except ImportError as e:
        pytest.skip(f"the old module no longer imports: {e}")
    # the old code ran fp32 on CPU contiguous; channels-last sums the convolutions in another order
    monkeypatch.setattr(ts, "channels_last_or_cpu", lambda device, bf16: False)
    for mode in ("real", "real_synth"):
        states = []
        for mod in (before, ts):
            cfg = mod.TrainSegmenterConfig(
                encoder_weights=None, steps=3, batch_size=6, bf16=False, device="cpu",
                checkpoint_every=0, synth_fraction=0.3, metrics_dir=str(tmp_path / "m"),
                live_dir=str(tmp_path / "l"),
                **({"decoder_channels": []} if mod is ts else {}),  # the old code's smp decoder
            )  # fmt: skip
            out = tmp_path / f"{mod.__name__}-{mode}"
            mod.train_segmenter(cfg, tiny_shapes, synth_dir, out, mode, 0, progress=False)
            states.append(load_checkpoint(out / "model.pt")["model"])
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), mode
