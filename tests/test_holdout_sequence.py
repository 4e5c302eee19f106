"""scripts/holdout_sequence.py: a sequence-disjoint split that `prepare` reads as it is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import holdout_sequence as hs  # noqa: E402

from pipeline.prepare import PrepareConfig, prepare  # noqa: E402
from pipeline.shards import load_split  # noqa: E402


@pytest.fixture
def drives(tmp_path, make_pairs) -> Path:
    """6 train frames of drives A (4) and B (2), and 6 val frames of its own split."""
    root = make_pairs(tmp_path / "ds", n=6)
    for sub in ("train", "trainannot"):
        for i in range(6):
            (root / sub / f"f{i}.png").rename(root / sub / f"{'AB'[i >= 4]}_{i}.png")
    return root


def test_held_out_drive_becomes_val_and_prepare_reads_it(drives, tmp_path):
    out = tmp_path / "hold_b"
    assert hs.main(["--root", str(drives), "--hold", "B", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "val").iterdir()) == ["B_4.png", "B_5.png"]
    assert sorted(p.name for p in (out / "trainannot").iterdir()) == [
        f"A_{i}.png" for i in range(4)
    ]
    assert (out / "val" / "B_4.png").resolve() == (drives / "train" / "B_4.png").resolve()
    cfg = PrepareConfig(
        dataset="paired_folders",
        options={"root": str(out), "class_table": str(drives / "classes.yaml")},
        size=(16, 16), samples_per_shard=5, workers=0,
        out=str(tmp_path / "prepared"), metrics=str(tmp_path / "m.json"),
    )  # fmt: skip
    m = prepare(cfg, progress=False)
    assert (m["n_train"], m["n_val"]) == (4, 2)  # the dataset's own val split is not read
    _, _, keys = load_split(tmp_path / "prepared", "val")
    assert sorted(keys) == ["B_4", "B_5"]


def test_bad_holdouts_fail_before_writing(drives, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(SystemExit, match="leaves 6 train and 0 held-out"):
        hs.main(["--root", str(drives), "--hold", "C", "--out", str(out)])
    with pytest.raises(SystemExit, match="leaves 0 train and 6 held-out"):
        hs.main(["--root", str(drives), "--hold", "A", "--hold", "B", "--out", str(out)])
    out.mkdir()
    with pytest.raises(SystemExit, match="exists"):
        hs.main(["--root", str(drives), "--hold", "A", "--out", str(out)])
    out.rmdir()
    (drives / "trainannot" / "A_0.png").unlink()
    with pytest.raises(SystemExit, match="lacks labels for 1 images, e.g. A_0.png"):
        hs.main(["--root", str(drives), "--hold", "B", "--out", str(out)])
    assert (
        not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".x")] == []
    )


def test_a_failure_midway_leaves_nothing_behind(drives, tmp_path, monkeypatch):
    real_symlink, made = hs.os.symlink, []

    def flaky(src, dst):
        made.append(dst)
        if len(made) == 3:
            raise OSError("disk full")
        real_symlink(src, dst)

    monkeypatch.setattr(hs.os, "symlink", flaky)
    with pytest.raises(OSError, match="disk full"):
        hs.main(["--root", str(drives), "--hold", "B", "--out", str(tmp_path / "y")])
    assert not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".y")]
