"""generate survives SIGKILL: the rerun's shards are byte-identical to an uninterrupted run's."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_generate import _cfg, _tars, make_checkpoints

from pipeline.generate import generate

REPO = Path(__file__).resolve().parents[1]

# The child slows shard writing down (a sleep per sample) so the kill lands mid-shard.
CHILD = """
import json, sys, time
from pipeline.config import build
from pipeline.generate import GenerateConfig, generate
import pipeline.shards as shards

if sys.argv[2] == "slow":
    write = shards.ShardWriter.write_encoded
    def slow(self, files):
        time.sleep(0.05)
        write(self, files)
    shards.ShardWriter.write_encoded = slow
generate(build(GenerateConfig, json.loads(sys.argv[1]), "generate"), progress=False)
"""


def _child(cfg, mode: str) -> list[str]:
    d = dataclasses.asdict(cfg)
    return [sys.executable, "-c", CHILD, json.dumps(d), mode]


@pytest.mark.timeout(240)
def test_sigkill_mid_run_then_rerun_gives_identical_shards(tiny_shapes, tmp_path):
    ckpts = make_checkpoints(tmp_path, tiny_shapes)
    cfg = _cfg(
        tiny_shapes, ckpts, tmp_path / "killed", n_samples=18, masks_per_shard=6, images_per_mask=1
    )
    out = Path(cfg.out)

    proc = subprocess.Popen(_child(cfg, "slow"), cwd=REPO)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "train-000000.tar").exists() and list(out.glob(".train-000001.tar.*.tmp")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the child finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".train-000001.tar.*.tmp")), "killed mid-shard: a temporary file is left"
    assert not (out / "train-000002.tar").exists()

    subprocess.run(_child(cfg, "fast"), cwd=REPO, check=True, timeout=180)
    done = json.loads(Path(cfg.metrics).read_text())
    assert done["shards_skipped"] == 1  # shard 0 was complete before the kill

    ref = _cfg(
        tiny_shapes, ckpts, tmp_path / "ref", n_samples=18, masks_per_shard=6, images_per_mask=1
    )
    generate(ref, progress=False)
    assert _tars(out) == _tars(Path(ref.out)) and len(_tars(out)) == 3
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "no temporary files remain"
