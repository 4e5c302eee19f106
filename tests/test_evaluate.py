"""Stage `evaluate`: paired seeds, the gain and its interval, per-class IoU, curve and plots."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import DatasetError
from pipeline.evaluate import EvaluateConfig, evaluate
from pipeline.metrics.segmentation import mean_std_ci95
from pipeline.predict import run_name
from pipeline.shards import Sample, ShardWriter, load_class_table, load_split
from pipeline.train_segmenter import TrainSegmenterConfig, train_segmenter


@pytest.fixture(scope="module")
def runs(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real and real+synth runs for seeds 0 and 1, plus one 50%-label pair for the curve."""
    root = tmp_path_factory.mktemp("evaluate")
    synth = root / "synth"
    synth.mkdir()
    shutil.copy(tiny_shapes / "classes.json", synth / "classes.json")
    images, masks, _ = load_split(tiny_shapes, "train")
    with ShardWriter(synth / "train-000000.tar", load_class_table(tiny_shapes)) as w:
        for i in range(8):  # colour-shifted copies stand in for generated pairs
            w.write(Sample(f"s{i}", masks[i], (255 - images[i]).astype(np.uint8)))
    cfg = TrainSegmenterConfig(
        encoder_weights=None,
        steps=2,
        batch_size=4,
        bf16=False,
        device="cpu",
        checkpoint_every=0,
        metrics_dir=str(root / "metrics"),
        live_dir=str(root / "live"),
    )
    seg = root / "segmenter"
    per_run = {}
    jobs = [(m, s, 1.0) for m in ("real", "real_synth") for s in (0, 1)]
    jobs += [("real", 0, 0.5), ("real_synth", 0, 0.5)]
    for mode, seed, frac in jobs:
        name = run_name(mode, seed, frac)
        per_run[name] = train_segmenter(
            cfg, tiny_shapes, synth, seg / name, mode, seed, real_fraction=frac, progress=False
        )
    return {"root": root, "seg": seg, "per_run": per_run}


def eval_cfg(root: Path, **kw) -> EvaluateConfig:
    base = dict(
        seeds=[0, 1],
        device="cpu",
        image_generator=str(root / "no-generator.pt"),
        metrics=str(root / "segmentation.json"),
        plots_dir=str(root / "plots"),
    )
    return EvaluateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def evaluated(tiny_shapes, runs) -> dict:
    return evaluate(eval_cfg(runs["root"]), tiny_shapes, runs["seg"], progress=False)


def test_gain_is_paired_over_seeds(tiny_shapes, runs, evaluated):
    root, per_run, m = runs["root"], runs["per_run"], evaluated
    # evaluate re-scores the checkpoints: same numbers as each run's own held-out score
    real = [per_run[f"real-seed{s}"]["miou"] for s in (0, 1)]
    mixed = [per_run[f"real_synth-seed{s}"]["miou"] for s in (0, 1)]
    assert m["miou_real"] == pytest.approx(np.mean(real), abs=1e-9)
    assert m["miou_real_synth"] == pytest.approx(np.mean(mixed), abs=1e-9)
    assert m["miou_real_std"] == pytest.approx(np.std(real, ddof=1), abs=1e-9)
    gains = [b - a for a, b in zip(real, mixed, strict=True)]
    _, std, lo, hi = mean_std_ci95(gains)
    assert m["miou_gain"] == pytest.approx(np.mean(gains), abs=1e-9)
    assert (m["miou_gain_std"], m["miou_gain_ci95_low"], m["miou_gain_ci95_high"]) == pytest.approx(
        (std, lo, hi)
    )
    assert m["pixel_acc_real"] == pytest.approx(
        np.mean([per_run[f"real-seed{s}"]["pixel_acc"] for s in (0, 1)])
    )
    names = load_class_table(tiny_shapes).names
    assert f"iou_real_{names[0]}" in m and f"iou_real_synth_{names[0]}" in m
    assert all(isinstance(v, float) for v in m.values())
    assert json.loads((root / "segmentation.json").read_text()) == pytest.approx(m)


