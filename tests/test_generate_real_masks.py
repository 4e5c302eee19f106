"""generate with `mask_source: real`: real training masks re-rendered through OASIS, deterministic
per (seed, index) whatever the shard layout, no SemGAN checkpoint, the same shard format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_generate import _cfg, save_image_checkpoint

from pipeline.config import ConfigError
from pipeline.data import ShardIndex
from pipeline.generate import GenerateConfig, TargetConfig, fingerprint, generate
from pipeline.real_masks import RealMaskConfig, source_index, vary_layout
from pipeline.shards import iter_split, load_class_table


def test_layouts_keep_every_id_and_vary_by_index():
    mask = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)  # every pixel its own id
    whole = RealMaskConfig(flip=True, min_crop=1.0)
    outs = [vary_layout(mask, 0, i, whole) for i in range(20)]
    for out, layout in outs:  # no crop: the mask itself or its mirror image
        assert layout["crop"] == [0, 0, 6, 8]
        assert np.array_equal(out, mask[:, ::-1] if layout["flip"] else mask)
    assert {layout["flip"] for _, layout in outs} == {True, False}
    out, layout = vary_layout(mask, 0, 3, RealMaskConfig(flip=False, min_crop=0.5))
    top, left, h, w = layout["crop"]
    assert out.shape == mask.shape and not layout["flip"]
    assert set(np.unique(out)) <= set(mask[top : top + h, left : left + w].ravel())
    assert out[0, 0] == mask[top, left] and out[-1, -1] == mask[top + h - 1, left + w - 1]
    again = vary_layout(mask, 0, 3, RealMaskConfig(flip=False, min_crop=0.5))
    assert np.array_equal(again[0], out) and again[1] == layout  # from (seed, index) alone
    with pytest.raises(ConfigError, match="min_crop"):
        RealMaskConfig(min_crop=0.0)


def test_sources_cycle_through_every_real_mask():
    picks = [source_index(5, i, 7) for i in range(21)]
    for epoch in range(3):  # a permutation per pass: every mask once before any repeats
        assert sorted(picks[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert picks[:7] != picks[7:14]


def real_cfg(tiny_shapes: Path, image_ckpt: Path, out: Path, **kw) -> GenerateConfig:
    ckpts = (out / "no-semgan.pt", image_ckpt)  # never read with mask_source real
    base = dict(mask_source="real", n_samples=8, images_per_mask=2, image_batch_size=2)
    return _cfg(tiny_shapes, ckpts, out, **{**base, **kw})


@pytest.fixture(scope="module")
def image_ckpt(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("real_masks") / "images.pt"
    table = load_class_table(tiny_shapes)
    save_image_checkpoint(path, table.num_classes, 32, 32)
    return path


def test_real_masks_are_deterministic_per_index_whatever_the_shards(
    tiny_shapes, image_ckpt, tmp_path
):
    a = real_cfg(tiny_shapes, image_ckpt, tmp_path / "a", masks_per_shard=5)
    b = real_cfg(tiny_shapes, image_ckpt, tmp_path / "b", masks_per_shard=3, workers=0)
    ma, mb = generate(a, progress=False), generate(b, progress=False)
    assert (ma["shards"], mb["shards"]) == (2, 3)
    assert ma["masks"] == ma["candidates"] == 8 and ma["kept_fraction"] == 1.0
    sa = {s.key: s for s in iter_split(a.out, "train")}
    sb = {s.key: s for s in iter_split(b.out, "train")}
    assert list(sa) == [f"{i:08d}_{j}" for i in range(8) for j in range(2)] == list(sb)
    real = ShardIndex(tiny_shapes, "train")
    for key, s in sa.items():
        t = sb[key]
        assert np.array_equal(s.mask, t.mask) and np.array_equal(s.image, t.image)
        assert {**s.meta, "shard": 0} == {**t.meta, "shard": 0}
        # the sample's mask is its real mask with the recorded layout
        i = s.meta["index"]
        assert s.meta["real_index"] == source_index(0, i, len(real))
        expect, layout = vary_layout(real.masks([s.meta["real_index"]])[0], 0, i, a.real_masks)
        assert np.array_equal(s.mask, expect) and s.meta["layout"] == layout
        assert s.meta["mask_source"] == "real" and s.meta["filters_passed"] == []
        assert "candidate" not in s.meta and "mask_checkpoint" not in s.meta
    assert not np.array_equal(sa["00000000_0"].image, sa["00000000_1"].image)
    stats = json.loads((Path(a.out) / "stats.json").read_text())
    assert set(stats["checkpoints"]) == {"real_masks", "image"}
    # another seed draws other masks
    c = real_cfg(tiny_shapes, image_ckpt, tmp_path / "c", seed=1, images_per_mask=0)
    generate(c, progress=False)
    other = [s.meta["real_index"] for s in iter_split(c.out, "train")]
    assert other != [sa[f"{i:08d}_0"].meta["real_index"] for i in range(8)]

    # the export stage reads the output as it reads SemGAN's
    from pipeline.export import ExportConfig, export

    e = ExportConfig(data=a.out, formats=["coco"], workers=0, metrics=str(tmp_path / "e.json"))
    assert export(e, out_root=tmp_path / "export", progress=False)["coco_samples"] == 16


def test_semgan_fingerprints_ignore_the_real_mask_settings(tiny_shapes, image_ckpt, tmp_path):
    import torch

    cfg = _cfg(tiny_shapes, (tmp_path / "m.pt", image_ckpt), tmp_path)
    hashes, cpu = {"mask": "m", "image": "i"}, torch.device("cpu")
    other = dataclasses.replace(cfg, real_masks=RealMaskConfig(flip=False, min_crop=0.5))
    # shards written before mask_source existed stay current under semgan
    assert fingerprint(cfg, 0, hashes, cpu) == fingerprint(other, 0, hashes, cpu)
    real = dataclasses.replace(cfg, mask_source="real")
    assert fingerprint(real, 0, hashes, cpu) != fingerprint(cfg, 0, hashes, cpu)
    with pytest.raises(ConfigError, match="target.classes"):
        dataclasses.replace(real, target=TargetConfig(classes=["disc"]))
