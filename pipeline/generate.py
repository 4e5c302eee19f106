"""Stage `generate`: sample masks (SemGAN), filter them, synthesise k images each (OASIS), write shards.

The shard is the unit of work. Shard s holds the kept masks s*M .. (s+1)*M-1 (M =
masks_per_shard) and draws its candidates from its own fixed range of sampler indices, so any
worker can produce shard s alone and always gets the same bytes. A candidate is rejected, with
its reasons counted, when its spurious-pixel rate is too high, it has too few classes, its class
histogram is too far from the real one, (class targeting) it lacks a chosen class, or (balance)
it loses the draw of a rejection sampler tilted toward the real class frequencies. Each kept
mask i gets k images, keyed `{i:08d}_{j}`, whose JSON records the checkpoint hashes, seed, indices
and the filters passed. Inference runs in the calling thread while a thread pool encodes PNGs.

With `mask_source: real` the layouts are the real training masks instead of SemGAN's
(`pipeline.real_masks`, as FreeMask does): sample i re-renders real mask i of a seeded stream over
them (cycling when n_samples exceeds them), randomly cropped-and-resized (nearest) and flipped,
all drawn from (seed, i). No SemGAN checkpoint is read, and the mask filters and class targeting
are skipped: they judge generated masks against the real data, and these are real masks (a
real mask with tiny components or a rare histogram is exactly the variety to keep). Its JSON
records `real_index` and the `layout` instead of `candidate` and `filters`.

Resumable: a shard counts as complete when its tar and its `shard_stats/*.json` exist with the
same fingerprint (config, checkpoint hashes or the real masks' hash, device); a rerun only
produces the others.

    semsynth generate                                        # data/synthetic
    semsynth generate --set generate.n_samples=5000 --set 'generate.target.classes=[ring]'
    semsynth generate --set generate.mask_source=real --set generate.images_per_mask=4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from pipeline.classes import ClassTable
from pipeline.config import ConfigError, section, to_dict
from pipeline.data import ShardIndex
from pipeline.device import pick_device
from pipeline.errors import SemsynthError
from pipeline.generate_filters import (
    REASONS,
    BalanceConfig,
    FilterConfig,
    TargetConfig,
    Tilt,
    active_filters,
    judge,
    real_class_frequency,
    real_class_presence,
    target_uniforms,
)
from pipeline.io_utils import atomic_write_json, write_metrics
from pipeline.real_masks import RealMaskConfig, draw_real_masks
from pipeline.sampling import load_image_generator, load_mask_generator, sample_masks, synthesize
from pipeline.shards import SHARD_RE, Sample, ShardWriter, encode_sample, list_shards, shard_name
from pipeline.shards import load_class_table as _load_table

SECTION = "generate"
log = logging.getLogger(__name__)
SPLIT = "train"


@dataclass(frozen=True)
class GenerateConfig:
    n_samples: int = field(default=800, metadata={"help": "masks to keep (pairs = n * k)"})
    mask_source: Literal["semgan", "real"] = field(
        default="semgan",
        metadata={
            "help": "semgan: sample masks from mask_checkpoint (filtered); real: re-render the "
            "real training masks of `data`, varied by real_masks (no SemGAN, no filters)"
        },
    )
    real_masks: RealMaskConfig = field(
        default_factory=RealMaskConfig,
        metadata={"help": "mask_source real: flip, min_crop (crop-and-resize of each side)"},
    )
    images_per_mask: int = field(
        default=1, metadata={"help": "k images per mask (0 = mask-only dataset)"}
    )
    masks_per_shard: int = 200
    seed: int = 0
    data: str = field(default="data/prepared", metadata={"help": "the real prepared dataset"})
    mask_checkpoint: str = field(
        default="data/masks/checkpoint.pt",
        metadata={"help": "SemGAN checkpoint (mask_source semgan; not read with real)"},
    )
    image_checkpoint: str = "data/images/checkpoint.pt"
    out: str = "data/synthetic"
    filters: FilterConfig = field(
        default_factory=FilterConfig,
        metadata={
            "help": "SemGAN masks only: max_spurious_rate, spurious_min_size, min_classes, "
            "max_hist_distance"
        },
    )
    target: TargetConfig = field(
        default_factory=TargetConfig,
        metadata={"help": "SemGAN masks only: class targeting (classes, min_fraction, reject)"},
    )
    balance: BalanceConfig = field(
        default_factory=BalanceConfig,
        metadata={
            "help": "SemGAN masks only: rejection sampling toward the real class frequencies "
            "(strength, accept_rate, pilot)"
        },
    )
    candidates_per_mask: float = field(
        default=8.0, metadata={"help": "each shard may draw this many candidates per mask"}
    )
    mask_batch_size: int = 64
    image_batch_size: int = 16
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    workers: int = field(
        default=2, metadata={"help": "PNG-encoding threads (0 = encode inline, no overlap)"}
    )
    compress_level: int = field(default=1, metadata={"help": "PNG zlib level 0..9"})
    metrics: str = "metrics/generate.json"

    def __post_init__(self) -> None:
        for name in ("n_samples", "masks_per_shard", "mask_batch_size", "image_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"generate.{name} must be >= 1")
        if self.images_per_mask < 0 or self.workers < 0:
            raise ConfigError("generate.images_per_mask and generate.workers must be >= 0")
        if self.candidates_per_mask < 1:
            raise ConfigError("generate.candidates_per_mask must be >= 1")
        if not 0 <= self.compress_level <= 9:
            raise ConfigError("generate.compress_level must be in 0..9")
        if self.mask_source == "real" and self.target.classes:
            raise ConfigError(
                "generate.target.classes favours SemGAN samples; with mask_source real every "
                "real mask is re-rendered: set generate.target.classes=[]"
            )
        if self.mask_source == "real" and self.balance.strength > 0:
            raise ConfigError(
                "generate.balance reweights SemGAN samples; with mask_source real every real "
                "mask is re-rendered: set generate.balance.strength=0"
            )


Config = GenerateConfig


# ---- shard layout ------------------------------------------------------------------------------
def num_shards(cfg: GenerateConfig) -> int:
    return math.ceil(cfg.n_samples / cfg.masks_per_shard)


def shard_indices(cfg: GenerateConfig) -> list[int]:
    return list(range(num_shards(cfg)))


def shard_path(cfg: GenerateConfig, index: int) -> Path:
    return Path(cfg.out) / shard_name(SPLIT, index)


def _stats_path(cfg: GenerateConfig, index: int) -> Path:
    return Path(cfg.out) / "shard_stats" / f"{SPLIT}-{index:06d}.json"


def candidate_range(cfg: GenerateConfig, index: int) -> tuple[int, int]:
    """Sampler indices shard `index` may draw from: fixed per shard, disjoint between shards."""
    stride = math.ceil(cfg.candidates_per_mask * cfg.masks_per_shard)
    return index * stride, (index + 1) * stride


# ---- checkpoints and models --------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int], str] = {}
_MODELS: dict[tuple[str, str, str, str], Any] = {}
_LOCK = threading.Lock()  # Prefect may run several shards as threads of one process


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise SemsynthError(
            f"checkpoint {path} does not exist; train it first (`semsynth train-masks` / "
            "`semsynth train-images`, or `dvc repro`) or set generate.mask_checkpoint / image_checkpoint"
        )
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def real_masks_sha256(data: str | Path) -> str:
    """One hash of the real train shards: what mask_source real draws its layouts from."""
    paths = list_shards(data, SPLIT)
    if not paths:
        raise SemsynthError(f"{data}: no '{SPLIT}-*.tar' shards to take real masks from")
    lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def checkpoint_hashes(cfg: GenerateConfig) -> dict[str, str]:
    """What the samples are made from: the SemGAN checkpoint (or the real masks) and OASIS's."""
    if cfg.mask_source == "real":
        out = {"real_masks": real_masks_sha256(cfg.data)}
    else:
        out = {"mask": file_sha256(cfg.mask_checkpoint)}
    if cfg.images_per_mask:
        out["image"] = file_sha256(cfg.image_checkpoint)
    return out