def test_plots_hold_per_class_iou_and_the_curve(tiny_shapes, runs, evaluated):
    root, m = runs["root"], evaluated
    per_class = json.loads((root / "plots" / "per_class_iou.json").read_text())
    names = load_class_table(tiny_shapes).names
    assert [r["class"] for r in per_class] == names
    assert per_class[0]["iou_real"] == pytest.approx(m[f"iou_real_{names[0]}"])
    curve = json.loads((root / "plots" / "data_efficiency.json").read_text())
    assert [p["real_fraction"] for p in curve] == [0.5, 1.0]  # 0.1 and 0.25 have no runs
    assert curve[1]["miou_gain"] == pytest.approx(m["miou_gain"])
    half = runs["per_run"]
    expect = half["real_synth-frac0.5-seed0"]["miou"] - half["real-frac0.5-seed0"]["miou"]
    assert curve[0]["miou_gain"] == pytest.approx(expect, abs=1e-9)
    assert m["miou_gain_frac50"] == pytest.approx(expect, abs=1e-9)


def test_real_only_when_no_synthetic_runs(tiny_shapes, runs, tmp_path, caplog):
    seg = tmp_path / "seg"
    for s in (0, 1):
        shutil.copytree(runs["seg"] / f"real-seed{s}", seg / f"real-seed{s}")
    m = evaluate(eval_cfg(tmp_path), tiny_shapes, seg, progress=False)
    assert "miou_real" in m and "miou_gain" not in m and "miou_real_synth" not in m
    assert "no real_synth runs" in caplog.text and "synth_miou_ratio skipped" in caplog.text


def test_missing_real_runs_say_what_to_run(tiny_shapes, runs, tmp_path):
    with pytest.raises(
        DatasetError, match=r"seed\(s\) \[2\].*semsynth train-segmenter --mode real"
    ):
        evaluate(eval_cfg(tmp_path, seeds=[0, 2]), tiny_shapes, runs["seg"], progress=False)


def test_synth_ratio_uses_the_image_generator(tiny_shapes, runs, tmp_path, monkeypatch):
    """With a generator that returns the real images, the ratio must be exactly 1."""
    import pipeline.evaluate as ev

    images, _, _ = load_split(tiny_shapes, "val")
    gen = tmp_path / "checkpoint.pt"
    gen.write_bytes(b"stand-in")
    monkeypatch.setattr(ev, "load_image_generator", lambda path, device: "G")
    monkeypatch.setattr(ev, "synthesize", lambda g, masks, seed, **kw: images[:, None].copy())
    m = evaluate(
        eval_cfg(tmp_path, image_generator=str(gen)), tiny_shapes, runs["seg"], progress=False
    )
    assert m["synth_miou_ratio"] == pytest.approx(1.0)
    assert m["miou_real_on_synth"] == pytest.approx(m["miou_real"])


