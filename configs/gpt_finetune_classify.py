"""ULMFiT-style classification with a GPT (default data: the food reviews, great vs other).

Run (step 3 of the recipe; steps 1-2 make the LM it starts from):
  tl_jax train --config=configs/gpt_pretrain.py:mini --workdir=/tmp/gpt_lm
  tl_jax train --config=configs/gpt_pretrain.py:mini --workdir=/tmp/gpt_lm_food \
      --config.init_from=/tmp/gpt_lm --config.data.tokenizer=/tmp/gpt_lm/tokenizer \
      --config.data.corpus='$TL_JAX_DATA_DIR/food_reviews_train.jsonl' --config.train.steps=300
  tl_jax train --config=configs/gpt_finetune_classify.py:mini --workdir=/tmp/gpt_food \
      --config.init_from=/tmp/gpt_lm_food

It puts a classifier head on the LM's last-token state, fine-tunes on `data.train_file`,
evaluates on `data.eval_file` after every epoch (writing WORKDIR/predictions/eval_step_N.jsonl)
and ends with a summary like:
  done: 250 steps | held-out accuracy 0.7xxx | held-out f1_macro 0.7xxx | held-out mcc 0.4xxx | ..

Arguments: a GPT size (tiny, mini, small, medium) used when training from scratch
(`init_from=""`, the no-transfer baseline); with `init_from` the source dictates the shape.
`tiny` also shrinks the data to a smoke test. `init_from` may also be a Hugging Face GPT-2
directory (its vocab.json + merges.txt are the tokenizer).
"""
import ml_collections

from tl_jax import parallel
from tl_jax.models import gpt
from tl_jax.optim import optimizers, transfer


def get_config(arg=None):
    size = arg or "mini"
    if size not in gpt.SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(gpt.SIZES)}")
    c = ml_collections.ConfigDict()
    c.task = "lm_classify"
    c.seed = 0
    c.init_from = ""  # tl_jax LM workdir or Hugging Face GPT-2 directory; "" = from scratch

    c.model = ml_collections.ConfigDict(dict(
        size=size,                # from scratch only
        vocab_size=0,             # from scratch: 0 = the tokenizer's size
        max_len=0,                # from scratch: 0 = the size table's
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",
        pooling="last",           # last (the <|endoftext|> state) | mean | concat (ULMFiT's
                                  # [last, max, mean] over the text's states)
        classifier_dropout=0.1,
    ))

    c.data = ml_collections.ConfigDict(dict(
        train_file="$TL_JAX_DATA_DIR/food_reviews_train.jsonl",
        eval_file="$TL_JAX_DATA_DIR/food_reviews_test.jsonl",
        text_field="text",
        label_field="label",
        labels=(),                # () = sorted training labels
        positive_label="",        # for binary F1, e.g. "great"
        tokenizer="",             # "" = init_from's tokenizer (trained on the data if none)
        tokenizer_vocab_size=8192,
        max_seq_length=128,       # texts are cut to max_seq_length - 1 ids + <|endoftext|>
        batch_size=32,            # global, over all devices and processes
        num_epochs=2.0,           # > 0 sets train.steps and evaluates/checkpoints every epoch
        max_train_examples=0,     # 0 = all
        max_eval_examples=0,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 0  # STLR (below) warms up over transfer.stlr_cut_frac of the steps

    # ULMFiT's fine-tuning: discriminative learning rates (each block lr / 2.6 of the one above)
    # and a slanted triangular schedule. Gradual unfreezing: transfer.strategy=gradual_unfreezing
    # (one stage per transfer.stage_epochs; raise data.num_epochs to cover all stages).
    c.transfer = transfer.default_config()
    c.transfer.discriminative_decay = 2.6
    c.transfer.schedule = "stlr"

    c.train = ml_collections.ConfigDict(dict(
        steps=0,                  # set from data.num_epochs
        log_every=10,
        eval_every=0,             # set to one epoch from data.num_epochs
        eval_batches=0,           # 0 = the whole eval set (needed for exact metrics)
        checkpoint_every=0,       # set to one epoch from data.num_epochs
        keep_checkpoints=1,
        best_metric="eval/accuracy",
        best_mode="max",
        async_checkpoint=False,
        on_nonfinite="stop",
        peak_flops=200e9,
        progress=True,
    ))
    if size == "tiny":
        c.data.max_train_examples = 192
        c.data.max_eval_examples = 64
        c.data.max_seq_length = 64
        c.data.batch_size = 16
        c.data.num_epochs = 1.0
        c.data.tokenizer_vocab_size = 1000
        c.optimizer.learning_rate = 1e-3
        c.train.log_every = 4

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
