"""Raw text sources: local text/jsonl files, globs, tfds datasets and package-shipped corpora.

Everything is read into one shape, a list of documents where each document is a list of text
units (paragraphs or lines) in reading order:

    docs = load_documents("notes/*.txt,data.jsonl,gensim:lee")
    docs[0]  # ['First paragraph of document 0.', 'Second paragraph.', ...]

Document boundaries matter for BERT's next-sentence prediction (a "random" second segment must
come from another document), so every source says where its documents begin and end:

* plain text (any other extension but `.json`, optionally `.gz`/`.bz2`): one paragraph per
  line, a blank line ends a document;
* jsonl (`.jsonl`, optionally `.gz`/`.bz2`): one JSON object per line holding `text_field`;
  consecutive lines sharing the same `group_field` value form one document (without a group
  field every line is a document);
* `tfds:NAME[:SPLIT]`: a tensorflow_datasets dataset already prepared in `$TFDS_DATA_DIR`
  (read through `tfds.data_source`, which needs no TensorFlow); each record is a document whose
  `text_field` is split into paragraphs at newlines;
* `gensim:enwiki` and `gensim:lee`: small real English corpora that the gensim package ships
  with its tests, so a quickstart needs no download.

`split_sentences` breaks a paragraph into sentences for the pretraining example builder.
"""
from __future__ import annotations

import bz2
import contextlib
import functools
import glob
import gzip
import io
import json
import os
import re
from typing import Iterable, Iterator

Document = list[str]

# Checked in this order when `group_field` is not given: the first key present in a jsonl file's
# first object groups its lines into documents (enwiki_sample uses "title", austen "book").
AUTO_GROUP_FIELDS = ("title", "book", "doc_id")

GENSIM_CORPORA = ("enwiki", "lee")
_ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_LEE_FILE = "lee_background.cor"


class SourceError(ValueError):
    """A corpus spec or data file is missing, empty or malformed."""


def load_documents(
    spec: str, text_field: str = "text", group_field: str | None = None,
    key: str | None = None,
) -> list[Document]:
    """Reads every source named in `spec` into a list of documents.

    Args:
      spec: comma-separated sources: file paths, globs (`data/*.jsonl`), `tfds:NAME[:SPLIT]`,
        `gensim:enwiki`, `gensim:lee`.
      text_field: the key holding the text in jsonl objects and tfds records.
      group_field: the jsonl key whose consecutive equal values form one document. None or ""
        auto-detects one of `AUTO_GROUP_FIELDS` from the first object of each file.
      key: the config key `spec` came from (`data.corpus`), for errors to name.

    Returns:
      Documents in source order, each a non-empty list of non-empty, stripped text units.

    Raises:
      SourceError: missing file, glob matching nothing, malformed jsonl line or missing text
        field (naming file and line), a file with no text, or an empty corpus.
    """
    return list(iter_documents(spec, text_field, group_field, key))


def stream_sources(spec: str, text_field: str = "text", group_field: str | None = None,
                   key: str | None = None):
    """Yields `(source, size, documents)` for each file or dataset `spec` names, one at a time,
    in `load_documents`' order, where `documents` gives that source's documents one at a time
    as `(document, done)` pairs: a caller that tokenises as it goes (`tl_jax tokenize`) holds
    one document's text at a time, and `done` out of `size` is how far it has got. For a file,
    `size` is its length in bytes (compressed, for .gz/.bz2) and `done` the bytes read so far;
    for a tfds dataset, its number of records and those read (a record is read as its document
    is taken); a gensim corpus comes whole and counts documents. Raises what `load_documents`
    raises, a malformed line or record when it is reached and the empty corpus at the end."""
    any_text = False

    def counted(pairs):
        nonlocal any_text
        for pair in pairs:
            any_text = True
            yield pair

    for part in _parts(spec):
        for source, size, pairs in _iter_part(part, text_field, group_field or None, key):
            yield source, size, counted(pairs)
    if not any_text:
        raise SourceError(f"Corpus {spec!r} is empty: its sources contain no text.")


