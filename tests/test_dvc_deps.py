"""dvc.yaml's code deps are exact: each stage lists its module and every repo module it imports."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import dvc_deps  # noqa: E402


def test_every_stage_lists_exactly_the_code_it_runs() -> None:
    assert dvc_deps.check(REPO / "dvc.yaml") == []


def test_closure_follows_lazy_and_transitive_imports() -> None:
    deps = dvc_deps.deps("pipeline.generate")
    assert "pipeline/generate.py" in deps
    assert "models/semgan.py" in deps  # through pipeline/sampling.py
    # generation runs the samplers, not the training loops: editing a loop reruns no generate
    assert "pipeline/train_masks.py" not in deps and "pipeline/train_images.py" not in deps
    assert "pipeline/metrics" in dvc_deps.deps("pipeline.train_images")  # imported in a function
    assert "pipeline/prepare.py" not in deps
    assert "pipeline/__init__.py" not in deps and "pipeline/cli.py" not in deps
    assert dvc_deps.deps("pipeline.prepare")[:1] == ["pipeline/classes.py"]
    assert "pipeline/datasets" in dvc_deps.deps("pipeline.prepare")  # a subpackage as a folder


def test_check_reports_a_missing_dep_and_fix_restores_it(tmp_path: Path) -> None:
    text = (REPO / "dvc.yaml").read_text()
    broken = tmp_path / "dvc.yaml"
    # Drop pipeline/shards.py from the prepare stage only (its first occurrence).
    broken.write_text(text.replace("      - pipeline/shards.py\n", "", 1))
    problems = dvc_deps.check(broken)
    assert len(problems) == 1 and "prepare" in problems[0] and "pipeline/shards.py" in problems[0]
    assert dvc_deps.fix(broken) == 1
    assert dvc_deps.check(broken) == []
    assert broken.read_text() == text
