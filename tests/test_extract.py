"""`tl_jax extract`: layer selection, output files, and parity of the features with transformers."""
import json

import jax
import numpy as np
import pytest

from tl_jax import extract

TEXTS = ["Mr. Darcy walked to Pemberley.", "It is a truth universally acknowledged."]


@pytest.fixture(scope="module")
def minilm(data_dir):
    return str(data_dir / "models" / "all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def all_layers(minilm):
    return extract.extract(minilm, TEXTS, layers="all", max_seq_length=16, batch_size=4)


def test_the_weights_are_arguments_of_the_compiled_program_not_constants(minilm):
    # Closed over by the jitted function, MiniLM's 90 MB of weights were embedded in the
    # program as constants, compiled into every extraction.
    import warnings

    import jax

    previous = jax.config.jax_captured_constants_warn_bytes
    jax.config.update("jax_captured_constants_warn_bytes", 1024 * 1024)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="A large amount of constants")
            tokens, feats = extract.extract(minilm, TEXTS[:1], max_seq_length=16, batch_size=2)
    finally:
        jax.config.update("jax_captured_constants_warn_bytes", previous)
    assert feats[0].shape == (len(tokens[0]), 384)


def test_resolve_layers():
    assert extract.resolve_layers("last", 6) == ("single", [6])
    assert extract.resolve_layers("second_to_last", 6) == ("single", [5])
    assert extract.resolve_layers("sum_last_four", 6) == ("sum", [6, 5, 4, 3])
    assert extract.resolve_layers("concat_last_four", 6) == ("concat", [6, 5, 4, 3])
    assert extract.resolve_layers("all", 2) == ("stack", [0, 1, 2])
    assert extract.resolve_layers("0,-1,3", 6) == ("stack", [0, 6, 3])
    with pytest.raises(ValueError, match="layer 7 is outside 0..6"):
        extract.resolve_layers("7", 6)
    with pytest.raises(ValueError, match="expected one of"):
        extract.resolve_layers("top", 6)
    with pytest.raises(ValueError, match="needs 4 layers"):
        extract.resolve_layers("sum_last_four", 2)


def test_second_to_last_of_a_one_layer_model_is_not_its_embeddings():
    """On a 1-layer model `second_to_last` returned the embedding output as a layer's. The BERT
    paper's Second-to-Last Hidden, BERT's extract_features.py and bert-as-service count the
    transformer layers alone; the embeddings stay available as layer 0 (and as -2 listed)."""
    assert extract.resolve_layers("second_to_last", 2) == ("single", [1])
    with pytest.raises(ValueError, match=r"--layers=second_to_last needs 2 layers; the model "
                                         r"has 1 \(its embedding output is --layers=0\)"):
        extract.resolve_layers("second_to_last", 1)
    assert extract.resolve_layers("0", 1) == extract.resolve_layers("-2", 1) == ("stack", [0])


@pytest.mark.parametrize("layers,message", [
    ("7", r"layer 7 is outside 0..6"), ("top", "expected one of"),
    ("sum_last_four,-1", "expected one of"), ("0,,1", "expected one of")])
def test_a_bad_layers_value_is_refused_before_the_weights_are_read(minilm, tmp_path,
                                                                   monkeypatch, layers, message):
    """--layers was checked only once the whole model had been initialised and loaded: slow to
    learn of a typo on a big model. A spec that no model takes is refused before the input is
    read; one outside this model's layers once its config is read, before its weights are."""
    from tl_jax.tasks import downstream

    def no_weights(*args):
        raise AssertionError("the weights were read before --layers was checked")

    monkeypatch.setattr(downstream.Encoder, "load_weights", no_weights)
    with pytest.raises(ValueError, match=message):
        extract.extract(minilm, TEXTS, layers=layers)
    text_file = tmp_path / "in.txt"
    text_file.write_text(TEXTS[0] + "\n")
    with pytest.raises(ValueError, match=message):
        extract.run(minilm, str(text_file), str(tmp_path / "f.npz"), layers=layers)
    assert not (tmp_path / "f.npz").exists()
    if message == "expected one of":  # no model needed: the input is not even looked for
        with pytest.raises(ValueError, match=message):
            extract.run(minilm, str(tmp_path / "missing.txt"), str(tmp_path / "f.npz"),
                        layers=layers)


