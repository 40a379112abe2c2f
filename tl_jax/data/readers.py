"""Readers for downstream task files: classification, CoNLL tagging and SQuAD QA.

Every reader returns plain Python records, the same shape whatever the source:

* classification: `{"text": str, "text_b": str | None, "label": str}`
* tagging:        `{"tokens": list[str], "tags": list[str]}` (BIO / IOB2 tags)
* extractive QA:  `{"id", "title", "question", "context",
                    "answers": [{"text", "answer_start"}], "is_impossible": bool}`

Local files come in the standard formats (jsonl, CSV, TSV, CoNLL columns, SQuAD JSON), UTF-8 with
or without a byte-order mark. A malformed file raises `DataFormatError` naming the file and the
line. Users with network access can name a tfds dataset instead (`glue/sst2`, `glue/mrpc`, ...,
`conll2003`, `squad/v1.1`, `squad/v2.0`) through `read_tfds`, which maps it onto the same records.
"""
from __future__ import annotations

import builtins
import csv
import io
import json
import os
import pathlib
import pickle
import re
import zlib
from typing import Iterable, Iterator

from tl_jax import paths
from tl_jax.data.sources import first_non_utf8_line, json_type, not_utf8_hint

PathLike = str | os.PathLike


class DataFormatError(ValueError):
    """A task file that cannot be parsed; the message names the file and the line."""

    def __init__(self, path: PathLike, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line

    @classmethod
    def not_utf8(cls, path: PathLike, error: UnicodeDecodeError) -> "DataFormatError":
        """The error for a file that does not decode as UTF-8, naming its first bad line."""
        found = first_non_utf8_line(path)
        line, what = found if found else (None, str(error))
        return cls(path, line, f"not UTF-8 text ({what}); {not_utf8_hint(found)}")


# --------------------------------------------------------------------------------------------
# Classification: jsonl, CSV, TSV.
# --------------------------------------------------------------------------------------------

def read_classification(path: PathLike, text_field: str = "text", text_b_field: str | None = None,
                        label_field: str = "label", require_labels: bool = True) -> list[dict]:
    """Reads a sentence (or sentence-pair) classification file.

    The format follows the suffix: `.jsonl` (one JSON object per line), `.csv` or `.tsv` (a header
    row naming the columns; a TSV is not quoted: one line per row, '"' is text, as in GLUE).
    `text_b_field` names the second sentence for pair tasks.

    With `require_labels=False` (`tl_jax predict`) a row without the label field, or with a null
    or blank one (an empty CSV cell), is read with label None.

    Returns:
      A list of `{"text", "text_b", "label"}` dicts; labels are strings.
    Raises:
      DataFormatError: empty file, bad JSON, a missing field or an empty text (file and line).
    """
    try:
        return _read_classification(pathlib.Path(path), text_field, text_b_field, label_field,
                                    require_labels)
    except UnicodeDecodeError as e:
        raise DataFormatError.not_utf8(path, e) from None


def _read_classification(path: pathlib.Path, text_field: str, text_b_field: str | None,
                         label_field: str, require_labels: bool = True) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        rows = _delimited_rows(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise DataFormatError(path, None, f"unknown classification format {suffix!r}; "
                              "use .jsonl, .csv or .tsv")
    records = []
    for line, row in rows:
        # Unlabelled: no label field, a null, or a blank cell (a CSV's label column left empty).
        labelled = require_labels or (row.get(label_field) is not None
                                      and label_text(row[label_field]) != "")
        fields = [text_field] + ([label_field] if labelled else []) + (
            [text_b_field] if text_b_field else [])
        for field in fields:
            if field not in row:
                raise DataFormatError(path, line, f"missing field {field!r} (has {sorted(row)})")
            if row[field] is None:
                raise DataFormatError(path, line, f"field {field!r} is null")
        text = _text(row[text_field], path, line, text_field)
        if not text.strip():
            raise DataFormatError(path, line, f"empty text in field {text_field!r}")
        records.append({
            "text": text,
            "text_b": _text(row[text_b_field], path, line, text_b_field) if text_b_field else None,
            "label": _label(row[label_field], path, line, label_field) if labelled else None,
        })
    if not records:  # (a CSV/TSV file without even a header row failed above)
        raise DataFormatError(path, None, "no examples (empty file)" if suffix == ".jsonl" else
                              "no examples: a header row and no rows after it")
    return records


def label_text(value) -> str:
    """A class label as a string: JSON numbers by value (1 and 1.0 are one class, "1"), JSON
    booleans as JSON spells them (true and "true" are one class, not Python's "True"), spaces
    around it trimmed (a CSV's "pos, neg" gives "neg")."""
    if isinstance(value, bool):  # (before the numbers: True is an int)
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _text(value, path, line, field: str) -> str:
    """A text field, which must be a JSON string: `true` was read as the text "True", `5` as
    "5" and a list as its Python repr. (CSV and TSV cells are always strings.)"""
    if not isinstance(value, str):
        got = json_type(value) + (f" ({json.dumps(value)[:60]})"
                                  if isinstance(value, (list, dict)) else "")
        raise DataFormatError(path, line, f"field {field!r} must be a string, got {got}")
    return value


def _label(value, path, line, field: str) -> str:
    """`label_text`; a list, an object or an empty label is a format error."""
    if isinstance(value, (list, dict)):
        raise DataFormatError(path, line, f"field {field!r} must be a string or a number, got "
                              f"{json.dumps(value)[:60]}")
    label = label_text(value)
    if not label:
        raise DataFormatError(path, line, f"empty label in field {field!r}")
    return label


def read_fasttext_labels(path: PathLike, prefix: str = "__label__") -> list[dict]:
    """Reads `__label__X text` lines (fastText format, e.g. gensim's `pang_lee_polarity.cor`)."""
    path = pathlib.Path(path)
    records = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:  # pang_lee_polarity.cor mixes in Windows-1252 dashes.
                line = raw.decode("cp1252", errors="replace")
            if not line.strip():
                continue
            label, _, text = line.strip().partition(" ")
            if not label.startswith(prefix) or not text.strip():
                raise DataFormatError(path, line_no, f"expected '{prefix}LABEL text', got {line[:60]!r}")
            records.append({"text": text.strip(), "text_b": None, "label": label[len(prefix):]})
    if not records:
        raise DataFormatError(path, None, "no examples (empty file)")
    return records


def _invalid_json(error: json.JSONDecodeError) -> str:
    """"invalid JSON (Expecting value at column 9)": json's message without its own position
    (it ends in a bare "at" for a control character, which it does not show), and the column,
    which the file:line before it lacks."""
    return f"invalid JSON ({error.msg.removesuffix(' at')} at column {error.colno})"


def _jsonl_rows(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, line_no, _invalid_json(e)) from None
            if not isinstance(row, dict):
                raise DataFormatError(path, line_no, "expected a JSON object per line")
            yield line_no, row


def _delimited_rows(path: pathlib.Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    """(line, {column: cell}) per row; the line is where the row starts (a quoted CSV cell may
    span lines, and an unclosed quote swallows the lines after it).

    A TSV has no quoting: one line is one row and a '"' is text, as GLUE's files are written and
    google-research/bert's `_read_tsv` reads them. With CSV's rules a sentence that starts
    with '"' and has no closing one took the following rows into its text, under their label."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        header = next(reader, None)
        if not header:
            raise DataFormatError(path, 1, "missing header row")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:  # a dict of the row would keep only the last such column
            raise DataFormatError(path, 1, f"header names column(s) {repeated} more than once "
                                  f"({header})")
        while True:
            line_no = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a cell past csv's size limit
                raise DataFormatError(path, line_no, f"{e} (an unclosed '\"' makes one cell of "
                                      "every line up to the next '\"')") from None
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                spans = (f"; {_quote_hint(reader, line_no)}" if reader.line_num > line_no
                         else "")
                raise DataFormatError(path, line_no, f"{len(row)} columns, header has "
                                      f"{len(header)} ({header}){spans}")
            yield line_no, dict(zip(header, row))


def _quote_hint(reader, line_no: int) -> str:
    return (f"the row starting here runs to line {reader.line_num}: an unclosed '\"' in a "
            "cell takes every line up to the next '\"'")


# --------------------------------------------------------------------------------------------
# Tagging: CoNLL-2003-style columns.
# --------------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")

# Tokens past which one sentence is surely several run together (blank lines missing between
# them): CoNLL-2003's longest sentence has 124 tokens; BERT's 512 sub-tokens would not hold it.
LONG_SENTENCE = 250


def read_conll(path: PathLike, token_column: int = 0, tag_column: int = -1,
               require_labels: bool = True) -> list[dict]:
    """Reads CoNLL-style columns: one token per line, blank lines between sentences.

    `-DOCSTART-` lines are skipped. Columns are separated by ASCII spaces and tabs only: other
    whitespace (a non-breaking space U+00A0, a thin space U+2009) belongs to its token, as in
    "New\u00a0York". A line of nothing but whitespace, of any kind, ends a sentence. Every other
    line must have the same number of columns, and tags must be BIO / IOB2 (`O`, `B-X`, `I-X`).
    A file that is one sentence of more than `LONG_SENTENCE` tokens is an error (its blank lines
    are missing).

    With `require_labels=False` (`tl_jax predict`) a file of one column holds tokens only, and
    its sentences have tags None.

    Returns:
      A list of `{"tokens": [...], "tags": [...]}` sentences.
    """
    return _conll_sentences(path, token_column, tag_column, require_labels)[0]


def _conll_sentences(path: PathLike, token_column: int = 0, tag_column: int = -1,
                     require_labels: bool = True, token_lines: bool = False
                     ) -> tuple[list[dict], list]:
    """`read_conll`'s sentences and the line each starts at (with `token_lines`: the line of
    each of its tokens)."""
    try:
        return _read_conll(pathlib.Path(path), token_column, tag_column, require_labels,
                           token_lines)
    except UnicodeDecodeError as e:
        raise DataFormatError.not_utf8(path, e) from None


def _read_conll(path: pathlib.Path, token_column: int, tag_column: int,
                require_labels: bool = True, token_lines: bool = False
                ) -> tuple[list[dict], list]:
    sentences, starts, tokens, tags = [], [], [], []
    n_columns = None
    # utf-8-sig: a byte-order mark (Windows editors write one) would join the first token.
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            columns = _conll_columns(line)
            if not columns or not line.strip():
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags if n_columns > 1 else None})
                tokens, tags = [], []
                continue
            if columns[0] == "-DOCSTART-":
                continue
            if not tokens:
                starts.append([] if token_lines else line_no)
            if token_lines:
                starts[-1].append(line_no)
            last = line_no
            if n_columns is None:
                if line.lstrip().startswith(("{", "[")):
                    _refuse_json_as_conll(path, line_no, line)
                n_columns = len(columns)
                if n_columns < 2 and require_labels:
                    raise DataFormatError(path, line_no, "expected at least 2 columns (token and tag)")
            elif len(columns) != n_columns:
                raise DataFormatError(path, line_no, f"{len(columns)} columns, expected {n_columns}")
            tokens.append(columns[token_column])
            if n_columns == 1:  # tokens only (allowed by require_labels=False above)
                continue
            tag = columns[tag_column]
            if not _TAG_RE.match(tag):
                # A first line of words and no tag anywhere: plain text given to the tagger.
                prose = not sentences and len(tokens) == 1 and n_columns > 2 and not any(
                    _TAG_RE.match(c) for c in columns)
                raise DataFormatError(path, line_no, f"tag {tag!r} is not BIO (O, B-X or I-X)" + (
                    f"; this looks like plain text, several words a line, but tagging files are "
                    f"{CONLL_LAYOUT} (to predict, the token column alone)" if prose else ""))
            tags.append(tag)
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags if n_columns > 1 else None})
    if not sentences:
        raise DataFormatError(path, None, "no sentences (empty file)")
    if len(sentences) == 1 and len(sentences[0]["tokens"]) > LONG_SENTENCE:
        # Trained on, it is one example (too few to fill a batch); predicted, every word past
        # max_seq_length is tagged O.
        first = starts[0][0] if token_lines else starts[0]
        raise DataFormatError(path, first, f"the whole file is one sentence of "
                              f"{len(sentences[0]['tokens']):,} tokens (lines {first}-{last}):"
                              " missing blank lines between sentences? CoNLL has one token per "
                              "line and a blank line after each sentence")
    return sentences, starts


# What separates CoNLL columns: ASCII spaces and tabs, as the CoNLL shared tasks and conlleval
# write them. `str.split()` also split at U+00A0 and every other Unicode space, so a token holding
# one ("New\u00a0York", a lone "\u00a0" in web text) became two columns: "3 columns, expected 2".
_CONLL_SEPARATORS = " \t"
# Characters a token cannot hold in a file: the separators and what ends a line (for
# `str.splitlines`, which other readers of the file may use, as well as for this one).
_CONLL_NOT_IN_TOKENS = _CONLL_SEPARATORS + "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _conll_columns(line: str) -> list[str]:
    """A CoNLL line's columns: split at runs of spaces and tabs, the line ending (LF or CRLF)
    stripped, any other whitespace kept inside its token."""
    return [c for c in re.split(r"[ \t]+", line.rstrip("\r\n")) if c]


CONLL_LAYOUT = ("CoNLL columns: one token per line, its tag in the last column, a blank line "
                "after each sentence")


def _refuse_json_as_conll(path: pathlib.Path, line_no: int, line: str) -> None:
    """Raises when a CoNLL file's first line starts JSON lines or a JSON document (a
    classification or SQuAD file given to the tag task): its fields were read as tokens and
    tags ("tag '"great"}' is not BIO"), or, without spaces, as tokens to predict."""
    try:
        row = json.loads(line)
        what = None if not isinstance(row, dict) else "a JSON document (SQuAD JSON?)" if \
            "data" in row else "JSON lines (one object per line)"
    except json.JSONDecodeError:
        what = None
    if what is None and line.strip() in ("{", "["):
        try:
            with open(path, encoding="utf-8-sig") as f:
                json.load(f)
            what = "a JSON document (SQuAD JSON?)"
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    if what:
        raise DataFormatError(path, line_no, f"this looks like {what}, but tagging files are "
                              f"{CONLL_LAYOUT}")


def write_conll(path: PathLike, sentences: Iterable[dict]) -> None:
    """Writes `{"tokens", "tags"}` sentences as two-column CoNLL (token TAB tag)."""
    with open(path, "w", encoding="utf-8") as f:
        for sentence in sentences:
            for token, tag in zip(sentence["tokens"], sentence["tags"], strict=True):
                if not token or any(c in _CONLL_NOT_IN_TOKENS for c in token):
                    raise ValueError(f"CoNLL tokens cannot be empty or hold spaces, tabs or line "
                                     f"breaks: {token!r}")
                f.write(f"{token}\t{tag}\n")
            f.write("\n")


# --------------------------------------------------------------------------------------------
# Extractive QA: SQuAD JSON (v1.1 and v2.0).
# --------------------------------------------------------------------------------------------

def read_squad(path: PathLike, require_labels: bool = True) -> list[dict]:
    """Reads a SQuAD v1.1 / v2.0 JSON file into flat question records.

    Each answer's `answer_start` must point at its text inside the context; v2.0 questions marked
    `is_impossible` have no answers (answers there are an error, as is an empty question).
    Errors name the file and the line of the JSON where the bad question starts (JSON has no line
    per record, so the line is found by the question id).
    With `require_labels=False` (`tl_jax predict`) a question with no answers that is not marked
    `is_impossible` is unlabelled: its `answers` are None.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError.not_utf8(path, e) from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"{_invalid_json(e)}{_not_squad_hint(raw)}"
                              ) from None

    def fail(qid, message, occurrence=0):
        """Raises at the line of the `occurrence`-th `"id": qid` (not any string equal to the
        id: an earlier answer "2" is not question "2")."""
        line = None
        if qid is not None:
            forms = {json.dumps(qid), json.dumps(qid, ensure_ascii=False)}
            found = sorted(m.start() for form in forms for m in re.finditer(
                r'"id"\s*:\s*' + re.escape(form) + r"(?=\s*[,}])", raw))
            if found:
                line = raw.count("\n", 0, found[min(occurrence, len(found) - 1)]) + 1
        raise DataFormatError(path, line, message)

    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        flat = isinstance(doc, dict) and {"question", "context"} & set(doc)
        raise DataFormatError(path, 1, "expected a SQuAD object with a 'data' list" + (
            f"; this is one flat question (a line of JSON lines?), but a SQuAD file is "
            f"{SQUAD_LAYOUT}" if flat else ""))
    def items(value, key, where, qid=None):
        """`value[key]` as a list of objects (a missing key is an empty list)."""
        found = value.get(key, [])
        if not isinstance(found, list) or not all(isinstance(x, dict) for x in found):
            fail(qid, f"{where}: {key!r} must be a list of objects, got {json.dumps(found)[:60]}")
        return found

    records, seen = [], {}
    for a_index, article in enumerate(items(doc, "data", "top level")):
        title = article.get("title", "")
        for paragraph in items(article, "paragraphs", f"article {a_index} ({title!r})"):
            context = paragraph.get("context")
            if not isinstance(context, str):
                fail(None, f"paragraph without a 'context' string in article {title!r}")
            for qa in items(paragraph, "qas", f"a paragraph of article {title!r}"):
                qid = qa.get("id")
                if qid is None or not isinstance(qa.get("question"), str):
                    fail(qid, f"question without 'id' or 'question' in article {title!r}")
                if not qa["question"].strip():  # the model would be asked nothing
                    fail(qid, f"question {qid!r} has an empty 'question' string")
                if str(qid) in seen:
                    # Predictions and gold are keyed by id: a repeat would be decoded against
                    # the other question's context.
                    fail(qid, f"question id {qid!r} occurs twice (also in article "
                              f"{seen[str(qid)]!r})", occurrence=1)
                seen[str(qid)] = title
                impossible = qa.get("is_impossible", False)
                if impossible not in (True, False):  # bool("false") is True
                    fail(qid, f"question {qid!r}: 'is_impossible' must be true or false, got "
                              f"{json.dumps(impossible)[:60]}")
                impossible = bool(impossible)
                if impossible and qa.get("answers"):
                    # BERT's run_squad.py would train on no answer, the official v2.0 eval score
                    # against these: which one is meant cannot be told.
                    fail(qid, f"question {qid!r} is marked is_impossible but has "
                              f"{len(qa['answers'])} answer(s); an unanswerable question has an "
                              "empty 'answers' list (SQuAD 2.0 keeps the spans it seemed to have "
                              "in 'plausible_answers')")
                answers = []
                for answer in items(qa, "answers", f"question {qid!r}", qid):
                    text, start = answer.get("text"), answer.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int) or \
                            isinstance(start, bool) or start < 0 or not text.strip():
                        fail(qid, f"question {qid!r}: answer needs a non-blank 'text' and an "
                                  f"'answer_start' integer >= 0, got {json.dumps(answer)[:80]}")
                    if context[start:start + len(text)] != text:
                        fail(qid, f"question {qid!r}: answer {text!r} not found at answer_start "
                                  f"{start} (context has {context[start:start + len(text)]!r})"
                                  f"{_answer_start_hint(context, text, start)}")
                    answers.append({"text": text, "answer_start": start})
                unlabelled = not answers and not impossible
                if unlabelled and require_labels:
                    fail(qid, f"question {qid!r} has no answers and is not marked is_impossible")
                records.append({"id": str(qid), "title": title, "question": qa["question"],
                                "context": context,
                                "answers": None if unlabelled else [] if impossible else answers,
                                "is_impossible": impossible})
    if not records:
        raise DataFormatError(path, None, "no questions in file")
    return records