def iter_documents(spec: str, text_field: str = "text", group_field: str | None = None,
                   key: str | None = None) -> Iterator[Document]:
    """`load_documents`' documents one at a time, a file's read as they are given: a caller
    that needs each document once (static vectors' reader) holds one document's text, not a
    file's. Raises what `load_documents` raises, a malformed line when it is reached."""
    for _, _, documents in stream_sources(spec, text_field, group_field, key):
        for document, _ in documents:
            yield document


def _parts(spec: str) -> list[str]:
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts:
        raise SourceError(f"Empty corpus spec {spec!r}: name at least one file, glob or dataset.")
    return parts


def _iter_part(part: str, text_field: str, group_field: str | None, key: str | None = None):
    """(source, size, pairs) for each source `part` names, its documents as `stream_sources`'
    (document, done) pairs, read as they are taken (a gensim corpus comes whole)."""
    if part.startswith("gensim:"):
        name = part[len("gensim:"):]
        if name not in GENSIM_CORPORA:
            raise SourceError(f"Unknown gensim corpus {part!r}; known: "
                              + ", ".join(f"gensim:{n}" for n in GENSIM_CORPORA))
        documents = load_gensim_enwiki() if name == "enwiki" else load_gensim_lee()
        yield part, len(documents), ((d, i + 1) for i, d in enumerate(documents))
        return
    if part.startswith("tfds:"):
        name, _, split = part[len("tfds:"):].partition(":")
        yield (part, *_tfds_documents(name, split or "train", text_field, key))
        return
    # A file that exists is itself, even when its name has glob characters ("notes[1].txt").
    if any(ch in part for ch in "*?[") and not os.path.isfile(os.path.expanduser(part)):
        paths = sorted(glob.glob(os.path.expanduser(part), recursive=True))
        paths = [p for p in paths if os.path.isfile(p)]
        if not paths:
            raise SourceError(f"Glob {part!r} matches no files.")
    else:
        paths = [os.path.expanduser(part)]
    for path in paths:  # a missing file raises its error when its documents are asked for
        yield (path, os.path.getsize(path) if os.path.isfile(path) else 0,
               _file_documents(path, text_field, group_field, key))


def _file_documents(path: str, text_field: str, group_field: str | None,
                    key: str | None = None) -> Iterator[tuple[Document, int]]:
    """One plain-text or jsonl file's documents (see the module docstring for the formats) as
    `(document, bytes of the file read so far)`, the file read as they are taken: its errors
    are raised when reached, its lack of text once it has been read."""
    if not os.path.exists(path):
        unset = re.search(r"\$\{?(\w+)", path)  # os.path.expandvars leaves unset variables as is
        hint = f" (${unset.group(1)} is not set in the environment)" if unset else ""
        partial = path.rstrip(os.sep) + ".partial"
        if not hint and os.path.isdir(partial):
            hint = (f" (only {partial} is there: an unfinished `tl_jax tokenize` folder, left "
                    "when it was interrupted; tokenise again)")
        raise SourceError(f"Corpus file not found: {path}{hint}")
    if not os.path.isfile(path):
        raise SourceError(_folder_message(path))
    # Extensions in any case: DATA.JSONL is JSON lines (read as plain text, its braces and keys
    # were trained on as prose), CORPUS.TXT.GZ compressed.
    base = re.sub(r"\.(gz|bz2)$", "", path.lower())
    if base.endswith(".json"):
        # Read as plain text, its JSON syntax would be trained on as if it were prose.
        raise SourceError(f"Corpus file {path} is .json: corpora are plain text or JSON lines "
                          "named .jsonl. If it holds one JSON object per line (as Hugging Face "
                          "datasets' to_json writes), rename it to .jsonl; a JSON array is not "
                          "read.")
    any_text = False
    try:
        for pair in (_read_jsonl(path, text_field, group_field, key)
                     if base.endswith(".jsonl")
                     else _read_text(path)):
            any_text = True
            yield pair
    except UnicodeDecodeError as e:
        raise SourceError(non_utf8_message(path, e)) from None
    except (OSError, EOFError) as e:
        # gzip/bz2 say "Not a gzipped file" or "Compressed file ended before the end-of-stream
        # marker" (a download cut short) without naming the file.
        if not path.lower().endswith((".gz", ".bz2")) or isinstance(e, PermissionError):
            raise
        kind = "gzip" if path.lower().endswith(".gz") else "bz2"
        raise SourceError(f"Corpus file {path} cannot be decompressed as {kind} "
                          f"({type(e).__name__}: {e}): it is not {kind} data or it is "
                          "truncated.") from None
    if not any_text:
        raise SourceError(f"Corpus file {path} contains no text.")


