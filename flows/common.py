"""What every flow shares: params loading (the CLI's own) and DVC versioning of a run's outputs.

Flows take `params` (a params.yaml path) and `overrides` (`section.key=value` strings, exactly
the CLI's `--set`), build each stage's frozen config with `pipeline.config.section` and call the
stage function: the same function `semsynth STAGE` and `dvc repro` call.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.config import apply_overrides, load_params, section
from pipeline.errors import SemsynthError


def stage_config(module: str | ModuleType, params: str | Path, overrides: Sequence[str]) -> Any:
    """The stage's frozen config from a params file plus `--set`-style overrides."""
    mod = importlib.import_module(module) if isinstance(module, str) else module
    return section(load_params(params, list(overrides)), mod.SECTION, mod.Config)


def logger():
    """Prefect's run logger inside a run, the module logger outside one (plain calls, tests)."""
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("semsynth.flows")


# ---- DVC versioning ----------------------------------------------------------------------------
# A flow writes the same outputs `dvc repro STAGE` would. `dvc commit -f STAGE` then records their
# hashes (and the deps' and params') in dvc.lock and moves them to the cache: `dvc status` is
# clean for those stages, `dvc push` can upload them, nothing is computed twice. Committing is only
# truthful when the run used the params dvc.yaml reads, so overrides are first written into
# params.yaml (what `dvc exp run -S` does too), and a run from another params file is not committed.


def dvc(*args: str, cwd: str | Path = ".", check: bool = True) -> subprocess.CompletedProcess:
    """Run the dvc CLI of this interpreter's environment (analytics off)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise SemsynthError(
            f"`dvc {' '.join(args)}` failed in {Path(cwd).resolve()} (exit {proc.returncode}):\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def persist_overrides(params_file: str | Path, overrides: Sequence[str]) -> None:
    """Write `section.key=value` overrides into params.yaml, keeping its comments and layout."""
    if not overrides:
        return
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params_file) as data:
        new = apply_overrides(data, overrides)  # validates every key path first
        for item in overrides:
            keys = item.split("=", 1)[0].strip().split(".")
            node, src = data, new
            for k in keys[:-1]:
                node, src = node[k], src[k]
            node[keys[-1]] = src[keys[-1]]


def dvc_version(
    stages: Sequence[str],
    params: str | Path = "params.yaml",
    overrides: Sequence[str] = (),
    push: bool = False,
    repo: str | Path = ".",
) -> dict[str, Any]:
    """Record the outputs of `stages` in dvc.lock and the cache; returns `dvc status` of them.

    Skipped (with the reason in the result) outside a DVC repository, or when the run read a
    params file other than the repository's params.yaml, which dvc.yaml does not track.
    """
    repo = Path(repo).resolve()
    if not (repo / ".dvc").is_dir() or not (repo / "dvc.yaml").is_file():
        return {"versioned": False, "reason": f"{repo} has no .dvc/ and dvc.yaml"}
    if Path(params).resolve() != repo / "params.yaml":
        return {"versioned": False, "reason": f"run used {params}, not {repo / 'params.yaml'}"}
    persist_overrides(repo / "params.yaml", overrides)
    dvc("commit", "--force", *stages, cwd=repo)
    status = json.loads(dvc("status", "--json", *stages, cwd=repo).stdout or "{}")
    if push:
        dvc("push", *stages, cwd=repo)
    return {"versioned": True, "stages": list(stages), "status": status, "pushed": push}
