"""`tl_jax extract`: per-token features of a text file from chosen encoder layers (feature-based transfer).

    tl_jax extract --init_from=DIR --input=sentences.txt --output=features.npz --layers=sum_last_four

`DIR` is a tl_jax workdir (pretraining or fine-tuning) or a Hugging Face BERT directory. Each
non-empty input line is one text; it is WordPiece-tokenised, wrapped in [CLS] ... [SEP], and
truncated to `max_seq_length` sub-tokens (a warning says how many lines were cut).

`--layers` picks what each token's feature is. Layer 0 is the embedding output, layer k the k-th
transformer layer's output, negative numbers count from the top (-1 = last):

    last | second_to_last        one layer                          -> (T, H)
    sum_last_four                sum of the top four layers         -> (T, H)
    concat_last_four             top four, concatenated (-1 first)  -> (T, 4H)
    all                          every layer, embeddings included   -> (N+1, T, H)
    "0,-1,-2" (any list)         the listed layers, stacked         -> (len, T, H)

The named specs count transformer layers only, as the BERT paper's feature table does:
`second_to_last` needs a model of 2 layers, the `_last_four` ones of 4 (a listed `-2` on a
1-layer model is its embedding output, by the numbering above).

Output format follows the suffix of `--output`:

* `.npz`: for the i-th text (zero-padded to 6 digits) `features_000000` (float32, shapes above,
  T = the text's sub-token count including [CLS] and [SEP]) and `tokens_000000` (the sub-token
  strings); plus `layers` (the spec), `texts`, and `line_index` (each text's 0-based line number
  in the input). Load with `np.load(path)`.
* `.jsonl`: one object per text `{"line_index", "text", "layers", "tokens": [{"token",
  "features"}]}`, as BERT's `extract_features.py` writes (features rounded to 6 decimals).

Blank lines are skipped (a message counts them); `line_index` is always the text's line number
in the input file, so features can be matched to input lines even when some were blank.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.data.sources import non_utf8_message
from tl_jax.progress import bar as progress_bar
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.models import bert
from tl_jax.tasks import downstream

NAMED = ("last", "second_to_last", "sum_last_four", "concat_last_four", "all")


def parse_layers(spec: str) -> str | list[int]:
    """A named `--layers` spec, or its list of layer numbers; an error for anything else. It
    needs no model, so a typo is reported before the input is read or the model loaded."""
    if spec in NAMED:
        return spec
    try:
        return [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"--layers={spec!r}: expected one of {NAMED} or a comma-separated list "
                         "of layer numbers (0 = embeddings, 1 .. N the transformer layers, "
                         "negative from the top)") from None


def resolve_layers(spec: str, num_layers: int) -> tuple[str, list[int]]:
    """`(how, layer indices)` for a `--layers` spec; how is stack | sum | concat | single."""
    top = num_layers
    parsed = parse_layers(spec)
    if spec == "last":
        return "single", [top]
    if spec == "second_to_last":
        # The second-to-last *transformer* layer, as in the BERT paper's Table 7, BERT's
        # extract_features.py and bert-as-service (all three index the encoder layers alone):
        # on a 1-layer model top - 1 is the embedding output, returned as if it were a layer.
        if num_layers < 2:
            raise ValueError(f"--layers=second_to_last needs 2 layers; the model has "
                             f"{num_layers} (its embedding output is --layers=0)")
        return "single", [top - 1]
    if spec in ("sum_last_four", "concat_last_four"):
        if num_layers < 4:
            raise ValueError(f"--layers={spec} needs 4 layers; the model has {num_layers}")
        return spec.split("_")[0], [top, top - 1, top - 2, top - 3]
    if spec == "all":
        return "stack", list(range(top + 1))
    indices = []
    for part, k in zip(spec.split(","), parsed):
        k = top + 1 + k if k < 0 else k
        if not 0 <= k <= top:
            raise ValueError(f"--layers={spec!r}: layer {part} is outside 0..{top} (-{top + 1}..-1)")
        indices.append(k)
    return "stack", indices


def combine(hidden: np.ndarray, how: str, indices: list[int]) -> np.ndarray:
    """Features of one sequence from its stacked hidden states `(N+1, T, H)`."""
    chosen = hidden[indices]  # (len, T, H)
    if how == "single":
        return chosen[0]
    if how == "sum":
        return chosen.sum(0)
    if how == "concat":
        return np.concatenate(list(chosen), axis=-1)  # (T, 4H)
    return chosen


def encoder_config(init_from: str):
    """`(tokenizer, BertConfig)` of a tl_jax workdir or HF directory: no weights are read."""
    downstream.check_encoder_source(init_from)
    if downstream.has_no_tokenizer(init_from):  # extract has no flag to name one with
        raise ValueError(f"--init_from={init_from} has no tokenizer (neither tokenizer.json nor "
                         "vocab.txt): copy the one its weights were trained with into it")
    tokenizer = Tokenizer.load(downstream.tokenizer_path(init_from))
    return tokenizer, downstream.architecture(init_from, tokenizer)


def load_params(init_from: str, tokenizer, config: bert.BertConfig):
    """The encoder's params from `init_from` (the slow part for a big model)."""
    model = bert.BertModel(config)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    # The loaders fill a tree holding the encoder under bert/, as every task model does.
    return downstream.Encoder(tokenizer, config, init_from).load_weights({"bert": params})["bert"]


