"""The real components, on tiny params in a temporary git repository (a copy of this one):

1. `dvc repro` runs every stage; then `dvc status` is clean and `dvc metrics show` has the mIoU
   keys; `dvc push` / `dvc pull` round-trip every output through a local remote; `dvc plots show`
   writes a page that loads Vega from the repository only.
2. A real Prefect server and worker (scripts/prefect_up.sh, 127.0.0.1, a free port, a temporary
   PREFECT_HOME) run the `generate-dataset` deployment on a Dask LocalCluster of 2 workers; the
   run completes, the exported files exist, and DVC has versioned them (`dvc status` clean).
   Everything is stopped by PID (scripts/prefect_down.sh), also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.common import persist_overrides

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for 2 shared cores; every stage still does its real work.
TINY = [
    "prepare.options={n_train: 48, n_val: 16, seed: 0}",
    "prepare.size=[32, 32]",
    "prepare.samples_per_shard=32",
    "prepare.workers=0",
    "train_masks.total_images=64",
    "train_masks.batch_size=16",
    "train_masks.latent_dim=16",
    "train_masks.g_channels=32",
    "train_masks.d_channels=16",
    "train_masks.eval_samples=16",
    "train_masks.log_every_images=32",
    "train_masks.checkpoint_every_images=64",
    "train_masks.device=cpu",
    "train_images.total_images=64",
    "train_images.batch_size=8",
    "train_images.g_ch=4",
    "train_images.d_ch=4",
    "train_images.spade_hidden=8",
    "train_images.z_dim=4",
    "train_images.bn_refresh_batches=1",
    "train_images.log_every_images=32",
    "train_images.checkpoint_every_images=64",
    "train_images.fid_images=0",
    "train_images.grid_rows=2",
    "train_images.grid_seeds=1",
    "train_images.device=cpu",
    "generate.n_samples=16",
    "generate.masks_per_shard=8",
    "generate.filters={max_spurious_rate: 1.0, min_classes: 1, max_hist_distance: 1.0}",
    "generate.candidates_per_mask=4.0",
    "generate.device=cpu",
    "export.workers=0",
    "train_segmenter.steps=4",
    "train_segmenter.pretrain_steps=2",
    "train_segmenter.batch_size=8",
    "train_segmenter.seeds=[0]",
    "train_segmenter.curve_fractions=[0.5]",
    "train_segmenter.curve_seeds=[0]",
    "evaluate.seeds=[0]",
    "evaluate.curve_fractions=[0.5, 1.0]",
    "evaluate.device=cpu",
    "train_segmenter.device=cpu",
]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc.stdout


def dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    return run([str(BIN / "dvc"), *args], repo, env)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "2",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A copy of the repository's files (tracked + new, not ignored), tiny params, `dvc repro`."""
    root = tmp_path_factory.mktemp("repo") / "semsynth"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file() and not f.startswith(("metrics/", "bench/results/")):
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / f)
    env["PYTHONPATH"] = str(root)  # the copy's code, not the editable install's
    params = root / "params.yaml"
    present = set(yaml.safe_load(params.read_text()))
    missing = sorted({o.split(".")[0] for o in TINY} - present)
    params.write_text(params.read_text() + "".join(f"\n{m}: {{}}\n" for m in missing))
    persist_overrides(params, TINY)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "copy"], root, env)
    remote = root.parent / "remote"
    dvc(root, env, "remote", "modify", "--local", "local", "url", str(remote))
    t0 = time.perf_counter()
    dvc(root, env, "repro")
    print(f"dvc repro (tiny): {time.perf_counter() - t0:.1f}s")
    return root


def test_repro_leaves_status_clean_and_metrics_with_miou(repo: Path, env: dict[str, str]) -> None:
    assert json.loads(dvc(repo, env, "status", "--json")) == {}
    metrics = json.loads(dvc(repo, env, "metrics", "show", "--json"))
    flat: dict[str, float] = {}
    for data in metrics[""]["data"].values():
        flat.update(data.get("data", {}))
    for key in ("miou_real", "miou_real_synth", "miou_gain"):
        assert key in flat, f"{key} missing from dvc metrics show: {sorted(flat)}"
        assert isinstance(flat[key], float)
    # The last stage wrote the report page, every section built (some say "not run").
    page = (repo / "data/report/index.html").read_text()
    assert "could not build this section" not in page and "Provenance" in page
    # A second repro is a no-op: nothing ran.
    assert "didn't change" in dvc(repo, env, "repro") or "up to date" in dvc(repo, env, "repro")