def _folder_message(path: str) -> str:
    """Why the folder `path` is not read as a corpus file, and what to give instead."""
    from tl_jax.data import tokenized  # here: that module imports this one

    if os.path.isfile(os.path.join(path, tokenized.META_FILE)):
        return (f"{path} is a tokenised corpus (`tl_jax tokenize`): GPT, BERT, ELECTRA, "
                "distillation and biLM runs read one given alone as data.corpus; other "
                "readers (static vectors) take text")
    names = os.listdir(path)
    # What `tl_jax tokenize` writes into a folder before its corpus.json.
    parts = {tokenized.TOKENS_FILE, tokenized.ENDS_FILE, tokenized.SENTENCE_ENDS_FILE,
             tokenized.DOC_SENTENCE_ENDS_FILE, tokenized.UNIT_ENDS_FILE,
             tokenized.SPELLINGS_FILE, tokenized.TOKENIZER_DIR}
    if path.rstrip(os.sep).endswith(".partial") or parts.intersection(names):
        return (f"Corpus folder {path} has no corpus.json: not a finished `tl_jax tokenize` "
                "folder (it was interrupted or is damaged); tokenise the corpus again")
    files = sorted(n for n in names if os.path.isfile(os.path.join(path, n)))
    if files:
        suffixes = [os.path.splitext(n)[1] for n in files]
        common = max(sorted(set(suffixes)), key=suffixes.count)  # the folder's usual extension
        pattern = os.path.join(path, "*" + common)
        return (f"Corpus path is a folder, not a file: {path}; name its files with a glob "
                f"such as {pattern!r}")
    return f"Corpus path is not a file: {path}"


@contextlib.contextmanager
def _open_text(path: str, mode: str = "rt"):
    """Yields `(stream, position)`: the file as text ("rt") or bytes ("rb"), decompressed
    when it is .gz or .bz2, and a function giving how many bytes of the file itself have been
    read (what a progress bar over the file's size counts)."""
    # Compressed corpora are common (Wikipedia dumps), and reading them needs nothing extra.
    with open(path, "rb") as raw, contextlib.ExitStack() as closing:
        stream = raw
        if path.lower().endswith(".gz"):
            stream = closing.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        elif path.lower().endswith(".bz2"):
            stream = closing.enter_context(bz2.BZ2File(raw, "rb"))
        if "t" in mode:
            # utf-8-sig: a byte-order mark (Windows editors write one) would make the first
            # jsonl line malformed JSON, as the task readers already know. (Closing the text
            # stream closes what it wraps; `raw` closed twice is no error.)
            stream = closing.enter_context(io.TextIOWrapper(stream, encoding="utf-8-sig"))
        yield stream, raw.tell


NOT_UTF8_HINT = "convert the file to UTF-8, e.g. `iconv -f cp1252 -t utf-8`"
# What `first_non_utf8_line` says of a file that starts with a UTF-16 byte-order mark, and the
# hint for it: converted from cp1252 as the other hint says, its every other byte became a NUL
# character, which every reader took as text.
UTF16 = "it starts with a UTF-16 byte-order mark: UTF-16 text, as Excel's 'Unicode Text' writes"
UTF16_HINT = "convert the file to UTF-8, e.g. `iconv -f utf-16 -t utf-8`"


