"""BERT tokenizers of Hugging Face directories: load (same ids as transformers) and write.

    tok = load_tokenizer_for("hf_dir")        # tokenizers.Tokenizer, checked against config.json
    tok = load_tl_tokenizer("hf_dir")         # the tl_jax data.tokenizer.Tokenizer wrapper
    write_tokenizer(tok, "out_dir", vocab_size=30522)
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Optional

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def load_tokenizer(directory, vocab_size: Optional[int] = None):
    """The `tokenizers.Tokenizer` of a HF directory, matching HF's own tokenizer ids.

    Prefers `tokenizer.json`; else builds BERT WordPiece from `vocab.txt`. Either way the
    casing, accent and CJK settings that `tokenizer_config.json` states win, as in transformers
    (`data.tokenizer.normalizer_settings`). Padding/truncation stored in tokenizer.json are
    switched off: batching decides those. vocab_size: the model's, when given; the tokenizer
    must not have more entries (its ids past the embedding table would be out of range). It may
    have fewer: a model vocabulary padded beyond the tokenizer's (`model.vocab_size` above it)
    only has rows no id reaches, and transformers loads such a pair as it is.
    """
    import tokenizers
    from tokenizers.implementations import BertWordPieceTokenizer

    from tl_jax.data.tokenizer import apply_normalizer_settings, normalizer_settings

    directory = pathlib.Path(directory)
    settings = normalizer_settings(str(directory))
    if (directory / "tokenizer.json").exists():
        path = directory / "tokenizer.json"
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"Cannot read tokenizer file {path}: {e}") from None
        tok.no_padding()
        tok.no_truncation()
        apply_normalizer_settings(tok, settings)
    elif (directory / "vocab.txt").exists():
        path = directory / "vocab.txt"
        try:
            tok = BertWordPieceTokenizer(
                str(path), lowercase=settings.get("do_lower_case", True),
                strip_accents=settings.get("strip_accents"),
                handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
            )._tokenizer
        except Exception as e:  # an empty or truncated file: a TypeError, or a bare Exception
            raise ValueError(f"{path} is not a BERT vocabulary (one token per line, with "
                             f"[CLS], [SEP] and [UNK]): {e}") from None
    else:
        raise FileNotFoundError(f"{directory} has no tokenizer: expected tokenizer.json or "
                                "vocab.txt")
    if vocab_size is not None:
        check_vocab_fits(tok.get_vocab_size(), vocab_size, f"tokenizer {path}")
    return tok


def check_vocab_fits(tokenizer_size: int, vocab_size: int, what: str = "tokenizer") -> None:
    """A tokenizer of `tokenizer_size` entries for a model of `vocab_size` rows: larger is an
    error (ids past the table); smaller is a padded model vocabulary, whose extra rows no id
    reaches."""
    if tokenizer_size > vocab_size:
        raise ValueError(f"{what} has {tokenizer_size} entries but the model's vocab_size is "
                         f"{vocab_size}: ids {vocab_size}..{tokenizer_size - 1} would index "
                         "past its embedding table. It is not this model's tokenizer.")


def write_tokenizer(tokenizer, directory: pathlib.Path, vocab_size: int,
                    model_max_length: int = 512) -> None:
    """Writes tokenizer files for transformers into `directory`.

    tokenizer: a directory holding tokenizer files (validated, then copied), or a
    `tokenizers.Tokenizer` / tl_jax `Tokenizer` (saved as tokenizer.json plus an id-ordered
    vocab.txt). Its vocabulary must not be larger than `vocab_size` (`check_vocab_fits`: a
    model padded beyond it is fine). Either way `tokenizer_config.json`
    states the casing, accent and CJK settings the tokenizer has.
    """
    config = {"tokenizer_class": "BertTokenizer", "model_max_length": model_max_length}
    if isinstance(tokenizer, (str, pathlib.Path)):
        source = pathlib.Path(tokenizer)
        tok = load_tokenizer(source, vocab_size=vocab_size)  # validate before copying
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copyfile(source / name, directory / name)
        if (source / "tokenizer_config.json").exists():
            config = json.loads((source / "tokenizer_config.json").read_text())
    else:
        tok = getattr(tokenizer, "hf_tokenizer", tokenizer)  # unwrap a data.tokenizer.Tokenizer
        check_vocab_fits(tok.get_vocab_size(), vocab_size)
        tok.save(str(directory / "tokenizer.json"))
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])  # vocab.txt is id-ordered
        (directory / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))
    # transformers builds its normaliser from these (lowercasing when do_lower_case is absent),
    # not from tokenizer.json's: a cased tokenizer must say it is. A copied directory (a
    # workdir's tokenizer/ has no tokenizer_config.json) gets them too, as tl_jax loaded them.
    config.update(_normalizer_settings_of(tok))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _normalizer_settings_of(tok) -> dict:
    """do_lower_case / strip_accents / tokenize_chinese_chars of a `tokenizers.Tokenizer` whose
    normaliser is BERT's; {} for any other normaliser (transformers' defaults then apply)."""
    from tokenizers import normalizers

    normalizer = tok.normalizer
    if not isinstance(normalizer, normalizers.BertNormalizer):
        return {}
    return dict(do_lower_case=normalizer.lowercase, strip_accents=normalizer.strip_accents,
                tokenize_chinese_chars=normalizer.handle_chinese_chars)


def load_tokenizer_for(directory):
    """Loads the tokenizer of a checkpoint directory and checks it against its config.json."""
    config_file = pathlib.Path(directory) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{directory} is not a Hugging Face checkpoint: no config.json")
    vocab_size = json.loads(config_file.read_text()).get("vocab_size")
    if vocab_size is None:
        raise ValueError(f"{config_file} has no vocab_size")
    return load_tokenizer(directory, vocab_size=vocab_size)


def load_tl_tokenizer(directory):
    """The checkpoint's tokenizer as a `tl_jax.data.tokenizer.Tokenizer` (what tasks use),
    checked against the weights' vocab_size and honouring tokenizer_config.json's casing."""
    from tl_jax.data.tokenizer import Tokenizer

    return Tokenizer(load_tokenizer_for(directory), source=str(directory))