def test_cli_takes_the_seeds_of_train_segmenter(tiny_shapes, runs, tmp_path, monkeypatch):
    import yaml

    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    params = {
        "train_segmenter": {"seeds": [1]},
        "evaluate": {
            "real_dir": str(tiny_shapes),
            "segmenter_dir": str(runs["seg"]),
            "device": "cpu",
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["evaluate", "--quiet"]) == 0
    m = json.loads((tmp_path / "metrics/segmentation.json").read_text())
    assert m["n_seeds"] == 1 and "miou_gain_std" not in m  # one seed: no spread, no interval
    assert m["miou_real"] == pytest.approx(runs["per_run"]["real-seed1"]["miou"], abs=1e-9)
    assert (tmp_path / "metrics/segmentation_plots/per_class_iou.json").is_file()


def test_images_seen_per_mode_and_only_added_keys(runs, evaluated):
    """`dvc metrics diff` compatibility: every key from before synth_policy is still there; the
    additions are the images each mode saw (means over seeds, from the runs' checkpoints)."""
    m, per_run = evaluated, runs["per_run"]
    before = {
        "miou_real", "miou_real_std", "pixel_acc_real", "miou_real_synth", "miou_real_synth_std",
        "pixel_acc_real_synth", "miou_gain", "miou_gain_std", "miou_gain_ci95_low",
        "miou_gain_ci95_high", "n_seeds", "n_heldout", "miou_gain_frac50",
    }  # fmt: skip
    assert before <= set(m)
    added = {k for k in m if k not in before and not k.startswith("iou_")}
    assert added == {
        f"{part}_images_seen_{mode}"
        for part in ("real", "synth")
        for mode in ("real", "real_synth")
    }
    for mode in ("real", "real_synth"):
        runs_ = [per_run[f"{mode}-seed{s}"] for s in (0, 1)]
        assert m[f"real_images_seen_{mode}"] == np.mean([r["real_images_seen"] for r in runs_])
        assert m[f"synth_images_seen_{mode}"] == np.mean([r["synth_images_seen"] for r in runs_])
    assert m["real_images_seen_real"] == 8 and m["real_images_seen_real_synth"] == 4  # replace


def test_run_statistics_average_the_trust_filter_over_seeds():
    from pipeline.evaluate import run_statistics

    metas = [
        {"images_seen": {"real": 8, "synth": 4}, "trust": {"trust_ignored_share": 0.1}},
        {"images_seen": {"real": 8, "synth": 6}, "trust": {"trust_ignored_share": 0.3}},
        {},  # a run from before these were recorded
    ]
    assert run_statistics(metas, "real_synth") == pytest.approx(
        {
            "real_images_seen_real_synth": 8.0,
            "synth_images_seen_real_synth": 5.0,
            "trust_ignored_share": 0.2,
        }
    )


def test_downstream_row_from_a_real_evaluation(runs, evaluated, tmp_path, monkeypatch):
    """bench.downstream reads evaluate's own keys: a row per identity, one default at most."""
    import bench.common
    from bench import downstream

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    metrics, params = tmp_path / "segmentation.json", tmp_path / "params.yaml"
    metrics.write_text(json.dumps(evaluated))
    seg = {"synth_policy": "replace", "real_fraction": 0.5}
    params.write_text(json.dumps({"prepare": {"train_fraction": 0.5}, "train_segmenter": seg}))
    args = [
        "--metrics",
        str(metrics),
        "--params",
        str(params),
        "--name",
        "d",
        "--rare",
        "ring,disc",
    ]
    downstream.main([*args, "--default"])
    (row,) = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert (row["share"], row["policy"], row["filter"], row["mask_source"], row["balance"]) == (
        0.25, "replace", False, "semgan", 0.0,
    )  # fmt: skip
    m = evaluated
    assert (row["seeds"], row["gain"], row["ci_low"]) == (
        2,
        m["miou_gain"],
        m["miou_gain_ci95_low"],
    )
    assert row["real_images_seen"] == m["real_images_seen_real_synth"] and row["default"]
    # the row keeps its own machine: results of AVX2 (fp32) and AMX (bf16) hosts share a file
    from pipeline.device import cpu_has_fast_bf16

    assert row["machine"]["cpus"] == os.cpu_count() and "load_avg_1min" not in row["machine"]
    assert row["machine"]["segmenter_bf16"] == cpu_has_fast_bf16()
    assert "/" in row["machine"]["cpu_family_model"]  # "AMD EPYC" alone names several CPUs
    rare = [m[f"iou_real_synth_{c}"] - m[f"iou_real_{c}"] for c in ("ring", "disc")]
    assert row["rare_gain"] == pytest.approx(np.mean(rare))
    params.write_text(json.dumps({"train_segmenter": {**seg, "synth_policy": "add"}}))
    downstream.main([*args, "--default"])
    downstream.main(args)  # the same identity again: replaced, and no longer the default
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert [(r["policy"], r["share"], r["default"]) for r in rows] == [
        ("replace", 0.25, False), ("add", 0.5, False),
    ]  # fmt: skip
    gen = {"generate": {"balance": {"strength": 0.5}}}
    params.write_text(json.dumps({"train_segmenter": {**seg, "synth_policy": "add"}, **gen}))
    downstream.main(args)  # a balanced chain is a row of its own
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert [(r["policy"], r["balance"]) for r in rows] == [
        ("replace", 0.0), ("add", 0.0), ("add", 0.5),
    ]  # fmt: skip
    longer = {"train_images": {"total_images": 16000}, "train_segmenter": {**seg, "steps": 3200}}
    for more in ({**longer, "train_segmenter": seg}, longer):  # a longer OASIS run, then steps
        params.write_text(json.dumps({**more, **gen}))
        downstream.main(args)  # rows of their own, not reruns of the balanced chain
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    kept = {(r["policy"], r["steps"], r["gan_images"]["images"]) for r in rows if r["balance"]}
    assert kept == {("add", None, None), ("replace", None, 16000), ("replace", 3200, 16000)}
    for pre in (400, 800, 400):  # a longer synthetic phase is a row of its own; 400 again replaces
        pretrain = {**seg, "synth_policy": "pretrain", "pretrain_steps": pre}
        params.write_text(json.dumps({"train_segmenter": pretrain}))
        downstream.main(args)
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert sorted(r["pretrain_steps"] for r in rows if r["policy"] == "pretrain") == [400, 800]
    with pytest.raises(SystemExit, match="no miou_gain"):
        metrics.write_text(json.dumps({"miou_real": 0.5, "n_seeds": 1}))
        downstream.main(args)


def test_downstream_control_pairs_seeds_at_equal_steps(runs, evaluated, tmp_path, monkeypatch):
    """--control: each seed's real+synth mIoU minus the real-only run of the same share, seed and
    steps + pretrain_steps; seeds without a control are left out and named; none is an error."""
    import bench.common
    from bench import downstream

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    metrics, params = tmp_path / "segmentation.json", tmp_path / "params.yaml"
    metrics.write_text(json.dumps(evaluated))
    seg = {"synth_policy": "pretrain", "steps": 2, "pretrain_steps": 3, "seeds": [0, 1]}
    params.write_text(json.dumps({"prepare": {"train_fraction": 0.5}, "train_segmenter": seg}))
    budget = [
        {"share": 0.5, "steps": 5, "seed": 0, "miou": 0.30},
        {"share": 0.5, "steps": 5, "seed": 1, "miou": 0.20},
        {"share": 0.5, "steps": 2, "seed": 0, "miou": 0.90},  # fewer steps: not the control
        {"share": 1.0, "steps": 5, "seed": 0, "miou": 0.90},  # another share
    ]
    (tmp_path / "budget.json").write_text(json.dumps({"rows": budget}))
    args = ["--metrics", str(metrics), "--params", str(params), "--name", "d"]
    args += ["--control", "budget", "--runs-dir", str(runs["root"] / "metrics")]
    downstream.main(args)
    (row,) = json.loads((tmp_path / "d.json").read_text())["rows"]
    synth = [runs["per_run"][f"real_synth-seed{s}"]["miou"] for s in (0, 1)]
    _, _, lo, hi = mean_std_ci95([synth[0] - 0.30, synth[1] - 0.20])
    assert row["control_steps"] == 5 and row["miou_real_control"] == pytest.approx(0.25)
    assert row["gain_vs_control"] == pytest.approx(np.mean(synth) - 0.25)
    assert (row["control_ci_low"], row["control_ci_high"]) == pytest.approx((lo, hi))
    params.write_text(json.dumps({"train_segmenter": {**seg, "seeds": [0, 1, 2]}}))
    downstream.main(args)  # share 1.0: seed 0 alone has a control, seed 2 no run either
    (row,) = json.loads((tmp_path / "d.json").read_text())["rows"][1:]
    assert row["control_seeds"] == [0] and row["control_ci_low"] is None
    assert row["gain_vs_control"] == pytest.approx(synth[0] - 0.90)
    # evaluate.seeds, where set, names the metrics' seeds: those are the ones paired
    share = {"prepare": {"train_fraction": 0.5}, "evaluate": {"seeds": [1]}}
    params.write_text(json.dumps({"train_segmenter": {**seg, "seeds": [0, 1, 2]}, **share}))
    downstream.main(args)
    row = json.loads((tmp_path / "d.json").read_text())["rows"][0]
    assert row["control_seeds"] == [1] and row["gain_vs_control"] == pytest.approx(synth[1] - 0.20)
    params.write_text(json.dumps({"train_segmenter": {**seg, "steps": 7}}))
    with pytest.raises(SystemExit, match="no seed has both"):
        downstream.main(args)


def test_cpu_family_model_reads_the_first_cpu():
    from bench.common import _family_model

    info = (
        "model name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\n\ncpu family\t: 25\nmodel\t: 1\n"
    )
    assert _family_model(info) == "26/2"  # not the model name's line, not the second CPU
    assert _family_model("") == "?/?"
