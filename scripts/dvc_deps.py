"""The exact code deps of each dvc.yaml stage: its module and every repo module it imports.

    python scripts/dvc_deps.py pipeline.generate     # print the deps of one stage module
    python scripts/dvc_deps.py --check               # compare with dvc.yaml (exit 1 on a difference)
    python scripts/dvc_deps.py --fix                 # rewrite the code deps in dvc.yaml

Follows every `import` statement (also those inside functions: a lazy import still runs when the
stage does) through the repository's packages, transitively. A subpackage (pipeline/datasets)
counts as its folder; the top-level packages' `__init__.py` (docstrings only) are left out.
A stage is matched to its module by its `semsynth SUBCOMMAND` command.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models")


def module_path(name: str) -> Path | None:
    """pipeline.x.y → pipeline/x/y.py or pipeline/x/y/__init__.py; None outside the repo."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute names of the modules `path` (module `name`) imports, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            # `from pipeline import prepare` imports the submodule pipeline.prepare.
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def closure(module: str) -> set[str]:
    """Every repo module reachable from `module` by imports (itself included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name)
        if path is None:
            continue
        seen.add(name)
        # Importing a.b.c runs a/__init__ and a/b/__init__ too.
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imports_of(path, name))
    return seen


def deps(module: str) -> list[str]:
    """dvc.yaml `deps` entries (code only) for a stage module, sorted."""
    out = set()
    for name in closure(module):
        path = module_path(name)
        assert path is not None
        rel = path.relative_to(REPO)
        if len(rel.parts) == 2 and rel.name == "__init__.py":
            continue  # pipeline/__init__.py, models/__init__.py: docstrings
        if len(rel.parts) > 2:  # inside a subpackage: the whole folder
            rel = Path(*rel.parts[:2])
        out.add(rel.as_posix())
    return sorted(out)


def stage_modules(dvc_yaml: Path) -> dict[str, tuple[str, list[str]]]:
    """{stage: (module, code deps listed in dvc.yaml)} for every `semsynth SUBCOMMAND` stage."""
    import yaml

    from pipeline.cli import STAGES

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        body = spec.get("do", spec)  # foreach/matrix stages keep the stage under `do`
        words = str(body.get("cmd", "")).split()
        if len(words) < 2 or words[0] != "semsynth" or words[1] not in STAGES:
            continue
        listed = [d for d in body.get("deps", []) if d.split("/")[0] in PACKAGES]
        out[name] = (STAGES[words[1]][0], listed)
    return out


def check(dvc_yaml: Path) -> list[str]:
    """One line per stage whose code deps differ from the computed ones."""
    problems = []
    for stage, (module, listed) in stage_modules(dvc_yaml).items():
        want = deps(module)
        missing, extra = sorted(set(want) - set(listed)), sorted(set(listed) - set(want))
        if missing or extra:
            problems.append(f"{stage} ({module}): missing {missing}, not imported {extra}")
    return problems


def fix(dvc_yaml: Path) -> int:
    """Rewrite each stage's code deps in place (data deps, comments and order otherwise kept)."""
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    stages = stage_modules(dvc_yaml)
    out, stage, in_deps, changed = [], None, False, 0
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and stripped[:-1] in stages:
            stage, in_deps = stripped[:-1], False
        elif stage and stripped == "deps:":
            in_deps, dep_indent = True, indent
            out.append(line)
            want = deps(stages[stage][0])
            out.extend(f"{' ' * (indent + 2)}- {d}\n" for d in want)
            changed += want != sorted(stages[stage][1])
            continue
        elif in_deps and (indent <= dep_indent and stripped):
            in_deps = False
        if in_deps and stripped.startswith("- ") and stripped[2:].split("/")[0] in PACKAGES:
            continue  # an old code dep: replaced above
        out.append(line)
    dvc_yaml.write_text("".join(out))
    return changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("modules", nargs="*", help="stage modules, e.g. pipeline.generate")
    p.add_argument("--check", action="store_true", help="compare dvc.yaml's deps with the code")
    p.add_argument("--fix", action="store_true", help="rewrite dvc.yaml's code deps")
    p.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    if a.fix:
        print(f"{a.dvc_yaml}: code deps rewritten for {fix(a.dvc_yaml)} stage(s)")
        return 0
    if a.check:
        problems = check(a.dvc_yaml)
        print("\n".join(problems) or f"{a.dvc_yaml}: every stage's code deps are exact")
        return 1 if problems else 0
    for m in a.modules:
        print(f"{m}:\n" + "\n".join(f"  - {d}" for d in deps(m)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
