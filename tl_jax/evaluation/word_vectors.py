"""Intrinsic evaluation of word vectors: similarity correlation and analogies.

* Word similarity (WordSim353, SimLex-999): Spearman's rho between human scores and cosine
  similarities, over the pairs whose two words are both in the vocabulary;
* Analogies (Google `questions-words.txt`): 3CosAdd, i.e. for `a : b :: c : ?` the answer is
  argmax_w cos(w, b - a + c) over the vocabulary minus {a, b, c} (Mikolov et al., 2013).

Words are lowercased before lookup (gensim's `case_insensitive=True` behaviour) and the
out-of-vocabulary counts are part of every result: a score over 40% of the pairs is not the
same number as a score over all of them.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import scipy.stats

from tl_jax.data.vector_formats import WordVectors

WORDSIM353 = "eval/wordsim353.tsv"
SIMLEX999 = "eval/simlex999.txt"
GOOGLE_ANALOGIES = "eval/questions-words.txt"


def _decoded(f, path):
    """(line number, text) of a file opened in binary: a byte that is not UTF-8 is named by
    file and line (text mode would raise a bare UnicodeDecodeError, with neither)."""
    for lineno, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8").replace("\r\n", "\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not UTF-8 (byte {e.start} of the line: "
                             f"{raw[e.start:e.start + 1]!r})") from None
        if lineno == 1 and line.startswith("\ufeff"):
            # A UTF-8 byte order mark (files saved by Excel or Notepad), not part of the text:
            # it hid a first `#` comment or `: section` line, or made the first word OOV.
            line = line[1:]
        yield lineno, line


# Header names of the score column in the official distributions: SimLex-999.txt
# (`word1 word2 POS SimLex999 conc(w1) ...`, the score 4th) and WordSim353's combined.csv /
# combined.tab / set1.tab (`Word 1,Word 2,Human (mean)[,1,2,...]`); compared lowercased, with
# everything but letters and digits dropped.
_SCORE_COLUMNS = ("simlex999", "humanmean")


def read_similarity_pairs(path) -> list[tuple[str, str, float]]:
    """Reads `word1 word2 score` lines, tab- or comma-separated ('#' starts a comment line).

    The separator is the first non-comment line's: a tab if it has one, else a comma. That
    line is a header when its score field (the third) is not a number, as in the official
    SimLex-999.txt and WordSim353 combined.csv / combined.tab; it is skipped, and when it names
    the score column (`SimLex999`, `Human (mean)`) that column holds the scores, else the third.
    Any other line whose score is not a number is an error naming the file and line.
    """
    pairs = []
    sep = header = None  # header: (line number, score field) of a skipped header line
    col, col_name = 2, None
    with open(path, "rb") as f:
        for lineno, line in _decoded(f, path):
            if not line.strip() or line.startswith("#"):
                continue
            line = line.rstrip("\n").rstrip("\r")
            if sep is None:
                sep = "\t" if "\t" in line else ","
            parts = [p.strip() for p in line.split(sep)]
            first = header is None and not pairs
            if len(parts) <= col:
                layout = ("'word1<TAB>word2<TAB>score' or 'word1,word2,score'" if first else
                          "'word1{0}word2{0}score'".format("<TAB>" if sep == "\t" else ","))
                raise ValueError(f"{path}:{lineno}: expected {layout}"
                                 + (f" with the score in column {col + 1} ({col_name!r})"
                                    if col_name else "")
                                 + f"; found {len(parts)} field(s)")
            try:
                score = float(parts[col])
            except ValueError:
                if first:  # a header
                    header = (lineno, parts[col])
                    named = [i for i, p in enumerate(parts)
                             if "".join(c for c in p.lower() if c.isalnum()) in _SCORE_COLUMNS]
                    if len(named) > 1:
                        raise ValueError(f"{path}:{lineno}: header names more than one score "
                                         f"column: {[parts[i] for i in named]}") from None
                    if named:
                        col, col_name = named[0], parts[named[0]]
                    continue
                where = f" (column {col + 1}, {col_name!r})" if col_name else ""
                raise ValueError(f"{path}:{lineno}: score {parts[col]!r}{where} is not a "
                                 f"number") from None
            if not math.isfinite(score):  # "nan"/"inf" parse, then make Spearman's rho nan
                where = f" (column {col + 1}, {col_name!r})" if col_name else ""
                raise ValueError(f"{path}:{lineno}: score {parts[col]!r}{where} is not a finite "
                                 f"number (nan or inf) in the pair {parts[0]!r}, {parts[1]!r}")
            pairs.append((parts[0].lower(), parts[1].lower(), score))
    if not pairs:
        if header is not None:
            raise ValueError(f"{path}:{header[0]}: score {header[1]!r} is not a number: read as "
                             f"a header line, but no similarity pairs follow it")
        raise ValueError(f"{path}: no similarity pairs")
    return pairs


def read_analogies(path) -> list[tuple[str, tuple[str, str, str, str]]]:
    """Reads `: section` headers and `a b c d` questions into (section, question) pairs."""
    questions, section = [], None
    with open(path, "rb") as f:
        for lineno, line in _decoded(f, path):
            if not line.strip():
                continue
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            words = line.lower().split()
            if len(words) != 4 or section is None:
                raise ValueError(f"{path}:{lineno}: expected four words after a ': section' line")
            questions.append((section, tuple(words)))
    if not questions:
        raise ValueError(f"{path}: no analogy questions")
    return questions


@dataclasses.dataclass
class SimilarityResult:
    spearman: float  # over in-vocabulary pairs; nan when fewer than 2
    pairs: int  # pairs evaluated
    oov_pairs: int  # pairs skipped because a word is missing
    oov_words: int  # distinct evaluation words missing from the vocabulary


def word_similarity(vectors: WordVectors, pairs) -> SimilarityResult:
    """Spearman correlation of cosine similarity with the human scores."""
    lookup = _lowercase_index(vectors)
    pairs = [(a.lower(), b.lower(), s) for a, b, s in pairs]
    unit = vectors.unit_vectors()
    known = [(lookup[a], lookup[b], s) for a, b, s in pairs if a in lookup and b in lookup]
    missing = {w for a, b, _ in pairs for w in (a, b) if w not in lookup}
    if len(known) < 2:
        rho = float("nan")
    else:
        i, j, human = map(np.array, zip(*known))
        cos = np.sum(unit[i] * unit[j], axis=1)
        rho = float(scipy.stats.spearmanr(cos, human).statistic)
    return SimilarityResult(rho, len(known), len(pairs) - len(known), len(missing))


@dataclasses.dataclass
class AnalogyResult:
    accuracy: float  # over answerable questions; nan when none
    correct: int
    questions: int  # questions evaluated
    oov_questions: int  # skipped: a word outside the (restricted) vocabulary
    by_section: dict[str, float]


def analogy_accuracy(vectors: WordVectors, questions, restrict_vocab: int | None = 30_000,
                     batch_size: int = 512) -> AnalogyResult:
    """3CosAdd accuracy; candidates (and question words) are the first `restrict_vocab` words.

    Restricting to the most frequent words is what word2vec's compute-accuracy and gensim do
    (30,000 is the value word2vec's demo script passes to the C tool, whose own default is no
    limit; gensim's default is 300,000); vectors should be sorted by frequency.
    """
    if (restrict_vocab is not None and restrict_vocab < 1) or batch_size < 1:
        # restrict_vocab <= 0 would make every question "out of vocabulary", silently.
        raise ValueError(f"restrict_vocab={restrict_vocab}, batch_size={batch_size}: both must "
                         f"be >= 1 (restrict_vocab=None for the whole vocabulary)")
    n = len(vectors) if restrict_vocab is None else min(restrict_vocab, len(vectors))
    lookup = {w: i for w, i in _lowercase_index(vectors).items() if i < n}
    unit = vectors.unit_vectors()[:n]
    # Each candidate row as its lowercased word's row: in cased vectors "Paris" is the question
    # word "paris" (never the answer) and "London" the answer "london", as in gensim.
    canon = np.array([lookup[w.lower()] for w in vectors.words[:n]], dtype=np.int64)
    cased = bool(np.any(canon != np.arange(n)))
    questions = [(s, tuple(w.lower() for w in q)) for s, q in questions]
    answerable = [(s, q) for s, q in questions if all(w in lookup for w in q)]
    correct_by_section: dict[str, list[int]] = {}
    correct = 0
    for start in range(0, len(answerable), batch_size):
        chunk = answerable[start:start + batch_size]
        idx = np.array([[lookup[w] for w in q] for _, q in chunk])  # (Q, 4)
        target = unit[idx[:, 1]] - unit[idx[:, 0]] + unit[idx[:, 2]]  # (Q, D)
        scores = target @ unit.T  # (Q, n)
        rows = np.arange(len(chunk))[:, None]
        scores[rows, idx[:, :3]] = -np.inf  # the question words are never the answer
        if cased:  # nor are their other spellings
            scores[(canon[None, :] == idx[:, 0:1]) | (canon[None, :] == idx[:, 1:2])
                   | (canon[None, :] == idx[:, 2:3])] = -np.inf
        hit = canon[scores.argmax(axis=1)] == idx[:, 3]
        correct += int(hit.sum())
        for (section, _), h in zip(chunk, hit):
            correct_by_section.setdefault(section, [0, 0])
            correct_by_section[section][0] += int(h)
            correct_by_section[section][1] += 1
    total = len(answerable)
    return AnalogyResult(
        accuracy=correct / total if total else float("nan"),
        correct=correct, questions=total, oov_questions=len(questions) - total,
        by_section={s: c / t for s, (c, t) in correct_by_section.items()})


def _lowercase_index(vectors: WordVectors) -> dict[str, int]:
    """Lowercased word -> row, first (most frequent) spelling wins."""
    index: dict[str, int] = {}
    for i, w in enumerate(vectors.words):
        index.setdefault(w.lower(), i)
    return index


def misplaced_files(data_dir) -> str:
    """What to give instead when `data_dir` holds the evaluation files itself, not in its eval/
    folder (the folder `eval/` was given, say); "" when it does not."""
    data_dir = pathlib.Path(data_dir)
    files = (WORDSIM353, SIMLEX999, GOOGLE_ANALOGIES)
    if all((data_dir / f).exists() for f in files):
        return ""
    there = [pathlib.PurePosixPath(f).name for f in files
             if (data_dir / pathlib.PurePosixPath(f).name).is_file()]
    if not there:
        return ""
    fix = (f"give its parent folder, {str(data_dir.resolve().parent)!r}"
           if data_dir.resolve().name == "eval" else f"move them into {str(data_dir / 'eval')!r}")
    return (f"{str(data_dir)!r} holds {', '.join(there)} itself, but the evaluation files are "
            f"read from the eval/ folder inside it ({', '.join(files)}): {fix}")


def read_all(data_dir) -> dict:
    """Reads (and so checks) the three evaluation files under `data_dir` (the folder holding
    eval/: `data_dir/eval/wordsim353.tsv`, ...); a training run calls this before it trains, so
    a malformed file fails in seconds, not after the run."""
    hint = misplaced_files(data_dir)
    if hint:
        raise FileNotFoundError(hint)
    data_dir = pathlib.Path(data_dir)
    return {"wordsim353": read_similarity_pairs(data_dir / WORDSIM353),
            "simlex999": read_similarity_pairs(data_dir / SIMLEX999),
            "analogies": read_analogies(data_dir / GOOGLE_ANALOGIES)}


def evaluate_all(vectors: WordVectors, data_dir=None, restrict_vocab: int | None = 30_000, *,
                 data: dict | None = None) -> dict:
    """WordSim353, SimLex-999 and Google analogies, as a flat dict of numbers.

    The files are read from `data_dir`'s eval/ folder (`data_dir/eval/wordsim353.tsv`, ...: the
    data folder, not eval/ itself), or taken already read from `data` (see `read_all`)."""
    if data is None:
        if data_dir is None:
            raise ValueError("evaluate_all: give data_dir or data")
        data = read_all(data_dir)
    out = {}
    for name in ("wordsim353", "simlex999"):
        r = word_similarity(vectors, data[name])
        out.update({f"{name}_spearman": r.spearman, f"{name}_pairs": r.pairs,
                    f"{name}_oov_pairs": r.oov_pairs, f"{name}_oov_words": r.oov_words})
    a = analogy_accuracy(vectors, data["analogies"], restrict_vocab)
    out.update({"analogy_accuracy": a.accuracy, "analogy_questions": a.questions,
                "analogy_oov_questions": a.oov_questions})
    return out


def format_scores(scores: dict) -> str:
    """One line per benchmark, for logs and reports."""
    return (
        f"WordSim353 rho={scores['wordsim353_spearman']:.3f} "
        f"({scores['wordsim353_pairs']} pairs, {scores['wordsim353_oov_pairs']} OOV)\n"
        f"SimLex-999 rho={scores['simlex999_spearman']:.3f} "
        f"({scores['simlex999_pairs']} pairs, {scores['simlex999_oov_pairs']} OOV)\n"
        f"Google analogies 3CosAdd acc={scores['analogy_accuracy']:.3f} "
        f"({scores['analogy_questions']} questions, {scores['analogy_oov_questions']} OOV)")