def _answer_start_hint(context: str, text: str, start: int) -> str:
    """Where an answer not at its `answer_start` is: counted in UTF-16 code units (JavaScript's
    string indices, an emoji counting 2) or UTF-8 bytes, or elsewhere in the context."""
    for unit, encoding in (("UTF-16 code units, as JavaScript counts (a character past U+FFFF, "
                            "such as an emoji, is 2)", "utf-16-le"), ("UTF-8 bytes", "utf-8")):
        width = 2 if encoding == "utf-16-le" else 1
        encoded = context.encode(encoding, "surrogatepass")
        if start * width <= len(encoded):
            prefix = encoded[:start * width].decode(encoding, "ignore")
            if context.startswith(prefix) and context[len(prefix):].startswith(text):
                return f"; answer_start seems to count {unit}: in characters it is {len(prefix)}"
    found = [m.start() for m in re.finditer(re.escape(text), context)][:3]
    return f"; the text is at character {', '.join(map(str, found))}" if found else ""


SQUAD_LAYOUT = ('one JSON document {"data": [{"title", "paragraphs": [{"context", "qas": '
                '[{"id", "question", "answers"}]}]}]}')


def _not_squad_hint(raw: str) -> str:
    """What a file that is not one JSON document looks like instead: JSON lines (a Hugging
    Face dataset export, a classification file) or CoNLL columns; "" when it is neither."""
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        return ""
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError:
        first = None
    if isinstance(first, dict) and "data" not in first and len(lines) > 1:
        return (f"; this looks like JSON lines (one object per line), but a SQuAD file is "
                f"{SQUAD_LAYOUT}")
    columns = _conll_columns(lines[0])  # as the tag task splits them: not at U+00A0
    if not lines[0].lstrip().startswith(("{", "[")) and len(columns) >= 2 and \
            _TAG_RE.match(columns[-1]):
        return (f"; this looks like CoNLL columns (token and tag per line, the tag task's "
                f"format), but a SQuAD file is {SQUAD_LAYOUT}")
    return ""