def test_all_layers_match_transformers_hidden_states(minilm, all_layers):
    import torch
    import transformers

    tokens, features = all_layers
    assert tokens[0][0] == "[CLS]" and tokens[0][-1] == "[SEP]" and "darcy" in tokens[0]
    reference = transformers.BertModel.from_pretrained(minilm).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm)
    for text, tok, feat in zip(TEXTS, tokens, features):
        ids = hf_tok(text, return_tensors="pt")["input_ids"]
        assert hf_tok.convert_ids_to_tokens(ids[0]) == tok
        with torch.no_grad():
            hidden = reference(input_ids=ids, output_hidden_states=True).hidden_states
        assert feat.shape == (7, len(tok), 384)
        np.testing.assert_allclose(feat, torch.stack(hidden)[:, 0].numpy(), atol=3e-4, rtol=1e-3)


def test_a_missing_model_is_reported_before_the_input_is_read(tmp_path, capsys):
    """The input was read, and its blank lines reported, before --init_from was looked at."""
    text_file = tmp_path / "in.txt"
    text_file.write_text("one\n\ntwo\n")
    with pytest.raises(ValueError) as e:
        extract.run(str(tmp_path / "nope"), str(text_file), str(tmp_path / "f.npz"))
    assert str(e.value) == f"--init_from={str(tmp_path / 'nope')!r} does not exist."
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "f.npz").exists()


def test_files_hold_the_chosen_combinations(minilm, all_layers, tmp_path, capsys):
    tokens, stacked = all_layers
    text_file = tmp_path / "in.txt"
    text_file.write_text(TEXTS[0] + "\n\n" + TEXTS[1] + "\n \n\n")
    npz = extract.run(minilm, str(text_file), str(tmp_path / "f.npz"), layers="sum_last_four",
                      max_seq_length=16, batch_size=4)
    assert "skipped 3 blank line(s)" in capsys.readouterr().out  # the trailing two as well
    data = np.load(npz)
    assert str(data["layers"]) == "sum_last_four" and list(data["texts"]) == TEXTS
    # The blank second line is skipped; line_index keeps the input's line numbers.
    assert list(data["line_index"]) == [0, 2]
    for i in range(2):
        assert list(data[f"tokens_{i:06d}"]) == tokens[i]
        np.testing.assert_allclose(data[f"features_{i:06d}"], stacked[i][3:].sum(0), atol=1e-4)
    jsonl = extract.run(minilm, str(text_file), str(tmp_path / "f.jsonl"), layers="0,-1",
                        max_seq_length=16, batch_size=4)
    rows = [json.loads(line) for line in open(jsonl)]
    assert [r["text"] for r in rows] == TEXTS and [r["line_index"] for r in rows] == [0, 2]
    first = rows[0]["tokens"]
    assert [t["token"] for t in first] == tokens[0]
    # Each token carries the listed layers in order: (2, H).
    got = np.array([t["features"] for t in first])  # (T, 2, H)
    np.testing.assert_allclose(got, np.moveaxis(stacked[0][[0, 6]], 0, 1), atol=1e-5)
    concat, _ = extract.combine(stacked[1], "concat", [6, 5, 4, 3]), None
    assert concat.shape == (len(tokens[1]), 4 * 384)
    np.testing.assert_array_equal(concat[:, 384:768], stacked[1][5])


def test_a_byte_order_mark_and_crlf_are_not_part_of_the_texts(minilm, tmp_path):
    text_file = tmp_path / "in.txt"
    text_file.write_bytes(("\ufeff" + TEXTS[0] + "\r\n\r\n" + TEXTS[1] + "\r\n").encode())
    npz = extract.run(minilm, str(text_file), str(tmp_path / "f.npz"), layers="last",
                      max_seq_length=16, batch_size=4)
    data = np.load(npz)
    assert list(data["texts"]) == TEXTS and list(data["line_index"]) == [0, 2]
    bom_only = tmp_path / "bom.txt"  # a first line that is nothing but the mark is blank
    bom_only.write_bytes(("\ufeff\n" + TEXTS[1] + "\n").encode())
    data = np.load(extract.run(minilm, str(bom_only), str(tmp_path / "g.npz"), layers="last",
                               max_seq_length=16, batch_size=4))
    assert list(data["texts"]) == TEXTS[1:] and list(data["line_index"]) == [1]


