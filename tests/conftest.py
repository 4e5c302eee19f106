"""Shared fixtures: tiny datasets built with the real prepare stage, and the CamVid path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared shapes dataset: train 48, val 16 pairs at 32x32 (read-only: copy to modify)."""
    from pipeline.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("tiny_shapes")
    cfg = PrepareConfig(
        dataset="shapes",
        options={"n_train": 48, "n_val": 16, "seed": 0},
        size=(32, 32),
        samples_per_shard=16,
        workers=0,
        out=str(root / "prepared"),
        metrics=str(root / "prepare.json"),
    )
    prepare(cfg, progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def camvid() -> Path:
    """The CamVid folder beside the repository; tests using it skip where ../shared is absent."""
    if not (CAMVID / "train").is_dir():
        pytest.skip("../shared/datasets/camvid is absent (a fresh clone has none)")
    return CAMVID


@pytest.fixture
def make_pairs():
    """Factory writing a small paired-folders dataset (`split` or `flat` layout) with a class table."""
    import numpy as np
    from PIL import Image

    def make(
        root: Path, n: int = 4, layout: str = "split", size: tuple[int, int] = (20, 30)
    ) -> Path:
        rng = np.random.default_rng(0)
        dirs = {"split": [("train", "trainannot"), ("val", "valannot")], "flat": [("img", "lab")]}[
            layout
        ]
        for img_dir, lab_dir in dirs:
            (root / img_dir).mkdir(parents=True)
            (root / lab_dir).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                    root / img_dir / f"f{i}.png"
                )
                Image.fromarray(rng.integers(0, 4, size, dtype=np.uint8)).save(
                    root / lab_dir / f"f{i}.png"
                )
        (root / "classes.yaml").write_text(
            "classes:\n"
            + "".join(f"  - {{name: c{i}, color: [{i * 50}, 0, 0]}}\n" for i in range(3))
            + "void_values: [3]\n"
        )
        return root

    return make
