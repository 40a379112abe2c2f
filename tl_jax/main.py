"""The `tl_jax` command line. Flags only; every command's logic lives in the package.

    tl_jax train --config=configs/bert_pretrain.py:mini --workdir=DIR [--config.key=value ...]
    tl_jax quickstart [--workdir=DIR]
    tl_jax convert --input=DIR --output=DIR [--direction=hf_to_tl|tl_to_hf]

Run `tl_jax <command> --help` for a command's flags.
"""
from __future__ import annotations

import argparse
import logging
import sys


def _train(args, overrides):
    from tl_jax import config as config_lib, train
    config = config_lib.load_config(args.config, overrides)
    train.train_and_evaluate(config, args.workdir)


def _quickstart(args, overrides):
    from tl_jax import quickstart
    quickstart.run(args.workdir, overrides=overrides, with_finetune=not args.skip_finetune)


def _convert(args, overrides):
    del overrides
    from tl_jax.interop import convert
    convert.run(args.input, args.output, args.direction)


COMMANDS = {
    "train": ("Train any config (pretraining or fine-tuning).", _train),
    "quickstart": ("Pretrain a small BERT on text shipped with gensim, then fine-tune it.",
                   _quickstart),
    "convert": ("Convert weights between the Hugging Face layout and tl_jax.", _convert),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl_jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help=COMMANDS["train"][0])
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    p = sub.add_parser("quickstart", help=COMMANDS["quickstart"][0])
    p.add_argument("--workdir", default="workdirs/quickstart")
    p.add_argument("--skip_finetune", action="store_true")
    p = sub.add_parser("convert", help=COMMANDS["convert"][0])
    p.add_argument("--input", required=True,
                   help="HF checkpoint dir (hf_to_tl), or tl_jax weights dir / workdir (tl_to_hf)")
    p.add_argument("--output", required=True)
    p.add_argument("--direction", default="hf_to_tl", choices=["hf_to_tl", "tl_to_hf"])
    return parser


def main(argv: list[str] | None = None) -> None:
    from tl_jax.config import ConfigError, split_overrides
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides, rest = split_overrides(argv)
    except ConfigError as e:
        sys.exit(f"tl_jax: error: {e}")
    args = build_parser().parse_args(rest)
    try:
        COMMANDS[args.command][1](args, overrides)
    except ConfigError as e:
        sys.exit(f"tl_jax: config error: {e}")


if __name__ == "__main__":
    main()
