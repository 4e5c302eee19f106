"""generate.balance: rejection sampling of SemGAN masks toward the real class frequencies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.generate import BalanceConfig, GenerateConfig, fingerprint, generate
from pipeline.generate_filters import Tilt, fit_tilt
from pipeline.shards import iter_split
from tests.test_generate import _cfg, make_checkpoints

# 60 masks of one class only, 40 half class 0 / half class 1: mean shares [0.8, 0.2]
POOL = np.array([[1.0, 0.0]] * 60 + [[0.5, 0.5]] * 40)


def test_fit_tilt_matches_a_reachable_target():
    lam = fit_tilt(POOL, np.array([0.6, 0.4]))
    w = np.exp(POOL @ lam)
    assert w @ POOL / w.sum() == pytest.approx([0.6, 0.4], abs=1e-3)
    # 0.4 of class 1 needs 80% of the weight on the mixed masks: each weighs 6x a plain one
    assert w[-1] / w[0] == pytest.approx(6.0, rel=1e-2)


def test_tilt_keeps_the_asked_share_and_favours_the_rare_class():
    real = np.array([0.6, 0.4])
    tilt = Tilt.fit(POOL, real, BalanceConfig(strength=1.0, accept_rate=0.25))
    p = tilt.accept(POOL)
    assert p.mean() == pytest.approx(0.25, abs=1e-6)
    assert p[-1] == pytest.approx(6 * p[0], rel=1e-2)  # exact tilt: no mask reaches p = 1 here
    s = tilt.summary(POOL, real)
    assert s["pilot_freq_distance"] == pytest.approx(0.2) and s["tilted_freq_distance"] < 1e-3
    # strength 0 aims at the pilot's own frequencies: every mask kept with the same probability
    flat = Tilt.fit(POOL, real, BalanceConfig(strength=0.0, accept_rate=0.5)).accept(POOL)
    assert flat == pytest.approx(np.full(100, 0.5), abs=1e-6)


@pytest.fixture(scope="module")
def ckpts(tiny_shapes, tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"), tiny_shapes)


def test_balance_rejects_records_and_moves_toward_the_real_frequencies(
    tiny_shapes, ckpts, tmp_path
):
    kw = dict(n_samples=16, masks_per_shard=8, images_per_mask=0, mask_batch_size=16,
              image_checkpoint=str(tmp_path / "absent.pt"))  # fmt: skip
    base = generate(_cfg(tiny_shapes, ckpts, tmp_path / "off", **kw), progress=False)
    b = BalanceConfig(strength=1.0, accept_rate=0.3, pilot=256)
    cfg = _cfg(tiny_shapes, ckpts, tmp_path / "on", balance=b, **kw)
    m = generate(cfg, progress=False)
    assert base["rejected_balance"] == 0 and "balance_pilot_ess" not in base
    assert m["rejected_balance"] > 0 and 0 < m["kept_fraction"] < base["kept_fraction"]
    assert m["balance_pilot_accept_rate"] == pytest.approx(0.3, abs=1e-3)
    assert m["balance_tilted_freq_distance"] < m["balance_pilot_freq_distance"]
    metas = [s.meta for s in iter_split(cfg.out, "train")]
    assert all("balance" in mt["filters_passed"] for mt in metas)
    assert all(0 < mt["filters"]["balance_accept"] <= 1 for mt in metas)
    # the same settings draw the same masks (the pilot and the acceptance are seeded)
    again = generate(dataclasses.replace(cfg, out=str(tmp_path / "again")), progress=False)
    assert again["class_freq_distance"] == m["class_freq_distance"]
    assert [s.meta["candidate"] for s in iter_split(tmp_path / "again", "train")] == [
        mt["candidate"] for mt in metas
    ]


def test_balance_off_leaves_shard_fingerprints_alone(tiny_shapes, ckpts, tmp_path):
    import torch

    cfg = _cfg(tiny_shapes, ckpts, tmp_path)
    hashes, cpu = {"mask": "m", "image": "i"}, torch.device("cpu")
    off = dataclasses.replace(cfg, balance=BalanceConfig(strength=0.0, accept_rate=0.5))
    on = dataclasses.replace(cfg, balance=BalanceConfig(strength=0.5))
    assert fingerprint(off, 0, hashes, cpu) == fingerprint(cfg, 0, hashes, cpu)
    assert fingerprint(on, 0, hashes, cpu) != fingerprint(cfg, 0, hashes, cpu)


def test_balance_settings_are_checked():
    with pytest.raises(ConfigError, match="strength must be in"):
        BalanceConfig(strength=1.5)
    with pytest.raises(ConfigError, match="balance.strength=0"):
        GenerateConfig(mask_source="real", balance=BalanceConfig(strength=0.5))
