"""The transfer-strategy table: accuracy, trainable parameters and optimizer memory per strategy.

Run (needs $TL_JAX_DATA_DIR; CPU-sized by default, see --help):
  TL_JAX_DATA_DIR=... python experiments/transfer_strategies.py --workdir=/tmp/transfer_table

For each strategy config (configs/transfer_*.py, all-MiniLM-L6-v2 on the food reviews) it
1. builds the transfer plan over the model's abstract params and measures the trainable parameter
   count and the optimizer-state bytes (`jax.eval_shape` of the plan's state: nothing allocated);
2. trains and evaluates it with the canonical trainer for each seed, seeds outermost, so an
   interrupted run still has every strategy for the first seeds;
and writes WORKDIR/results.json after every run, then prints a markdown table:

  | strategy | trainable params | optimizer state | accuracy (mean ± std) | seeds |

Run again with the same workdir, it skips the runs results.json already holds (and resumes an
interrupted one from its checkpoint); with other settings (--epochs, --train_examples, ...) it
refuses, naming them, rather than mixing both in one table.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from tl_jax import config as config_lib
from tl_jax import experiment_results, train
from tl_jax.main import run_script
from tl_jax.optim import transfer
from tl_jax.tasks import build_task

# name -> (config file, extra overrides)
STRATEGIES = {
    "full fine-tuning": ("transfer_full", []),
    "gradual unfreezing + discr. LR + STLR": ("transfer_ulmfit", []),
    "chain-thaw": ("transfer_chain_thaw", []),
    "adapters (64)": ("transfer_adapters", []),
    "LoRA (r=8)": ("transfer_lora", []),
}
FEATURES = ("embeddings", "last", "second_to_last", "sum_last_four", "concat_last_four",
            "scalar_mix")


# results.json keeps the flags its runs were trained with under this key.
SETTINGS_KEY = "_settings"
RESULT_SETTINGS = ("train_examples", "eval_examples", "seq_len", "batch_size", "epochs",
                   "feature_epochs", "feature_lr", "finetune_lr")


def strategy_list(args):
    out = dict(STRATEGIES)
    for f in FEATURES:
        out[f"feature: {f} (linear)"] = ("transfer_feature", [f"probe.feature={f}"])
    out["feature: sum_last_four (BiLSTM)"] = (
        "transfer_feature", ["probe.feature=sum_last_four", "probe.head=bilstm",
                             "probe.lstm_hidden=64"])
    if args.only:
        out = {k: v for k, v in out.items() if any(o in k for o in args.only.split(","))}
    return out


def common_overrides(args, config_name):
    """Data size and schedule: the same examples and number of epochs for every strategy."""
    over = [f"data.max_train_examples={args.train_examples}",
            f"data.max_eval_examples={args.eval_examples}",
            f"data.max_seq_length={args.seq_len}", f"data.batch_size={args.batch_size}",
            "train.progress=False", "train.keep_checkpoints=1",
            # STLR (transfer_ulmfit) warms up itself; it takes no optimizer warm-up.
            f"optimizer.warmup_steps={0 if config_name == 'transfer_ulmfit' else 2}"]
    steps_per_epoch = args.train_examples // args.batch_size
    if config_name == "transfer_feature":
        # Cached features make head epochs nearly free: train the head longer.
        over += [f"data.num_epochs={args.feature_epochs}", f"probe.cache_dir={args.cache_dir}",
                 f"optimizer.learning_rate={args.feature_lr}"]
    else:
        over += [f"data.num_epochs={args.epochs}"]
        if config_name in ("transfer_full", "transfer_chain_thaw"):
            over.append(f"optimizer.learning_rate={args.finetune_lr}")
        total = int(args.epochs * steps_per_epoch)
        if config_name in ("transfer_ulmfit", "transfer_chain_thaw"):
            # Fit all stages into the first ~80% of the run, leaving the rest for "all".
            over.append(f"transfer.stage_steps={max(1, int(0.8 * total) // 9)}")
    return over


def measure(config) -> dict:
    """Trainable parameters and optimizer-state bytes of a config's plan (no allocation)."""
    task = build_task(config, "/tmp/transfer_table_measure")
    example = task.example_batch(1)
    import flax.linen as nn
    abstract = nn.unbox(jax.eval_shape(lambda r: task.init_variables(r, example)["params"],
                                       jax.random.PRNGKey(0)))
    plan = transfer.build_transfer_optimizer(abstract, config.transfer, config.optimizer,
                                             max(1, int(config.train.steps)),
                                             task.steps_per_epoch)
    state = jax.eval_shape(plan.init, abstract)
    return dict(total_params=transfer.count_params(abstract), trainable=plan.trainable_count(),
                opt_bytes=transfer.tree_bytes(state), stages=len(plan.stages))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # type: the shell leaves '~' after '--workdir=' unexpanded (a folder named '~' was made).
    parser.add_argument("--workdir", required=True, type=os.path.expanduser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train_examples", type=int, default=640)
    parser.add_argument("--eval_examples", type=int, default=400)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--feature_epochs", type=float, default=10.0)
    parser.add_argument("--feature_lr", type=float, default=3e-3)
    parser.add_argument("--finetune_lr", type=float, default=2e-4,
                        help="full fine-tuning and chain-thaw (other configs keep theirs)")
    parser.add_argument("--cache_dir", default="", type=os.path.expanduser)
    parser.add_argument("--only", default="", help="comma-separated substrings of strategy names")
    parser.add_argument("--measure_only", action="store_true")
    args = parser.parse_args()
    if not os.environ.get("TL_JAX_DATA_DIR"):
        raise SystemExit("set TL_JAX_DATA_DIR to the shared data folder (with "
                         "models/all-MiniLM-L6-v2 and the food reviews)")
    os.makedirs(args.workdir, exist_ok=True)
    args.cache_dir = args.cache_dir or os.path.join(args.workdir, "feature_cache")
    results_path = os.path.join(args.workdir, "results.json")
    results = experiment_results.read(results_path)
    # The settings every run's result depends on; a rerun with others would mix both in a table.
    settings = {k: getattr(args, k) for k in RESULT_SETTINGS}
    saved = results.pop(SETTINGS_KEY, None)
    if saved and args.measure_only:
        settings = saved  # sizes do not depend on them: measuring adds to the saved runs' table
    if any(isinstance(e, dict) and e.get("runs") for e in results.values()):
        experiment_results.refuse_other_settings(results_path, saved, settings)
    strategies = strategy_list(args)

    def save():
        experiment_results.write(results_path, {SETTINGS_KEY: settings, **results})

    for name, (config_name, extra) in strategies.items():
        entry = results.setdefault(name, {"runs": {}})
        if "trainable" not in entry:
            # Sizes do not depend on the feature cache; skip building it here.
            no_cache = ["probe.cache_features=False"] if config_name == "transfer_feature" else []
            config = config_lib.load_config(f"configs/{config_name}.py:minilm",
                                            common_overrides(args, config_name) + extra + no_cache)
            entry.update(measure(config))
            save()
        print(f"{name}: {entry['trainable']:,} trainable, {entry['opt_bytes'] / 2**20:.2f} MiB "
              "optimizer state", flush=True)
    if args.measure_only:
        return print_table(results)

    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, (config_name, extra) in strategies.items():
            entry = results[name]
            if str(seed) in entry["runs"]:
                continue
            overrides = common_overrides(args, config_name) + extra + [f"seed={seed}"]
            config = config_lib.load_config(f"configs/{config_name}.py:minilm", overrides)
            slug = "".join(ch if ch.isalnum() else "_" for ch in name)
            start = time.time()
            run_dir = os.path.join(args.workdir, f"{slug}_seed{seed}")
            summary = train.train_and_evaluate(config, run_dir).summary
            if summary["step"] < int(config.train.steps):
                # SIGTERM: the trainer saved and returned early, with the last epoch's scores.
                # Recorded, they would stand in the table as this seed's and never train on.
                # train.Stopped: run_script exits 143, as every training command does.
                save()
                print_table(results)
                raise train.Stopped(
                    f"[{name} seed {seed}] stopped at step {summary['step']} of "
                    f"{config.train.steps} (SIGTERM; saved in "
                    f"{os.path.join(run_dir, 'checkpoints')}): run the same command again to "
                    "resume it. The table above holds the finished runs only.")
            entry["runs"][str(seed)] = {"accuracy": summary["eval/accuracy"],
                                        "f1_macro": summary.get("eval/f1_macro"),
                                        "seconds": round(time.time() - start, 1)}
            save()
            print(f"[{name} seed {seed}] accuracy {summary['eval/accuracy']:.4f}", flush=True)
    print_table(results)


def print_table(results):
    print("| strategy | trainable params | optimizer state | accuracy (mean ± std) | seeds |")
    print("|---|---:|---:|---:|---:|")
    for name, e in results.items():
        accs = [r["accuracy"] for r in e.get("runs", {}).values()]
        acc = f"{np.mean(accs):.4f} ± {np.std(accs):.4f}" if accs else "not run"
        print(f"| {name} | {e['trainable']:,} ({100 * e['trainable'] / e['total_params']:.2f}%) "
              f"| {e['opt_bytes'] / 2**20:.2f} MiB | {acc} | {len(accs)} |")


if __name__ == "__main__":
    run_script(main, "transfer_strategies.py")