def not_utf8_hint(found: tuple[int, str] | None) -> str:
    """The hint for a file `first_non_utf8_line` found to be bad at `found`."""
    return UTF16_HINT if found and found[1] == UTF16 else NOT_UTF8_HINT


def first_non_utf8_line(path) -> tuple[int, str] | None:
    """`(line number, what is wrong)` for the first line of `path` that is not UTF-8, or None.

    A decoding error while reading a text stream knows neither the line nor the offset in the
    file (it decodes in chunks), so the file is scanned again, as bytes (`.gz`/`.bz2` too).
    """
    with _open_text(str(path), "rb") as (f, _):
        for line_number, raw in enumerate(f, start=1):
            if line_number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                return 1, UTF16
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line_number, f"byte {raw[e.start:e.start + 1]!r} at byte {e.start + 1} of the line"
    return None


def non_utf8_message(path, error: UnicodeDecodeError) -> str:
    """`path:line: not UTF-8 text (...)` for a file that failed to decode with `error`."""
    found = first_non_utf8_line(path)
    where, what = (f"{path}:{found[0]}", found[1]) if found else (str(path), str(error))
    return f"{where}: not UTF-8 text ({what}); {not_utf8_hint(found)}."


def _read_text(path: str) -> Iterator[tuple[Document, int]]:
    current: Document = []
    with _open_text(path) as (f, position):
        for line in f:
            line = line.strip()
            if line:
                current.append(line)
            elif current:
                yield current, position()
                current = []
        if current:
            yield current, position()


def _read_jsonl(path: str, text_field: str, group_field: str | None,
                config_key: str | None = None) -> Iterator[tuple[Document, int]]:
    current: Document = []
    current_key = object()  # Equal to no group value, so the first line starts a document.
    auto = group_field is None
    detected = ""
    with _open_text(path) as (f, position):
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                # json's message for a control character ends in "at", before the position it omits.
                raise SourceError(f"{where}: malformed JSON ({e.msg.removesuffix(' at')} at "
                                  f"column {e.colno}).") from None
            if not isinstance(obj, dict):
                raise SourceError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
            if auto:
                # Decided on the file's first object so one file is grouped consistently.
                group_field = next((k for k in AUTO_GROUP_FIELDS if k in obj), "")
                auto = False
                detected = f" (the group field, detected on line {line_number}; set " \
                    "data.group_field to group by another key)"
            if text_field not in obj:
                # The field's config key beside the corpus's: `text_field` of a `tl_jax static`
                # config (key "corpus") was named as data.text_field.
                section = (config_key or "data.").rpartition(".")[0]
                setting = ("data.text_field in a config, --text_field for `tl_jax tokenize`"
                           if section == "data" else "--text_field"
                           if config_key.startswith("--") else
                           f"{section + '.' if section else ''}text_field in the config")
                raise SourceError(f"{where}: missing text field {text_field!r} "
                                  f"(keys: {sorted(obj)}); set the text field "
                                  f"({setting}) to the right key.")
            text = obj[text_field]
            if not isinstance(text, str):
                raise SourceError(f"{where}: text field {text_field!r} is "
                                  f"{json_type(text)}, expected a string.")
            if group_field:
                if group_field not in obj:
                    raise SourceError(f"{where}: missing group field {group_field!r} "
                                      f"(keys: {sorted(obj)}){detected}.")
                key = obj[group_field]
            else:
                key = object()  # Every line its own document.
            if key != current_key and current:
                yield current, position()
                current = []
            current_key = key
            units = [u.strip() for u in text.split("\n") if u.strip()]
            current.extend(units)
        if current:
            yield current, position()


