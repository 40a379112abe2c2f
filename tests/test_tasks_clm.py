"""The `clm` task's warm start: the tokenizer and weights taken from `init_from`."""
import json
import os
import re

import ml_collections
import numpy as np
import pytest

from tl_jax.data.bpe import BPEError, BPETokenizer
from tl_jax.tasks import clm


@pytest.fixture(scope="module")
def texts(data_dir):
    with open(data_dir / "austen.jsonl") as f:
        return [json.loads(line)["text"] for _, line in zip(range(400), f)]


def data_cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(tokenizer="", tokenizer_vocab_size=300), **kw))


@pytest.mark.parametrize("kind", ["workdir", "hf"])
def test_warm_start_keeps_the_init_from_tokenizer(tmp_path, texts, kind, capsys):
    """Continuing from an LM without data.tokenizer must reuse the LM's vocabulary: a new BPE
    trained on the new corpus would give the warm-started embedding rows other meanings."""
    source = BPETokenizer.train(texts[:200], vocab_size=300)
    if kind == "workdir":
        init_from = tmp_path / "lm"
        (init_from / "checkpoints").mkdir(parents=True)
        source.save(str(init_from / "tokenizer"))
    else:
        init_from = tmp_path / "gpt2"
        init_from.mkdir()
        (init_from / "config.json").write_text('{"model_type": "gpt2"}')
        source.save(str(init_from))
    new_docs = [[t] for t in texts[200:]]
    fresh = clm.load_tokenizer(data_cfg(), str(tmp_path / "run"), new_docs)
    assert fresh.hf_tokenizer.get_vocab() != source.hf_tokenizer.get_vocab()  # the old pitfall
    tok = clm.load_tokenizer(data_cfg(), str(tmp_path / "run"), new_docs, str(init_from))
    assert tok.hf_tokenizer.get_vocab() == source.hf_tokenizer.get_vocab()
    # data.tokenizer still wins, with a warning when it is not init_from's vocabulary.
    other = tmp_path / "other"
    fresh.save(str(other))
    capsys.readouterr()
    tok = clm.load_tokenizer(data_cfg(tokenizer=str(other)), str(tmp_path / "run"), new_docs,
                             str(init_from))
    assert tok.hf_tokenizer.get_vocab() == fresh.hf_tokenizer.get_vocab()
    assert "is not the vocabulary init_from's weights were trained with" in capsys.readouterr().out
    same = tmp_path / "same"
    source.save(str(same))
    clm.load_tokenizer(data_cfg(tokenizer=str(same)), str(tmp_path / "run"), new_docs,
                       str(init_from))
    assert "warning" not in capsys.readouterr().out


def test_warm_start_from_a_gpt2_directory_without_a_tokenizer_is_an_error(tmp_path, texts):
    """Weights saved without their tokenizer: a new BPE trained on the corpus (as many tokens,
    so every embedding row was taken) used to give the warm-started rows other meanings."""
    init_from = tmp_path / "gpt2"
    init_from.mkdir()
    (init_from / "config.json").write_text('{"model_type": "gpt2"}')
    docs = [[t] for t in texts]
    with pytest.raises(BPEError, match=r"init_from=.*gpt2' has no tokenizer \(vocab.json \+ "
                       r"merges.txt or tokenizer.json\): name the one .* as data.tokenizer"):
        clm.load_tokenizer(data_cfg(), str(tmp_path / "run"), docs, str(init_from))
    other = tmp_path / "other"
    BPETokenizer.train(texts, vocab_size=300).save(str(other))
    tok = clm.load_tokenizer(data_cfg(tokenizer=str(other)), str(tmp_path / "run"), docs,
                             str(init_from))
    assert tok.vocab_size == 300


def test_a_negative_max_documents_is_an_error(tmp_path):
    from tl_jax import config as config_lib
    config = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={tmp_path / 'not_read.txt'}", "data.max_documents=-1"])
    with pytest.raises(ValueError, match=r"data.max_documents=-1 must be >= 0"):
        clm.Task(config, str(tmp_path / "run"))


