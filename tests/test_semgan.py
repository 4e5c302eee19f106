"""SemGAN / RGB-baseline networks, losses, sampling and the train_masks stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from models.semgan import (
    MaskDiscriminator,
    MaskGenerator,
    gumbel_softmax_st,
    minibatch_stddev,
    noisy_one_hot,
    num_levels,
    one_hot,
    r1_penalty,
)
from pipeline.checkpoint import load_checkpoint
from pipeline.config import ConfigError, build
from pipeline.sampling import load_mask_generator, sample_masks, sample_masks_and_distance
from pipeline.train_masks import TrainMasksConfig, fill_void, refresh_batch_norm, train_masks

PALETTE = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)


# ---- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 128), (24, 40)])
def test_generator_and_discriminator_shapes(size):
    h, w = size
    g = MaskGenerator("semgan", 5, h, w, latent_dim=16, channels=32)
    d = MaskDiscriminator(5, h, w, channels=8)
    out = g(torch.randn(3, 16))
    assert out.shape == (3, 5, h, w)
    assert d(torch.softmax(out, 1)).shape == (3,)
    ids, dist = g.to_ids(out)
    assert ids.shape == (3, h, w) and dist is None
    assert int(ids.min()) >= 0 and int(ids.max()) < 5


def test_minibatch_stddev_sees_collapse():
    torch.manual_seed(0)
    same = torch.randn(1, 4, 3, 3).expand(6, -1, -1, -1).contiguous()
    out = minibatch_stddev(same, group=4)  # 6 is not divisible by 4: groups of 3
    assert out.shape == (6, 5, 3, 3)
    assert torch.equal(out[:, :4], same)
    assert float(out[:, 4].abs().max()) < 1e-3  # identical samples: no spread
    varied = minibatch_stddev(torch.randn(6, 4, 3, 3), group=2)
    assert float(varied[:, 4].min()) > 0.1
    # the channel is constant over a sample and shared by the samples of one group
    assert torch.equal(varied[0, 4], varied[0, 4, :1, :1].expand(3, 3))
    d = MaskDiscriminator(5, 32, 32, channels=8, mbstd_group=4)
    assert d(torch.rand(8, 5, 32, 32)).shape == (8,)


def test_num_levels_and_size_errors():
    assert num_levels(64, 64) == 4  # 4x4 at the bottom
    assert num_levels(96, 128) == 4  # 6x8
    assert num_levels(360, 480) == 3  # 45x60 (360 = 8 * 45)
    with pytest.raises(ValueError, match="divisible by 2"):
        MaskGenerator("semgan", 3, 15, 15)
    with pytest.raises(ValueError, match="valid kinds"):
        MaskGenerator("gan", 3, 32, 32)
    with pytest.raises(ValueError, match="colors"):
        MaskGenerator("rgb", 3, 32, 32)


def test_rgb_baseline_quantises_to_nearest_class_colour():
    g = MaskGenerator("rgb", 4, 8, 8, latent_dim=8, channels=16, colors=PALETTE)
    # A map drawn exactly in class colours decodes exactly, at distance 0.
    ids = torch.randint(0, 4, (2, 8, 8))
    rgb = (PALETTE.float() / 127.5 - 1)[ids].permute(0, 3, 1, 2)
    got, dist = g.to_ids(rgb)
    assert torch.equal(got, ids)
    assert float(dist.max()) < 1e-3
    # Mid-grey (128, 128, 128) is nearest to black among these colours, ~221.7 away... no:
    # distance to black = 128*sqrt(3) = 221.7, to red = sqrt(127^2 + 2*128^2) = 221.1 → red.
    grey = torch.full((1, 3, 8, 8), 128 / 127.5 - 1)
    got, dist = g.to_ids(grey)
    assert int(got[0, 0, 0]) == 1
    assert float(dist[0, 0, 0]) == pytest.approx(float(np.sqrt(127**2 + 2 * 128**2)), abs=0.5)


# ---- what D sees, losses ----------------------------------------------------------------------


def test_gumbel_softmax_st_is_one_hot_forward_and_passes_gradients():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = gumbel_softmax_st(logits, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(y.detach().sum(1), torch.ones(2, 5, 5))
    hard = y.detach()
    assert torch.allclose(hard, (hard > 0.5).float(), atol=1e-6)  # one-hot up to rounding
    (y * torch.randn_like(y)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # Seeded: the same generator state gives the same draw.
    y2 = gumbel_softmax_st(logits, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(y.detach(), y2.detach())


def test_noisy_one_hot_stays_on_the_simplex_and_keeps_the_class():
    ids = torch.randint(0, 4, (2, 6, 6))
    x = noisy_one_hot(one_hot(ids, 4), 0.1, torch.Generator().manual_seed(0))
    assert torch.allclose(x.sum(1), torch.ones(2, 6, 6))
    assert torch.equal(x.argmax(1), ids)
    assert float(x.max()) < 1.0  # no longer exactly one-hot
    assert torch.equal(noisy_one_hot(one_hot(ids, 4), 0.0, torch.Generator()), one_hot(ids, 4))


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm():
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1)
    assert float(r1_penalty(logits, x)) == pytest.approx(float(w.square().sum()), rel=1e-5)


def test_fill_void_takes_the_nearest_labelled_class():
    m = np.array([[[0, 0, 255, 1, 1]], [[255, 255, 255, 255, 255]]], np.uint8)
    out = fill_void(m, 2)
    assert out[0].tolist() == [[0, 0, 0, 1, 1]] or out[0].tolist() == [[0, 0, 1, 1, 1]]
    assert out[1].max() < 2
    assert m[0, 0, 2] == 255  # input untouched


# ---- sampling ---------------------------------------------------------------------------------


def test_sample_masks_is_deterministic_and_independent_of_batching():
    torch.manual_seed(0)
    g = MaskGenerator("semgan", 4, 16, 16, latent_dim=8, channels=16).eval()
    a = sample_masks(g, 10, seed=3, batch_size=4)
    assert a.dtype == np.uint8 and a.shape == (10, 16, 16)
    np.testing.assert_array_equal(a, sample_masks(g, 10, seed=3, batch_size=4))
    np.testing.assert_array_equal(a, sample_masks(g, 10, seed=3, batch_size=7))
    np.testing.assert_array_equal(a[6:], sample_masks(g, 4, seed=3, batch_size=3, start=6))
    assert not np.array_equal(a, sample_masks(g, 10, seed=4))


def test_refresh_batch_norm_estimates_the_stats_of_the_current_weights():
    torch.manual_seed(0)
    g = MaskGenerator("semgan", 4, 16, 16, latent_dim=8, channels=16)
    bn = g.blocks[0].n1
    bn.running_mean.fill_(5.0)  # stale statistics, as an EMA copy carries from other weights
    seen = []
    g.blocks[0].conv1.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    refresh_batch_norm(g, batches=3, batch_size=4, seed=7)
    assert not g.training
    assert len(seen) == 3
    x = torch.cat(seen)  # 3 batches of 4: the exact average over all of them
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in seen]).mean(0)
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-4)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    refresh_batch_norm(g, batches=3, batch_size=4, seed=7)  # deterministic for a seed
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert g.blocks[0].n1.momentum == 0.1  # the training momentum is restored
    pixel = MaskGenerator("semgan", 4, 16, 16, latent_dim=8, channels=16, norm="pixel")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pixel.modules())
    refresh_batch_norm(pixel, batches=1, batch_size=2, seed=0)  # nothing to refresh: no error
    with pytest.raises(ValueError, match="norm"):
        MaskGenerator("semgan", 4, 16, 16, norm="layer")


def test_sample_rgb_baseline_returns_distance():
    torch.manual_seed(0)
    g = MaskGenerator("rgb", 4, 16, 16, latent_dim=8, channels=16, colors=PALETTE).eval()
    masks, dist = sample_masks_and_distance(g, 3, seed=0)
    assert masks.shape == dist.shape == (3, 16, 16)
    assert masks.max() < 4 and dist.min() >= 0


# ---- config -----------------------------------------------------------------------------------


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train_masks: unknown key"):
        build(TrainMasksConfig, {"kimg": 1}, "train_masks")
    with pytest.raises(ConfigError, match="train_masks.total_images"):
        TrainMasksConfig(total_images=0)
    with pytest.raises(ConfigError, match="train_masks.ema_rampup"):
        TrainMasksConfig(ema_rampup=-0.1)
    with pytest.raises(ConfigError, match="gumbel"):
        TrainMasksConfig(kind="rgb", gumbel=True)
    with pytest.raises(ConfigError, match="train_masks.kind"):
        build(TrainMasksConfig, {"kind": "vae"}, "train_masks")


# ---- the stage --------------------------------------------------------------------------------


def _cfg(tmp_path, name: str, **kw) -> TrainMasksConfig:
    base = dict(
        out=str(tmp_path / name / "masks"),
        metrics=str(tmp_path / name / "train_masks.json"),
        live_dir=str(tmp_path / name / "live"),
        total_images=80,  # 10 steps of 8
        batch_size=8,
        latent_dim=16,
        g_channels=32,
        d_channels=8,
        checkpoint_every_images=40,
        log_every_images=16,
        eval_samples=16,
        min_component=4,
        device="cpu",
        bf16=False,  # bf16 kernels are slower than fp32 at these toy sizes
    )
    return TrainMasksConfig(**{**base, **kw})


def test_interrupted_training_resumes_to_the_same_result(tmp_path, tiny_shapes):
    data, kind = str(tiny_shapes), "semgan"
    extra = {"gumbel": True, "real_noise": 0.05}
    straight = _cfg(tmp_path, "straight", data=data, kind=kind, **extra)
    m_straight = train_masks(straight, progress=False)

    resumed = _cfg(tmp_path, "resumed", data=data, kind=kind, **extra)
    m_part = train_masks(resumed, stop_after_images=32, progress=False)
    assert m_part["steps"] == 4 and m_part["finished"] == 0
    part = load_checkpoint(f"{resumed.out}/checkpoint.pt")  # weights_only=True inside
    assert part["step"] == 4 and part["images_seen"] == 32 and part["finished"] is False
    m_final = train_masks(resumed, progress=False)

    a = torch.load(f"{straight.out}/checkpoint.pt", weights_only=True)
    b = torch.load(f"{resumed.out}/checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 10 and m_final["steps"] == 10
    assert a["config"] == {**b["config"], "out": a["config"]["out"], **_paths(a)}
    # Same RNG stream and same states: the resumed run ends with the same weights.
    for net in ("model", "ema", "discriminator"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0)
    assert torch.equal(a["rng"], b["rng"])
    assert m_final["class_js"] == pytest.approx(m_straight["class_js"])

    # Outputs: metrics JSON, sample grids, DVCLive curves, a loadable EMA generator.
    saved = json.loads((tmp_path / "resumed" / "train_masks.json").read_text())
    assert saved["steps"] == 10 and 0 <= saved["spurious_rate"] <= 1
    assert "off_palette_rate" not in saved
    assert (tmp_path / "resumed" / "masks" / "grid.png").is_file()
    assert (tmp_path / "resumed" / "masks" / "samples" / "00000080.png").is_file()
    assert (tmp_path / "resumed" / "live" / "metrics.json").is_file()
    g = load_mask_generator(f"{resumed.out}/checkpoint.pt")
    assert (g.kind, g.num_classes, g.height, g.width, g.latent_dim) == (kind, 7, 32, 32, 16)
    assert not g.training
    masks = sample_masks(g, 5, seed=0)
    assert masks.shape == (5, 32, 32) and masks.max() < 7


def _paths(ckpt: dict) -> dict:
    c = ckpt["config"]
    return {k: c[k] for k in ("out", "metrics", "live_dir")}


def test_rgb_baseline_trains_and_resume_refuses_a_different_architecture(tmp_path, tiny_shapes):
    cfg = _cfg(tmp_path, "a", data=str(tiny_shapes), total_images=16, kind="rgb")
    m = train_masks(cfg, progress=False)
    assert 0 <= m["off_palette_rate"] <= 1 and m["steps"] == 2
    g = load_mask_generator(f"{cfg.out}/checkpoint.pt")
    assert g.kind == "rgb" and torch.equal(
        ((g.colors + 1) * 127.5).round().to(torch.uint8), torch.tensor(_shapes_colors(cfg.data))
    )
    other = _cfg(tmp_path, "a", data=str(tiny_shapes), total_images=16, kind="rgb", g_channels=16)
    with pytest.raises(ConfigError, match=r"arch\.g_channels.*train_masks\.g_channels.*--restart"):
        train_masks(other, progress=False)
    # A training setting that is not architecture is refused too; the budget may change.
    faster = _cfg(tmp_path, "a", data=str(tiny_shapes), total_images=16, kind="rgb", lr_d=0.01)
    with pytest.raises(ConfigError, match=r"\(train_masks\.lr_d\)"):
        train_masks(faster, progress=False)
    longer = _cfg(tmp_path, "a", data=str(tiny_shapes), total_images=24, kind="rgb")
    assert train_masks(longer, progress=False)["steps"] == 3  # resumed: one more step
    # --restart trains the other settings from scratch, replacing the checkpoint.
    assert train_masks(other, restart=True, progress=False)["steps"] == 2
    assert load_checkpoint(f"{cfg.out}/checkpoint.pt")["arch"]["g_channels"] == 16


def _shapes_colors(data: str) -> list:
    from pipeline.shards import load_class_table

    return load_class_table(data).colors.tolist()


def test_cli_runs_the_stage(tmp_path, tiny_shapes):
    from pipeline.cli import main

    params = tmp_path / "params.yaml"
    cfg = _cfg(tmp_path, "cli", data=str(tiny_shapes), total_images=16)
    from pipeline.config import to_dict

    d = to_dict(cfg)
    d["betas"] = list(d["betas"])
    import yaml

    params.write_text(yaml.safe_dump({"train_masks": d}))
    overrides = ["--set", "train_masks.total_images=24", "--set", "train_masks.bf16=true"]
    rc = main(["train-masks", "--params", str(params), *overrides])
    assert rc == 0
    saved = json.loads((tmp_path / "cli" / "train_masks.json").read_text())
    assert saved["steps"] == 3
    assert main(["train-masks", "--params", str(params), "--set", "train_masks.nope=1"]) == 2
    shutil.rmtree(tmp_path / "cli")
