"""WebDataset-style tar shards: `{key}.image.png`, `{key}.mask.png`, `{key}.json` per sample.

A dataset folder holds `classes.json`, `stats.json` and `{split}-{index:06d}.tar` shards. A shard
is written under a temporary name and renamed when complete, so a crash never leaves half a
shard. Tar headers carry fixed metadata so the same samples always give byte-identical shards.
Reading streams sample by sample: memory does not grow with the dataset.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.classes import ClassTable, mask_to_png_bytes
from pipeline.errors import DatasetError
from pipeline.io_utils import default_mode

SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


@dataclass
class Sample:
    key: str
    mask: np.ndarray  # uint8 [H, W] train ids
    image: np.ndarray | None = None  # uint8 [H, W, 3] RGB; None for mask-only datasets
    meta: dict[str, Any] = field(default_factory=dict)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_sample(
    sample: Sample, table: ClassTable | None = None, compress_level: int = 1
) -> list[tuple[str, bytes]]:
    """Sample → [(member name, bytes)]; pure, so worker processes can encode in parallel."""
    if "." in sample.key or "/" in sample.key:
        raise ValueError(f"sample key {sample.key!r} must not contain '.' or '/'")
    files = []
    if sample.image is not None:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(sample.image, dtype=np.uint8), mode="RGB").save(
            buf, format="PNG", compress_level=compress_level
        )
        files.append((f"{sample.key}.image.png", buf.getvalue()))
    files.append((f"{sample.key}.mask.png", mask_to_png_bytes(sample.mask, table, compress_level)))
    meta = json.dumps(sample.meta, sort_keys=True).encode()
    files.append((f"{sample.key}.json", meta))
    return files


class ShardWriter:
    """Writes one tar shard to a temporary file; `close()` renames it into place."""

    def __init__(self, path: str | Path, table: ClassTable | None = None, compress_level: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.compress_level = compress_level
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, sample: Sample) -> None:
        self.write_encoded(encode_sample(sample, self.table, self.compress_level))

    def write_encoded(self, files: Iterable[tuple[str, bytes]]) -> None:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # fixed header fields: identical samples → identical bytes
            info.mode = 0o644
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, default_mode())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardedWriter:
    """Splits a stream of samples into `{split}-{index:06d}.tar` shards of `per_shard` samples."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        per_shard: int,
        table: ClassTable | None = None,
        compress_level: int = 1,
    ):
        if per_shard < 1:
            raise ValueError("per_shard must be >= 1")
        self.root, self.split, self.per_shard = Path(root), split, per_shard
        self.table, self.compress_level = table, compress_level
        self.paths: list[Path] = []
        self._cur: ShardWriter | None = None

    def write(self, sample: Sample) -> None:
        self.write_encoded(encode_sample(sample, self.table, self.compress_level))

    def write_encoded(self, files: Iterable[tuple[str, bytes]]) -> None:
        """Write one already-encoded sample (from `encode_sample`, e.g. in a worker process)."""
        if self._cur is None:
            self._cur = ShardWriter(
                self.root / shard_name(self.split, len(self.paths)), self.table, self.compress_level
            )
        self._cur.write_encoded(files)
        if self._cur.count >= self.per_shard:
            self.paths.append(self._cur.close())
            self._cur = None

    def close(self) -> list[Path]:
        if self._cur is not None:
            self.paths.append(self._cur.close())
            self._cur = None
        return self.paths

    def abort(self) -> None:
        if self._cur is not None:
            self._cur.abort()
            self._cur = None

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _decode(files: dict[str, bytes], key: str, path: Path) -> Sample:
    if "mask.png" not in files:
        raise DatasetError(f"{path}: sample {key!r} has no mask.png")
    with Image.open(io.BytesIO(files["mask.png"])) as m:
        mask = np.array(m, dtype=np.uint8)
    image = None
    if "image.png" in files:
        with Image.open(io.BytesIO(files["image.png"])) as im:
            image = np.array(im.convert("RGB"), dtype=np.uint8)
    meta = json.loads(files["json"]) if "json" in files else {}
    return Sample(key=key, mask=mask, image=image, meta=meta)


