"""`semsynth`: one console script, a subcommand per stage.

Each subcommand reads params.yaml (`--params`), applies `--set section.key=value` overrides and
calls the stage module's `cli(params, args)`. Stage modules are imported only when chosen, so
`semsynth --help` is instant. A stage module provides:

    SECTION: str                  # its params.yaml section
    Config: type                  # the frozen dataclass of that section (listed in --help)
    def add_arguments(parser)     # optional: stage-specific flags
    def cli(params, args) -> dict # does the work, returns the metrics it wrote
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from pipeline import cpu_env
from pipeline.errors import SemsynthError

# Before torch loads (stage modules import it lazily).
cpu_env.apply_defaults()

STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("pipeline.prepare", "read a source dataset, validate, resize, split, write shards"),
    "train-masks": (
        "pipeline.train_masks",
        "train the SemGAN mask generator (or its RGB baseline)",
    ),
    "train-images": ("pipeline.train_images", "train the OASIS label-to-image generator"),
    "generate": ("pipeline.generate", "sample masks, synthesise images, write synthetic shards"),
    "train-segmenter": (
        "pipeline.train_segmenter",
        "train a segmenter on real or real + synthetic",
    ),
    "evaluate": ("pipeline.evaluate", "mIoU of real vs real + synthetic over seeds, and the gain"),
    "export": ("pipeline.export", "export synthetic shards as COCO or Cityscapes"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semsynth",
        description="Synthetic segmentation-data generator. Run `semsynth STAGE --help` for a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {k:16s} {v[1]}" for k, v in STAGES.items()),
    )
    p.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="the stage to run")
    return p


def stage_parser(stage: str) -> tuple[argparse.ArgumentParser, object]:
    from pipeline.config import describe

    module_name, summary = STAGES[stage]
    module = importlib.import_module(module_name)
    epilog = ""
    if hasattr(module, "Config"):
        epilog = f"params.yaml section '{module.SECTION}' (override with --set {module.SECTION}.KEY=VALUE):\n"
        epilog += describe(module.Config)
    p = argparse.ArgumentParser(
        prog=f"semsynth {stage}",
        description=(module.__doc__ or summary).strip(),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--params", default="params.yaml", help="params file to read (default: params.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param for this run, value parsed as YAML; repeatable",
    )
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)
    return p, module


def _leave_process_group() -> None:
    """Under torchrun a training stage joined a process group (pipeline.distributed.init): leave
    it once, however the stage ended. A stage that never imported the module joined nothing."""
    distributed = sys.modules.get("pipeline.distributed")
    if distributed is not None:
        distributed.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])
        return 2
    if argv[0] not in STAGES:
        _top_parser().parse_args(argv[:1])  # prints the valid stages and exits 2
    try:
        parser, module = stage_parser(argv[0])
        args = parser.parse_args(argv[1:])
        from pipeline.config import load_params

        params = load_params(args.params, args.overrides)
        metrics = module.cli(params, args)
    except SemsynthError as e:
        print(f"semsynth {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"semsynth {argv[0]}: interrupted; completed outputs are kept, partial ones removed",
            file=sys.stderr,
        )
        return 130
    finally:
        _leave_process_group()
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
