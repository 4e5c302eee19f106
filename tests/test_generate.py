"""generate: the shard contract, determinism, resume, filters, class targeting, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, SemsynthError
from pipeline.generate import FilterConfig, GenerateConfig, TargetConfig, generate, generate_shard
from pipeline.generate_filters import judge
from pipeline.shards import iter_split, list_shards, load_class_table

# untrained tiny generators make noisy maps: the spurious filter is loosened accordingly
LOOSE = FilterConfig(max_spurious_rate=0.6, min_classes=2, max_hist_distance=1.0)


def make_checkpoints(folder: Path, data: Path) -> tuple[Path, Path]:
    """Tiny untrained mask and image generators for `data`'s class table and size, saved as the
    training stages would (their own constructors + save_checkpoint)."""
    import torch

    from pipeline.checkpoint import save_checkpoint
    from pipeline.sampling import build_mask_generator as build_generator

    table = load_class_table(data)
    h, w = next(iter_split(data, "train")).mask.shape
    torch.manual_seed(0)
    arch = dict(
        kind="semgan", num_classes=table.num_classes, height=h, width=w, latent_dim=16,
        g_channels=32, colors=table.colors.tolist(),
    )  # fmt: skip
    g = build_generator(arch)
    sd = g.state_dict()
    masks = folder / "masks.pt"
    save_checkpoint(masks, {"model": sd, "ema": sd, "step": 0, "arch": arch, "config": {}})
    images = folder / "images.pt"
    save_image_checkpoint(images, table.num_classes, h, w)
    return masks, images


def save_image_checkpoint(path: Path, num_classes: int, height: int, width: int) -> None:
    """An untrained, narrow OASIS generator saved as train_images saves it (arch + ema)."""
    import torch

    from models.oasis import OASISGenerator, preset_widths
    from pipeline.checkpoint import save_checkpoint

    torch.manual_seed(0)
    widths, _ = preset_widths("small", 2, 2)
    g = OASISGenerator(num_classes, height, width, widths, z_dim=8, spade_hidden=8)
    sd = g.state_dict()
    save_checkpoint(path, {"model": sd, "ema": sd, "step": 0, "arch": g.arch(), "config": {}})


@pytest.fixture(scope="module")
def ckpts(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"), tiny_shapes)


def _cfg(tiny_shapes: Path, ckpts, out: Path, **kw) -> GenerateConfig:
    base = dict(
        n_samples=12, images_per_mask=2, masks_per_shard=5, data=str(tiny_shapes),
        mask_checkpoint=str(ckpts[0]), image_checkpoint=str(ckpts[1]), out=str(out / "syn"),
        metrics=str(out / "generate.json"), filters=LOOSE, mask_batch_size=8, image_batch_size=4,
        device="cpu",
    )  # fmt: skip
    return GenerateConfig(**{**base, **kw})


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_shards(out, "train")}


@pytest.fixture(scope="module")
def run(tiny_shapes, ckpts, tmp_path_factory) -> tuple[GenerateConfig, dict]:
    out = tmp_path_factory.mktemp("gen")
    cfg = _cfg(tiny_shapes, ckpts, out)
    return cfg, generate(cfg, progress=False)


def test_shards_follow_the_contract(run, tiny_shapes, ckpts):
    cfg, metrics = run
    out = Path(cfg.out)
    assert [p.name for p in list_shards(out, "train")] == [f"train-{i:06d}.tar" for i in range(3)]
    assert load_class_table(out) == load_class_table(tiny_shapes)
    samples = list(iter_split(out, "train"))
    assert [s.key for s in samples] == [f"{i:08d}_{j}" for i in range(12) for j in range(2)]
    sha = {
        k: hashlib.sha256(Path(p).read_bytes()).hexdigest()
        for k, p in zip("mi", ckpts, strict=True)
    }
    for s in samples:
        i, j = map(int, s.key.split("_"))
        assert (s.meta["index"], s.meta["copy"], s.meta["seed"]) == (i, j, 0)
        assert s.meta["shard"] == i // 5
        assert s.meta["mask_checkpoint"]["sha256"] == sha["m"]
        assert s.meta["image_checkpoint"]["sha256"] == sha["i"]
        assert s.meta["filters_passed"] == ["spurious", "few_classes"]
        assert s.meta["filters"]["num_classes"] >= 2 and s.meta["filters"]["spurious_rate"] <= 0.6
        assert s.image.shape == (*s.mask.shape, 3)
    # two copies of one mask: same mask, different images
    assert np.array_equal(samples[0].mask, samples[1].mask)
    assert not np.array_equal(samples[0].image, samples[1].image)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == {"train": 24}
    assert sum(stats["pixel_counts"]["train"]) == 24 * 32 * 32
    saved = json.loads(Path(cfg.metrics).read_text())
    assert saved == metrics and metrics["samples"] == 24 and metrics["masks"] == 12
    assert metrics["kept_fraction"] == pytest.approx(12 / metrics["candidates"], abs=1e-4)
    rejected = metrics["candidates"] - 12
    assert metrics["rejected_spurious"] + metrics["rejected_few_classes"] >= rejected
    for name in load_class_table(out).names:
        assert (
            0 <= metrics[f"freq_synth_{name}"] <= 1 and 0 <= metrics[f"presence_real_{name}"] <= 1
        )


def test_byte_identical_regardless_of_workers_and_shard_order(run, tiny_shapes, ckpts, tmp_path):
    cfg, _ = run
    other = _cfg(tiny_shapes, ckpts, tmp_path, workers=0)
    # shard 2 alone, first, as an independent worker would
    generate_shard(other, 2, progress=False)
    assert _tars(Path(other.out)) == {"train-000002.tar": _tars(Path(cfg.out))["train-000002.tar"]}
    m = generate(other, progress=False)
    assert m["shards_skipped"] == 1
    assert _tars(Path(other.out)) == _tars(Path(cfg.out))


def test_rerun_regenerates_only_missing_or_stale_shards(run, tiny_shapes, ckpts, tmp_path):
    import shutil

    cfg, _ = run
    out = tmp_path / "syn"
    shutil.copytree(cfg.out, out)
    cfg2 = dataclasses.replace(cfg, out=str(out), metrics=str(tmp_path / "m.json"))
    (out / "train-000001.tar").unlink()
    m = generate(cfg2, progress=False)
    assert m["shards_skipped"] == 2 and _tars(out) == _tars(Path(cfg.out))
    # another seed makes every shard stale; fewer masks drops the shard beyond the run
    m = generate(dataclasses.replace(cfg2, seed=1, n_samples=10), progress=False)
    assert m["shards_skipped"] == 0
    assert sorted(_tars(out)) == ["train-000000.tar", "train-000001.tar"]
    assert _tars(out)["train-000000.tar"] != _tars(Path(cfg.out))["train-000000.tar"]


def test_judge_names_every_failed_filter():
    real = np.array([0.5, 0.25, 0.25])
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[1, :4] = 1  # two classes, clean
    masks[2, ::2, ::2] = 2  # speckle: spurious, and far from the real histogram? no: 25 % class 2
    f = FilterConfig(
        max_spurious_rate=0.1, spurious_min_size=2, min_classes=2, max_hist_distance=0.4
    )
    t = TargetConfig(classes=["c1"], reject=1.0)
    reasons, feats = judge(masks, f, t, real, [1], np.zeros(3))
    assert reasons[0] == ["few_classes", "histogram", "target"]
    assert reasons[1] == []
    assert reasons[2] == ["spurious", "target"]
    assert feats["hist_distance"][0] == pytest.approx(0.5)
    # reject < 1: a mask without the target survives when its uniform draw is above it
    t_half = TargetConfig(classes=["c1"], reject=0.5)
    r, _ = judge(
        masks[:1],
        FilterConfig(min_classes=1, max_hist_distance=1.0),
        t_half,
        real,
        [1],
        np.array([0.7]),
    )
    assert r == [[]]


def test_strict_filters_reject_with_reasons_and_keep_only_passing_masks(
    tiny_shapes, ckpts, tmp_path
):
    from pipeline.metrics.masks import spurious_pixel_rate
    from pipeline.sampling import load_mask_generator, sample_masks

    # a limit at the median spurious rate of the shard's first 16 candidates rejects about half
    first = sample_masks(load_mask_generator(ckpts[0]), 16, 0, batch_size=16)
    rates = spurious_pixel_rate(first, 4)
    limit = float(np.median(rates))
    f = FilterConfig(max_spurious_rate=limit, min_classes=2, max_hist_distance=1.0)
    cfg = _cfg(tiny_shapes, ckpts, tmp_path, n_samples=4, masks_per_shard=4, images_per_mask=1,
               filters=f, candidates_per_mask=4, mask_batch_size=16)  # fmt: skip
    m = generate(cfg, progress=False)
    assert m["rejected_spurious"] > 0 and m["kept_fraction"] < 1
    samples = list(iter_split(cfg.out, "train"))
    assert (spurious_pixel_rate(np.stack([s.mask for s in samples]), 4) <= limit).all()
    kept = [i for i, r in enumerate(rates) if r <= limit and len(np.unique(first[i])) >= 2][:4]
    assert [s.meta["candidate"] for s in samples] == kept
    # a budget too small to fill the shard is an error that says what to change
    tight = dataclasses.replace(cfg, out=str(tmp_path / "t"), candidates_per_mask=1.0)
    with pytest.raises(SemsynthError, match="candidates_per_mask"):
        generate(tight, progress=False)
    assert not list((tmp_path / "t").glob("*.tar")) and not list((tmp_path / "t").glob(".*tmp"))


def test_class_targeting_favours_the_chosen_class(run, tiny_shapes, ckpts, tmp_path):
    base_cfg, base = run
    names = load_class_table(tiny_shapes).names
    rare = min(names[1:], key=lambda n: base[f"freq_synth_{n}"])
    c = names.index(rare)
    share = np.array([(s.mask == c).mean() for s in iter_split(base_cfg.out, "train")])
    threshold = float(np.median(share))
    target = TargetConfig(classes=[rare], min_fraction=threshold)
    cfg = _cfg(tiny_shapes, ckpts, tmp_path, n_samples=8, images_per_mask=1, target=target,
               candidates_per_mask=12, mask_batch_size=16)  # fmt: skip
    m = generate(cfg, progress=False)
    got = np.array([(s.mask == c).mean() for s in iter_split(cfg.out, "train")])
    assert (got > threshold).all() and (share > threshold).mean() < 1
    assert m[f"freq_synth_{rare}"] > base[f"freq_synth_{rare}"]
    assert m["rejected_target"] > 0 and m[f"freq_real_{rare}"] == base[f"freq_real_{rare}"]
    metas = [s.meta for s in iter_split(cfg.out, "train")]
    assert all(mt["filters"]["target_fraction"] > threshold for mt in metas)
    assert all("target" in mt["filters_passed"] for mt in metas)
    with pytest.raises(ConfigError, match="not classes of"):
        generate(dataclasses.replace(cfg, target=TargetConfig(classes=["unicorn"])), progress=False)


def test_mask_only_dataset(tiny_shapes, ckpts, tmp_path):
    cfg = _cfg(tiny_shapes, ckpts, tmp_path, n_samples=4, images_per_mask=0,
               image_checkpoint=str(tmp_path / "absent.pt"))  # fmt: skip
    m = generate(cfg, progress=False)
    samples = list(iter_split(cfg.out, "train"))
    assert m["samples"] == 4 and all(s.image is None for s in samples)
    assert "image_checkpoint" not in samples[0].meta


def test_errors_name_the_fix(tiny_shapes, ckpts, tmp_path):
    with pytest.raises(SemsynthError, match="train-masks"):
        generate(
            _cfg(tiny_shapes, ckpts, tmp_path, mask_checkpoint=str(tmp_path / "x.pt")),
            progress=False,
        )
    with pytest.raises(ConfigError, match="out of range"):
        generate_shard(_cfg(tiny_shapes, ckpts, tmp_path), 3)
    with pytest.raises(ConfigError, match="generate.n_samples"):
        GenerateConfig(n_samples=0)
    # a generator trained on another class table
    other = tmp_path / "other"
    other.mkdir()
    from pipeline.classes import ClassInfo, ClassTable

    ClassTable(tuple(ClassInfo(i, f"c{i}", (i, 9, 9)) for i in range(3))).save(
        other / "classes.json"
    )
    for p in Path(tiny_shapes).iterdir():
        if p.name != "classes.json":
            (other / p.name).symlink_to(p)
    with pytest.raises(SemsynthError, match="retrain it"):
        generate(_cfg(other, ckpts, tmp_path), progress=False)


def test_cli_shard_then_whole_run(tiny_shapes, ckpts, tmp_path, monkeypatch):
    import yaml

    from pipeline.cli import main

    cfg = _cfg(tiny_shapes, ckpts, tmp_path, n_samples=8, images_per_mask=1)
    d = dataclasses.asdict(cfg)
    d.update(out="syn", metrics="metrics/generate.json")
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"generate": d}))
    assert main(["generate", "--shard", "1", "--quiet"]) == 0
    assert [p.name for p in list_shards("syn", "train")] == ["train-000001.tar"]
    assert main(["generate", "--quiet"]) == 0
    assert json.loads(Path("metrics/generate.json").read_text())["shards_skipped"] == 1
    assert main(["generate", "--set", "generate.filters.min_classes=0"]) == 2


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_generated_dataset_exports_and_round_trips(run, tmp_path):
    """The synthetic shards → COCO and Cityscapes: both equal the shard masks pixel for pixel."""
    from pycocotools import mask as mask_utils

    from pipeline.compat import evaluate_cityscapes, read_png_ints
    from pipeline.export import ExportConfig, export

    cfg, _ = run
    ecfg = ExportConfig(data=cfg.out, workers=0, metrics=str(tmp_path / "e.json"))
    m = export(ecfg, out_root=tmp_path, progress=False)
    assert m["coco_samples"] == m["cityscapes_samples"] == 24
    shard = {s.key: s.mask for s in iter_split(cfg.out, "train")}
    doc = json.loads((tmp_path / "coco/annotations/stuff_train.json").read_text())
    rebuilt = {Path(i["file_name"]).stem: np.full((32, 32), 255, np.uint8) for i in doc["images"]}
    names = {i["id"]: Path(i["file_name"]).stem for i in doc["images"]}
    for a in doc["annotations"]:
        rebuilt[names[a["image_id"]]][mask_utils.decode(a["segmentation"]).astype(bool)] = (
            a["category_id"] - 1
        )
    cs = tmp_path / "cityscapes"
    for stem, key in json.loads((cs / "samples.json").read_text())["samples"]:
        lab = read_png_ints(cs / "gtFine/train/synth" / f"{stem}_gtFine_labelIds.png")
        np.testing.assert_array_equal(lab, shard[key])
        np.testing.assert_array_equal(rebuilt[key], shard[key])
    gts = sorted((cs / "gtFine/train/synth").glob("*_labelIds.png"))
    assert evaluate_cityscapes(gts, gts, cs / "labels.json")["miou"] == 1.0
