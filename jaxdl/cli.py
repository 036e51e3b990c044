"""Command line: ``jaxdl train|evaluate|compile``.

``jaxdl train --config experiments/digits_resnet.py[:arg] --workdir runs/x [--config.a.b=v ...]``
Errors in what the user typed (unknown key, wrong type, missing file) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        sys.stderr.write(f"jaxdl: error: {message}\n")
        raise SystemExit(USAGE_ERROR)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxdl", description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train an experiment config", allow_abbrev=False)
    train.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    train.add_argument("--workdir", required=True, help="output dir; an existing run resumes")
    evaluate = commands.add_parser(
        "evaluate", help="re-evaluate a run's best checkpoint", allow_abbrev=False
    )
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    compile_ = commands.add_parser(
        "compile",
        help="compile the train step for a device topology and report memory/FLOPs/collectives",
        allow_abbrev=False,
    )
    compile_.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    compile_.add_argument(
        "--topology", required=True, help="'cpu:N' (XLA_FLAGS devices) or a TPU one: 'v5p:4x4x4'"
    )
    compile_.add_argument(
        "--input-shape", type=_shape, help="one example's shape, e.g. 224,224,3 (default: data's)"
    )
    compile_.add_argument("--input-dtype", help="e.g. float32 or int32 (default: the dataset's)")
    compile_.add_argument("--json", help="also write the report to this JSON file")
    return parser


def _fail(message: str) -> None:
    sys.stderr.write(f"jaxdl: error: {message}\n")
    raise SystemExit(USAGE_ERROR)


def _build(config):
    """Builds the experiment, turning invalid config values into one-line usage errors."""
    from jaxdl.parallel import initialize_distributed
    from jaxdl.train import build_experiment

    try:
        initialize_distributed(config.get("distributed"))
        return build_experiment(config)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        _fail(str(error).splitlines()[0] if str(error) else type(error).__name__)


def _compile(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """``jaxdl compile``: AOT-compiles the config's train step and prints its per-device costs."""
    import json

    from jaxdl.config import ConfigError, load_config
    from jaxdl.parallel import aot

    try:
        config = load_config(args.config, overrides)
        report = aot.compile_from_config(
            config,
            aot.topology_devices(args.topology),
            input_shape=args.input_shape,
            input_dtype=args.input_dtype,
        )
    except (ConfigError, aot.TpuUnavailableError) as error:
        _fail(str(error))
    except aot.DoesNotFitError as error:
        sys.stderr.write(f"jaxdl: {error}\n")
        return 1
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        _fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    print(f"jaxdl compile {args.config} --topology {args.topology}")
    print(report.format())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = _parser().parse_known_args(argv)
    from jaxdl.config import ConfigError, load_config, read_config

    if args.command == "compile":
        return _compile(args, extra)
    if args.command == "train":
        try:
            config = load_config(args.config, extra)
        except ConfigError as error:
            _fail(str(error))
    else:
        if extra:
            _fail(f"unrecognized arguments: {' '.join(extra)}")
        if not os.path.isdir(args.workdir):
            _fail(f"workdir not found: {args.workdir}")
        try:
            config = read_config(os.path.join(args.workdir, "config.json"))
        except ConfigError as error:
            _fail(str(error))

    from jaxdl.train import Trainer

    experiment = _build(config)
    trainer = Trainer(experiment, args.workdir)
    if args.command == "train":
        trainer.fit()
    else:
        trainer.evaluate_checkpoint(args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
