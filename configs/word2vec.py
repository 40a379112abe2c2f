"""word2vec (skip-gram or CBOW with negative sampling) on Austen + the Wikipedia sample.

Run:
  tl_jax static --config=configs/word2vec.py --workdir=/tmp/w2v

It trains with a linearly decaying learning rate, writes WORKDIR/vectors.*.txt|bin and
scores.json, and ends with the evaluation and a summary like:
  WordSim353 rho=0.2xx (258 pairs, 95 OOV)
  SimLex-999 rho=0.1xx (704 pairs, 295 OOV)
  Google analogies 3CosAdd acc=0.0xx (5351 questions, 14193 OOV)
  done: word2vec 5 epochs in NN.Ns | final loss 2.4xxx | vectors in /tmp/w2v

Arguments: "" or "base" (dim 100, 5 epochs); "cbow" (CBOW instead of skip-gram); "tiny"
(dim 16, 1 epoch on 2,000 text units: a smoke test). Override with --config.key=value.
"""
import ml_collections


def get_config(arg=None):
    arg = arg or "base"
    if arg not in ("base", "cbow", "tiny"):
        raise ValueError(f"Unknown argument {arg!r}; choose base, cbow or tiny")
    c = ml_collections.ConfigDict()
    c.method = "word2vec"
    c.seed = 0
    c.corpus = "$TL_JAX_DATA_DIR/austen.jsonl,$TL_JAX_DATA_DIR/enwiki_sample.jsonl"
    c.text_field = "text"
    c.max_sentences = 0        # 0 = all text units
    c.min_count = 5
    c.max_vocab = 0            # 0 = no cap
    c.dim = 100
    c.window = 5               # the largest window; each centre draws 1..window
    c.epochs = 5
    c.batch_size = 1024        # (centre, context) pairs per SGD step
    c.steps_per_call = 64      # steps per jitted call (lax.scan)
    c.word2vec = ml_collections.ConfigDict(dict(
        cbow=arg == "cbow",
        negatives=5,
        # S > 0: S negatives per batch shared by all its pairs, weighted K / S (dense matmuls).
        # Measured on Austen + Wikipedia (benchmarks/word2vec_vs_gensim.py, 2 idle cores):
        # S = 16 ran at 1.38-1.39x gensim's words/s with WordSim353 0.252 (gensim 0.17-0.19) but
        # analogies 0.047 (gensim 0.056); S = 0 (word2vec.c's K per pair) ran at 0.45x,
        # 0.228 / 0.064. (Scores with the ASCII-only tokenizer of then; now S = 16 gives
        # 0.233 / 0.041 with seed 0, 0.233-0.309 / 0.041-0.052 over seeds 0-2.)
        shared_negatives=16,
        sample=1e-3,           # frequent-word subsampling threshold; 0 = off
        learning_rate=0.05 if arg == "cbow" else 0.025,
        min_learning_rate=1e-4,
    ))
    c.glove = ml_collections.ConfigDict(dict(  # unused here; kept so both configs share keys
        x_max=10.0, alpha=0.75, learning_rate=None, adagrad="optax"))
    c.save_formats = ("word2vec_text", "word2vec_binary")
    c.progress = True          # a line around reading the corpus, a bar of each epoch's steps
    c.eval_dir = "$TL_JAX_DATA_DIR"   # where eval/wordsim353.tsv etc. live; "" = no evaluation
    if arg == "tiny":
        c.max_sentences = 2000
        c.min_count = 2
        c.dim = 16
        c.epochs = 1
        c.batch_size = 256
        c.steps_per_call = 8
    return c
