"""`semsynth`: one console script, a subcommand per stage.

Each subcommand reads params.yaml (`--params`), applies `--set section.key=value` overrides and
calls the stage module's `cli(params, args)`. Stage modules are imported only when chosen, so
`semsynth --help` is instant. Status and progress go to stderr (the `logging` module; `-v` adds
debug messages, `-q` keeps warnings and errors and hides progress bars); stdout carries only the
metrics JSON, so `semsynth evaluate | jq .miou_gain` works. A stage module provides:

    SECTION: str                  # its params.yaml section
    Config: type                  # the frozen dataclass of that section (listed in --help)
    def add_arguments(parser)     # optional: stage-specific flags
    def cli(params, args) -> dict # does the work, returns the metrics it wrote
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
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
    "report": ("pipeline.report", "one offline HTML page: is the synthetic data any good?"),
}


EXIT_CODES = """exit codes:
  0    the stage finished (its metrics JSON is on stdout)
  1    an unexpected error (a bug: the traceback is on stderr)
  2    bad usage, params, data or checkpoint: stderr names the file or key and the fix
  130  interrupted (Ctrl-C): completed outputs are kept, partial ones removed"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("semsynth")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semsynth",
        description="Synthetic segmentation-data generator. Run `semsynth STAGE --help` for a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n"
        + "\n".join(f"  {k:16s} {v[1]}" for k, v in STAGES.items())
        + "\n\n"
        + EXIT_CODES,
    )
    p.add_argument("--version", action="version", version=f"semsynth {version()}")
    p.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="the stage to run")
    return p


def stage_parser(stage: str) -> tuple[argparse.ArgumentParser, object]:
    from pipeline.config import describe

    module_name, summary = STAGES[stage]
    module = importlib.import_module(module_name)
    epilog = EXIT_CODES + "\n\n"
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
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars; warnings and errors only"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)
    return p, module


def _leave_process_group() -> None:
    """Under torchrun a training stage joined a process group (pipeline.distributed.init): leave
    it once, however the stage ended. A stage that never imported the module joined nothing."""
    distributed = sys.modules.get("pipeline.distributed")
    if distributed is not None:
        distributed.cleanup()


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Status lines to stderr as `semsynth LOGGER: message` (INFO; -q WARNING, -v DEBUG)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname_)s%(name_)s: %(message)s"))
    handler.addFilter(_short_names)
    for name in ("pipeline", "models"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def _short_names(record: logging.LogRecord) -> bool:
    """`pipeline.train_images` → `train_images`; warnings and errors say so."""
    record.name_ = record.name.rpartition(".")[2]
    record.levelname_ = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a bare `semsynth` is a usage error: the help, on stderr, exit 2
        _top_parser().print_help(sys.stderr)
        return 2
    if argv[0].startswith("-") or argv[0] not in STAGES:
        _top_parser().parse_args(argv)  # --help / --version exit 0; anything else exits 2
        return 2
    try:
        parser, module = stage_parser(argv[0])
        args = parser.parse_args(argv[1:])
        configure_logging(args.quiet, args.verbose)
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
