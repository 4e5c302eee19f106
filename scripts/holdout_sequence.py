"""A sequence-disjoint split of a paired-folders dataset: the frames of one or more sequences
(file-name prefixes, e.g. CamVid's `0006R0`) become the val split, the other train frames stay
train. Video datasets' own val frames often lie between training frames of the same drive;
scoring on a held-out sequence tells generalising to new streets from memorising a drive.

    python scripts/holdout_sequence.py --root ../shared/datasets/camvid --hold 0006R0 \\
        --out data/camvid_hold0006R0
    .venv/bin/semsynth prepare --set prepare.dataset=paired_folders \\
        --set prepare.options.root=data/camvid_hold0006R0 \\
        --set prepare.options.class_table=datasets/camvid.yaml --set 'prepare.size=[96, 128]' \\
        --out data/camvid96_hold0006R0

OUT holds symbolic links (no pixel is copied) in the SegNet layout: train/, trainannot/, val/,
valannot/. Only ROOT's train split is read; its own val split is left out, so nothing of it can
leak into the choice of settings. OUT is written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path


def split_names(names: list[str], hold: list[str]) -> tuple[list[str], list[str]]:
    """(kept for train, held out) by file-name prefix."""
    held = [n for n in names if n.startswith(tuple(hold))]
    return [n for n in names if n not in set(held)], held


def write_layout(root: Path, hold: list[str], out: Path, images: str, labels: str) -> dict:
    """Symlink farm OUT/{train,trainannot,val,valannot}; counts per split."""
    img_dir, lab_dir = root / images, root / labels
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise SystemExit(f"{d} does not exist: --root must hold {images}/ and {labels}/")
    names = sorted(p.name for p in img_dir.iterdir() if p.is_file())
    missing = [n for n in names if not (lab_dir / n).is_file()]
    if missing:
        raise SystemExit(f"{lab_dir} lacks labels for {len(missing)} images, e.g. {missing[0]}")
    train, held = split_names(names, hold)
    if not held or not train:
        raise SystemExit(
            f"--hold {hold} leaves {len(train)} train and {len(held)} held-out frames of "
            f"{len(names)} in {img_dir}: give prefixes that match some frames, not all"
        )
    if out.exists():
        raise SystemExit(f"{out} exists: remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for split, subset in (("train", train), ("val", held)):
            for src_dir, dst in ((img_dir, split), (lab_dir, f"{split}annot")):
                (tmp / dst).mkdir()
                for n in subset:
                    os.symlink((src_dir / n).resolve(), tmp / dst / n)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"train": len(train), "val": len(held), "held_out": hold}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", required=True, help="paired-folders dataset (SegNet layout)")
    p.add_argument("--hold", required=True, action="append", help="sequence prefix (repeatable)")
    p.add_argument("--out", required=True, help="new folder for the split (must not exist)")
    p.add_argument("--images", default="train", help="image folder under ROOT (train)")
    p.add_argument("--labels", default="trainannot", help="label folder under ROOT (trainannot)")
    a = p.parse_args(argv)
    counts = write_layout(Path(a.root), a.hold, Path(a.out), a.images, a.labels)
    print(f"{a.out}: {counts['train']} train, {counts['val']} val frames (held out {a.hold})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
