"""Flows `train-masks`, `train-images`, `train-segmenter`: the training stages as Prefect runs.

Each builds the stage's config from params.yaml + overrides and calls the stage function that
`semsynth STAGE` and `dvc repro` call; `version=True` then `dvc commit`s the stage so dvc.lock
matches what the flow produced. For more processes, run the stage under torchrun instead
(`torchrun --nproc_per_node N -m pipeline.cli train-masks`): the stage code is the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import dvc_version, logger, stage_config


def _version(stages: list[str], params: str, overrides: list[str], version: bool) -> None:
    if version:
        logger().info(f"DVC: {dvc_version(stages, params=params, overrides=overrides)}")


@flow(name="train-masks", log_prints=True)
def train_masks(
    params: str = "params.yaml", overrides: list[str] | None = None, version: bool = False
) -> dict[str, Any]:
    """Train the SemGAN mask generator (params section `train_masks`)."""
    from pipeline import train_masks as stage

    overrides = list(overrides or [])
    metrics = stage.train_masks(stage_config(stage, params, overrides), progress=False)
    _version(["train_masks"], params, overrides, version)
    return metrics


@flow(name="train-images", log_prints=True)
def train_images(
    params: str = "params.yaml", overrides: list[str] | None = None, version: bool = False
) -> dict[str, Any]:
    """Train the OASIS label-to-image generator (params section `train_images`)."""
    from pipeline import train_images as stage

    overrides = list(overrides or [])
    metrics = stage.train_images(stage_config(stage, params, overrides), progress=False)
    _version(["train_images"], params, overrides, version)
    return metrics


@task(name="train-segmenter-run")
def train_segmenter_run(
    cfg: Any, mode: str, seed: int, real_fraction: float | None = None
) -> dict[str, Any]:
    """One segmenter training (`mode` real or real_synth, one seed, a share of real labels)."""
    from pipeline import train_segmenter as stage
    from pipeline.predict import run_name

    frac = cfg.real_fraction if real_fraction is None else real_fraction
    return stage.train_segmenter(
        cfg,
        Path(cfg.real_dir),
        Path(cfg.synth_dir),
        Path(cfg.out) / run_name(mode, seed, frac),
        mode,
        seed,
        real_fraction=frac,
        progress=False,
    )


@flow(name="train-segmenter", log_prints=True)
def train_segmenter(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    modes: list[str] | None = None,
    seeds: list[int] | None = None,
    curve: bool = True,
    evaluate: bool = True,
    version: bool = False,
) -> dict[str, Any]:
    """Segmenters on real and real + synthetic over seeds (+ the data-efficiency runs), evaluated.

    The runs are the dvc.yaml stages `train_segmenter_{real,real_synth}@SEED` and, with `curve`,
    `train_segmenter_curve_*@FRACTION-SEED`; then `evaluate` scores them all.
    """
    from pipeline import train_segmenter as stage
    from pipeline.predict import MODES, run_name

    overrides = list(overrides or [])
    cfg = stage_config(stage, params, overrides)
    modes = modes or list(MODES)
    seeds = list(cfg.seeds) if seeds is None else seeds
    plan = [(m, s, cfg.real_fraction) for m in modes for s in seeds]
    stages = [f"train_segmenter_{m}" for m in modes]  # dvc.yaml foreach groups: every seed
    if curve:
        plan += [(m, s, f) for m in modes for f in cfg.curve_fractions for s in cfg.curve_seeds]
        stages += [f"train_segmenter_curve_{m}" for m in modes]
    # One run at a time: each already uses every core.
    runs = {run_name(m, s, f): train_segmenter_run(cfg, m, s, f) for m, s, f in plan}
    result: dict[str, Any] = {"runs": runs}
    if evaluate:
        from pipeline import evaluate as eval_stage

        ecfg = stage_config(eval_stage, params, overrides)
        if ecfg.seeds is None:  # null = the seeds the segmenters ran with
            ecfg = dataclasses.replace(ecfg, seeds=seeds)
        result["evaluate"] = eval_stage.evaluate(
            ecfg, Path(ecfg.real_dir), Path(ecfg.segmenter_dir), progress=False
        )
        stages.append("evaluate")
    _version(stages, params, overrides, version)
    return result