def write_squad(path: PathLike, records: Iterable[dict], version: str = "1.1") -> None:
    """Writes flat question records as SQuAD JSON, grouping questions by (title, context)."""
    articles: dict[str, dict] = {}
    paragraphs: dict[tuple[str, str], dict] = {}
    for r in records:
        article = articles.setdefault(r["title"], {"title": r["title"], "paragraphs": []})
        key = (r["title"], r["context"])
        if key not in paragraphs:
            paragraphs[key] = {"context": r["context"], "qas": []}
            article["paragraphs"].append(paragraphs[key])
        qa = {"id": r["id"], "question": r["question"], "answers": r["answers"]}
        if version.startswith("2"):
            qa["is_impossible"] = bool(r.get("is_impossible", False))
        paragraphs[key]["qas"].append(qa)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": version, "data": list(articles.values())}, f, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# tfds names (need network access the first time, or a prepared TFDS_DATA_DIR).
# --------------------------------------------------------------------------------------------

# glue config -> (first text field, second text field or None)
GLUE_FIELDS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
    "ax": ("premise", "hypothesis"),
}


# The record kind of each tfds family `read_tfds` maps.
TFDS_KINDS = {"glue": "classification", "conll2003": "tagging", "squad": "squad"}


def read_tfds(name: str, split: str, data_dir: str | None = None) -> list[dict]:
    """Loads a tfds dataset (`glue/<task>`, `conll2003`, `squad/v1.1`, `squad/v2.0`) as records.

    Records have the same shape as the local readers' output, so tasks need not care where data
    came from. Label ids become the dataset's label names; -1, GLUE's hidden test label, is None
    (unlabelled, as `read_records` with `require_labels=False` takes it).
    """
    import tensorflow_datasets as tfds  # Lazy: importing tfds is slow and most runs use files.

    family = name.split("/")[0]
    if family not in ("glue", "conll2003", "squad"):
        raise ValueError(f"read_tfds supports glue/*, conll2003 and squad/*, not {name!r}")
    if name == "glue/stsb":
        # Its labels are similarity scores in [0, 5]: read as class names, the classifier would
        # learn one class per distinct score and report accuracy, not GLUE's Pearson/Spearman.
        raise ValueError("glue/stsb is a regression task (similarity scores 0-5, scored by "
                         "Pearson/Spearman correlation); the classify task has no regression "
                         "head, and would read each distinct score as a class name")
    if family == "glue" and name.split("/")[-1] not in GLUE_FIELDS:
        raise ValueError(f"unknown GLUE config in {name!r}; known: {sorted(GLUE_FIELDS)}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        dataset = tfds.as_numpy(builder.as_dataset(split=split))
    except Exception as e:  # tfds raises many types (not found, no network, no TensorFlow).
        first_line = (str(e).strip().splitlines() or [""])[0]  # tfds appends every dataset name
        raise ValueError(
            f"cannot load tfds:{name}:{split} ({type(e).__name__}: {first_line}); the first use "
            "downloads and prepares it (network access and TensorFlow), or set TFDS_DATA_DIR to "
            "where it is prepared; or give a local jsonl/CSV/TSV, CoNLL or SQuAD JSON file"
        ) from None
    info = builder.info.features

    def text(value):
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    records = []
    if family == "glue":
        first, second = GLUE_FIELDS[name.split("/")[-1]]
        names = info["label"].names if hasattr(info["label"], "names") else None
        for ex in dataset:
            label = int(ex["label"]) if names else float(ex["label"])
            # -1: GLUE's test splits hide their labels. It was the class "-1" (`tl_jax predict`
            # refused it as a label the model lacks); None is an unlabelled record.
            records.append({"text": text(ex[first]), "text_b": text(ex[second]) if second else None,
                            "label": names[label] if names and label >= 0 else
                            None if names else str(label)})
    elif family == "conll2003":
        tag_names = info["ner"].feature.names
        for ex in dataset:
            records.append({"tokens": [text(t) for t in ex["tokens"]],
                            "tags": [tag_names[int(t)] for t in ex["ner"]]})
    else:
        for ex in dataset:
            answers = [{"text": text(t), "answer_start": int(s)}
                       for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"])]
            records.append({"id": text(ex["id"]), "title": text(ex["title"]),
                            "question": text(ex["question"]), "context": text(ex["context"]),
                            "answers": answers, "is_impossible": not answers})
    return records


# --------------------------------------------------------------------------------------------
# One spec string per data set, as configs name them.
# --------------------------------------------------------------------------------------------

def gensim_polarity(split: str) -> list[dict]:
    """gensim's 200 labelled movie-review sentences (`pang_lee_polarity.cor`), zero-setup.

    Split deterministically: every 5th sentence is `test` (40), the rest `train` (160); the file
    holds 100 `neg` then 100 `pos`, so both splits are balanced.
    """
    from gensim.test.utils import datapath  # gensim is a runtime dependency; import is slow.

    if split not in ("train", "test"):
        raise ValueError(f"gensim:polarity split must be train or test, got {split!r}")
    records = read_fasttext_labels(datapath("pang_lee_polarity.cor"))
    return [r for i, r in enumerate(records) if (i % 5 == 4) == (split == "test")]


class _BunchUnpickler(pickle.Unpickler):
    """Loads gensim's `mini_newsgroup` (a pickled scikit-learn Bunch) without scikit-learn; only
    the builtins and numpy classes such a pickle needs are allowed."""

    def find_class(self, module, name):
        if name == "Bunch":
            return dict
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            import copyreg
            return copyreg._reconstructor
        if module in ("__builtin__", "builtins") and name in ("object", "dict", "list"):
            return getattr(builtins, name)
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
                "ndarray", "dtype", "_reconstruct"):
            import numpy as np
            return {"ndarray": np.ndarray, "dtype": np.dtype,
                    "_reconstruct": np._core.multiarray._reconstruct}[name]
        raise pickle.UnpicklingError(f"mini_newsgroup: unexpected class {module}.{name}")


def gensim_newsgroups(split: str) -> list[dict]:
    """gensim's 200 Usenet posts labelled `alt.atheism` / `sci.space` (`mini_newsgroup`), zero-setup.

    The header block (which names the newsgroup) is dropped: the text is the body only. Split
    deterministically and stratified: every 5th post of each group is `test` (20 + 20), the rest
    `train` (80 + 80).
    """
    from gensim.test.utils import datapath  # gensim is a runtime dependency; import is slow.

    if split not in ("train", "test"):
        raise ValueError(f"gensim:newsgroups split must be train or test, got {split!r}")
    with open(datapath("mini_newsgroup"), "rb") as f:
        bunch = _BunchUnpickler(io.BytesIO(zlib.decompress(f.read())), encoding="latin1").load()
    seen: dict[str, int] = {}
    records = []
    for text, target in zip(bunch["data"], bunch["target"]):
        label = bunch["target_names"][int(target)]
        seen[label] = seen.get(label, 0) + 1
        if (seen[label] % 5 == 0) == (split == "test"):
            body = text.partition("\n\n")[2].strip()
            records.append({"text": body, "text_b": None, "label": label})
    return records


GENSIM_SETS = {"polarity": gensim_polarity, "newsgroups": gensim_newsgroups}


def read_records(spec: str, kind: str, require_labels: bool = True, **fields) -> list[dict]:
    """Reads a data set named by a config string.

    Args:
      spec: a file path (format from the suffix), `tfds:NAME:SPLIT` (e.g.
        `tfds:glue/sst2:validation`), `gensim:polarity|newsgroups:train|test`, or
        `silver:names|cloze_qa:train|dev|test` (this project's silver tasks, built once from
        `$TL_JAX_DATA_DIR` by `tl_jax.data.task_builders`).
      kind: "classification", "tagging" or "squad".
      require_labels: False reads local files whose labels, tags or answers are missing (see
        each reader); a record without them has None there.
      fields: passed to the file reader (`text_field`, `label_field`, ... for classification).
    """
    if not spec:
        raise ValueError(f"no {kind} data file given (empty spec)")
    if spec.startswith("tfds:"):
        name, _, split = spec[len("tfds:"):].rpartition(":")
        if not name:
            raise ValueError(f"tfds spec {spec!r} must look like tfds:NAME:SPLIT")
        tfds_kind = TFDS_KINDS.get(name.split("/")[0], kind)
        if tfds_kind != kind:  # its records lack this task's fields: a KeyError in the task
            raise ValueError(f"{spec} is {tfds_kind} data (glue/* is classification, conll2003 "
                             f"tagging, squad/* squad), but this task reads {kind} data")
        records = read_tfds(name, split)
        unlabelled = sum(r.get("label", "") is None for r in records)
        if unlabelled and require_labels:
            raise ValueError(f"{spec}: {unlabelled} of {len(records)} records have no label "
                             "(label -1: GLUE's test splits hide their labels); train and "
                             "evaluate on the train and validation splits, and give this one to "
                             "`tl_jax predict`")
        return records
    if spec.startswith("gensim:"):
        name, _, split = spec[len("gensim:"):].partition(":")
        if name not in GENSIM_SETS or kind != "classification":
            raise ValueError(f"unknown gensim data set {spec!r}; known: "
                             "gensim:polarity:train|test, gensim:newsgroups:train|test")
        return GENSIM_SETS[name](split)
    spec = _local_file(spec, kind)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"{kind} data file {spec} does not exist")
    if kind == "classification":
        if spec.endswith(".cor"):
            return read_fasttext_labels(spec)
        return read_classification(spec, require_labels=require_labels, **fields)
    if kind == "tagging":
        return read_conll(spec, require_labels=require_labels, **fields)
    if kind == "squad":
        return read_squad(spec, require_labels=require_labels)
    raise ValueError(f"unknown data kind {kind!r}")


