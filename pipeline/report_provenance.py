"""The report's provenance section: what produced the numbers, so they can be produced again.

The git revision, the machine, both generator checkpoints' hashes (now, and as `generate`
recorded them), every stage's output hashes from dvc.lock, stage times, the params and every
metrics key. Each probe degrades to a plain "unknown" (no git, no dvc.lock, ...), never an error.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.report_figures import esc, table
from pipeline.report_sections import (
    Evidence,
    Section,
    json_file,
    not_run,
    num,
    stale_stages,
)


def git_revision(cwd: str | Path = ".") -> str:
    """`<sha> (<branch>)`, with a note when the tree has uncommitted changes."""
    try:
        sha = _git(cwd, "rev-parse", "HEAD")
        branch = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
        dirty = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout, or git is not installed)"
    return f"{sha} ({branch})" + (", with uncommitted changes" if dirty else "")


def _git(cwd: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def machine() -> list[tuple[str, str]]:
    rows = [
        ("system", platform.platform()),
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("memory", _memory()),
        ("python", platform.python_version()),
    ]
    for dist in ("torch", "segmentation-models-pytorch", "dvc", "prefect", "semsynth"):
        try:
            rows.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])  # "MemTotal: N kB" comes first
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_rows(ev: Evidence) -> list[tuple[str, ...]]:
    """Each generator checkpoint: its hash now and the one `generate` recorded; a mismatch means
    the synthetic data came from other weights than the ones on disk."""
    recorded = (json_file(ev.synthetic / "stats.json", []) or {}).get("checkpoints", {})
    rows = []
    for which, folder in (("mask", ev.masks), ("image", ev.images)):
        path = folder / "checkpoint.pt"
        now = sha256(path) if path.is_file() else ""
        used = recorded.get(which, "")
        same = "–" if not (now and used) else ("yes" if now == used else "NO: regenerate")
        size = f"{path.stat().st_size / 2**20:.1f} MiB" if now else "absent"
        rows.append((which, str(path), size, now[:16] or "–", used[:16] or "–", same))
    return rows


def stage_times(ev: Evidence) -> list[tuple[str, str, str]]:
    """(stage, time, how it was measured) from the metrics each stage wrote."""
    rows = []
    for name, m in ev.metrics.items():
        seconds, how = _seconds(m)
        if seconds is not None:
            rows.append((name, f"{seconds:.1f} s", how))
    if ev.runs:
        total = sum(r.get("seconds", 0.0) for r in ev.runs.values())
        rows.append(("train_segmenter", f"{total:.1f} s", f"sum over {len(ev.runs)} runs"))
    return rows


def _seconds(m: dict[str, Any]) -> tuple[float | None, str]:
    if isinstance(m.get("seconds"), int | float):
        return float(m["seconds"]), "seconds"
    parts = [v for k, v in m.items() if k.endswith("_seconds") and isinstance(v, int | float)]
    if parts:
        return float(sum(parts)), "sum of *_seconds"
    # training stages log images seen (or kimg) and a rate
    seen = m.get("images_seen")
    if not isinstance(seen, int | float) and isinstance(m.get("kimg"), int | float):
        seen = m["kimg"] * 1000
    rate = next((m[k] for k in ("train_images_per_s", "train_img_per_s") if m.get(k)), None)
    if isinstance(seen, int | float) and isinstance(rate, int | float) and rate > 0:
        return seen / rate, "images seen / training images per s (training loop only)"
    return None, ""


def lock_rows(lock: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage, its outputs' hashes) from dvc.lock: what `dvc checkout` would restore."""
    rows = []
    for stage, spec in lock.items():
        outs = [f"{o.get('path')} {str(o.get('md5', ''))[:12]}" for o in spec.get("outs", [])]
        rows.append((stage, ", ".join(outs) or "–"))
    return rows


def stale_lines(lock: dict[str, Any]) -> str:
    stale = stale_stages(lock)
    if not stale:
        return "<p>dvc.lock: every stage read the outputs the lock records for its inputs.</p>"
    rows = [(stage, path, used[:12], now[:12]) for stage, path, used, now in stale]
    return '<p class="notrun">stale stages (rerun <code>dvc repro</code>):</p>' + table(
        ["stage", "input", "md5 it read", "md5 now"], rows
    )


def all_metrics(ev: Evidence) -> str:
    """Every key of every metrics file, collapsed: new keys show up here without code changes."""
    out = []
    for name, m in sorted(ev.metrics.items()):
        rows = [
            (k, num(v, "{:.6g}") if isinstance(v, int | float) else str(v)) for k, v in m.items()
        ]
        where = ev.files.get(name, name)
        out.append(
            f"<details><summary>{esc(where)} ({len(rows)} keys)</summary>"
            f"{table(['key', 'value'], rows)}</details>"
        )
    return "".join(out) or not_run("no metrics files")


def provenance_section(ev: Evidence) -> Section:
    read = (
        "What produced these numbers: the same revision, params and checkpoints give them again "
        "(`dvc repro`); a checkpoint whose hash differs from the one generate used means the "
        "synthetic data is stale."
    )
    lock = lock_rows(ev.lock_stages)
    params = yaml.safe_dump(ev.params, sort_keys=False) if ev.params else ""
    body = table(["", ""], [("git revision", git_revision(ev.lock.parent)), *machine()], cls="kv")
    body += "<h3>Generator checkpoints</h3>"
    body += table(
        ["generator", "path", "size", "sha256 now", "used by generate", "same"],
        checkpoint_rows(ev),
    )
    body += "<h3>Stage times</h3>"
    times = stage_times(ev)
    body += table(["stage", "time", "measured as"], times) if times else not_run("no timings")
    body += "<h3>Outputs (dvc.lock)</h3>"
    if lock:
        body += table(["stage", "outputs md5"], lock) + stale_lines(ev.lock_stages)
    else:
        body += not_run(f"no {ev.lock} (run the stages with `dvc repro` to record them)")
    body += "<h3>Params</h3>"
    body += (
        f"<details><summary>params ({len(ev.params)} sections)</summary>"
        f"<pre>{esc(params)}</pre></details>"
        if params
        else not_run("no params")
    )
    body += "<h3>All metrics</h3>" + all_metrics(ev)
    return Section("provenance", "Provenance", read, body)
