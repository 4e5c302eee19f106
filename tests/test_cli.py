"""The command line scripts well: stdout holds only the metrics JSON, status goes to stderr,
`-q` / `-v` set how much, `--version`, and a bare `semsynth` is a usage error (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


def prepare_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "prepare", "--params", str(REPO / "params.yaml"),
        "--set", "prepare.options={n_train: 4, n_val: 2}", "--set", "prepare.size=[16, 16]",
        "--set", f"prepare.out={tmp_path / 'prepared'}", "--set", "prepare.workers=0",
        "--set", f"prepare.metrics={tmp_path / 'prepare.json'}", *extra,
    ]  # fmt: skip


def test_stdout_is_the_metrics_json_and_status_goes_to_stderr(tmp_path, capsys):
    assert main(prepare_args(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads((tmp_path / "prepare.json").read_text())
    assert "prepare: prepared shapes at 16x16" in err


def test_quiet_keeps_warnings_only_and_verbose_adds_debug(tmp_path, capsys):
    assert main(prepare_args(tmp_path, "-q")) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n_train"] == 4.0
    assert err == ""  # no status line, no progress bar
    assert main(prepare_args(tmp_path, "--verbose")) == 0
    assert "prepared shapes" in capsys.readouterr().err


def test_bare_semsynth_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: semsynth" in err and "exit codes:" in err


def test_version_and_unknown_stage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("semsynth ")
    with pytest.raises(SystemExit) as e:
        main(["train-everything"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_bad_param_is_exit_2_naming_the_key(tmp_path, capsys):
    assert main(prepare_args(tmp_path, "--set", "prepare.sise=[8, 8]")) == 2
    out, err = capsys.readouterr()
    assert out == "" and "unknown key(s) ['sise']" in err and "prepare" in err