def _model(kind: str, path: str, sha: str, device: Any) -> Any:
    key = (kind, str(Path(path).resolve()), sha, str(device))
    with _LOCK:
        if key not in _MODELS:
            load = load_mask_generator if kind == "mask" else load_image_generator
            _MODELS[key] = load(path, device)
        return _MODELS[key]


def fingerprint(cfg: GenerateConfig, index: int, hashes: dict[str, str], device: Any) -> str:
    """What a shard's bytes depend on: everything but the worker count and output paths.

    Batch sizes stay in: bf16 kernels may round differently for another batch size.
    """
    content = {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "out", "metrics")}
    if cfg.mask_source == "semgan":  # keys added with mask_source: SemGAN shards stay current
        del content["mask_source"], content["real_masks"]
    if cfg.balance.strength == 0:  # added with balance: shards made without it stay current
        del content["balance"]
    blob = json.dumps([content, index, hashes, str(device.type)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_models(
    table: ClassTable, mask_size: tuple[int, int], mask_g: Any, image_g: Any, cfg: GenerateConfig
) -> None:
    for what, g, path in (
        ("mask", mask_g, cfg.mask_checkpoint),
        ("image", image_g, cfg.image_checkpoint),
    ):
        if g is not None and g.num_classes != table.num_classes:
            raise SemsynthError(
                f"{what} generator {path} has {g.num_classes} classes but {cfg.data}/classes.json has "
                f"{table.num_classes}; retrain it on this dataset or point generate.data at its data"
            )
    if image_g is not None and (image_g.height, image_g.width) != tuple(mask_size):
        where = f"mask generator {cfg.mask_checkpoint} makes"
        if mask_g is None:
            where = f"{cfg.data}'s real masks are"
        raise SemsynthError(
            f"{where} {mask_size[0]}x{mask_size[1]} masks but image generator "
            f"{cfg.image_checkpoint} expects {image_g.height}x{image_g.width}"
        )


# ---- one shard ---------------------------------------------------------------------------------
class _OrderedEncoder:
    """PNG-encodes samples in a thread pool while the caller runs the models; writes in order.

    PIL and zlib release the GIL, so threads overlap encoding with torch inference without the
    pickling a process pool would need. At most `max_pending` samples are in flight: memory stays
    flat however large the shard.
    """

    def __init__(
        self, writer: ShardWriter, table: ClassTable, cfg: GenerateConfig, max_pending: int
    ):
        self.writer, self.table, self.level = writer, table, cfg.compress_level
        self.pool = (
            ThreadPoolExecutor(cfg.workers, thread_name_prefix="png") if cfg.workers else None
        )
        self.pending: deque[Future] = deque()
        self.max_pending = max_pending

    def submit(self, sample: Sample) -> None:
        if self.pool is None:  # workers = 0: encode inline, no overlap
            self.writer.write_encoded(encode_sample(sample, self.table, self.level))
            return
        self.pending.append(self.pool.submit(encode_sample, sample, self.table, self.level))
        self._drain(self.max_pending)

    def _drain(self, limit: int) -> None:
        while self.pending and (self.pending[0].done() or len(self.pending) > limit):
            self.writer.write_encoded(self.pending.popleft().result())

    def close(self, ok: bool) -> None:
        if ok:
            self._drain(0)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Kept:
    """A mask kept for shard output: its sample index, the mask, and its JSON provenance: `ident`
    (which draw it is) goes before `copy`, `extra` (how it was judged or varied) after."""

    index: int
    mask: np.ndarray
    ident: dict[str, Any]
    extra: dict[str, Any]


def _shard_range(cfg: GenerateConfig, shard_index: int) -> tuple[int, int]:
    lo = shard_index * cfg.masks_per_shard
    return lo, min(lo + cfg.masks_per_shard, cfg.n_samples)


def _real_batches(
    cfg: GenerateConfig, shard_index: int, source: ShardIndex, stats: dict[str, Any]
) -> Iterator[list[Kept]]:
    """mask_source real: the shard's samples in lists of up to image_batch_size, each a real
    training mask with its layout varied (pipeline.real_masks); none is rejected."""
    lo, hi = _shard_range(cfg, shard_index)
    for start in range(lo, hi, cfg.image_batch_size):
        indices = range(start, min(start + cfg.image_batch_size, hi))
        t = time.perf_counter()
        masks, info = draw_real_masks(source, cfg.seed, indices, cfg.real_masks)
        stats["mask_seconds"] += time.perf_counter() - t
        stats["candidates"] += len(indices)
        yield [
            Kept(i, m, {"real_index": d["real_index"]}, {"layout": d["layout"]})
            for i, m, d in zip(indices, masks, info, strict=True)
        ]


def _kept_batches(
    cfg: GenerateConfig,
    shard_index: int,
    mask_g: Any,
    real_freq: np.ndarray,
    target_ids: list[int],
    stats: dict[str, Any],
    tilt: Tilt | None = None,
) -> Iterator[list[Kept]]:
    """Yield lists of up to image_batch_size kept masks with their candidate and filter values.

    Candidates are drawn in order from the shard's own range, so which masks a shard keeps
    depends only on (checkpoint, seed, shard); rejections are counted into `stats`.
    """
    lo, hi = _shard_range(cfg, shard_index)
    c_lo, c_hi = candidate_range(cfg, shard_index)
    cand, i, kept = c_lo, lo, []
    while i < hi:
        if cand >= c_hi:
            raise SemsynthError(
                f"shard {shard_index}: only {i - lo} of {hi - lo} masks passed the filters in "
                f"{c_hi - c_lo} candidates (rejected: {stats['reasons']}); relax generate.filters / "
                "generate.target, raise generate.balance.accept_rate or generate.candidates_per_mask"
            )
        n = min(cfg.mask_batch_size, c_hi - cand)
        t = time.perf_counter()
        masks = sample_masks(mask_g, n, cfg.seed, batch_size=n, start=cand)
        stats["mask_seconds"] += time.perf_counter() - t
        u = target_uniforms(cfg.seed, cand, n)
        reasons, feats = judge(masks, cfg.filters, cfg.target, real_freq, target_ids, u)
        if tilt is not None:
            p_keep = tilt.accept(feats["shares"])
            out = target_uniforms(cfg.seed, cand, n, stream=11) >= p_keep
            reasons = [r + ["balance"] * bool(o) for r, o in zip(reasons, out, strict=True)]
        for b in range(n):
            if i >= hi:
                break  # the shard is full: later candidates stay unused
            stats["candidates"] += 1
            if reasons[b]:
                stats["rejected"] += 1
                for r in reasons[b]:
                    stats["reasons"][r] += 1
                continue
            values = {
                "spurious_rate": round(float(feats["spurious_rate"][b]), 6),
                "num_classes": int(feats["num_classes"][b]),
                "hist_distance": round(float(feats["hist_distance"][b]), 6),
            }
            if target_ids:
                values["target_fraction"] = round(float(feats["target_fraction"][b]), 6)
            if tilt is not None:
                values["balance_accept"] = round(float(p_keep[b]), 6)
            kept.append(Kept(i, masks[b], {"candidate": cand + b}, {"filters": values}))
            i += 1
            if len(kept) == cfg.image_batch_size:
                yield kept
                kept = []
        cand += n
    if kept:
        yield kept


def _remove_temps(folder: Path, name: str) -> None:
    for tmp in folder.glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def generate_shard(cfg: GenerateConfig, shard_index: int, progress: bool = True) -> dict[str, Any]:
    """Write shard `shard_index` (skipped when already complete); returns its statistics."""
    if not 0 <= shard_index < num_shards(cfg):
        raise ConfigError(
            f"shard {shard_index} is out of range: generate.n_samples gives {num_shards(cfg)} shards"
        )
    t_start = time.perf_counter()
    path, stats_path = shard_path(cfg, shard_index), _stats_path(cfg, shard_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_temps(path.parent, path.name)  # left by a killed run
    _remove_temps(stats_path.parent, stats_path.name)
    device = pick_device(cfg.device)
    hashes = checkpoint_hashes(cfg)
    fp = fingerprint(cfg, shard_index, hashes, device)
    if path.is_file() and stats_path.is_file():
        done = json.loads(stats_path.read_text())
        if done.get("fingerprint") == fp:
            return {**done, "skipped": True}

    # The real data's class table, where the masks come from, the image generator, and what
    # to record.
    table = _load_table(cfg.data)
    stats: dict[str, Any] = {"candidates": 0, "rejected": 0, "reasons": dict.fromkeys(REASONS, 0)}
    stats.update(mask_seconds=0.0, image_seconds=0.0)
    batches, mask_size, mask_g, source = _mask_source(
        cfg, shard_index, table, hashes, device, stats
    )
    k = cfg.images_per_mask
    image_g = _model("image", cfg.image_checkpoint, hashes["image"], device) if k else None
    _check_models(table, mask_size, mask_g, image_g, cfg)
    provenance = {"seed": cfg.seed, "shard": shard_index, **source}
    if image_g is not None:
        provenance["image_checkpoint"] = {"path": cfg.image_checkpoint, "sha256": hashes["image"]}
    C = table.num_classes
    pixels, presence = np.zeros(C + 1, np.int64), np.zeros(C, np.int64)

    # Masks in batches → k images per mask → samples, encoded by the pool in the background.
    n_masks = min(cfg.masks_per_shard, cfg.n_samples - shard_index * cfg.masks_per_shard)
    bar = tqdm(total=n_masks, desc=f"shard {shard_index}", disable=not progress, leave=False)
    with ShardWriter(path, table, cfg.compress_level) as writer:
        encoder = _OrderedEncoder(writer, table, cfg, 4 * cfg.image_batch_size * max(k, 1))
        ok = False
        try:
            for kept in batches:  # consecutive sample indices
                masks = np.stack([x.mask for x in kept])
                images = None
                if image_g is not None:
                    t = time.perf_counter()
                    images = synthesize_images(image_g, masks, cfg, start=kept[0].index)
                    stats["image_seconds"] += time.perf_counter() - t
                for b, x in enumerate(kept):
                    h = np.bincount(x.mask.ravel(), minlength=256)
                    pixels += np.append(h[:C], h[C:].sum()) * max(k, 1)
                    presence += h[:C] > 0
                    for j in range(max(k, 1)):
                        meta = {**provenance, "index": x.index, **x.ident, "copy": j} | x.extra
                        image = None if images is None else images[b, j]
                        encoder.submit(Sample(f"{x.index:08d}_{j}", x.mask, image, meta))
                bar.update(len(kept))
            ok = True
        finally:
            encoder.close(ok)
    bar.close()
    stats.update(
        fingerprint=fp,
        shard=shard_index,
        path=path.name,
        masks=n_masks,
        samples=n_masks * max(k, 1),
        class_pixels=pixels.tolist(),
        class_presence=presence.tolist(),
        mask_seconds=round(stats["mask_seconds"], 4),
        image_seconds=round(stats["image_seconds"], 4),
        seconds=round(time.perf_counter() - t_start, 4),
    )
    atomic_write_json(stats_path, stats)
    return {**stats, "skipped": False}


def _mask_source(
    cfg: GenerateConfig,
    shard_index: int,
    table: ClassTable,
    hashes: dict[str, str],
    device: Any,
    stats: dict[str, Any],
) -> tuple[Iterator[list[Kept]], tuple[int, int], Any, dict[str, Any]]:
    """The shard's masks: (lazy batches of kept masks, mask size, the SemGAN generator or None,
    the provenance every sample records about where its mask came from)."""
    if cfg.mask_source == "real":
        source = ShardIndex(cfg.data, SPLIT)
        provenance = {
            "mask_source": "real",
            "real_masks": {"path": cfg.data, "sha256": hashes["real_masks"]},
            "filters_passed": [],
        }
        return _real_batches(cfg, shard_index, source, stats), source.shape(), None, provenance
    real_freq = real_class_frequency(cfg.data, table)
    unknown = [c for c in cfg.target.classes if c not in table.names]
    if unknown:
        raise ConfigError(
            f"generate.target.classes: {unknown} are not classes of {cfg.data}; valid: {table.names}"
        )
    target_ids = [table.names.index(c) for c in cfg.target.classes]
    mask_g = _model("mask", cfg.mask_checkpoint, hashes["mask"], device)
    provenance = {
        "mask_checkpoint": {"path": cfg.mask_checkpoint, "sha256": hashes["mask"]},
        "filters_passed": active_filters(cfg.filters, cfg.target, cfg.balance),
    }
    tilt = None
    if cfg.balance.strength > 0:
        tilt, stats["balance"] = _balance_tilt(cfg, mask_g, real_freq, target_ids, hashes["mask"])
    batches = _kept_batches(cfg, shard_index, mask_g, real_freq, target_ids, stats, tilt)
    return batches, (mask_g.height, mask_g.width), mask_g, provenance


# a pilot per (checkpoint, seed, data, settings): the shards of one run share one fit
_TILTS: dict[str, tuple[Tilt, dict[str, float]]] = {}
PILOT_START = 10**12  # pilot sample indices: far beyond any shard's candidate range


def _balance_tilt(
    cfg: GenerateConfig, mask_g: Any, real_freq: np.ndarray, target_ids: list[int], sha: str
) -> tuple[Tilt, dict[str, float]]:
    """The tilt toward the real class frequencies, fitted on pilot masks that pass the other
    filters (sample indices PILOT_START.., so the pilot never reuses a candidate)."""
    key = json.dumps([sha, cfg.seed, cfg.data, to_dict(cfg.balance), to_dict(cfg.filters),
                      to_dict(cfg.target)], sort_keys=True)  # fmt: skip
    with _LOCK:
        if key not in _TILTS:
            n = cfg.balance.pilot
            masks = sample_masks(mask_g, n, cfg.seed, cfg.mask_batch_size, start=PILOT_START)
            u = target_uniforms(cfg.seed, PILOT_START, n)
            reasons, feats = judge(masks, cfg.filters, cfg.target, real_freq, target_ids, u)
            shares = feats["shares"][[not r for r in reasons]]
            if len(shares) < 16:
                raise SemsynthError(
                    f"generate.balance: only {len(shares)} of {n} pilot masks pass the other "
                    "filters; relax generate.filters / generate.target or raise balance.pilot"
                )
            tilt = Tilt.fit(shares, real_freq, cfg.balance)
            _TILTS[key] = tilt, tilt.summary(shares, real_freq)
        return _TILTS[key]


def synthesize_images(
    image_g: Any, masks: np.ndarray, cfg: GenerateConfig, start: int
) -> np.ndarray:
    """k images for each of masks start.. (uint8 [n, k, H, W, 3]), noise from (seed, index, copy)."""
    k, bs = cfg.images_per_mask, cfg.image_batch_size
    return synthesize(image_g, masks, cfg.seed, n_per_mask=k, batch_size=bs, start=start)


# ---- the whole run -----------------------------------------------------------------------------
def finalize(
    cfg: GenerateConfig, results: list[dict[str, Any]], seconds: float | None = None
) -> dict[str, float]:
    """After all shards: drop shards beyond the run, write classes.json, stats.json and metrics."""
    out = Path(cfg.out)
    results = sorted(results, key=lambda r: r["shard"])
    if [r["shard"] for r in results] != shard_indices(cfg):
        raise SemsynthError(
            f"{out}: finalize needs every shard 0..{num_shards(cfg) - 1}, got {[r['shard'] for r in results]}"
        )
    for tmp in [*out.glob(f".{SPLIT}-*.tmp"), *out.glob(f"shard_stats/.{SPLIT}-*.tmp")]:
        tmp.unlink(missing_ok=True)  # of shards a killed, larger run never finished
    for p in out.glob(f"{SPLIT}-*.tar"):  # left from an earlier, larger run
        m = SHARD_RE.match(p.name)
        if m and int(m["index"]) >= num_shards(cfg):
            p.unlink()
            _stats_path(cfg, int(m["index"])).unlink(missing_ok=True)
    table = _load_table(cfg.data)
    names = table.names
    pixels = np.sum([r["class_pixels"] for r in results], axis=0)
    presence = np.sum([r["class_presence"] for r in results], axis=0)
    masks = sum(r["masks"] for r in results)
    samples = sum(r["samples"] for r in results)
    candidates = sum(r["candidates"] for r in results)
    reasons = {k: sum(r["reasons"][k] for r in results) for k in REASONS}
    synth_freq = pixels[: table.num_classes] / max(pixels[: table.num_classes].sum(), 1)
    real_freq = real_class_frequency(cfg.data, table)
    real_presence = real_class_presence(cfg.data, table)
    synth_presence = presence / max(masks, 1)

    table.save(out / "classes.json")
    atomic_write_json(
        out / "stats.json",
        {
            "counts": {SPLIT: samples},
            "pixel_counts": {SPLIT: [int(v) for v in pixels]},
            "pixel_counts_order": names + ["void"],
            "masks": masks,
            "images_per_mask": cfg.images_per_mask,
            "candidates": candidates,
            "rejected_reasons": reasons,
            "class_frequency": {"synthetic": synth_freq.tolist(), "real": real_freq.tolist()},
            "class_presence": {
                "synthetic": synth_presence.tolist(),
                "real": real_presence.tolist(),
            },
            "checkpoints": checkpoint_hashes(cfg),
            "config": to_dict(cfg),
        },
    )
    work = sum(r["seconds"] for r in results)
    metrics: dict[str, float] = {
        "samples": float(samples),
        "masks": float(masks),
        "candidates": float(candidates),
        "kept_fraction": round(masks / max(candidates, 1), 4),
        **{f"rejected_{k}": float(v) for k, v in reasons.items()},
        "masks_per_s": round(candidates / max(sum(r["mask_seconds"] for r in results), 1e-9), 2),
        "pairs_per_s": round(samples / max(work, 1e-9), 2),
        "shards": float(len(results)),
        "shards_skipped": float(sum(r.get("skipped", False) for r in results)),
        "seconds": round(work if seconds is None else seconds, 3),
        "class_freq_distance": round(float(0.5 * np.abs(synth_freq - real_freq).sum()), 4),
    }
    if "balance" in results[0]:  # the pilot's fit, the same for every shard
        metrics.update({f"balance_{k}": v for k, v in results[0]["balance"].items()})
    for n, s, r in zip(names, synth_freq, real_freq, strict=True):
        metrics[f"freq_synth_{n}"], metrics[f"freq_real_{n}"] = (
            round(float(s), 5),
            round(float(r), 5),
        )
    for n, s, r in zip(names, synth_presence, real_presence, strict=True):
        metrics[f"presence_synth_{n}"] = round(float(s), 4)
        metrics[f"presence_real_{n}"] = round(float(r), 4)
    write_metrics(cfg.metrics, metrics)
    return metrics


def generate(cfg: GenerateConfig, progress: bool = True) -> dict[str, float]:
    """Produce every missing shard in order, then finalize; returns the metrics."""
    t0 = time.perf_counter()
    results = []
    bar = tqdm(total=cfg.n_samples, desc="generate masks", disable=not progress)
    for s in shard_indices(cfg):
        r = generate_shard(cfg, s, progress=False)
        results.append(r)
        bar.update(r["masks"])
        bar.set_postfix(skipped=sum(x["skipped"] for x in results))
    bar.close()
    return finalize(cfg, results, time.perf_counter() - t0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", type=int, help="produce only this shard (a worker's share)")


def cli(params: dict, args: argparse.Namespace) -> dict[str, Any]:
    cfg = section(params, SECTION, GenerateConfig)
    if args.shard is not None:
        r = generate_shard(cfg, args.shard, progress=not args.quiet)
        log.info(
            f"shard {args.shard}: {'complete already' if r['skipped'] else 'written'} ({r['samples']} samples)"
        )
        return {}
    m = generate(cfg, progress=not args.quiet)
    log.info(
        f"generated {int(m['samples'])} pairs from {int(m['masks'])} masks into {cfg.out} "
        f"(kept {m['kept_fraction']:.0%} of candidates; {int(m['shards_skipped'])} shards already complete)"
    )
    return m
