"""Every flow calls the stage functions with arguments their signatures accept, in pipeline order.

The stage functions are replaced by autospec mocks (a call that does not fit the real signature
raises), so the whole `synthetic-data-pipeline` flow runs in seconds on a temporary Prefect API.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REPORT_SUMMARY = {
    "path": "data/report/index.html",
    "verdict": "No measurable effect: gain +1.00 pp mIoU",
    "figures": {"gain": "+1.00 pp"},
    "sections_not_run": [],
}


def report_artifacts() -> list[str]:
    """The markdown of every `semsynth-report` artifact on the test API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["semsynth-report"]))
        )
    return [a.data for a in found]


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, mock.MagicMock]:
    from pipeline import evaluate, export, generate, prepare, report, train_images, train_masks
    from pipeline import train_segmenter as seg

    fakes = {}

    def fake(module, name: str, result) -> None:
        m = mock.create_autospec(getattr(module, name), side_effect=result)
        monkeypatch.setattr(module, name, m)
        fakes[name] = m

    fake(prepare, "prepare", lambda *a, **k: {"n_train": 1.0})
    fake(train_masks, "train_masks", lambda *a, **k: {"swd": 1.0})
    fake(train_images, "train_images", lambda *a, **k: {"fid": 1.0})
    fake(generate, "generate_shard", lambda cfg, i, **k: {"shard": i})
    fake(generate, "finalize", lambda cfg, results, seconds=None: {"shards": float(len(results))})
    fake(export, "export", lambda *a, **k: {"coco_samples": 3.0})
    fake(seg, "train_segmenter", lambda *a, **k: {"miou": 0.5})
    fake(evaluate, "evaluate", lambda *a, **k: {"miou_gain": 0.1})
    fake(report, "build_report", lambda *a, **k: REPORT_SUMMARY)
    report = mock.Mock(return_value=("# report", [{"class": "a"}]))
    monkeypatch.setattr("flows.generate_dataset.dataset_report", report)
    fakes["report"] = report
    return fakes


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    data = yaml.safe_load(path.read_text())
    for name in ("train_masks", "train_images"):  # sections whose defaults are all we need
        data.setdefault(name, {})
    data["generate"].update(n_samples=5, masks_per_shard=2)
    data["train_segmenter"].update(seeds=[0, 1], curve_fractions=[0.5], curve_seeds=[0])
    path.write_text(yaml.safe_dump(data))
    return path


def test_pipeline_flow_calls_every_stage_in_order(prefect_api, stages, params: Path) -> None:
    from flows.synthetic_data_pipeline import synthetic_data_pipeline

    result = synthetic_data_pipeline(str(params), ["export.workers=0"], version=False)

    stages["prepare"].assert_called_once()
    stages["train_masks"].assert_called_once()
    stages["train_images"].assert_called_once()
    # 5 masks at 2 a shard: shards 0, 1, 2 as mapped tasks, then one finalize with all three.
    assert sorted(c.args[1] for c in stages["generate_shard"].call_args_list) == [0, 1, 2]
    (fin,) = stages["finalize"].call_args_list
    assert sorted(r["shard"] for r in fin.args[1]) == [0, 1, 2]
    (exp,) = stages["export"].call_args_list
    assert exp.args[0].workers == 0  # the override reached the export config
    # {real, real_synth} x seeds [0, 1], then the curve runs at 0.5: the dvc.yaml stages.
    runs = sorted(
        (c.args[4], c.args[5], c.kwargs["real_fraction"])
        for c in stages["train_segmenter"].call_args_list
    )
    assert runs == sorted(
        [(m, s, 1.0) for m in ("real", "real_synth") for s in (0, 1)]
        + [(m, 0, 0.5) for m in ("real", "real_synth")]
    )
    out_dirs = {c.args[3].name for c in stages["train_segmenter"].call_args_list}
    # named as dvc.yaml names them: {mode}-seed{seed} and {mode}-frac{frac}-seed{seed}
    assert "real_synth-frac0.5-seed0" in out_dirs and "real-seed1" in out_dirs
    assert out_dirs == {f"{m}-seed{s}" for m in ("real", "real_synth") for s in (0, 1)} | {
        f"{m}-frac0.5-seed0" for m in ("real", "real_synth")
    }
    (ev,) = stages["evaluate"].call_args_list
    assert ev.args[1] == Path("data/prepared") and ev.args[2] == Path("data/segmenter")
    assert result["segmentation"]["evaluate"] == {"miou_gain": 0.1}
    assert result["generate"]["export_coco_samples"] == 3.0
    # the report page once, at the end (generate-dataset's own is off inside the pipeline),
    # built from the same params, and attached with its verdict, figures and path
    (rep,) = stages["build_report"].call_args_list
    assert rep.args[0].out == "data/report" and rep.args[1]["report"]["out"] == "data/report"
    assert result["report"] == REPORT_SUMMARY
    assert any(
        "No measurable effect" in md and "| gain | +1.00 pp |" in md and "index.html" in md
        for md in report_artifacts()
    )


def test_generate_dataset_n_samples_and_no_export(prefect_api, stages, params: Path) -> None:
    from flows.generate_dataset import generate_dataset

    metrics = generate_dataset(str(params), n_samples=3, export=False, version=False)
    assert sorted(c.args[1] for c in stages["generate_shard"].call_args_list) == [0, 1]
    assert stages["generate_shard"].call_args_list[0].args[0].n_samples == 3
    stages["export"].assert_not_called()
    stages["build_report"].assert_called_once()  # generate-dataset alone attaches the page too
    assert metrics == {"shards": 2.0}
