"""Word vectors in memory, and the three standard files they travel in.

* word2vec text:   a header line `V D`, then `word v1 ... vD` per line;
* word2vec binary: the same header line, then per word `word` + b" " + D little-endian float32
  (+ an optional b"\\n", which the C tool writes and gensim accepts);
* GloVe text:      no header, `word v1 ... vD` per line.

Loaders check every line (field count, numbers, header counts) and name the file and line of
the first problem, since a truncated download is the usual way these files go wrong.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from tl_jax import paths


@dataclasses.dataclass
class WordVectors:
    """Words and their vectors (row i belongs to words[i])."""

    words: list[str]
    vectors: np.ndarray  # (V, D) float32

    def __post_init__(self):
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError(f"vectors of shape {self.vectors.shape} do not match "
                             f"{len(self.words)} words")
        self.index = {}
        for i, w in enumerate(self.words):
            # Only what the files cannot carry: a word ends at " " (and a line at "\n"). Other
            # Unicode whitespace ("\xa0", "\u2009") are real GloVe tokens and round-trip.
            if not w or " " in w or "\n" in w:
                raise ValueError(f"word {i} ({w!r}) is empty or contains a space or newline")
            # First occurrence wins, as in gensim, so lookups are well defined on odd files.
            self.index.setdefault(w, i)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]

    def unit_vectors(self) -> np.ndarray:
        """Rows scaled to unit length (zero rows stay zero)."""
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.maximum(norms, 1e-12)

    def most_similar(self, word: str, topn: int = 10) -> list[tuple[str, float]]:
        """The `topn` nearest words by cosine similarity, excluding the word itself."""
        if word not in self.index:
            # tl_jax's static vectors are lowercase: "London" is not a word of theirs, "london" is.
            raise KeyError(f"{word!r} is not in the vocabulary"
                           + (f"; {word.lower()!r} is (the vectors' words are lowercase)"
                              if word.lower() in self.index else ""))
        if topn < 0:
            raise ValueError(f"topn={topn}: must be >= 0")
        unit = self.unit_vectors()
        sims = unit @ unit[self.index[word]]
        sims[self.index[word]] = -np.inf
        best = np.argsort(-sims)[:min(topn, len(self) - 1)]  # the word itself comes last
        return [(self.words[i], float(sims[i])) for i in best]


def _parse_row(parts: list[str], dim: int | None, path, lineno: int) -> np.ndarray:
    if dim is not None and len(parts) != dim + 1:
        raise ValueError(f"{path}:{lineno}: expected a word and {dim} numbers, "
                         f"got {len(parts)} fields")
    if len(parts) < 2:
        raise ValueError(f"{path}:{lineno}: expected a word followed by numbers, got "
                         f"{' '.join(parts)!r}")
    try:
        row = np.array(parts[1:], dtype=np.float32)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: non-numeric vector component in line for "
                         f"word {parts[0]!r}") from None
    if not np.isfinite(row).all():  # "nan"/"inf" parse, then poison every similarity
        raise ValueError(f"{path}:{lineno}: non-finite vector component (nan or inf) in line "
                         f"for word {parts[0]!r}")
    return row


# Downloads come compressed (GoogleNews-vectors-negative300.bin.gz, glove.6B.zip); read as
# vectors they would fail as "not UTF-8" or a bad header, which hides the cause.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip"}


def _check_not_compressed(path, head: bytes) -> None:
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ValueError(f"{path} is {kind}-compressed; decompress it first "
                             f"({'gunzip' if kind == 'gzip' else 'unzip'})")


def _read_text(path, header: bool) -> WordVectors:
    words, rows = [], []
    expected_rows, dim = None, None
    # Bytes, decoded line by line: a stray non-UTF-8 byte is then reported with its line, and
    # only b"\n" ends a line (text mode would also split a token holding a lone "\r").
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                _check_not_compressed(path, raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 (byte {e.start} of the line: "
                                 f"{raw[e.start:e.start + 1]!r})") from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a UTF-8 byte order mark, not part of the first word
            line = line.rstrip("\n")
            line = line[:-1] if line.endswith("\r") else line  # Windows line ends
            # Split on spaces only: GloVe vocabularies hold odd Unicode "whitespace" tokens.
            parts = line.rstrip(" ").split(" ")
            if header and lineno == 1:
                if len(parts) != 2 or not all(p.isdigit() for p in parts):
                    raise ValueError(f"{path}:1: expected a header 'vocab_size dim', "
                                     f"got {line.strip()!r}")
                expected_rows, dim = int(parts[0]), int(parts[1])
                continue
            if parts == [""]:
                raise ValueError(f"{path}:{lineno}: empty line")
            try:
                row = _parse_row(parts, dim, path, lineno)
            except ValueError as e:
                if not header and lineno == 2 and len(words) == 1 and words[0].isdigit() \
                        and rows[0].size == 1 and float(rows[0][0]).is_integer():
                    # Read as GloVe text, a word2vec header `V D` is a word and a 1-d vector,
                    # and the error then spoke of line 2's field count only.
                    raise ValueError(f"{e}; line 1 ({words[0]} {int(rows[0][0])}) looks like "
                                     "word2vec's 'vocab_size dim' header: read the file as "
                                     "word2vec_text") from None
                raise
            dim = len(row)
            words.append(parts[0])
            rows.append(row)
    if not words:
        raise ValueError(f"{path}: no vectors in file")
    if expected_rows is not None and expected_rows != len(words):
        raise ValueError(f"{path}: header says {expected_rows} vectors, file has {len(words)}")
    return WordVectors(words, np.stack(rows))


def load_glove_text(path) -> WordVectors:
    """Reads GloVe text format (no header)."""
    return _read_text(path, header=False)


def load_word2vec_text(path) -> WordVectors:
    """Reads word2vec text format (header `V D`)."""
    return _read_text(path, header=True)


def load_word2vec_binary(path) -> WordVectors:
    """Reads word2vec binary format (header `V D\\n`, then `word ` + D float32 per entry)."""
    with open(path, "rb") as f:
        data = f.read()
    _check_not_compressed(path, data)
    end = data.find(b"\n")
    header = data[:end].split() if end >= 0 else []
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise ValueError(f"{path}:1: expected a header 'vocab_size dim'")
    n, dim = int(header[0]), int(header[1])
    if n == 0:
        raise ValueError(f"{path}: no vectors in file")  # as for the text formats
    if dim == 0:
        raise ValueError(f"{path}:1: dimension 0 in the header")
    pos, nbytes = end + 1, 4 * dim
    words, vectors = [], np.empty((n, dim), dtype=np.float32)
    for i in range(n):
        # Entries are separated by an optional newline, which is not part of the word.
        while pos < len(data) and data[pos:pos + 1] == b"\n":
            pos += 1
        space = data.find(b" ", pos)
        if space < 0 or space + 1 + nbytes > len(data):
            raise ValueError(f"{path}: entry {i + 1} of {n} (byte {pos}) is truncated")
        try:
            words.append(data[pos:space].decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: entry {i + 1} (byte {pos}) has a word that is "
                             f"not UTF-8") from None
        vectors[i] = np.frombuffer(data, dtype="<f4", count=dim, offset=space + 1)
        if not np.isfinite(vectors[i]).all():
            raise ValueError(f"{path}: entry {i + 1} (byte {pos}, word {words[-1]!r}) has a "
                             f"non-finite vector component (nan or inf)")
        pos = space + 1 + nbytes
    if data[pos:].strip(b"\n"):
        raise ValueError(f"{path}: {len(data) - pos} unexpected bytes after {n} entries")
    return WordVectors(words, vectors)


def _write_text(vectors: WordVectors, path, header: bool) -> None:
    with paths.atomic_open(path, "w", encoding="utf-8") as f:
        if header:
            f.write(f"{len(vectors)} {vectors.dim}\n")
        for word, row in zip(vectors.words, vectors.vectors):
            # repr-precision floats make the text round trip exact.
            f.write(word + " " + " ".join(repr(float(x)) for x in row) + "\n")


def save_glove_text(vectors: WordVectors, path) -> None:
    """Writes GloVe text format."""
    _write_text(vectors, path, header=False)


def save_word2vec_text(vectors: WordVectors, path) -> None:
    """Writes word2vec text format."""
    _write_text(vectors, path, header=True)


def save_word2vec_binary(vectors: WordVectors, path) -> None:
    """Writes word2vec binary format (with the C tool's newline after each vector)."""
    with paths.atomic_open(path, "wb") as f:
        f.write(f"{len(vectors)} {vectors.dim}\n".encode())
        for word, row in zip(vectors.words, vectors.vectors):
            f.write(word.encode("utf-8") + b" " + row.astype("<f4").tobytes() + b"\n")


FORMATS = {
    "word2vec_text": (load_word2vec_text, save_word2vec_text),
    "word2vec_binary": (load_word2vec_binary, save_word2vec_binary),
    "glove_text": (load_glove_text, save_glove_text),
}


def _is_text(data: bytes) -> bool:
    """Whether `data` is UTF-8 without NULs; a character cut at its end counts as text."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason != "unexpected end of data":
            return False
    return b"\x00" not in data


def guess_format(path) -> str:
    """The format of a file from its extension and first bytes.

    A `.bin` name is word2vec binary. Otherwise a `V D` header line means word2vec text, unless
    the first entry after it is not text: then it is word2vec binary under another name
    (gensim's `save_word2vec_format(binary=True)` writes whatever name it is given), which read
    as text failed as "not UTF-8" on line 2. No header means GloVe text.
    """
    path = os.fspath(path)
    if path.endswith(".bin"):
        return "word2vec_binary"
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8-sig", errors="replace").split()
        if not (len(first) == 2 and all(p.isdigit() for p in first)):
            return "glove_text"
        dim = int(first[1])
        head = f.read(4 * dim + 1024)  # at least the first entry in binary
    line = head.split(b"\n", 1)[0]
    if _is_text(line) and len(line.split()) == dim + 1:
        return "word2vec_text"
    # Binary: `word `, then D raw float32s, whose 4 D bytes hold NULs or bytes that are not
    # UTF-8 (one of them a newline sometimes, which ends the "line" above early). Text with a
    # broken first line stays text: its loader names the line.
    floats = head[head.find(b" ") + 1:][:4 * dim]
    return "word2vec_text" if _is_text(floats) else "word2vec_binary"


def load_vectors(path, fmt: str | None = None) -> WordVectors:
    """Loads vectors in `fmt` (one of FORMATS), guessing it from the file when None."""
    if os.path.isdir(path):
        # (It said only "[Errno 21] Is a directory".) A `tl_jax static` workdir, most likely.
        found = sorted(n for n in os.listdir(path) if n.startswith("vectors.")
                       and os.path.isfile(os.path.join(path, n)))
        raise IsADirectoryError(f"{os.fspath(path)} is a folder, not a vectors file"
                                + (f"; the vectors files in it: {', '.join(found)}" if found
                                   else ""))
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"Unknown vector format {fmt!r}; known: {sorted(FORMATS)}")
    vectors = FORMATS[fmt][0](path)
    repeated = len(vectors) - len(vectors.index)
    if repeated:
        word = next(w for i, w in enumerate(vectors.words) if vectors.index[w] != i)
        print(f"[vectors] Note: {path} holds {repeated} repeated word(s) (e.g. {word!r}, "
              f"entries {vectors.index[word] + 1} and "
              f"{vectors.words.index(word, vectors.index[word] + 1) + 1}); the first vector "
              "of each is used, as gensim does.", flush=True)
    return vectors


def save_vectors(vectors: WordVectors, path, fmt: str) -> None:
    """Saves vectors in `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown vector format {fmt!r}; known: {sorted(FORMATS)}")
    FORMATS[fmt][1](vectors, path)