def iter_raw_shard(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {"image.png": bytes, "mask.png": bytes, "json": bytes}) without decoding.

    `iter_shard` decodes on top of it, the exporters copy its bytes as is.
    """
    return _walk_shard(path, "r|", lambda tar, m: tar.extractfile(m).read())


def shard_offsets(path: str | Path) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {ext: (data offset, size)}) of each sample, from the tar headers alone: where to
    seek for random access (`pipeline.data.ShardIndex`)."""
    return _walk_shard(path, "r:", lambda tar, m: (m.offset_data, m.size))


def _walk_shard(
    path: str | Path, mode: str, value: Callable[[tarfile.TarFile, tarfile.TarInfo], Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The one tar reader: members grouped by sample key, `value(tar, member)` kept per file."""
    path = Path(path)
    key, files = None, {}
    try:
        with tarfile.open(path, mode=mode) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, ext = member.name.partition(".")
                if key is not None and k != key:
                    yield key, files
                    files = {}
                key = k
                files[ext] = value(tar, member)
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(
            f"{path}: cannot read shard ({e}); re-run the stage that wrote it"
        ) from None
    if key is not None:
        yield key, files


def decode_sample(path: str | Path, key: str, files: dict[str, bytes]) -> Sample:
    """One sample of `iter_raw_shard(path)` decoded: the mask as class ids (the palette PNG's
    indices, never its RGB colours), the image as RGB."""
    try:
        return _decode(files, key, Path(path))
    except OSError as e:  # a PNG that PIL cannot read is as broken as a torn tar
        raise DatasetError(
            f"{path}: cannot read sample {key!r} ({e}); re-run the stage that wrote it"
        ) from None


def iter_shard(path: str | Path) -> Iterator[Sample]:
    """Stream the samples of one shard in order."""
    for key, files in iter_raw_shard(path):
        yield decode_sample(path, key, files)


def list_shards(root: str | Path, split: str) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.glob(f"{split}-*.tar") if SHARD_RE.match(p.name))


def splits(root: str | Path) -> list[str]:
    return sorted({m["split"] for p in Path(root).glob("*.tar") if (m := SHARD_RE.match(p.name))})


def iter_split(root: str | Path, split: str) -> Iterator[Sample]:
    """Stream every sample of a split, shard by shard."""
    shards = list_shards(root, split)
    if not shards:
        raise DatasetError(
            f"{root}: no '{split}-*.tar' shards; available splits: {splits(root) or 'none'}"
        )
    for p in shards:
        yield from iter_shard(p)


def load_split(root: str | Path, split: str) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    """Load a whole split into memory: (images uint8 [N,H,W,3] or None, masks uint8 [N,H,W], keys)."""
    images, masks, keys = [], [], []
    for s in iter_split(root, split):
        masks.append(s.mask)
        keys.append(s.key)
        if s.image is not None:
            images.append(s.image)
    if images and len(images) != len(masks):
        raise DatasetError(f"{root}/{split}: some samples have images and some do not")
    return (np.stack(images) if images else None), np.stack(masks), keys


def load_class_table(root: str | Path) -> ClassTable:
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: is {root} a prepared dataset? run `semsynth prepare`"
        )
    return ClassTable.load(path)


def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded `fraction` of n items; smaller fractions nest in larger ones."""
    keep = max(1, round(n * fraction))
    return np.sort(np.random.default_rng([seed, 7]).permutation(n)[:keep])


def heldout_split(root: str | Path) -> str:
    """The real held-out split: `test` when the dataset has one, else `val`."""
    have = splits(root)
    for s in ("test", "val"):
        if s in have:
            return s
    raise DatasetError(f"{root}: no test or val split to evaluate on (splits: {have})")