@pytest.mark.parametrize("spec", ["configs/gpt_pretrain.py:tiny", "configs/bert_pretrain.py:tiny"])
@pytest.mark.parametrize("override", ["model.dropout_rate=10.0", "model.attention_dropout_rate=-0.1"])
def test_pretraining_dropout_rates_are_named_before_the_corpus_is_read(tmp_path, spec, override):
    """A GPT or BERT pretraining run with model.dropout_rate=10 trained on zeros without a word;
    it is named by its key before the corpus (which does not exist here) is read."""
    from tl_jax import config as config_lib
    from tl_jax.tasks import bert_pretrain

    config = config_lib.load_config(spec, [f"data.corpus={tmp_path / 'not_read.txt'}", override])
    key, value = override.split("=")
    task = clm if "gpt" in spec else bert_pretrain
    with pytest.raises(ValueError, match=rf"{key}={value} must be in \[0, 1\)"):
        task.Task(config, str(tmp_path / "run"))


def test_a_tokenizer_vocab_size_too_small_is_named_before_the_corpus_is_read(tmp_path, data_dir):
    """It was "vocab_size=100 must exceed the 256 byte symbols" from the BPE trainer, naming no
    key, once the whole corpus had been read (here the corpus and task files do not exist)."""
    from tl_jax import config as config_lib
    from tl_jax.tasks import lm_classify

    missing = [f"data.corpus={tmp_path / 'not_read.txt'}", "data.tokenizer_vocab_size=100"]
    message = r"data.tokenizer_vocab_size=100 is too small for a byte-level BPE vocabulary"
    with pytest.raises(ValueError, match=message):
        clm.Task(config_lib.load_config("configs/gpt_pretrain.py:tiny", missing), str(tmp_path))
    files = [f"data.train_file={tmp_path / 'missing_train'}",
             f"data.eval_file={tmp_path / 'missing_eval'}", "data.tokenizer_vocab_size=100"]
    with pytest.raises(ValueError, match=message):
        lm_classify.Task(config_lib.load_config("configs/gpt_finetune_classify.py:tiny", files),
                         str(tmp_path / "run"))
    # A tokenizer that is not trained here leaves the size unused: then the corpus is read.
    trained = BPETokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300)
    trained.save(str(tmp_path / "tok"))
    config = config_lib.load_config("configs/gpt_pretrain.py:tiny",
                                    missing + [f"data.tokenizer={tmp_path / 'tok'}"])
    with pytest.raises(Exception, match="not_read.txt"):
        clm.Task(config, str(tmp_path / "run"))


def test_warm_start_from_another_model_family_is_named(tmp_path, texts, data_dir):
    """A BERT directory or workdir as a clm run's init_from: said so, not a complaint about
    the tokenizer lacking <|endoftext|>."""
    docs = [[t] for t in texts]
    bert = os.path.join(data_dir, "models", "all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match=r"holds a 'bert' model \(.*config.json\); a clm run "
                                         "warm-starts from GPT-2-layout weights"):
        clm.load_tokenizer(data_cfg(), str(tmp_path / "run"), docs, bert)
    workdir = tmp_path / "bert_run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text('{"task": "bert_pretrain"}')
    with pytest.raises(ValueError, match="was trained with task='bert_pretrain'; a clm run"):
        clm.load_tokenizer(data_cfg(), str(tmp_path / "run"), docs, str(workdir))
    # What `tl_jax convert` makes of a BERT directory (it has a WordPiece tokenizer.json too).
    converted = tmp_path / "bert_weights"
    converted.mkdir()
    (converted / "config.json").write_text('{"family": "bert", "config": {}}')
    (converted / "params.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds a 'bert' model \(.*config.json\); a clm run "
                                         "warm-starts from GPT-2-layout weights"):
        clm.load_tokenizer(data_cfg(), str(tmp_path / "run"), docs, str(converted))


