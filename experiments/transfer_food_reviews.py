"""Evidence of transfer: pretrained encoder vs the same architecture from scratch, food reviews.

Run:
  TL_JAX_DATA_DIR=... python experiments/transfer_food_reviews.py [--init_from=DIR] [--seeds=0,1,2]
      [--train_examples=512] [--eval_examples=500] [--max_seq_length=64] [--epochs=2]

Both arms use the same tokenizer, data, optimizer, schedule and seeds (via
`tl_jax.tasks.classify.transfer_comparison`); only the initial encoder weights differ. It prints a
table of accuracy / macro F1 / MCC per seed and ends with:
  pretrained accuracy 0.xxx +- 0.xxx | scratch accuracy 0.xxx +- 0.xxx | majority 0.622
and writes the numbers to WORKDIR/transfer_results.json. Run again into the same workdir, the
runs resume (finished ones are only evaluated; new --seeds train); other settings are refused.
"""
import argparse
import collections
import os

from tl_jax import experiment_results
from tl_jax.data import readers
from tl_jax.main import run_script
from tl_jax.tasks import classify


def main():
    data_dir = os.environ.get("TL_JAX_DATA_DIR", "")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # type: the shell leaves '~' after '--workdir=' unexpanded (a folder named '~' was made).
    parser.add_argument("--init_from", default=os.path.join(data_dir, "models", "all-MiniLM-L6-v2"),
                        type=os.path.expanduser)
    parser.add_argument("--workdir", default="/tmp/tl_jax_transfer_food", type=os.path.expanduser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train_examples", type=int, default=512)
    parser.add_argument("--eval_examples", type=int, default=500)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--warmup_steps", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    if not data_dir:
        raise SystemExit("set TL_JAX_DATA_DIR to the shared data folder")
    results_path = os.path.join(args.workdir, "transfer_results.json")
    # Its runs resume (a finished one is only evaluated): with other settings the table would
    # show them as this run's.
    experiment_results.refuse_other_settings(
        results_path, experiment_results.read(results_path).get("settings"),
        {k: v for k, v in vars(args).items() if k not in ("seeds", "workdir")})
    # Checked here, before a run's folder is made: a missing file would otherwise stop the
    # first run after it had created its workdir.
    for name in ("food_reviews_train.jsonl", "food_reviews_test.jsonl"):
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise SystemExit(f"{path} does not exist: TL_JAX_DATA_DIR must be the shared data "
                             "folder with the food reviews")
    if not os.path.isdir(args.init_from):
        raise SystemExit(f"--init_from={args.init_from} does not exist (the default is the "
                         "MiniLM import in $TL_JAX_DATA_DIR/models)")
    overrides = [f"data.max_train_examples={args.train_examples}",
                 f"data.max_eval_examples={args.eval_examples}",
                 f"data.max_seq_length={args.max_seq_length}", f"data.num_epochs={args.epochs}",
                 f"optimizer.learning_rate={args.learning_rate}",
                 f"optimizer.warmup_steps={args.warmup_steps}", f"data.batch_size={args.batch_size}"]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = classify.transfer_comparison(args.init_from, args.workdir, seeds, overrides)

    eval_records = readers.read_records(os.path.join(data_dir, "food_reviews_test.jsonl"),
                                        "classification")[: args.eval_examples or None]
    counts = collections.Counter(r["label"] for r in eval_records)
    majority = max(counts.values()) / len(eval_records)
    print(f"{'arm':<11} {'seed':>4} {'accuracy':>9} {'f1_macro':>9} {'mcc':>7}")
    for arm in ("pretrained", "scratch"):
        for seed, s in zip(seeds, results[arm]):
            print(f"{arm:<11} {seed:>4} {s['eval/accuracy']:>9.4f} {s['eval/f1_macro']:>9.4f} "
                  f"{s['eval/mcc']:>7.4f}")
    results.update(majority_accuracy=majority, settings=vars(args))
    os.makedirs(args.workdir, exist_ok=True)
    experiment_results.write(results_path, results)
    (pm, ps), (sm, ss) = results["pretrained_accuracy"], results["scratch_accuracy"]
    print(f"pretrained accuracy {pm:.3f} +- {ps:.3f} | scratch accuracy {sm:.3f} +- {ss:.3f} | "
          f"majority {majority:.3f}")


if __name__ == "__main__":
    run_script(main, "transfer_food_reviews.py")