def test_push_pull_round_trips_every_output(repo: Path, env: dict[str, str]) -> None:
    dvc(repo, env, "push")
    outs = sorted(p.relative_to(repo) for p in (repo / "data").rglob("*") if p.is_file())
    before = {p: (repo / p).read_bytes() for p in outs}
    shutil.rmtree(repo / ".dvc" / "cache")
    for p in (repo / "data").iterdir():
        if p.name != ".gitignore":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    dvc(repo, env, "pull")
    assert {p: (repo / p).read_bytes() for p in outs} == before
    assert json.loads(dvc(repo, env, "status", "--json")) == {}


def test_plots_render_offline(repo: Path, env: dict[str, str]) -> None:
    dvc(repo, env, "plots", "show", "-o", "plots")
    html = (repo / "plots" / "index.html").read_text()
    assert "vegaEmbed(" in html, "no plot was rendered"
    assert "http://" not in html and "https://" not in html.replace("https://vega.github.io", "")
    for src in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        assert f'src="../vendor/vega/{src}"' in html
        assert (repo / "plots" / ".." / "vendor" / "vega" / src).is_file()


# Reads back from the Prefect API what the run did: flow runs, task runs, latest artifacts.
QUERY = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    runs = c.read_flow_runs()
    flows = {f.id: f.name for f in c.read_flows()}
    tasks = c.read_task_runs()
    arts = c.read_latest_artifacts()
print(json.dumps({
    "runs": [
        {"name": flows[r.flow_id], "state": r.state_type.value, "parameters": r.parameters,
         "latency_s": (r.start_time - r.created).total_seconds() if r.start_time else None}
        for r in runs
    ],
    "tasks": [t.name for t in tasks if t.state_type.value == "COMPLETED"],
    "artifacts": {a.key: {"type": a.type, "data": a.data} for a in arts if a.key},
}, default=str))
"""


@pytest.fixture(scope="module")
def prefect(repo: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """A real server + process worker started by scripts/prefect_up.sh; stopped by PID after."""
    home = tmp_path_factory.mktemp("prefect_home")
    penv = {
        **env,
        "PREFECT_HOME": str(home),
        "SEMSYNTH_BIN": str(BIN),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "PREFECT_UI_ENABLED": "false",
    }
    try:
        run(["bash", "scripts/prefect_up.sh"], repo, penv, timeout=240)
        api = (home / "env").read_text().split('PREFECT_API_URL="')[1].split('"')[0]
        yield {**penv, "PREFECT_API_URL": api}
    finally:
        subprocess.run(["bash", "scripts/prefect_down.sh"], cwd=repo, env=penv, timeout=120)
        for name in ("server", "worker"):
            assert not (home / f"{name}.pid").exists()


def test_generate_dataset_deployment_on_dask(
    repo: Path, prefect: dict[str, str], env: dict[str, str]
) -> None:
    shutil.rmtree(repo / "data" / "export")
    t0 = time.perf_counter()
    out = run(
        [
            str(BIN / "prefect"), "deployment", "run", "generate-dataset/generate-dataset",
            "-p", "n_samples=24", "-p", "dask=local", "--watch", "--watch-timeout", "400",
        ],
        repo,
        prefect,
        timeout=450,
    )  # fmt: skip
    print(f"generate-dataset deployment run: {time.perf_counter() - t0:.1f}s")
    assert "COMPLETED" in out.upper(), out
    runs = json.loads(run([sys.executable, "-c", QUERY], repo, prefect))
    (flow_run,) = [r for r in runs["runs"] if r["name"] == "generate-dataset"]
    assert flow_run["state"] == "COMPLETED"
    assert flow_run["parameters"]["dask"] == "local"
    print(f"deployment run latency (created → running): {flow_run['latency_s']:.1f}s")
    shard_runs = [r for r in runs["tasks"] if r.startswith("generate-shard-")]
    assert len(shard_runs) == 3  # 24 masks at 8 a shard, as mapped tasks
    artifacts = runs["artifacts"]
    assert float(artifacts["generate-progress"]["data"]) == 100.0
    markdown = artifacts["generated-dataset"]["data"]
    assert "**train**: 24 image/label pairs" in markdown and "## Class frequencies" in markdown
    assert "data:image/png;base64," in markdown and "exported coco: 24 samples" in markdown
    assert artifacts["class-frequencies"]["type"] == "table"
    assert "data/report/index.html" in artifacts["semsynth-report"]["data"]  # the page, attached
    # The exports of 24 masks exist ...
    coco = json.loads((repo / "data/export/coco/annotations/stuff_train.json").read_text())
    assert len(coco["images"]) == 24
    assert any((repo / "data" / "export" / "cityscapes").rglob("*.png"))
    # ... the override went into params.yaml and DVC recorded the outputs: status is clean.
    assert "n_samples: 24" in (repo / "params.yaml").read_text()
    assert json.loads(dvc(repo, env, "status", "--json", "generate", "export")) == {}
    lock = (repo / "dvc.lock").read_text()
    assert "n_samples: 24" in lock