def test_warm_start_from_a_gpt2_directory_of_another_size_is_an_error(tmp_path):
    """A GPT-2 directory whose shapes match nothing must not silently train from scratch."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from tl_jax import warm_start
    from tl_jax.interop import gpt2
    from tl_jax.models.gpt import GPT, gpt_config

    source = gpt_config("tiny", 300, embed_dim=32, mlp_dim=128, max_len=64)
    tokens = jnp.zeros((1, 4), jnp.int32)
    gpt2.save_pretrained(tmp_path, source, nn.unbox(
        GPT(source).init(jax.random.PRNGKey(0), tokens)["params"]))
    target = gpt_config("tiny", 300)
    params = nn.unbox(GPT(target).init(jax.random.PRNGKey(1), tokens)["params"])
    with pytest.raises(warm_start.WarmStartError, match="width 32"):
        clm.load_gpt_weights(params, str(tmp_path), target)
    # The matching size loads every tensor.
    matching = nn.unbox(GPT(source).init(jax.random.PRNGKey(1), tokens)["params"])
    loaded = clm.load_gpt_weights(matching, str(tmp_path), source)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(matching)


def test_workdir_tokenizer_is_kept_only_by_a_run_that_resumes(tmp_path, texts):
    """A tokenizer left by a run that stopped before its first checkpoint must not override
    the config (it used to: a rerun asking for another vocabulary size silently got the old one)."""
    docs = [[t] for t in texts]
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    BPETokenizer.train(texts, vocab_size=300).save(str(workdir / "tokenizer"))
    tok = clm.load_tokenizer(data_cfg(tokenizer_vocab_size=350), str(workdir), docs)
    assert tok.vocab_size == 350
    (workdir / "checkpoints" / "10").mkdir()
    tok = clm.load_tokenizer(data_cfg(tokenizer_vocab_size=350), str(workdir), docs)
    assert tok.vocab_size == 300



def test_lm_loss_keeps_small_logits_for_the_backward_pass_and_recomputes_large_ones(monkeypatch):
    import jax
    import jax.numpy as jnp
    import numpy as np

    def hidden(batch, length, width):
        return jnp.zeros((batch, length, width))

    assert not clm.recompute_logits(hidden(16, 128, 256), 8192)  # GPT mini's batch: 64 MiB
    assert clm.recompute_logits(hidden(16, 128, 64), 8192)  # narrow: recomputing is cheaper
    assert clm.recompute_logits(hidden(8, 1024, 768), 50257)  # GPT-2 small: 1.5 GiB of logits

    # Either way lm_loss has the same value and gradients.
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"wte": {"embedding": jax.random.normal(k[0], (300, 128)) * 0.1}}
    h = jax.random.normal(k[1], (2, 24, 128))
    targets = jax.random.randint(k[2], (2, 24), 0, 300)
    weights = jnp.ones((2, 24)).at[1, 20:].set(0.0)

    def run():
        def loss(p, h):
            return clm.lm_loss(p, h, targets, weights)[0]
        return jax.value_and_grad(loss, (0, 1))(params, h)

    assert not clm.recompute_logits(h, 300)
    kept = run()
    monkeypatch.setattr(clm, "KEEP_LOGITS_MAX_BYTES", 0)
    assert clm.recompute_logits(h, 300)
    recomputed = run()
    for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(recomputed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_runs_with_other_seeds_are_scored_on_the_same_held_out_documents(tmp_path, texts):
    # The split drew with config.seed: an ablation's repeats over seeds measured perplexity on
    # different text, so their spread mixed the seed's effect with the eval set's.
    import numpy as np

    from tl_jax import config as config_lib
    corpus = tmp_path / "austen.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:60]))
    held = []
    for seed in (0, 1):
        config = config_lib.load_config(
            os.path.join(os.path.dirname(__file__), "..", "configs", "gpt_pretrain.py:tiny"),
            [f"seed={seed}", f"data.corpus={corpus}", "data.tokenizer_vocab_size=300",
             "data.seq_len=32", "model.max_len=32", "data.eval_fraction=0.2"])
        task = clm.Task(config, workdir=None)
        held.append(task.eval_blocks)
    assert all(np.array_equal(a, b) for a, b in zip(held[0], held[1]))


def test_perplexity_of_eval_batches_with_no_token_is_nan_and_noted_once(capsys):
    # No token to predict: exp(0 / 0) has no value; 1.0 would read as a perfect model, and a
    # missing key as a misspelt train.best_metric. NaN, as train.average gives eval/nll.
    import math
    import numpy as np
    task = clm.Task.__new__(clm.Task)
    empty = [(None, {"nll": np.zeros(2, np.float32), "tokens": np.zeros(2, np.float32)})]
    first = task.evaluate(empty, "", 1)
    assert list(first) == ["perplexity"] and math.isnan(first["perplexity"])
    assert math.isnan(task.evaluate(empty, "", 2)["perplexity"])
    out = capsys.readouterr().out
    assert out.count("eval/perplexity is logged as nan") == 1, out
    some = [(None, {"nll": np.array([2.0, 0.0]), "tokens": np.array([1.0, 0.0])})]
    assert task.evaluate(some, "", 3)["perplexity"] == pytest.approx(math.exp(2.0))


def test_the_steps_before_the_training_bar_say_what_they_do(tmp_path, data_dir, capsys):
    """The clm task read the corpus, trained its BPE and tokenised with no output (10 s for
    `gpt_pretrain.py:tiny`, minutes on a real corpus) before the trainer's bar: each step says
    when it starts and what it made; train.progress=False is silent."""
    from tl_jax import config as config_lib

    def build(progress, name):
        cfg = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
            f"data.corpus={data_dir}/polarity_sentences.jsonl", "data.tokenizer_vocab_size=300",
            "data.seq_len=32", f"train.progress={progress}"])
        return clm.Task(cfg, str(tmp_path / name))

    capsys.readouterr()
    build(True, "a")
    out = capsys.readouterr().out.splitlines()
    corpus = f"{data_dir}/polarity_sentences.jsonl"
    assert out[0] == f"[data] Reading {corpus}..."
    assert re.fullmatch(rf"\[data\] Reading {re.escape(corpus)}: [\d,]+ documents \(\d+\.\ds\)",
                        out[1])
    assert out[2].startswith("[data] Training a byte-level BPE of 300 tokens on ")
    assert re.fullmatch(r"\[data\] Training a byte-level BPE .*: 300 tokens \(\d+\.\ds\)", out[3])
    assert out[4] == "[data] Tokenising..."
    assert re.fullmatch(r"\[data\] Tokenising: [\d,]+ training and [\d,]+ held-out blocks of 32 "
                        r"tokens \(\d+\.\ds\)", out[5])
    build(False, "b")
    assert capsys.readouterr() == ("", "")


def test_an_lm_run_warm_starts_from_a_gpt_classifier_workdir(tmp_path):
    """`init_from` an `lm_classify` workdir is accepted (its tokenizer is taken), but its
    decoder's tensors are under gpt/: every one of them went unmatched and the run stopped with
    "no tensor matched this model"."""
    import jax
    from flax import linen as nn

    from tl_jax import config as config_lib, train
    from tl_jax.models import gpt

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"review number {i} was "
                                                f"{'good' if i % 2 else 'bad'}",
                                        "label": i % 2}) + "\n" for i in range(32)))
    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        "train.progress=False", "mesh.num_devices=1", f"data.train_file={path}",
        f"data.eval_file={path}", "train.steps=1", "data.tokenizer_vocab_size=300"])
    result = train.train_and_evaluate(config, str(tmp_path / "cls"))
    trained = jax.device_get(result.state["params"])
    model_config = result.trainer.task.model_config
    params = nn.unbox(gpt.GPT(model_config).init(
        jax.random.PRNGKey(1), np.zeros((1, 4), np.int32))["params"])
    loaded = clm.load_gpt_weights(params, str(tmp_path / "cls"), model_config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, trained["gpt"])
    # Its shape is read from the checkpoint's resolved_model: a clm run of another width is
    # refused before its corpus is read, one of the same width goes on to read it.
    assert clm.workdir_shape(str(tmp_path / "cls")) == model_config
    assert model_config.embed_dim == 64
    lm = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"init_from={tmp_path / 'cls'}", f"data.corpus={tmp_path / 'not_read.txt'}",
        "model.embed_dim=32"])
    with pytest.raises(ValueError, match=r"no tensor matched .*width 64.*"
                                         r"--config.model.embed_dim=64"):
        clm.Task(lm, str(tmp_path / "lm"))
    lm.model.embed_dim = 0
    from tl_jax.data.sources import SourceError
    with pytest.raises(SourceError, match="Corpus file not found: .*not_read.txt"):
        clm.Task(lm, str(tmp_path / "lm"))


@pytest.mark.parametrize("seq_len", [0, -4, 129])
def test_a_seq_len_outside_the_position_table_is_named_before_the_corpus_is_read(tmp_path,
                                                                                 seq_len):
    """data.seq_len=0 met make_blocks' "seq_len must be >= 1", naming no key; too long a
    length was named, but both only after the corpus had been read and a BPE trained on it."""
    from tl_jax import config as config_lib

    config = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={tmp_path / 'not_read.txt'}", f"data.seq_len={seq_len}"])
    with pytest.raises(ValueError, match=rf"data.seq_len={seq_len} must be in \[1, 128\] "
                                         r"\(the model's position table, model.max_len=128\)"):
        clm.Task(config, str(tmp_path / "run"))


@pytest.mark.parametrize("length", [0, 1])
def test_a_gpt_classifier_max_seq_length_with_no_room_for_text_is_named(tmp_path, length):
    """data.max_seq_length=0 failed with numpy's "could not broadcast input array from shape
    (22,) into shape (0,)"; 1 trained a classifier that saw <|endoftext|> alone, never a word
    of the text. Both are named before the files are read (they do not exist here)."""
    from tl_jax import config as config_lib
    from tl_jax.tasks import lm_classify

    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        f"data.train_file={tmp_path / 'missing_train'}",
        f"data.eval_file={tmp_path / 'missing_eval'}", f"data.max_seq_length={length}"])
    with pytest.raises(ValueError, match=rf"data.max_seq_length={length} is too short: a text "
                                         r"needs at least one BPE token and <\|endoftext\|>"):
        lm_classify.Task(config, str(tmp_path / "run"))


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_a_batch_size_below_one_is_named_before_the_corpus_is_read(tmp_path, key):
    """data.eval_batch_size=0 was found at the first eval, after train.eval_every steps of
    training that no checkpoint had kept yet; data.batch_size=0 once the corpus had been read
    and a BPE trained on it."""
    from tl_jax import config as config_lib

    config = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={tmp_path / 'not_read.txt'}", f"data.{key}=0"])
    with pytest.raises(ValueError, match=rf"data.{key}=0 must be at least 1"):
        clm.Task(config, str(tmp_path / "run"))


@pytest.mark.parametrize("fraction", [1.5, -0.1, 1.0])
def test_an_eval_fraction_outside_zero_one_is_named_before_the_corpus_is_read(tmp_path,
                                                                               fraction):
    """It was "eval_fraction must be in [0, 1)" (no config key), after the corpus was read."""
    from tl_jax import config as config_lib

    config = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={tmp_path / 'not_read.txt'}", f"data.eval_fraction={fraction}"])
    with pytest.raises(ValueError, match=rf"data.eval_fraction={fraction} must be in \[0, 1\)"):
        clm.Task(config, str(tmp_path / "run"))


def test_the_gpt_classifier_warns_of_a_tokenizer_that_is_not_its_lms(tmp_path, texts, capsys):
    """data.tokenizer other than init_from's vocabulary gives the LM's embedding rows other
    tokens: the clm task warned of it, the classifier took it without a word."""
    from tl_jax import config as config_lib
    from tl_jax.tasks import lm_classify

    lm = tmp_path / "lm"
    (lm / "checkpoints").mkdir(parents=True)
    (lm / "config.json").write_text(json.dumps({"task": "clm", "model": {
        "size": "tiny", "vocab_size": 0, "dropout_rate": 0.1, "attention_dropout_rate": 0.1}}))
    BPETokenizer.train(texts[:200], vocab_size=300).save(str(lm / "tokenizer"))
    BPETokenizer.train(texts[200:], vocab_size=300).save(str(tmp_path / "other"))

    def resolve(tokenizer):
        cfg = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
            f"init_from={lm}", f"data.tokenizer={tokenizer}"])
        capsys.readouterr()
        lm_classify.resolve_model(cfg, [])
        return capsys.readouterr().out

    out = resolve(tmp_path / "other")
    assert "[lm_classify] warning: data.tokenizer=" in out
    assert "is not the vocabulary init_from's weights were trained with" in out
    assert "warning" not in resolve(lm / "tokenizer")
    assert "warning" not in resolve("")


@pytest.mark.parametrize("spec,overrides", [
    ("gpt_pretrain.py:tiny", ["data.eval_fraction=0.2"]),
    ("gpt_pretrain.py:tiny", ["data.eval_fraction=0"]),
    ("gpt_finetune_classify.py:tiny", []),
    ("gpt_finetune_classify.py:tiny", ["data.positive_label=1"])])
def test_gpt_tasks_declare_the_eval_metrics_an_eval_reports(tmp_path, texts, spec, overrides):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is each task's declaration from the config: an eval reports exactly
    those names (the LM's perplexity, none when nothing is held out; the classifier's binary F1
    with data.positive_label)."""
    import jax

    from tl_jax import config as config_lib, tasks, train

    corpus = tmp_path / "austen.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:60]))
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                                for i, t in enumerate(texts[:24])))
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                 spec), [
        "train.progress=False", "mesh.num_devices=1", "data.tokenizer_vocab_size=300",
        *(["data.seq_len=32", "model.max_len=32", f"data.corpus={corpus}"]
          if spec.startswith("gpt_pretrain") else
          [f"data.train_file={labelled}", f"data.eval_file={labelled}",
           "data.max_seq_length=32"]), *overrides])
    trainer = train.build_trainer(config, str(tmp_path / "run"))
    params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    reported = train.evaluate(trainer, params, 0)
    assert sorted(reported) == sorted(tasks.eval_metric_names(config))
    assert bool(reported) == (overrides != ["data.eval_fraction=0"])


