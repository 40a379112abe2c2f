"""The `tl_jax` command line. Flags only; every command's logic lives in the package.

    tl_jax train --config=configs/bert_pretrain.py:mini --workdir=DIR [--config.key=value ...]
    tl_jax predict --workdir=DIR --input=FILE --output=FILE [--batch_size=N]
    tl_jax quickstart [--workdir=DIR] [--skip_finetune]
    tl_jax convert --input=DIR --output=DIR [--direction=hf_to_tl|tl_to_hf]
    tl_jax generate --model=DIR --prompt="..." [--mode=score --choice=" a" --choice=" b"]
    tl_jax extract --init_from=DIR --input=FILE --output=OUT.npz [--layers=sum_last_four]
    tl_jax fill_mask --model=DIR --text="The capital of France is [MASK]." [--top_k=5]
    tl_jax static --config=configs/word2vec.py --workdir=DIR
    tl_jax sweep --config=configs/bert_pretrain.py:tiny --workdir=DIR \\
        --grid=data.masked_lm_prob=0.1,0.15,0.3 --seeds=0,1 [--config.key=value ...]
    tl_jax build_tasks --out_dir=DIR
    tl_jax tokenize --corpus=books/*.jsonl --tokenizer=DIR|--vocab_size=N [--wordpiece]|--words \\
        --output=books.tok

Run `tl_jax <command> --help` for a command's flags.

Exit status: 0 done; 1 an error (one line saying what and where), a --config.KEY=VALUE the
config lacks or cannot take included; 2 bad flags (the command's usage: a flag it does not have,
a required one left out, a --config.KEY with no value or given to a command without a config);
130 Ctrl-C;
143 a training command (train, quickstart, sweep) stopped by SIGTERM before its planned steps,
its checkpoint saved: the same command resumes it.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys


def _train(args, overrides):
    from tl_jax import train
    config = _load_config("train", args.config, overrides)
    # A run that SIGTERM stopped part-way (saved) raises `train.Stopped`: exit EXIT_STOPPED.
    train.train_and_evaluate(config, args.workdir).check_finished("Training")


def _load_config(command: str, spec: str, overrides):
    """`config.load_config` for `tl_jax train` or `tl_jax static`, refusing the other command's
    config before its overrides are applied: a word2vec config given to `train` was a traceback
    ("AttributeError: 'task'"), and `--config.train.steps=...` on it "has no field 'train'"."""
    from tl_jax import config as config_lib
    config = config_lib.load_config(spec)
    kind = config_lib.config_kind(config)
    if kind != command:
        said = {"train": f"a `tl_jax train` config (task={config.get('task')!r})",
                "static": f"a `tl_jax static` config (method={config.get('method')!r}: static "
                          "word vectors)",
                None: "neither a `tl_jax train` config (task and train sections) nor a "
                      "`tl_jax static` one (method and save_formats)"}[kind]
        fix = (f"; run it with `tl_jax {kind} --config={spec} --workdir=...`" if kind else "")
        if command == "static" and kind != "static":
            fix += "; `tl_jax static` takes configs/word2vec.py or configs/glove.py"
        raise config_lib.ConfigError(f"--config={spec} is {said}{fix}")
    for override in overrides:
        config_lib.apply_override(config, override)
    return config


def _predict(args, overrides):
    from tl_jax import predict
    predict.run(args.workdir, args.input, args.output, args.batch_size)


def _quickstart(args, overrides):
    from tl_jax import quickstart
    quickstart.run(args.workdir, overrides=overrides, with_finetune=not args.skip_finetune)


def _convert(args, overrides):
    from tl_jax.interop import convert
    convert.run(args.input, args.output, args.direction)


def _generate(args, overrides):
    from tl_jax import generate
    generate.run_generate(
        model_dir=args.model, mode=args.mode, prompts=args.prompt or (),
        prompt_file=args.prompt_file, text_field=args.text_field, label_field=args.label_field,
        template=args.template, choices=args.choice or (),
        labels=[x.strip() for x in args.labels.split(",") if x.strip()],
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed,
        stop_at_eos=False if args.no_stop_at_eos else None,  # None: not given
        stop=args.stop or (), batch_size=args.batch_size, output=args.output)


def _extract(args, overrides):
    from tl_jax import extract
    extract.run(args.init_from, args.input, args.output, args.layers, args.max_seq_length,
                args.batch_size)


def _fill_mask(args, overrides):
    from tl_jax import fill_mask
    fill_mask.run(args.model, args.text or (), args.top_k)


def _build_tasks(args, overrides):
    from tl_jax.data import task_builders
    task_builders.run(args.out_dir, args.data_dir or None, args.qa_version)


def _sweep(args, overrides):
    from tl_jax import sweep
    from tl_jax.config import ConfigError
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds={args.seeds!r}: expected comma-separated integers") from None
    result = sweep.run(args.config, args.workdir, grid=args.grid or (), zipped=args.zip or (),
                       seeds=seeds, overrides=overrides,
                       metrics=[x.strip() for x in args.metrics.split(",") if x.strip()],
                       dry_run=args.dry_run)
    if result.get("stopped"):
        import os

        from tl_jax import train
        name = result["stopped"]
        raise train.Stopped(
            f"The sweep stopped during run {name} ({result.get('stopped_by', 'SIGTERM')}; "
            f"saved in {os.path.join(args.workdir, 'runs', name, 'checkpoints')}): run the same "
            "command again to resume it.")
    if result["failed"]:
        sys.exit(f"tl_jax: error: {len(result['failed'])} sweep run(s) failed (see "
                 f"{args.workdir}/results.md)")


def _tokenize(args, overrides):
    from tl_jax.data import tokenized
    tokenized.run(args.corpus, args.tokenizer, args.output, args.text_field, args.group_field,
                  args.vocab_size, args.words, args.wordpiece, args.cased)


def _static(args, overrides):
    from tl_jax import static_train
    static_train.run(_load_config("static", args.config, overrides), args.workdir)


COMMANDS = {
    "train": ("Train any config (pretraining or fine-tuning).", _train),
    "predict": ("Apply a fine-tuned classify, probe, tag, squad or lm_classify workdir (its "
                "best checkpoint) to a new file; metrics too when the file is labelled.", _predict),
    "quickstart": ("Pretrain a small BERT on text shipped with gensim, then fine-tune it.",
                   _quickstart),
    "convert": ("Convert weights between the Hugging Face layout and tl_jax.", _convert),
    "generate": ("Complete or score prompts with a GPT (a clm workdir or a GPT-2 directory).",
                 _generate),
    "extract": ("Write per-token encoder features of a text file (feature-based transfer).",
                _extract),
    "fill_mask": ("Fill in [MASK] with a masked LM (BERT, a distilled student, an ELECTRA "
                  "generator).", _fill_mask),
    "build_tasks": ("Build the silver tagging and cloze-QA tasks from the shared data.",
                    _build_tasks),
    "static": ("Train static word vectors (word2vec or GloVe) and score them.", _static),
    "sweep": ("Train one config over a grid of settings and seeds; tables and plots of the "
              "results (ablations).", _sweep),
    "tokenize": ("Tokenise a pretraining corpus once into a folder of ids that GPT, BERT or "
                 "biLM runs read as data.corpus.", _tokenize),
}

# Commands that run in one process: under a multi-process launch only process 0 runs them
# (`parallel.runs_on_this_process`). `train`, `predict`, `quickstart` and `sweep` run on all
# (a sweep of a `static` config then on process 0 alone: `sweep.run` knows the config's kind).
SINGLE_PROCESS = ("convert", "generate", "extract", "fill_mask", "build_tasks", "static",
                  "tokenize")


# The commands that take a config, and so --config.KEY=VALUE overrides.
CONFIG_COMMANDS = ("train", "quickstart", "static", "sweep")
# Their help: overrides are not argparse flags.
OVERRIDES_HELP = ("Any config field can be overridden with --config.KEY=VALUE, e.g. "
                  "{example}; the value is read as a Python literal where it is one. A misspelt "
                  "key is an error that lists the valid keys.")
OVERRIDE_EXAMPLES = {
    "train": "--config.train.steps=1000 --config.optimizer.learning_rate=3e-4",
    "sweep": "--config.train.steps=1000 --config.optimizer.learning_rate=3e-4",
    "static": "--config.epochs=5 --config.dim=300",
    "quickstart": "--config.train.steps=1000 (stage 1, the pretraining, only: stage 2's "
                  "fine-tuning keeps its own settings)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl_jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> the command's own parser
    p = sub.add_parser("train", help=COMMANDS["train"][0])
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    p = sub.add_parser("predict", help=COMMANDS["predict"][0])
    p.add_argument("--workdir", required=True,
                   help="workdir of a classify, probe, tag, squad or lm_classify run")
    p.add_argument("--input", required=True,
                   help="a file in the task's training formats (jsonl/CSV/TSV, CoNLL, SQuAD "
                        "JSON); labels, tags and answers optional")
    p.add_argument("--output", required=True,
                   help="predictions: .jsonl (classify, probe, lm_classify), .conll (tag), "
                        ".json (squad)")
    p.add_argument("--batch_size", type=int, default=0, help="0 = the run's data.batch_size")
    p = sub.add_parser("quickstart", help=COMMANDS["quickstart"][0])
    p.add_argument("--workdir", default="workdirs/quickstart",
                   help="stage 1 goes to WORKDIR/pretrain, stage 2 to WORKDIR/finetune "
                        "(default: workdirs/quickstart)")
    p.add_argument("--skip_finetune", action="store_true",
                   help="stage 1 (pretraining) only, without stage 2's fine-tuning comparison")
    p = sub.add_parser("convert", help=COMMANDS["convert"][0])
    p.add_argument("--input", required=True,
                   help="HF checkpoint dir (hf_to_tl), or tl_jax weights dir / workdir (tl_to_hf)")
    p.add_argument("--output", required=True)
    p.add_argument("--direction", default="hf_to_tl", choices=["hf_to_tl", "tl_to_hf"])
    p = sub.add_parser("extract", help=COMMANDS["extract"][0])
    p.add_argument("--init_from", required=True, help="tl_jax workdir or HF BERT directory")
    p.add_argument("--input", required=True, help="text file, one sequence per line")
    p.add_argument("--output", required=True, help="OUT.npz or OUT.jsonl")
    p.add_argument("--layers", default="last",
                   help="last | second_to_last | sum_last_four | concat_last_four | all | 0,-1,...")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p = sub.add_parser("fill_mask", help=COMMANDS["fill_mask"][0])
    p.add_argument("--model", required=True,
                   help="tl_jax workdir of a bert_pretrain, distill or electra run, a HF BERT "
                        "directory with its MLM head, or a tl_jax weights directory of one")
    p.add_argument("--text", action="append", help="a text with [MASK]s (repeatable)")
    p.add_argument("--top_k", type=int, default=5)
    p = sub.add_parser("build_tasks", help=COMMANDS["build_tasks"][0])
    p.add_argument("--out_dir", required=True)
    p.add_argument("--data_dir", default="", help="default: $TL_JAX_DATA_DIR")
    p.add_argument("--qa_version", default="1.1", choices=["1.1", "2.0"])
    p = sub.add_parser("static", help=COMMANDS["static"][0])
    p.add_argument("--config", required=True, help="configs/word2vec.py or configs/glove.py")
    p.add_argument("--workdir", required=True)
    p = sub.add_parser("sweep", help=COMMANDS["sweep"][0])
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG] (a `train` config)")
    p.add_argument("--workdir", required=True, help="runs/ and the result tables go here")
    p.add_argument("--grid", action="append", help="KEY=V1,V2,... an axis (repeatable)")
    p.add_argument("--zip", action="append",
                   help="KEY=V1,V2,... axes that move together (repeatable, equal lengths)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--metrics", default="",
                   help="comma-separated metrics for the tables (default: every eval/ metric "
                        "and the last training loss)")
    p.add_argument("--dry_run", action="store_true", help="list the runs and stop")
    p = sub.add_parser("generate", help=COMMANDS["generate"][0])
    p.add_argument("--model", required=True, help="tl_jax clm workdir or HF GPT-2 directory")
    p.add_argument("--mode", default="complete", choices=["complete", "score"])
    p.add_argument("--prompt", action="append", help="repeatable")
    p.add_argument("--prompt_file", default="", help="text, .jsonl, .csv or .tsv file of prompts")
    p.add_argument("--text_field", default="text")
    p.add_argument("--label_field", default="label")
    p.add_argument("--template", default="{text}", help="e.g. '{text} TL;DR:'")
    p.add_argument("--choice", action="append", help="score mode: a continuation (repeatable)")
    p.add_argument("--labels", default="", help="score mode: comma-separated label per choice")
    # The completion flags default to None ("not given"): score mode refuses them when given.
    p.add_argument("--max_new_tokens", type=int, default=None, help="complete mode (default 64)")
    p.add_argument("--temperature", type=float, default=None,
                   help="complete mode (default 0 = greedy)")
    p.add_argument("--top_k", type=int, default=None, help="complete mode (default 0 = off)")
    p.add_argument("--top_p", type=float, default=None, help="complete mode (default 1.0 = off)")
    p.add_argument("--seed", type=int, default=None,
                   help="complete mode (default 0); each prompt samples from the seed and its "
                        "own index, so --batch_size does not change its completion")
    p.add_argument("--no_stop_at_eos", action="store_true",
                   help="complete mode: go on past <|endoftext|>")
    p.add_argument("--stop", action="append",
                   help="complete mode: also end a completion where its text first holds this "
                        "string, which is not printed (repeatable; e.g. '\\n' or 'Q:')")
    p.add_argument("--batch_size", type=int, default=8,
                   help="prompts per batch (score mode: each with every --choice)")
    p.add_argument("--output", default="", help="write results as jsonl")
    p = sub.add_parser("tokenize", help=COMMANDS["tokenize"][0])
    p.add_argument("--corpus", required=True,
                   help="as data.corpus: files, globs, jsonl, tfds:NAME, gensim:enwiki")
    p.add_argument("--tokenizer", default="",
                   help="the vocabulary, which decides the model family: a byte-level BPE "
                        "for GPT (vocab.json + merges.txt, a BPE tokenizer.json, a clm "
                        "workdir) or WordPiece for BERT/ELECTRA/distillation (vocab.txt, a "
                        "WordPiece tokenizer.json, a bert_pretrain workdir)")
    p.add_argument("--vocab_size", type=int, default=None,
                   help="instead of --tokenizer: train a byte-level BPE of this many tokens on "
                        "the corpus (with --wordpiece, a WordPiece vocabulary)")
    p.add_argument("--wordpiece", action="store_true",
                   help="with --vocab_size: train a WordPiece vocabulary (for BERT, ELECTRA, "
                        "distillation), lower-cased unless --cased")
    p.add_argument("--cased", action="store_true",
                   help="with --vocab_size --wordpiece: keep the text's case")
    p.add_argument("--words", action="store_true",
                   help="instead of --tokenizer: cased words and punctuation, for the ELMo "
                        "biLM (elmo_pretrain; each run counts its own vocabulary)")
    p.add_argument("--output", required=True, help="a new folder")
    p.add_argument("--text_field", default="text", help="as data.text_field")
    p.add_argument("--group_field", default="", help="as data.group_field")
    for name in CONFIG_COMMANDS:
        parser.commands[name].epilog = OVERRIDES_HELP.format(example=OVERRIDE_EXAMPLES[name])
    for command_parser in parser.commands.values():
        for action in command_parser._actions:
            if action.dest in PATH_FLAGS:
                action.type = _expand_home
    return parser


# Every command's flags that name a file or folder. The shell expands a leading '~' only at the
# start of a word, not after '--workdir=': unexpanded, `--workdir=~/run` made a folder named '~'
# in the current one. `build_parser` expands '~' in each (argparse applies it to defaults too).
PATH_FLAGS = ("config", "workdir", "model", "init_from", "input", "output", "out_dir",
              "data_dir", "prompt_file", "tokenizer", "corpus")


def _expand_home(value: str) -> str:
    import os
    return os.path.expanduser(value)


def main(argv: list[str] | None = None) -> None:
    from tl_jax.config import ConfigError, split_overrides
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    try:
        overrides, rest = split_overrides(argv)
    except ConfigError as e:
        # A --config.KEY without its value is a malformed flag: argparse's usage error (the
        # command's usage, exit 2), as for any other flag. A key the config lacks, or a value it
        # cannot take, is found once the config is loaded: a config error (exit 1).
        command = parser.commands.get(argv[0]) if argv else None
        (command or parser).error(str(e))
    args, unknown = parser.parse_known_args(rest)
    if overrides and args.command not in CONFIG_COMMANDS:
        # Ignoring them would hide a typo or a flag meant for `train`. A flag the command does
        # not have is a usage error (exit 2), as for argparse's own flags; it was a config error
        # (exit 1), raised after jax had started, and not at all on processes other than 0.
        flags = [f"--config.{override}" for override in overrides]
        parser.commands[args.command].error(
            f"unrecognized arguments: {' '.join(unknown + flags)} (`tl_jax {args.command}` "
            "takes no config, so no --config.KEY=VALUE overrides)")
    if unknown:  # argparse alone would print the top-level usage, not the command's
        hint = ""
        if args.command in CONFIG_COMMANDS:
            hint = ("; config fields are set with --config.KEY=VALUE"
                    + (", e.g. --config.train.steps=1000" if args.command != "static" else ""))
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    use_compilation_cache()

    def command():
        if args.command in SINGLE_PROCESS:
            from tl_jax import parallel
            if not parallel.runs_on_this_process(args.command):
                return
        COMMANDS[args.command][1](args, overrides)

    note = ""
    if args.command in ("train", "sweep", "quickstart"):  # static keeps no checkpoints
        note = (" Checkpoints already written are intact: run the same command again to "
                "resume from the newest (SIGTERM instead saves the current step first).")
    elif args.command == "generate" and args.output:  # written one result at a time
        note = f" The results printed so far are in {args.output}."
    run_script(command, "tl_jax", interrupted_note=note,
               error_hint="\n(set TL_JAX_TRACEBACK=1 to see where it was raised)")


# The exit status of a training command (train, quickstart, sweep; a script in experiments/) that
# SIGTERM stopped before its planned steps, after saving a checkpoint: 128 + SIGTERM, what a
# shell reports for a process the signal ended, so that `tl_jax train ... && next-step` and a
# job scheduler do not take a preempted run for a finished one. Ctrl-C exits 130 (128 + SIGINT).
EXIT_STOPPED = 143

SCRIPT_INTERRUPTED_NOTE = (" Results and checkpoints already written are intact: run the same "
                           "command again to go on from them.")


@contextlib.contextmanager
def _ctrl_c_not_lost_in_callbacks():
    """Ctrl-C that lands in a callback whose exceptions Python only reports ("Exception ignored
    in: ...", as jax's garbage-collection callback, which runs whenever a command allocates
    many objects) is delivered again, to the code that runs next: `tl_jax tokenize` went on to
    the end, exit 0, after 7 of 10 Ctrl-Cs. Other such exceptions are reported as before."""
    import _thread
    import threading

    previous = sys.unraisablehook
    pending = threading.Event()

    def deliver():
        if pending.is_set():
            pending.clear()
            _thread.interrupt_main()  # as a Ctrl-C: the SIGINT handler in force runs

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # From another thread, a moment later: delivered from here, it is raised in this
            # hook, whose exceptions are ignored too.
            pending.set()
            threading.Timer(0.05, deliver).start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
        if pending.is_set():  # the command ended before the Ctrl-C came again
            pending.clear()
            raise KeyboardInterrupt
    finally:
        sys.unraisablehook = previous


def run_script(main_fn, prog: str, interrupted_note: str = SCRIPT_INTERRUPTED_NOTE,
               error_hint: str = "") -> None:
    """Runs `main_fn` (the `tl_jax` command, or a script in experiments/) with the CLI's
    manners: a config error or an input error (a missing data file or model, an unwritable
    workdir; see `_is_input_error`) is one line, and so is Ctrl-C, followed by
    `interrupted_note` (what was kept). A page of traceback from wherever the loop was (a
    device_get, a data worker) says nothing; what the user needs is whether anything was lost.
    `TL_JAX_TRACEBACK=1` keeps every traceback. A training run that SIGTERM stopped part-way
    (`train.Stopped`: saved, not finished) is one line saying where its checkpoint is and exits
    with EXIT_STOPPED (143), whatever TL_JAX_TRACEBACK says: the status is for the shell or
    scheduler, which must not go on as if the run had finished."""
    import os

    from tl_jax.config import ConfigError
    try:
        with _ctrl_c_not_lost_in_callbacks():
            main_fn()
    except ConfigError as e:
        sys.exit(f"{prog}: config error: {e}")
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        train = sys.modules.get("tl_jax.train")  # loaded if it raised Stopped
        if train is not None and isinstance(e, train.Stopped):
            print(f"{prog}: {e}", file=sys.stderr, flush=True)
            sys.exit(EXIT_STOPPED)
        if not _is_input_error(e):
            raise
        sys.exit(f"{prog}: error: {e}{error_hint}")
    except KeyboardInterrupt:
        if os.environ.get("TL_JAX_TRACEBACK"):
            raise
        print(f"{prog}: interrupted (Ctrl-C).{interrupted_note}", file=sys.stderr, flush=True)
        sys.exit(130)


def use_compilation_cache() -> str | None:
    """Turns on jax's persistent compilation cache for a command; returns its folder (None: off).

    A rerun, a resumed or preempted run, and every run of a sweep after the first load their
    compiled programs from disk instead of compiling them again (seconds on a CPU, minutes for a
    large model on a TPU). The folder is $TL_JAX_COMPILATION_CACHE, by default
    ~/.cache/tl_jax/jax ($XDG_CACHE_HOME/tl_jax/jax when that is set); TL_JAX_COMPILATION_CACHE=0
    turns it off, and a JAX_COMPILATION_CACHE_DIR already set is left to jax. jax keys every
    entry by the program, the compiler flags and the jax/XLA versions, so a stale entry is never
    loaded, and only keeps programs that took a second or more to compile.
    """
    import os
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = os.environ.get("TL_JAX_COMPILATION_CACHE", "")
    if path == "0":
        return None
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "tl_jax", "jax")
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def _is_input_error(error: BaseException) -> bool:
    """Whether `error` is one of tl_jax's own checks on its input (a bad file, flag or
    checkpoint): raised by a `raise` statement in this package, whose message says what is wrong
    and where, or an OSError of a file it opened (the message names the path). Those are printed
    as one line. Anything else keeps its traceback (and everything does with TL_JAX_TRACEBACK=1
    set), since it may be a bug: an error inside a library, or one a builtin or numpy raised in
    tl_jax's own code ("could not broadcast ...")."""
    import os
    import traceback

    from tl_jax.config import raised_in
    if os.environ.get("TL_JAX_TRACEBACK"):
        return False
    if isinstance(error, OSError) and error.filename is not None:
        # The system refused a path (a read-only or full disk, no permission), whoever asked:
        # os.makedirs of the workdir raises it from the standard library, not from tl_jax.
        return True
    if not raised_in(error, os.path.dirname(__file__)):
        return False
    statement = (traceback.extract_tb(error.__traceback__)[-1].line or "").lstrip()
    return statement.startswith("raise") or isinstance(error, OSError)


if __name__ == "__main__":
    main()