def _local_file(spec: str, kind: str) -> str:
    """The file a `read_records` spec other than tfds: and gensim: names."""
    if spec.startswith("silver:"):
        from tl_jax.data import task_builders  # builds from TL_JAX_DATA_DIR text on first use

        task, _, split = spec[len("silver:"):].partition(":")
        silver_kind = {"names": "tagging", "cloze_qa": "squad"}.get(task, kind)
        if silver_kind != kind:  # else a CoNLL file read as JSON, or the reverse
            raise ValueError(f"{spec} is {silver_kind} data (CoNLL for silver:names, SQuAD JSON "
                             f"for silver:cloze_qa), but this task reads {kind} data")
        spec = str(task_builders.silver_path(task, split))
    return paths.expand(spec)  # '$TL_JAX_DATA_DIR/...' in a config, as the corpora take


def record_lines(spec: str, kind: str, tokens: bool = False) -> list | None:
    """The line of its file at which each record `read_records(spec, kind)` gave starts, for
    messages about a record ("FILE:LINE: ..."); the file is read again. With `tokens`, a
    tagging file's records are lists: the line of each token. None for what has no line per
    record: tfds and gensim data sets, and SQuAD JSON (errors name the question id).
    """
    if kind not in ("classification", "tagging") or spec.startswith(("tfds:", "gensim:")):
        return None
    path = pathlib.Path(_local_file(spec, kind))
    try:
        if kind == "tagging":
            return _conll_sentences(path, require_labels=False, token_lines=tokens)[1]
        if path.suffix == ".cor":
            return [n for n, line in enumerate(open(path, "rb"), 1) if line.strip()]
        if path.suffix.lower() == ".jsonl":
            return [n for n, _ in _jsonl_rows(path)]
        return [n for n, _ in _delimited_rows(path, "\t" if path.suffix.lower() == ".tsv"
                                               else ",")]
    except (OSError, ValueError):  # the file changed since it was read: no lines, no error
        return None