@pytest.fixture(scope="module")
def small_tokenizer(texts):
    return BPETokenizer.train(texts, vocab_size=300, progress=False)


def _gpt2_directory(path, tokenizer, **shape):
    """A GPT-2 directory (config.json and tokenizer, no weights: they must not be needed)."""
    path.mkdir()
    tokenizer.save(str(path))
    (path / "config.json").write_text(json.dumps(dict(
        {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128,
         "vocab_size": tokenizer.vocab_size}, **shape)))
    return path


@pytest.mark.parametrize("shape, match", [
    (dict(n_embd=32), r"no tensor matched this model by name and shape \(the checkpoint has 2 "
                      r"layers of width 32.*--config.model.embed_dim=32"),
    (dict(n_embd=64, vocab_size=50257), r"its vocabulary \(50257\) is larger than the model's "
                                        r"\(\d+\); use its tokenizer as data.tokenizer"),
])
def test_a_gpt2_directory_that_cannot_fit_the_model_is_named_before_the_corpus_is_read(
        tmp_path, monkeypatch, small_tokenizer, shape, match):
    """The shape refusals of `load_gpt_weights` came only after the corpus had been read and
    tokenised (9 s on the Austen text, minutes on a large corpus): init_from's config.json
    tells them."""
    from tl_jax import config as config_lib
    from tl_jax.data import sources

    weights = _gpt2_directory(tmp_path / "gpt2", small_tokenizer, **shape)
    config = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"init_from={weights}", f"data.corpus={tmp_path / 'not_read.txt'}"])
    assert clm.gpt_config_from(config.model, 300).embed_dim != 32  # what the cases assume
    monkeypatch.setattr(sources, "load_documents", lambda *a, **k: pytest.fail("read the corpus"))
    with pytest.raises(ValueError, match=match):
        clm.Task(config, str(tmp_path / "run"))


