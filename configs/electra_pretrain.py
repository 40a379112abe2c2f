"""ELECTRA pretraining (generator MLM + replaced-token detection) on raw text.

Run:
  tl_jax train --config=configs/electra_pretrain.py:mini --workdir=/tmp/electra_mini

It trains a WordPiece vocabulary on the corpus, pretrains generator and discriminator together
for `train.steps` steps with a progress bar (generator MLM accuracy, discriminator accuracy),
and ends with a summary line of this form:
  done: 600 steps | held-out mlm_accuracy A | held-out disc_accuracy B | held-out
  disc_baseline_accuracy C | held-out disc_precision D | held-out disc_recall E | N tokens/s | MFU M%
where C is what answering "original" everywhere scores: the discriminator has learnt something
when B > C. `:tiny` (20 steps on the first 200 documents of the gensim corpora) printed, measured on 2 CPU cores:
  done: 20 steps | held-out mlm_accuracy 0.0486 | held-out disc_accuracy 0.8594 | held-out
  disc_baseline_accuracy 0.8594 | held-out disc_precision 0.0000 | held-out disc_recall 0.0000 | ...
(20 steps only learn the replacement rate; see the README's ELECTRA section for longer runs.)
Fine-tune the discriminator with
  tl_jax train --config=configs/finetune_classify.py:tiny --workdir=/tmp/ft \
    --config.init_from=/tmp/electra_mini

The argument picks a size from `tl_jax.models.electra.SIZES` (tiny, mini, small, base, large;
ELECTRA's small is 12 layers of 256 over 128-wide embeddings, not BERT's small); `tiny` also
shrinks the run to a smoke test. The generator is `model.generator_fraction` of the discriminator's width (0 = the size
table's: 1/4, 1/3 for base). Override anything with `--config.key=value`.
"""
import ml_collections

from tl_jax import parallel
from tl_jax.optim import optimizers

# Steps / batch / warmup / peak lr / mask rate per size: tiny and mini sized for a 2-core CPU
# as in configs/bert_pretrain.py; small, base and large as in the ELECTRA paper (Table 6), whose
# Large masks 25% of the tokens (ELECTRA's configure_pretraining.py: mask_prob 0.25), not 15%.
RUNS = {
    "tiny": dict(steps=20, batch_size=16, warmup=5, lr=1e-3, seq=64, mask=0.15),
    "mini": dict(steps=600, batch_size=32, warmup=60, lr=1e-3, seq=128, mask=0.15),
    "small": dict(steps=1_000_000, batch_size=128, warmup=10_000, lr=5e-4, seq=128, mask=0.15),
    "base": dict(steps=766_000, batch_size=256, warmup=10_000, lr=2e-4, seq=512, mask=0.15),
    "large": dict(steps=400_000, batch_size=2048, warmup=10_000, lr=2e-4, seq=512, mask=0.25),
}


def max_predictions(seq: int, mask: float) -> int:
    """BERT's 20 per 128 tokens (80 per 512), or ELECTRA's `int((mask + 0.005) * seq)` when
    that is more: the cap must not cut a higher mask rate (Large: 130 of 512)."""
    return max(20 if seq <= 128 else 80, int((mask + 0.005) * seq))


def get_config(arg=None):
    size = arg or "mini"
    if size not in RUNS:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(RUNS)}")
    run = RUNS[size]
    c = ml_collections.ConfigDict()
    c.task = "electra"
    c.seed = 0
    c.init_from = ""  # an ELECTRA workdir to continue, or a BERT workdir for the discriminator

    c.model = ml_collections.ConfigDict(dict(
        size=size,                # a name in tl_jax.models.electra.SIZES
        generator_fraction=0.0,   # generator width / discriminator width; 0 = the size's
        generator_num_layers=0,   # 0 = as deep as the discriminator
        embedding_size=0,         # shared embedding width; 0 = the size's (128 for small, else
                                  # hidden_size); another width adds an embeddings_project
        vocab_size=0,             # 0 = the tokenizer's size; otherwise must be >= it
        max_position_embeddings=512,
        type_vocab_size=2,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",          # compute dtype; "bfloat16" = mixed precision (params stay f32)
    ))

    c.electra = ml_collections.ConfigDict(dict(
        discriminator_weight=50.0,  # lambda in loss = MLM + lambda * replaced-token BCE
        temperature=1.0,            # of the generator's softmax when sampling replacements
    ))

    # BERT pretraining's data pipeline; the NSP pairs are made but not scored.
    c.data = ml_collections.ConfigDict(dict(
        corpus="gensim:enwiki,gensim:lee",  # files, globs, jsonl, tfds:NAME, gensim:enwiki|lee;
        # or a folder `tl_jax tokenize` wrote with a WordPiece vocabulary (which comes with it)
        text_field="text",
        group_field="",
        tokenizer="",                       # "" = init_from's, else train WordPiece; or
                                            # vocab.txt / tokenizer.json
        tokenizer_vocab_size=8192,
        lowercase=True,
        max_seq_length=run["seq"],
        max_predictions_per_seq=max_predictions(run["seq"], run["mask"]),
        masked_lm_prob=run["mask"],
        mask_token_prob=0.8,                # of the picked tokens: the share shown as [MASK],
        random_token_prob=0.1,              # as a random token; the rest unchanged. BERT's
                                            # 80/10/10; ELECTRA's code: 0.85 and 0.0
        short_seq_prob=0.1,
        random_next_prob=0.5,               # B from another document (BERT's NSP pairs);
                                            # ELECTRA's data: 0, B always continues A
        whole_word_masking=False,
        dynamic_masking=True,
        dupe_factor=10,                     # static masking only (BERT: 10)
        eval_fraction=0.05,
        batch_size=run["batch_size"],       # global, over all devices and processes
        eval_batch_size=run["batch_size"],
        max_documents=0,
    ))

    c.optimizer = optimizers.default_config()
    c.optimizer.learning_rate = run["lr"]
    c.optimizer.warmup_steps = run["warmup"]

    c.train = ml_collections.ConfigDict(dict(
        steps=run["steps"],
        log_every=10,
        eval_every=200,
        eval_batches=20,          # 0 = the whole held-out set
        checkpoint_every=200,
        keep_checkpoints=3,
        # No "best" checkpoint: discriminator accuracy falls as the generator gets better, so
        # it does not rank checkpoints; the newest is the one to fine-tune (as in the paper).
        best_metric="",
        best_mode="max",
        async_checkpoint=True,
        on_nonfinite="stop",      # stop | skip (skipped steps leave params and optimizer as is)
        peak_flops=200e9,         # per device, for MFU; measure yours with benchmarks/
        progress=True,
    ))
    if size == "tiny":
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.eval_batches = 2
        c.data.max_documents = 200
        c.data.tokenizer_vocab_size = 2000

    c.mesh = parallel.default_config()
    c.distributed = parallel.distributed_config()
    return c
