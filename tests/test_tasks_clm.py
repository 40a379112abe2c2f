"""The `clm` task's warm start: the tokenizer and weights taken from `init_from`."""
import json

import ml_collections
import pytest

from tl_jax.data.bpe import BPETokenizer
from tl_jax.tasks import clm


@pytest.fixture(scope="module")
def texts(data_dir):
    with open(data_dir / "austen.jsonl") as f:
        return [json.loads(line)["text"] for _, line in zip(range(400), f)]


def data_cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(tokenizer="", tokenizer_vocab_size=300), **kw))


@pytest.mark.parametrize("kind", ["workdir", "hf"])
def test_warm_start_keeps_the_init_from_tokenizer(tmp_path, texts, kind):
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
    # data.tokenizer still wins.
    other = tmp_path / "other"
    fresh.save(str(other))
    tok = clm.load_tokenizer(data_cfg(tokenizer=str(other)), str(tmp_path / "run"), new_docs,
                             str(init_from))
    assert tok.hf_tokenizer.get_vocab() == fresh.hf_tokenizer.get_vocab()
