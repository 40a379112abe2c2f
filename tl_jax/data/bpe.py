"""Byte-level BPE tokenizer (GPT-2 style): train on a corpus, or load vocab.json + merges.txt.

A thin wrapper around Hugging Face `tokenizers` with GPT-2's pipeline: byte-level
pre-tokenisation (every byte maps to a printable symbol, so any text round-trips exactly and
there is no unknown token), BPE merges, a byte-level decoder, and one special token
`<|endoftext|>` that separates documents.

    tok = BPETokenizer.train(texts, vocab_size=4096)
    tok.save("workdir/tokenizer")           # vocab.json + merges.txt (GPT-2 layout)
    tok = BPETokenizer.load("workdir/tokenizer")
    ids = tok.encode("It is a truth universally acknowledged")
    tok.decode(ids)                          # the same string
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from tl_jax.data.tokenizer import batch_ids, read_json_text
from tl_jax.progress import on_terminal

EOS = "<|endoftext|>"


class BPEError(ValueError):
    """A BPE tokenizer file is missing or unusable."""


def _byte_level(model: models.BPE) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    # add_prefix_space=False and trim_offsets as in GPT-2: "Hello" and " Hello" differ.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class BPETokenizer:
    """GPT-2 style byte-level BPE with an end-of-text token."""

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer, source: str = "<in memory>"):
        hf_tokenizer.no_truncation()
        hf_tokenizer.no_padding()
        self._tok = hf_tokenizer
        self.source = source
        if hf_tokenizer.token_to_id(EOS) is None:
            raise BPEError(f"BPE tokenizer {source} has no {EOS} token")
        # Without a byte's symbol, text holding that byte loses it when encoded.
        missing = [s for s in sorted(pre_tokenizers.ByteLevel.alphabet())
                   if hf_tokenizer.token_to_id(s) is None]
        if missing:
            raise BPEError(f"BPE tokenizer {source} lacks {len(missing)} of the 256 byte-level "
                           f"symbols (e.g. {missing[0]!r}); it is not a byte-level BPE")
        self._vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        ids = sorted(hf_tokenizer.get_vocab(with_added_tokens=True).values())
        if ids != list(range(len(ids))):
            raise BPEError(f"BPE tokenizer {source} has non-contiguous ids")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192,
              min_frequency: int = 2, progress: bool = True) -> "BPETokenizer":
        """Learns merges from `texts` (an iterable of strings, e.g. paragraphs).

        `progress`: let the tokenizers trainer draw its progress bars on stderr, which it does
        when stderr is a terminal only (see `Tokenizer.train_wordpiece`): the tasks pass
        `train.progress` and whether they are process 0."""
        if vocab_size < 257:
            raise BPEError(f"vocab_size={vocab_size} must exceed the 256 byte symbols + {EOS}")
        tok = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            # Its own progress bars (on stderr) on a terminal only: a large corpus takes minutes.
            show_progress=progress and on_terminal(),
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, source="<trained>")

    @classmethod
    def from_files(cls, vocab_json: str, merges_txt: str) -> "BPETokenizer":
        """Loads GPT-2 style `vocab.json` + `merges.txt` (UTF-8, with or without a byte-order
        mark, which tokenizers' own reader refuses without saying so)."""
        for f in (vocab_json, merges_txt):
            if not os.path.exists(f):
                raise BPEError(f"BPE tokenizer file {f} does not exist")
        vocab, merges = _read_files(vocab_json, merges_txt)
        try:
            model = models.BPE(vocab, merges)
        except Exception as e:  # tokenizers raises a bare Exception on what it cannot use
            raise BPEError(f"could not read BPE files {vocab_json}, {merges_txt}: {e}") from e
        tok = _byte_level(model)
        if not merges and tok.get_vocab_size() > 257:
            # Without merges every word is split into single bytes: the vocabulary's longer
            # tokens (the ones a model was trained on) would never be produced.
            raise BPEError(f"{merges_txt} has no merges, but {vocab_json} has "
                           f"{tok.get_vocab_size()} tokens (more than the 256 bytes + {EOS})")
        if tok.token_to_id(EOS) is not None:
            tok.add_special_tokens([EOS])
        return cls(tok, source=os.path.dirname(vocab_json) or vocab_json)

    @classmethod
    def load(cls, path: str) -> "BPETokenizer":
        """Loads from a directory (vocab.json + merges.txt) or a `tokenizer.json` file."""
        path = pathlib.Path(path)
        if path.is_dir():
            if (path / "vocab.json").exists() and (path / "merges.txt").exists():
                return cls.from_files(str(path / "vocab.json"), str(path / "merges.txt"))
            if (path / "tokenizer.json").exists():
                path = path / "tokenizer.json"
            else:
                raise BPEError(f"{path} has neither vocab.json + merges.txt nor tokenizer.json")
        if not path.exists():
            raise BPEError(f"BPE tokenizer file {path} does not exist")
        try:
            hf_tokenizer = tokenizers.Tokenizer.from_str(read_json_text(str(path)))
        except Exception as e:  # a bare Exception on a file that is not a tokenizer.json
            raise BPEError(f"could not read {path} as a Hugging Face tokenizer.json (expected a "
                           f"directory with vocab.json + merges.txt, or a tokenizer.json): {e}"
                           ) from e
        return cls(hf_tokenizer, source=str(path))

    def save(self, directory: str) -> None:
        """Writes vocab.json + merges.txt (GPT-2 layout) and tokenizer.json.

        They are written in a temporary folder beside them and renamed into place, so an
        interrupted save (a preempted run saves its tokenizer each time it starts) never leaves
        a truncated vocab.json: tokenizers writes files in place, and vocab.json is written twice.
        """
        import shutil
        import tempfile

        os.makedirs(directory, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".saving-", dir=directory)
        try:
            self._tok.model.save(staging)
            self._tok.save(os.path.join(staging, "tokenizer.json"))
            # tokenizers writes the added EOS into tokenizer.json only; keep vocab.json complete
            # so GPT2TokenizerFast(vocab.json, merges.txt) sees the same ids.
            vocab_file = os.path.join(staging, "vocab.json")
            with open(vocab_file, encoding="utf-8") as f:
                vocab = json.load(f)
            vocab[EOS] = self.eos_id
            with open(vocab_file, "w", encoding="utf-8") as f:
                json.dump(vocab, f, ensure_ascii=False)
            for name in ("vocab.json", "merges.txt", "tokenizer.json"):
                os.replace(os.path.join(staging, name), os.path.join(directory, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self._tok.token_to_id(EOS)

    @property
    def hf_tokenizer(self) -> tokenizers.Tokenizer:
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return batch_ids(self._tok, texts)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def _special_shaped(token: str) -> bool:
    """Whether `token` looks like a special token a vocabulary may hold beside its merges
    (<|endoftext|>, <pad>, [PAD]): no merge makes it, and that is no sign of lost merges."""
    return len(token) > 2 and (token[0], token[-1]) in (("<", ">"), ("[", "]"))


def _read_files(vocab_json: str, merges_txt: str) -> tuple[dict, list[tuple[str, str]]]:
    """The vocabulary and the merges of GPT-2 style files, or a BPEError naming the file and
    line of what is wrong: tokenizers' own reader numbers merges.txt's lines from the one after
    `#version` (one too few), names no line for a merge of unknown tokens, and takes a
    byte-order mark for part of the first token or for malformed JSON."""
    from tl_jax.data.sources import non_utf8_message

    try:
        with open(vocab_json, encoding="utf-8-sig") as f:
            vocab = json.load(f)
    except UnicodeDecodeError as e:
        raise BPEError(non_utf8_message(vocab_json, e)) from None
    except json.JSONDecodeError as e:
        raise BPEError(f"{vocab_json}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})"
                       ) from None
    if not isinstance(vocab, dict):
        raise BPEError(f"{vocab_json}: expected a JSON object of token -> id, got "
                       f"{type(vocab).__name__}")
    bad = next((t for t, i in vocab.items()
                if not isinstance(i, int) or isinstance(i, bool) or i < 0), None)
    if bad is not None:
        raise BPEError(f"{vocab_json}: token {bad!r} has id {json.dumps(vocab[bad])}; ids are "
                       "integers >= 0")
    try:
        with open(merges_txt, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise BPEError(non_utf8_message(merges_txt, e)) from None
    merges = []
    made = set()  # the tokens the merges make
    for line_no, line in enumerate(lines, 1):
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise BPEError(f"{merges_txt}:{line_no}: expected a merge of two tokens separated "
                           f"by one space, got {line[:80]!r}")
        for token in (*parts, "".join(parts)):
            if token not in vocab:
                raise BPEError(f"{merges_txt}:{line_no}: merge {line[:80]!r} needs token "
                               f"{token!r}, which {vocab_json} does not have (files of two "
                               "different tokenizers?)")
        made.add("".join(parts))
        merges.append((parts[0], parts[1]))
    # Every token of a byte-level BPE vocabulary is a byte symbol, a special token or made by a
    # merge. Tokens no merge makes are never produced: with the end of merges.txt missing, every
    # word that needed its last merges was split into other (smaller) tokens than the ones a
    # model was trained on, silently.
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    unmade = [token for token in vocab if token not in made and token not in alphabet
              and not _special_shaped(token)]
    if unmade and made:  # (no merges at all: from_files says so)
        shown = ", ".join(repr(t) for t in sorted(unmade, key=vocab.get)[:3])
        raise BPEError(f"{merges_txt} makes none of {len(unmade)} tokens of {vocab_json} (e.g. "
                       f"{shown}); it has {len(merges)} merges, its last on line {len(lines)}. Is it "
                       "cut short (an interrupted download or copy), or of another tokenizer? "
                       "Text would be split into other tokens than the ones a model saw.")
    return vocab, merges