def load_encoder(init_from: str):
    """`(tokenizer, BertConfig, params)` of a tl_jax workdir or HF directory, encoder only."""
    tokenizer, config = encoder_config(init_from)
    return tokenizer, config, load_params(init_from, tokenizer, config)


def check_sizes(max_seq_length: int, batch_size: int) -> None:
    if max_seq_length < 3:
        raise ValueError(f"--max_seq_length={max_seq_length}: it counts [CLS] and [SEP], so at "
                         "least 3 sub-tokens are needed to hold any text")
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size} must be at least 1")


def extract(init_from: str, texts: list[str], layers: str = "last", max_seq_length: int = 128,
            batch_size: int = 32) -> tuple[list[list[str]], list[np.ndarray]]:
    """Per-token features of `texts`; returns `(tokens per text, features per text)`."""
    check_sizes(max_seq_length, batch_size)
    parse_layers(layers)
    # The flags are checked against the model's shape before its weights are read: on a big
    # model a wrong --layers was reported only after they had all been loaded.
    tokenizer, config = encoder_config(init_from)
    how, indices = resolve_layers(layers, config.num_layers)
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(f"max_seq_length={max_seq_length} exceeds the model's "
                         f"max_position_embeddings={config.max_position_embeddings}")
    params = load_params(init_from, tokenizer, config)
    model = bert.BertModel(config)
    # Only the layers the spec reads leave the device (each once, however often it is listed):
    # all N+1 of them were copied to the host for every batch, 13x the bytes `last` needs on
    # BERT-base. They are combined on the host as before, so the features do not change.
    needed = sorted(set(indices))
    indices = [needed.index(k) for k in indices]  # positions in what the device returns

    @jax.jit  # the weights are an argument: closed over, they were embedded as constants
    def hidden_states(params, ids, mask):
        _, inter = model.apply({"params": params}, ids, jnp.zeros_like(ids), mask)
        names = {0: "embeddings", **{k: f"layer_{k}" for k in range(1, config.num_layers + 1)}}
        return jnp.stack([inter[names[k]] for k in needed], 1)  # (B, len(needed), T, H)

    encoded, cut = [], 0
    for text in texts:
        ids = tokenizer.encode(text)
        cut += len(ids) > max_seq_length - 2
        encoded.append([tokenizer.cls_id, *ids[: max_seq_length - 2], tokenizer.sep_id])
    if cut:
        print(f"[extract] {cut} of {len(texts)} lines were truncated to {max_seq_length} sub-tokens")
    all_tokens, all_features = [], []
    starts = range(0, len(encoded), batch_size)
    # A bar on stderr for files of more than one batch (plain lines off a terminal, as every
    # command's). Counted by hand under `with`, so that Ctrl-C or an error in a batch ends a
    # line-mode bar saying so (a bar iterated by the `for` is freed, and closed as merely
    # stopped, first).
    with progress_bar(total=len(starts), desc="extract", unit="batch",
                      disable=len(starts) < 2, leave=False) as bar:
        for start in starts:
            chunk = encoded[start:start + batch_size]
            ids = np.zeros((batch_size, max_seq_length), np.int32)  # fixed shape: one compile
            mask = np.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
            hidden = jax.device_get(hidden_states(params, ids, mask))  # (B, len(needed), T, H)
            for row, seq in enumerate(chunk):
                all_tokens.append([tokenizer.id_to_token(i) for i in seq])
                all_features.append(
                    combine(hidden[row, :, :len(seq)], how, indices).astype(np.float32))
            bar.update(1)
    return all_tokens, all_features


