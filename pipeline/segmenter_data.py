"""One segmenter run's data: the real labels kept, the synthetic pool (trust filtered when
asked, with the finished real-only run that scores it), and the held-out split it is scored on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed
from pipeline.checkpoint import load_checkpoint
from pipeline.classes import ClassTable
from pipeline.data import IndexedPairs, ShardIndex
from pipeline.errors import DatasetError
from pipeline.predict import load_segmenter, run_name
from pipeline.segmenter_config import TrainSegmenterConfig
from pipeline.shards import heldout_split, label_subset, load_class_table, load_split
from pipeline.trust_filter import (
    Pairs,
    TrustedPairs,
    file_sha256,
    fingerprint,
    load_result,
    save_result,
    score_pool,
    trust_metrics,
)

TRUST_CACHE = "trust.npz"  # in the run folder, beside model.pt


# ---- the run's data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """One run's data: the real labels kept, the synthetic pool (empty in mode real; trust
    filtered when asked), both read from their shards per batch, and the real held-out split it
    is scored on (in memory)."""

    table: ClassTable
    real: IndexedPairs
    synth: Pairs | None
    h_images: np.ndarray
    h_masks: np.ndarray


def load_run_data(
    cfg: TrainSegmenterConfig,
    real_dir: Path,
    synth_dir: Path | None,
    mode: str,
    frac: float,
    seed: int,
) -> RunData:
    """The real labels kept (seeded subset) and the synthetic pool in real_synth mode (a seeded
    subset of `synth_budget` pairs), chosen from the shard indexes before any pixel is read."""
    table = load_class_table(real_dir)
    real = ShardIndex(real_dir, "train")
    if not real.has_images:
        raise DatasetError(f"{real_dir}: the train split has no images; re-run `semsynth prepare`")
    real_rows = IndexedPairs(real, label_subset(len(real), frac, seed), cfg.in_memory)
    synth = None
    if mode == "real_synth":
        if synth_dir is None or not (Path(synth_dir) / "classes.json").is_file():
            raise DatasetError(
                f"synthetic dataset {synth_dir} is missing: run `semsynth generate`, "
                "or train with --mode real"
            )
        if load_class_table(synth_dir).names != table.names:
            raise DatasetError(f"{synth_dir}/classes.json does not match {real_dir}/classes.json")
        pool = ShardIndex(synth_dir, "train")
        if not pool.has_images or pool.shape() != real.shape():
            raise DatasetError(
                f"{synth_dir}: synthetic pairs need images of the real size {real.shape()}"
            )
        pick = np.arange(len(pool))
        if cfg.synth_budget:
            pick = label_subset(len(pool), min(1.0, cfg.synth_budget / len(pool)), seed + 1)
        synth = IndexedPairs(pool, pick, cfg.in_memory)
    h_images, h_masks, _ = load_split(real_dir, heldout_split(real_dir))
    return RunData(table, real_rows, synth, h_images, h_masks)


def real_only_model(
    path: Path, seed: int, frac: float, table: ClassTable, device: torch.device
) -> torch.nn.Module:
    """The finished real-only run (same seed, same real share) that scores the synthetic pool;
    the error says what to run when it is missing, unfinished or another run."""
    again = f"semsynth train-segmenter --mode real --seed {seed}"
    again = f"`{again}{f' --real-fraction {frac:g}' if frac < 1 else ''}`"
    if not path.is_file():
        raise DatasetError(
            f"train_segmenter.trust_filter needs the real-only run of seed {seed}: {path} does "
            f"not exist; train it first with {again} (`dvc repro` orders it), pass --trust-model, "
            "or set train_segmenter.trust_filter=false"
        )
    ckpt = load_checkpoint(path)
    if "optimizer" in ckpt:
        raise DatasetError(
            f"{path} is an unfinished real-only run (step {ckpt.get('step')}): finish it with "
            f"{again} before its real_synth run filters"
        )
    want = {"mode": "real", "seed": seed, "real_fraction": frac, "class_names": table.names}
    got = {k: ckpt.get("config", {}).get(k) for k in want}
    if got != want:
        raise DatasetError(f"{path} is not the real-only run the filter needs: {got} != {want}")
    return load_segmenter(path, device)


def filter_synthetic(
    cfg: TrainSegmenterConfig,
    data: RunData,
    proc: distributed.DistInfo,
    out_dir: Path,
    seed: int,
    frac: float,
    *,
    trust_model: Path | None = None,
    reuse: bool = True,
    progress: bool = False,
) -> tuple[RunData, dict[str, float]]:
    """`data` with its synthetic pool trust filtered, and the filter's `trust_*` statistics.

    Computed by rank 0 once per run and cached in OUT/trust.npz under a fingerprint of its
    inputs (the real-only model's bytes, the pool, the settings); a stale or absent cache is
    recomputed, identically. The other ranks wait and read the file, so all train on the same
    pixels."""
    path = Path(trust_model or Path(cfg.out) / run_name("real", seed, frac) / "model.pt")
    model = real_only_model(path, seed, frac, data.table, proc.device)
    pool = data.synth
    fp = fingerprint(
        model=file_sha256(path),
        rows=pool.rows,
        shards=[[p.name, p.stat().st_size] for p in pool.index.paths],
        tolerance=cfg.trust_tolerance,
        drop=cfg.trust_drop_fraction,
        ignore=data.table.ignore_index,
    )
    cache = out_dir / TRUST_CACHE
    result = load_result(cache, fp) if reuse and proc.main else None
    if proc.main and result is None:
        result = score_pool(
            model, pool, data.table.num_classes, data.table.ignore_index,
            cfg.trust_tolerance, cfg.trust_drop_fraction, progress,
        )  # fmt: skip
        save_result(cache, result, fp)
    distributed.all_reduce_sum(torch.zeros(1))  # a collective: the other ranks wait for the file
    result = result or load_result(cache, fp)
    if result is None:
        raise DatasetError(f"{cache}: rank 0's trust-filter result is not readable here")
    trusted = TrustedPairs(pool, result, data.table.ignore_index)
    return dataclasses.replace(data, synth=trusted), trust_metrics(result, data.table.names)