@pytest.mark.parametrize("layers,copied", [("last", [6]), ("second_to_last", [5]),
                                           ("sum_last_four", [3, 4, 5, 6]),
                                           ("concat_last_four", [3, 4, 5, 6]),
                                           ("2,-1,2", [2, 6])])
def test_only_the_chosen_layers_leave_the_device(minilm, all_layers, monkeypatch, layers, copied):
    """Every layer's hidden states were copied to the host for each batch, whatever --layers
    asked for (7 of MiniLM's layers for `last`); the features are the same as before."""
    import jax

    shapes, real_jit = [], jax.jit

    def spying_jit(fn):  # records the shape of what the compiled program hands the host
        compiled = real_jit(fn)

        def call(*args):
            out = compiled(*args)
            shapes.append(out.shape)
            return out
        return call

    monkeypatch.setattr(jax, "jit", spying_jit)
    tokens, features = extract.extract(minilm, TEXTS, layers=layers, max_seq_length=16,
                                       batch_size=4)
    assert shapes == [(4, len(copied), 16, 384)]  # one batch: the chosen layers, each once
    how, indices = extract.resolve_layers(layers, 6)
    assert tokens == all_layers[0]
    for feat, stacked in zip(features, all_layers[1]):  # as combined from every layer before
        expected = extract.combine(stacked, how, indices)
        assert feat.dtype == np.float32 and feat.shape == expected.shape
        np.testing.assert_array_equal(feat, expected)