def test_an_init_from_of_the_run_width_is_not_refused_before_the_corpus(tmp_path, monkeypatch,
                                                                         small_tokenizer):
    """Another depth, head count or position table at the run's width still loads the tensors
    that match (the final LayerNorm at least): nothing is refused up front."""
    from tl_jax import config as config_lib
    from tl_jax.data import sources

    config = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={tmp_path / 'not_read.txt'}"])
    width = clm.gpt_config_from(config.model, 300).embed_dim
    weights = _gpt2_directory(tmp_path / "gpt2", small_tokenizer, n_embd=width, n_layer=5)
    config.init_from = str(weights)

    class Read(Exception):
        pass

    def read(*args, **kwargs):
        raise Read

    monkeypatch.setattr(sources, "load_documents", read)
    with pytest.raises(Read):
        clm.Task(config, str(tmp_path / "run"))


def test_a_gpt_classifier_init_from_is_resolved_before_the_files_are_read(tmp_path,
                                                                           monkeypatch,
                                                                           small_tokenizer):
    """lm_classify took init_from's shape only after reading its training and eval files: a
    max_seq_length beyond its positions was named after the whole file was read."""
    from tl_jax import config as config_lib
    from tl_jax.data import readers
    from tl_jax.tasks import lm_classify

    weights = _gpt2_directory(tmp_path / "gpt2", small_tokenizer, n_positions=16)
    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        f"init_from={weights}", f"data.train_file={tmp_path / 'not_read'}",
        f"data.eval_file={tmp_path / 'not_read'}", "data.max_seq_length=32"])
    monkeypatch.setattr(readers, "read_records", lambda *a, **k: pytest.fail("read the files"))
    with pytest.raises(ValueError, match=r"data.max_seq_length=32 exceeds the model's max_len 16"):
        lm_classify.Task(config, str(tmp_path / "run"))