def json_type(value) -> str:
    """What a JSON value is, in JSON's words ("null", not Python's "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def load_tfds(name: str, split: str = "train", text_field: str = "text",
              key: str | None = None) -> list[Document]:
    """Reads a prepared tfds dataset from `$TFDS_DATA_DIR` (default tfds location otherwise).

    Nothing is downloaded: the dataset must already be prepared in a random-access format
    (`array_record`), which `tfds.data_source` reads without TensorFlow. `key`: the config key
    that named it, for the errors.
    """
    _, pairs = _tfds_documents(name, split, text_field, key)
    return [document for document, _ in pairs]


def _tfds_documents(name: str, split: str, text_field: str,
                    key: str | None) -> tuple[int, Iterator[tuple[Document, int]]]:
    """`load_tfds`' documents as (number of records, (document, records read) pairs), each
    record read as its document is taken. The dataset is opened (and its errors raised) here."""
    import tensorflow_datasets as tfds  # Imported here: heavy, and only this source needs it.

    data_dir = os.environ.get("TFDS_DATA_DIR") or None
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.DatasetNotFoundError as e:
        raise SourceError(_unknown_tfds_message(name, data_dir, key, str(e))) from None
    except Exception as e:  # tfds raises several types for "not prepared".
        raise SourceError(_unreadable_tfds_message(name, split, data_dir, key, e)) from None

    def pairs():
        any_text = False
        for index in range(len(source)):
            record = source[index]
            if text_field not in record:
                raise SourceError(f"tfds:{name}:{split} record {index}: missing text field "
                                  f"{text_field!r} (keys: {sorted(record)}).")
            text = record[text_field]
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            units = [u.strip() for u in str(text).split("\n") if u.strip()]
            if units:
                any_text = True
                yield units, index + 1
        if not any_text:
            raise SourceError(f"tfds:{name}:{split} contains no text in field {text_field!r}.")

    return len(source), pairs()


def _unknown_tfds_message(name: str, data_dir: str | None, key: str | None,
                          tfds_message: str) -> str:
    """One line for a tfds name that is neither a registered builder nor prepared in
    `data_dir`. tfds' own message lists every registered builder (~250 lines) and a checklist
    for builder authors; only its close match, when it has one, is kept."""
    import tensorflow_datasets as tfds

    import importlib.util

    close = re.search(r"Did you mean: \S+ -> (\S+) \?", tfds_message)
    hint = f" (did you mean {close.group(1)!r}?)" if close else ""
    where = f"{key}: unknown" if key else "Unknown"
    # Without TensorFlow, tfds leaves out every builder whose module imports it (glue,
    # wikipedia, ...): such a name is "unknown" here though tfds has it.
    no_tf = ("; tfds registers no builder whose code needs TensorFlow, which is not installed "
             "here, so a prepared copy is the only way to read one of those"
             if importlib.util.find_spec("tensorflow") is None else "")
    return (f"{where} tfds dataset {name!r}{hint}: tensorflow_datasets {tfds.__version__} finds "
            f"no builder of that name, and {data_dir or 'the default tfds data dir'} holds no "
            f"prepared copy of it (set TFDS_DATA_DIR to the folder that does){no_tf}.")


def _unreadable_tfds_message(name: str, split: str, data_dir: str | None, key: str | None,
                             error: Exception) -> str:
    """One line for a tfds dataset that tfds knows but `tfds.data_source` cannot read. A copy
    prepared as TFRECORD (tfds' default where TensorFlow is installed) is said so, with what to
    do: tfds' own message runs over several lines ("Possible root causes:\n\t* ...") and names
    no config key. Anything else keeps tfds' words, on one line."""
    where = f"{key}: " if key else ""
    text = str(error)
    found = re.search(r"for file format (?:FileFormat\.)?(\w+) is not supported", text)
    if found:
        import tensorflow_datasets as tfds

        at = re.search(r"already prepared at (\S+) in ", text)
        folder = at.group(1) if at else (data_dir or "the default tfds data dir")
        formats = tfds.core.file_adapters.FileFormat.with_random_access()
        readable = " or ".join(f.value for f in formats)  # array_record or parquet
        return (f"{where}tfds dataset {name!r} is prepared in {found.group(1).lower()} format in "
                f"{folder}, which tfds reads only through TensorFlow; tl_jax reads {readable} "
                "(random access, no TensorFlow). Prepare it again with file_format=array_record "
                f"(`tfds build {name} --file_format=array_record`) into another TFDS_DATA_DIR, "
                "or delete that copy first.")
    return (f"{where}{'c' if key else 'C'}annot read tfds dataset {name!r} split {split!r} from "
            f"{data_dir or 'the default tfds data dir'} (set TFDS_DATA_DIR; the dataset must be "
            f"prepared in array_record format): {type(error).__name__}: {' '.join(text.split())}")


def _gensim_datapath(filename: str) -> str:
    from gensim.test.utils import datapath

    path = datapath(filename)
    if not os.path.exists(path):
        raise SourceError(f"gensim's test corpus {filename} is missing from the installed gensim "
                          f"package (looked at {path}); reinstall gensim.")
    return path


def load_gensim_lee() -> list[Document]:
    """The Lee background corpus: 300 short news articles, one document per line."""
    documents = []
    with open(_gensim_datapath(_LEE_FILE), encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                documents.append([line.strip()])
    return documents


_WIKI_HEADING = re.compile(r"^=+[^=].*=+$")
_WIKI_QUOTES = re.compile(r"'{2,}")
_SPACES = re.compile(r"[ \t]+")


def load_gensim_enwiki() -> list[Document]:
    """~100 English Wikipedia articles, markup stripped, one document per article.

    Redirect pages are dropped; headings are dropped (they are not sentences); paragraphs of
    fewer than 4 words (leftover markup, captions) are dropped. Parsing takes seconds, so the
    result is cached per process (callers get their own copy).
    """
    return [list(document) for document in _parse_gensim_enwiki()]


@functools.lru_cache(maxsize=1)
def _parse_gensim_enwiki() -> tuple[tuple[str, ...], ...]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    documents = []
    with bz2.open(_gensim_datapath(_ENWIKI_FILE)) as f:
        for _title, text, _page_id in extract_pages(f, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            paragraphs = []
            for line in filter_wiki(text).split("\n"):
                line = line.strip()
                if not line or _WIKI_HEADING.match(line):
                    continue
                line = _SPACES.sub(" ", _WIKI_QUOTES.sub("", line)).lstrip("*#:; ").strip()
                if len(line.split()) >= 4:
                    paragraphs.append(line)
            if paragraphs:
                documents.append(tuple(paragraphs))
    return tuple(documents)


# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets), then whitespace,
# then something that can start a sentence (capital letter, digit, opening quote/bracket). Common
# title abbreviations ("Mr. Darcy") are not sentence ends; other abbreviations and lower-case
# starts are handled wrongly, which is harmless for building BERT segments: they are packed from
# several sentences up to a token budget.
_TITLES = frozenset("mr mrs ms dr st jr sr prof rev gen col capt lt sgt mt vs".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Splits a paragraph into sentences with a simple regex (see `_SENTENCE_END`)."""
    out = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        # Keep closing quotes/brackets with the sentence they close.
        end = match.start() + len(match.group(0).rstrip())
        words = text[start:match.start()].rsplit(None, 1)
        if words and words[-1].rstrip(".").lower() in _TITLES:
            continue  # "Mr. Darcy": the next sentence starts after the name, not here.
        sentence = text[start:end].strip()
        if sentence:
            out.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def iter_units(documents: Iterable[Document]) -> Iterable[str]:
    """All text units of all documents, in order (e.g. to train a tokenizer)."""
    for document in documents:
        yield from document
