"""Test setup: 8 fake CPU devices, and the shared real-data folder.

The device flag must be set before jax is imported anywhere, so it lives at the top of conftest.
"""
import os

# LLVM's optimisation of the CPU code is turned down: the tests run thousands of small programs
# once or a few times each, so compiling them costs far more than running them (a cold suite
# took about twice as long as one whose programs were all in the compilation cache below). The
# programs XLA builds (fusion, sharding, layouts) are the same; only the machine code is less
# optimised. Set XLA_FLAGS with an `--xla_backend_optimization_level` of your own to test with
# another.
_FAST_COMPILE = (" --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                 if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "") else "")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8" + _FAST_COMPILE
).strip()
# The same for the `tl_jax train` processes the multi-process and signal tests start through
# tests/workers/train_worker.py, which sets XLA_FLAGS itself (its own device count): compiling
# there at the default level took a fifth of test_multiprocess.py's time.
os.environ["TL_JAX_TEST_FAST_COMPILE"] = _FAST_COMPILE.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

# A persistent XLA compilation cache shared by every process of the run (both pytest-xdist
# workers and the `tl_jax` subprocesses tests start, which inherit the environment). Most tests
# train or run the same tiny models, so most programs compile once per run instead of once per
# test; a rerun on the same checkout starts warm. Entries are keyed by the program, the XLA
# flags and the jax version, so a stale entry is never used. Set JAX_COMPILATION_CACHE_DIR to
# put it elsewhere, or JAX_ENABLE_COMPILATION_CACHE=false to compile everything afresh.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real-data folder (`TL_JAX_DATA_DIR`, set by `.ci/run`).

    A missing folder is a failure, not a skip: tests that need real data prove nothing without it.
    """
    path = os.environ.get("TL_JAX_DATA_DIR")
    if not path:
        pytest.fail("TL_JAX_DATA_DIR is not set; point it at the shared data folder (see README).")
    path = pathlib.Path(path)
    if not (path / "README.md").exists():
        pytest.fail(f"TL_JAX_DATA_DIR={path} does not look like the shared data folder.")
    return path


@pytest.fixture(scope="session")
def tiny_bert_overrides(data_dir, tmp_path_factory) -> list[str]:
    """Config overrides for a tiny BERT on a slice of real Wikipedia text (fast to train).

    The WordPiece vocabulary is trained once per session and shared by every test using it.
    """
    from tl_jax.data import sources
    from tl_jax.data.tokenizer import Tokenizer

    corpus = str(data_dir / "enwiki_sample.jsonl")
    docs = sources.load_documents(corpus, text_field="text", group_field="title")[:40]
    tok_dir = tmp_path_factory.mktemp("tokenizer")
    Tokenizer.train_wordpiece(docs, vocab_size=2000, lowercase=True).save(str(tok_dir))
    return [
        f"data.corpus={corpus}", "data.max_documents=40", f"data.tokenizer={tok_dir}",
        "data.max_seq_length=32", "data.max_predictions_per_seq=5", "data.batch_size=16",
        "data.eval_batch_size=16", "train.progress=False", "train.eval_batches=2",
        "model.max_position_embeddings=64",
    ]


def write_polarity_files(data_dir: pathlib.Path, folder: pathlib.Path, eval_rows: int):
    """Writes `train.jsonl` (64 rows), `eval.jsonl` and `unlabelled.jsonl` (`eval_rows` rows,
    the latter without labels) to `folder`, alternating neg/pos sentences (the real file is
    sorted by label). Returns `folder`."""
    import json

    rows = [json.loads(line) for line in open(data_dir / "polarity_sentences.jsonl")]
    mixed = [r for pair in zip(rows[:100], rows[100:]) for r in pair]

    def write(name, part):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))

    write("train.jsonl", mixed[:64])
    write("eval.jsonl", mixed[100:100 + eval_rows])
    write("unlabelled.jsonl", [{"text": r["text"]} for r in mixed[100:100 + eval_rows]])
    return folder


@pytest.fixture
def polarity_classifier_config(data_dir):
    """A factory: `make(init_from, *overrides)` is a tiny `finetune_classify.py` config on 32
    real polarity sentences (16 held out), warm-started from `init_from`, on one device."""
    from tl_jax import config as config_lib

    sentences = data_dir / "polarity_sentences.jsonl"
    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "finetune_classify.py"

    def make(init_from, *overrides):
        return config_lib.load_config(f"{path}:tiny", [
            f"init_from={init_from}", "train.progress=False", "mesh.num_devices=1",
            f"data.train_file={sentences}", f"data.eval_file={sentences}",
            "data.max_seq_length=32", "data.max_train_examples=32", "data.max_eval_examples=16",
            *overrides])
    return make


def assert_micro_batch_losses_sum_to_the_batch(loss, outputs, normalizers):
    """Gradient accumulation's contract for a loss with `normalizers` (the whole batch's counts):
    over the trainer's two micro-batches (rows i::2), the losses and their gradients sum to the
    whole batch's. `loss(out, i, normalizers=None)` is the loss of micro-batch i of `out`'s
    batch (i=None: the whole batch). Without the counts, the mean of the two micro-batch means
    must be another number, or the test could not tell the two apart."""
    import jax
    import numpy as np

    def rows(tree, i):
        return jax.tree.map(lambda x: x[i::2], tree)

    whole = jax.value_and_grad(lambda out: loss(out, None))(outputs)
    split = jax.value_and_grad(
        lambda out: sum(loss(rows(out, i), i, normalizers) for i in range(2)))(outputs)
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(split[1]), jax.tree.leaves(whole[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    mean_of_means = sum(loss(rows(outputs, i), i) for i in range(2)) / 2
    assert abs(float(mean_of_means) - float(whole[0])) > 1e-2


def nan_loss_at_batch(monkeypatch, n: int) -> dict:
    """Makes BERT pretraining's `n`-th training batch (from 1) give a NaN loss: its masked
    weights times NaN. Returns the batch counter; `counter["n"] = 0` starts the count again."""
    import numpy as np

    from tl_jax.tasks import bert_pretrain

    original_next = bert_pretrain.ValidatedBatches.__next__
    counter = {"n": 0}

    def poisoned_next(self):
        batch = original_next(self)
        counter["n"] += 1
        if counter["n"] == n:
            batch = dict(batch, masked_weights=batch["masked_weights"] * np.float32(np.nan))
        return batch

    monkeypatch.setattr(bert_pretrain.ValidatedBatches, "__next__", poisoned_next)
    return counter