def run(init_from: str, input_path: str, output_path: str, layers: str = "last",
        max_seq_length: int = 128, batch_size: int = 32) -> str:
    """The `tl_jax extract` command: reads `input_path`, writes `output_path` (.npz or .jsonl)."""
    if not output_path.endswith((".npz", ".jsonl")):
        raise ValueError(f"--output={output_path!r} must end in .npz or .jsonl")
    # Not the input file, nor a file of init_from's run or model (its labels, config, weights).
    from tl_jax import predict
    predict.check_output(output_path, input_path, init_from, command="extract")
    if input_path.lower().endswith((".jsonl", ".json", ".csv", ".tsv")):
        # Each line would be encoded as it stands: braces and keys, or a CSV's header row and
        # its label column beside the text.
        what = "JSON" if input_path.lower().endswith((".jsonl", ".json")) else "CSV/TSV rows"
        raise ValueError(f"--input={input_path}: extract reads plain text, one text per line, "
                         f"not {what}; write the texts (e.g. each row's text field) to a .txt "
                         "file")
    check_sizes(max_seq_length, batch_size)
    parse_layers(layers)  # a typo in the flag before any file is read
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"--input={input_path} does not exist")
    # Before the input is read (and its blank lines reported): a wrong --init_from is the
    # cheaper mistake to find, and the one to report alone.
    downstream.check_encoder_source(init_from, "--init_from")
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not whitespace to strip,
        # and was kept at the start of the first text in the output's `texts`.
        with open(input_path, encoding="utf-8-sig") as f:
            lines = [line.strip() for line in f]
        numbered = [(n, line) for n, line in enumerate(lines) if line]
    except UnicodeDecodeError as e:
        raise ValueError(non_utf8_message(input_path, e)) from None
    if not numbered:
        raise ValueError(f"{input_path}: no non-empty lines to extract features for")
    line_index = [n for n, _ in numbered]
    texts = [text for _, text in numbered]
    if len(lines) > len(texts):  # trailing blank lines count too
        blank = len(lines) - len(texts)
        print(f"[extract] skipped {blank} blank line(s); line_index in the output is each "
              "text's 0-based line number in the input")
    tokens, feats = extract(init_from, texts, layers, max_seq_length, batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    if output_path.endswith(".npz"):
        arrays = {"layers": np.array(layers), "texts": np.array(texts),
                  "line_index": np.array(line_index, np.int64)}
        for i, (t, x) in enumerate(zip(tokens, feats)):
            arrays[f"features_{i:06d}"], arrays[f"tokens_{i:06d}"] = x, np.array(t)
        np.savez(output_path, **arrays)
    else:
        with open(output_path, "w", encoding="utf-8") as f:
            for n, text, t, x in zip(line_index, texts, tokens, feats):
                per_token = np.moveaxis(x, -2, 0) if x.ndim == 3 else x  # (T, ...) first
                f.write(json.dumps({"line_index": n, "text": text, "layers": layers, "tokens": [
                    {"token": tok, "features": np.round(v, 6).tolist()}
                    for tok, v in zip(t, per_token)]}) + "\n")
    print(f"[extract] {len(texts)} lines, layers={layers}, feature shape of line 0 "
          f"{feats[0].shape} -> {output_path}")
    return output_path