def test_bad_output_and_empty_input(minilm, tmp_path):
    with pytest.raises(ValueError, match="must end in .npz or .jsonl"):
        extract.run(minilm, "in.txt", str(tmp_path / "out.csv"))
    for flags, message in (({"max_seq_length": 1}, "at least 3 sub-tokens"),
                           ({"batch_size": 0}, "--batch_size=0 must be at least 1")):
        # Checked before reading anything: the input does not even exist.
        with pytest.raises(ValueError, match=message):
            extract.run(minilm, "in.txt", str(tmp_path / "out.npz"), **flags)
    lines = tmp_path / "lines.jsonl"
    lines.write_text("a text\n")
    with pytest.raises(ValueError, match="is the input file"):  # as predict refuses it
        extract.run(minilm, str(lines), str(lines))
    assert lines.read_text() == "a text\n"
    # Nor a file of init_from's folder (a fine-tuned run's labels, its metrics).
    for name in ("labels.jsonl", "metrics.jsonl"):
        with pytest.raises(ValueError, match=rf"--output=.*{name} would replace .*{name}, which "
                                             r"the model in .* holds \(extract reads it\)"):
            extract.run(minilm, str(lines), f"{minilm}/{name}")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a text"}\n')
    with pytest.raises(ValueError, match="corpus.jsonl: extract reads plain text"):
        extract.run(minilm, str(corpus), str(tmp_path / "out.npz"))
    # A classification CSV/TSV: its header row and label column were encoded as text.
    for name in ("reviews.csv", "pairs.TSV"):
        (tmp_path / name).write_text("text,label\ngreat food,1\n")
        with pytest.raises(ValueError, match=rf"{name}: extract reads plain text, one text per "
                                             r"line, not CSV/TSV rows"):
            extract.run(minilm, str(tmp_path / name), str(tmp_path / "out.npz"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="no non-empty lines"):
        extract.run(minilm, str(empty), str(tmp_path / "out.npz"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin.txt:2: not UTF-8 text"):
        extract.run(minilm, str(latin), str(tmp_path / "out.npz"))


@pytest.mark.parametrize("kind,message", [
    ("gpt", r"task='clm' \(a GPT language model\), not a BERT-style encoder"),
    ("bilm", r"task='bilm' \(an ELMo-style biLM\), not a BERT-style encoder.*\(A biLM's ELMo "
             r"features are used from Python: load_elmo, ElmoEncoder"),
    ("static", r"holds static word vectors"),
    ("empty", r"is an empty directory, not a model"),
    ("file", r"is neither a tl_jax workdir"),
    ("hf_gpt2", r"model_type='gpt2' is not a BERT-style encoder"),
])
def test_a_source_without_a_bert_encoder_is_named(tmp_path, kind, message):
    # These used to fail reading their tokenizer: "... lacks the special token(s) ...; BERT
    # pretraining needs ..." or "holds neither tokenizer.json nor vocab.txt".
    import ml_collections

    from tl_jax.tasks import downstream

    source = tmp_path / kind
    if kind == "file":
        source.write_text("Mr. Darcy walked.\n")
    else:
        source.mkdir()
    if kind in ("gpt", "bilm"):
        (source / "checkpoints").mkdir()
        (source / "config.json").write_text(json.dumps(
            {"task": "clm" if kind == "gpt" else "bilm", "model": {}}))
        (source / "tokenizer").mkdir()
        (source / "tokenizer" / "vocab.json").write_text("{}")
    elif kind == "hf_gpt2":
        (source / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (source / "tokenizer.json").write_text("{}")
    elif kind == "static":
        (source / "static_config.json").write_text("{}")
        (source / "vocab.txt").write_text("the\nof\n")
    with pytest.raises(ValueError, match=message):
        extract.extract(str(source), TEXTS)
    config = ml_collections.ConfigDict(dict(
        init_from=str(source), model=dict(dropout_rate=0.1, attention_dropout_rate=0.1,
                                          dtype="float32", num_layers=0),
        data=dict(tokenizer="")))
    with pytest.raises(ValueError, match=message):
        downstream.Encoder.from_config(config, TEXTS)


def test_a_lora_workdir_is_read_with_the_lora_alpha_it_trained_with(data_dir, tmp_path):
    """A workdir's param shapes give LoRA's rank but not its alpha: read from the shapes alone,
    a configs/transfer_lora.py run (lora_alpha=16) was extracted with lora_alpha=1, its trained
    update scaled down 16 times: features of a model that was never trained."""
    import jax

    from tl_jax import checkpoint, config as config_lib, train
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.models import bert
    from tl_jax.tasks import downstream

    workdir = str(tmp_path / "lora")
    config = config_lib.load_config("configs/transfer_lora.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        "data.batch_size=16", "train.steps=2", "train.progress=False",
        "optimizer.learning_rate=0.05", "optimizer.warmup_steps=0"])
    train.train_and_evaluate(config, workdir)
    model_config = downstream.architecture(workdir, Tokenizer.load(f"{workdir}/tokenizer"))
    assert (model_config.lora_rank, model_config.lora_alpha) == (8, 16.0)

    tokens, features = extract.extract(workdir, TEXTS[:1], layers="last", max_seq_length=16,
                                       batch_size=1)
    # The encoder as the run built it (its checkpoint's resolved_model) on the trained weights.
    flat, step = checkpoint.load_params_from_workdir(workdir)
    resolved = bert.BertConfig(**checkpoint.config_from_workdir(workdir, step)["resolved_model"])
    lora_b = [v for p, v in flat.items() if p.endswith("lora_b")]
    assert lora_b and max(float(np.abs(v).max()) for v in lora_b) > 0  # LoRA trained
    params = {}
    for path, value in flat.items():
        if path.startswith("bert/"):
            node = params
            *parents, leaf = path.split("/")[1:]
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
    ids = np.array([[Tokenizer.load(f"{workdir}/tokenizer").token_to_id(t) for t in tokens[0]]])
    _, inter = bert.BertModel(resolved).apply({"params": params}, ids, np.zeros_like(ids),
                                              np.ones_like(ids))
    want = np.asarray(jax.device_get(inter[f"layer_{resolved.num_layers}"]))[0]
    np.testing.assert_allclose(features[0], want, atol=1e-5)


def test_a_bad_layers_range_on_tl_weights_is_reported_before_any_weight_is_read(
        minilm, all_layers, tmp_path, monkeypatch):
    """`--init_from=<tl_jax weights>` (`tl_jax convert` output) read every tensor to build the
    model's config, so a --layers outside the model was reported only after a full read. The
    config comes from config.json and the header of params.safetensors now."""
    from tl_jax.interop import convert, safetensors_io

    weights = tmp_path / "tl"
    convert.convert(minilm, weights, "hf_to_tl")
    tokens, feats = extract.extract(str(weights), TEXTS, layers="last", max_seq_length=16,
                                    batch_size=4)
    assert tokens == all_layers[0]  # the same model as the HF directory it came from
    for got, want in zip(feats, all_layers[1]):
        np.testing.assert_allclose(got, want[-1], atol=1e-5)

    def no_read(path):
        raise AssertionError(f"{path}: weights read before --layers was checked")

    monkeypatch.setattr(safetensors_io, "read_safetensors", no_read)
    with pytest.raises(ValueError, match=r"--layers='0,9': layer 9 is outside 0..6"):
        extract.extract(str(weights), TEXTS, layers="0,9")
    # Weights without their tokenizer: named as such, with what to do (it was the tokenizer
    # loader's message, which asks to name a tokenizer extract has no flag for).
    for name in ("vocab.txt", "tokenizer.json"):
        (weights / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=rf"^--init_from={weights} has no tokenizer \(neither "
                                         r"tokenizer.json nor vocab.txt\): copy the one its "
                                         r"weights were trained with into it$"):
        extract.extract(str(weights), TEXTS, layers="last")


def test_an_adapters_workdir_is_extracted_with_its_trained_adapters(data_dir, tmp_path):
    """A configs/transfer_adapters.py workdir: the model is built from its checkpoint's shapes,
    adapters included, and they are taken (they cannot be folded into the kernels as LoRA is):
    the features are the adapter model's, not those of the encoder beneath them."""
    import jax

    from tl_jax import checkpoint, config as config_lib, train
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import safetensors_io
    from tl_jax.models import bert

    workdir = str(tmp_path / "adapters")
    train.train_and_evaluate(config_lib.load_config("configs/transfer_adapters.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        "data.batch_size=16", "train.steps=2", "train.progress=False",
        "optimizer.learning_rate=0.05", "optimizer.warmup_steps=0"]), workdir)
    tokens, features = extract.extract(workdir, TEXTS[:1], layers="last", max_seq_length=16,
                                       batch_size=1)
    flat, step = checkpoint.load_params_from_workdir(workdir)
    resolved = bert.BertConfig(**checkpoint.config_from_workdir(workdir, step)["resolved_model"])
    assert resolved.adapter_size == 8
    flat = {p[len("bert/"):]: v for p, v in flat.items() if p.startswith("bert/")}
    ids = np.array([[Tokenizer.load(f"{workdir}/tokenizer").token_to_id(t) for t in tokens[0]]])

    def last(config, flat):
        _, inter = bert.BertModel(config).apply(
            {"params": safetensors_io.unflatten_params(flat)}, ids, np.zeros_like(ids),
            np.ones_like(ids))
        return np.asarray(jax.device_get(inter[f"layer_{config.num_layers}"]))[0]

    np.testing.assert_allclose(features[0], last(resolved, flat), atol=1e-5)
    beneath = {p: v for p, v in flat.items() if "_adapter/" not in p}
    assert np.abs(features[0] - last(resolved.replace(adapter_size=0), beneath)).max() > 1e-3


def test_an_interrupted_extract_ends_its_line_mode_bar_saying_what_stopped_it(
        minilm, monkeypatch, capsys):
    """The bar was iterated by the batch loop: Ctrl-C in a batch freed it first, and its last
    line (stderr off a terminal: nohup, a pod's log) said only 'stopped after'."""
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "3600")  # only the closing line
    real, calls = jax.device_get, []

    def interrupted_at_the_third_batch(x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(jax, "device_get", interrupted_at_the_third_batch)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        extract.extract(minilm, [f"line number {i}" for i in range(8)], max_seq_length=16,
                        batch_size=2)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[extract]")]
    assert len(lines) == 1 and lines[0].startswith("[extract] batch 2/4 "), lines
    assert " | stopped by KeyboardInterrupt after " in lines[0], lines
