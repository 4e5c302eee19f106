"""The layering of ARCHITECTURE.md, enforced: imports point one way (flows → pipeline → models),
and a stage module never imports another stage module (what two stages share lives in a module
of its own), so editing one stage cannot break another and `dvc.yaml` reruns only what changed.

Every `import` counts, also those inside functions: a lazy import still runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.cli import STAGES

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("flows", "pipeline", "models")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved; for
    `from a import b`, both `a` and `a.b`)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(p for p in [*parts[: len(parts) - node.level + 1], base] if p)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """module → the repo modules it imports, for every module of the three layers."""
    files = [p for layer in LAYERS for p in sorted((root / layer).rglob("*.py"))]
    names = {module_name(p, root) for p in files}
    return {module_name(p, root): imports(p, root) & names for p in files}


def violations(graph: dict[str, set[str]], stages: set[str]) -> list[str]:
    """Every import that breaks the layering, as 'a imports b (rule)'."""
    out = []
    for mod, deps in sorted(graph.items()):
        layer = mod.split(".")[0]
        for dep in sorted(deps):
            dep_layer = dep.split(".")[0]
            if layer == "models" and dep_layer != "models":
                out.append(f"{mod} imports {dep} (models/ imports only models/)")
            if layer == "pipeline" and dep_layer == "flows":
                out.append(f"{mod} imports {dep} (pipeline/ never imports flows/)")
            if layer == "flows" and dep_layer == "models":
                out.append(f"{mod} imports {dep} (flows/ call pipeline/, not models/)")
    for stage in sorted(stages):
        for other in sorted(reachable(graph, stage) & (stages - {stage})):
            out.append(f"{stage} imports {other} (a stage module never imports another stage)")
    return out


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def stage_modules() -> set[str]:
    return {module for module, _ in STAGES.values()}


def test_the_repository_keeps_its_layers() -> None:
    graph = import_graph(REPO)
    assert set(stage_modules()) <= set(graph)  # every stage module exists
    assert violations(graph, stage_modules()) == []


def test_generation_and_scoring_do_not_import_the_training_loops() -> None:
    graph = import_graph(REPO)
    loops = {"pipeline.train_masks", "pipeline.train_images", "pipeline.train_segmenter"}
    assert not reachable(graph, "pipeline.generate") & loops
    assert not reachable(graph, "pipeline.evaluate") & loops


def test_the_checker_catches_each_kind_of_violation(tmp_path: Path) -> None:
    files = {
        "models/net.py": "from pipeline.io_utils import x\n",
        "pipeline/io_utils.py": "def f():\n    import flows.common\n",  # lazy: still counts
        "pipeline/stage_a.py": "from pipeline import shared\n",
        "pipeline/shared.py": "from . import stage_b\n",  # a shared module reaching a stage
        "pipeline/stage_b.py": "import models.net\n",
        "flows/common.py": "from models import net\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(import_graph(tmp_path), {"pipeline.stage_a", "pipeline.stage_b"})
    assert found == [
        "flows.common imports models.net (flows/ call pipeline/, not models/)",
        "models.net imports pipeline.io_utils (models/ imports only models/)",
        "pipeline.io_utils imports flows.common (pipeline/ never imports flows/)",
        "pipeline.stage_a imports pipeline.stage_b (a stage module never imports another stage)",
    ]
