"""Flow `synthetic-data-pipeline`: the whole of `dvc repro` as one Prefect run.

prepare → train-masks → train-images → generate-dataset (shards, export, report) →
train-segmenter over {real, real_synth} x seeds → evaluate → report (the page, attached as an
artifact with its verdict and key figures); each step is the flow (or stage function) of the
same name, and `version=True` finally `dvc commit`s every stage, so the run leaves the
repository exactly as `dvc repro` would.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import dvc_version, logger, stage_config
from flows.generate_dataset import generate_dataset
from flows.report import attach_report
from flows.train import train_images, train_masks, train_segmenter

# Every stage of dvc.yaml, in order (a foreach group name stands for all its seeds' stages).
STAGES = (
    "prepare",
    "train_masks",
    "train_images",
    "generate",
    "export",
    "train_segmenter_real",
    "train_segmenter_real_synth",
    "train_segmenter_curve_real",
    "train_segmenter_curve_real_synth",
    "evaluate",
    "report",
)


@flow(name="synthetic-data-pipeline", log_prints=True)
def synthetic_data_pipeline(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    n_samples: int | None = None,
    dask: str | None = None,
    prepare: bool = True,
    version: bool = True,
) -> dict[str, Any]:
    """Prepare, train both generators, generate + export, train segmenters, evaluate, report."""
    from pipeline import prepare as prepare_stage

    overrides = list(overrides or [])
    if n_samples is not None:
        overrides.append(f"generate.n_samples={n_samples}")
    result: dict[str, Any] = {}
    if prepare:
        result["prepare"] = prepare_stage.prepare(
            stage_config(prepare_stage, params, overrides), progress=False
        )
    result["train_masks"] = train_masks(params, overrides)
    result["train_images"] = train_images(params, overrides)
    result["generate"] = generate_dataset(params, overrides, dask=dask, version=False, report=False)
    result["segmentation"] = train_segmenter(params, overrides, evaluate=True)
    stages = [s for s in STAGES if prepare or s != "prepare"]
    if version:
        result["dvc"] = dvc_version(stages[:-1], params=params, overrides=overrides)
        logger().info(f"DVC: {result['dvc']}")
    # The page last: its provenance shows the hashes dvc.lock has just recorded.
    result["report"] = attach_report(params, overrides)
    if version:
        result["dvc_report"] = dvc_version(["report"], params=params, overrides=overrides)
    return result
