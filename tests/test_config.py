from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.config import ConfigError, apply_overrides, build, load_params, section

REPO_PARAMS = __import__("pathlib").Path(__file__).resolve().parents[1] / "params.yaml"


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3


@dataclass(frozen=True)
class Cfg:
    steps: int = 10
    size: tuple[int, int] = (4, 4)
    mode: Literal["a", "b"] = "a"
    path: str | None = None
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_builds_and_converts():
    cfg = build(Cfg, {"steps": 3, "size": [2, 5], "inner": {"lr": 1}, "path": None}, "s")
    assert cfg == Cfg(steps=3, size=(2, 5), inner=Inner(lr=1.0))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"stepz": 1}, r"s: unknown key\(s\) \['stepz'\]"),
        ({"steps": "10"}, r"s.steps: expected an integer"),
        ({"steps": 1.5}, r"s.steps: expected an integer"),
        ({"steps": True}, r"s.steps: expected an integer"),
        ({"size": [1]}, r"s.size: expected 2 items"),
        ({"mode": "c"}, r"s.mode: 'c' is not one of \['a', 'b'\]"),
        ({"inner": {"lr": "x"}}, r"s.inner.lr: expected a number"),
        ({"inner": {"bad": 1}}, r"s.inner: unknown key"),
        ({"flag": "yes"}, r"s.flag: expected true/false"),
        ([1, 2], r"s must be a mapping"),
    ],
)
def test_strict_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        build(Cfg, data, "s")


def test_overrides_parse_yaml_and_reject_unknown_sections():
    p = {"s": {"steps": 1, "size": [1, 1]}}
    out = apply_overrides(p, ["s.steps=7", "s.size=[3, 4]"])
    assert out["s"] == {"steps": 7, "size": [3, 4]} and p["s"]["steps"] == 1
    with pytest.raises(ConfigError, match="no section 'nope'"):
        apply_overrides(p, ["nope.x=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(p, ["steps"])


def test_missing_section_and_file(tmp_path):
    with pytest.raises(ConfigError, match="no section 'x'"):
        section({}, "x", Cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


@pytest.mark.parametrize("params_file", ["params.yaml", "docs/params_camvid96.yaml"])
def test_repository_params_build_for_every_stage(params_file: str):
    """Every stage in the CLI imports, its Config accepts the shipped params sections (also the
    documented CamVid run's), and every section belongs to a stage (a deleted stage or an orphan
    section fails)."""
    import importlib

    from pipeline.cli import STAGES

    params = load_params(REPO_PARAMS.parent / params_file)
    built = set()
    for module_name, _ in STAGES.values():
        module = importlib.import_module(module_name)  # a missing stage module fails here
        section(params, module.SECTION, module.Config)
        built.add(module.SECTION)
    assert built == set(params)


@dataclass(frozen=True)
class UnionCfg:
    value: int | str = 0


def test_union_error_says_why_each_member_failed():
    with pytest.raises(ConfigError) as info:
        build(UnionCfg, {"value": [1]}, "s")
    assert str(info.value) == (
        "s.value: [1] matches none of int | str: "
        "int: expected an integer, got [1]; str: expected a string, got [1]"
    )
