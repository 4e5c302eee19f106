"""Flow `generate-dataset`: generate shards as mapped tasks, export, report, version with DVC.

    prefect deployment run generate-dataset/generate-dataset -p n_samples=2000
    python -m flows.generate_dataset --n-samples 200 --dask local        # no server needed

The shard is the unit of work: `pipeline.generate.generate_shard(cfg, i)` writes shard i (masks
from the SemGAN generator, images from the OASIS generator) under a temporary name and renames it,
so a retried or repeated task never leaves half a shard, and sample j depends only on (checkpoints,
seed, j) wherever it runs. The shards fan out on the task runner the `dask` parameter picks: a
thread pool by default, a Dask LocalCluster of 2 worker processes for `dask="local"`, an existing
cluster for `dask="tcp://HOST:PORT"`. The tasks and the stage code are the same in every case.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import dvc_version, logger, stage_config
from flows.report import attach_report, dataset_report

# The stages this flow produces, by their dvc.yaml names: what it versions at the end.
DVC_STAGES = ("generate", "export")


def task_runner(dask: str | None, workers: int = 2):
    """Thread pool (default), Dask LocalCluster (`"local"`), or a Dask scheduler address."""
    if not dask:
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask == "local":
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,  # no port to collide with; set an address to watch
            }
        )
    return DaskTaskRunner(address=dask)


@task(name="generate-shard", retries=2, retry_delay_seconds=2, log_prints=True)
def generate_shard_task(cfg: Any, shard_index: int) -> dict[str, Any]:
    """Write one synthetic shard; retried on failure (the shard is written atomically)."""
    from pipeline.generate import generate_shard

    return generate_shard(cfg, shard_index, progress=False)


@flow(name="generate-shards")
def generate_shards(cfg: Any, shard_indices: list[int]) -> list[dict[str, Any]]:
    """Map `generate-shard` over the shards on this flow's task runner, tracking progress."""
    progress_id = create_progress_artifact(
        progress=0.0, key="generate-progress", description="synthetic shards written (%)"
    )
    futures = generate_shard_task.map(unmapped(cfg), shard_indices)
    results, done = [], 0
    for future in as_completed(futures):
        results.append(future.result())
        done += 1
        update_progress_artifact(progress_id, 100.0 * done / len(futures))
    return results


@flow(name="generate-dataset", log_prints=True)
def generate_dataset(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    n_samples: int | None = None,
    dask: str | None = None,
    workers: int = 2,
    export: bool = True,
    version: bool = True,
    push: bool = False,
    report: bool = True,
) -> dict[str, Any]:
    """Generate synthetic shards (mapped tasks), export them, report, and version with DVC.

    Args:
        params: params.yaml to read (DVC versioning only applies to the repository's own).
        overrides: `section.key=value` strings, as `semsynth --set`.
        n_samples: shorthand for `generate.n_samples=N`.
        dask: None (threads), "local" (a 2-worker Dask LocalCluster) or "tcp://host:port".
        workers: threads or LocalCluster workers.
        export: run the export stage on the generated shards.
        version: `dvc commit` the generate/export stages afterwards (dvc status clean).
        push: also `dvc push` them to the default remote.
        report: build the report page (`semsynth report`) and attach it as an artifact.
    """
    from pipeline import export as export_stage
    from pipeline import generate as generate_stage

    log = logger()
    overrides = list(overrides or [])
    if n_samples is not None:
        overrides.append(f"generate.n_samples={n_samples}")
    cfg = stage_config(generate_stage, params, overrides)

    # 1. Shards as mapped tasks, then the dataset's classes.json / stats / metrics.
    t0 = time.perf_counter()
    indices = generate_stage.shard_indices(cfg)
    log.info(f"generating {len(indices)} shards on {dask or f'{workers} threads'}")
    shard_results = generate_shards.with_options(task_runner=task_runner(dask, workers))(
        cfg, indices
    )
    metrics = generate_stage.finalize(cfg, shard_results, time.perf_counter() - t0)

    # 2. Export (COCO, Cityscapes ...), the export stage's own function.
    exported: dict[str, Any] = {}
    if export:
        ecfg = stage_config(export_stage, params, overrides)
        exported = export_stage.export(ecfg, progress=False)
        metrics.update({f"export_{k}": v for k, v in exported.items()})

    # 3. Report: markdown (counts, class frequencies, sample grid) and a per-class table.
    markdown, rows = dataset_report(
        Path(cfg.out),
        exported={
            k[: -len("_samples")]: int(v) for k, v in exported.items() if k.endswith("_samples")
        },
    )
    create_markdown_artifact(markdown, key="generated-dataset", description="generate-dataset")
    create_table_artifact(rows, key="class-frequencies", description="pixel share per class")

    # 4. Version the outputs: dvc.lock records them, `dvc status` is clean for these stages.
    if version:
        stages = DVC_STAGES if export else DVC_STAGES[:1]
        versioned = dvc_version(stages, params=params, overrides=overrides, push=push)
        log.info(f"DVC: {versioned}")
        metrics["dvc_versioned"] = float(versioned["versioned"])

    # 5. The report page, after versioning: dvc.lock then tells it whether the last
    #    evaluation (shown as it is, or "not run") predates these shards.
    if report:
        log.info(f"report: {attach_report(params, overrides)['path']}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--n-samples", type=int)
    p.add_argument("--dask", help='"local" or a scheduler address tcp://HOST:PORT')
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-export", dest="export", action="store_false")
    p.add_argument("--no-version", dest="version", action="store_false")
    a = p.parse_args(argv)
    generate_dataset(
        a.params, a.overrides, a.n_samples, a.dask, a.workers, a.export, a.version, push=False
    )


if __name__ == "__main__":
    main()
