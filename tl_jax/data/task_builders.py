"""Builds the downstream tasks of this project from the real text in `TL_JAX_DATA_DIR`.

No labelled English NER or QA set ships in a package reachable here, so two *silver* tasks are
made from the Austen novels (`austen.jsonl`) and the Wikipedia sample (`enwiki_sample.jsonl`):

* **names** (token classification, CoNLL): every sentence is split into words; a capitalised
  word that does not start a sentence (nor follow an opening quote or a colon, where English
  capitalises too), and is not the pronoun "I", is a proper-name word; runs of such words are one
  `NAME` entity (`B-NAME I-NAME ...`). Titles such as "Mr." count as name words, so "Mr. Darcy"
  is one entity. The words are written **lowercased**, so a model cannot read the label off the
  capital letter and must use the context and what it knows about names.
* **cloze_qa** (extractive QA, SQuAD JSON): for a sentence holding a name span, the span is
  replaced by `____` and the sentence becomes the question; the context is the passage around the
  sentence (its paragraph without that sentence, plus the neighbouring paragraphs while they fit
  in `max_context_chars`). The question is kept (SQuAD v1.1) when the removed span occurs in the
  context, with every occurrence as a gold answer, and nowhere else in the question ("Lydia was
  Lydia still" would give "Lydia was ____ still", answered by copying from the question; the
  sentence's next span is tried instead). With `version="2.0"`, questions whose spans are *not*
  in the context are kept as unanswerable (`is_impossible`), at most one per answerable one;
  they count against the same caps, so they take the place of answerable questions.
* **food_reviews** (classification): the jsonl files as they are (`text`, `label`).

Determinism: paragraphs are grouped into blocks of `BLOCK` consecutive paragraphs of one book or
article, and a block's split (train / dev / test, 80/10/10) is a function of the md5 of its name,
so the split never depends on order, caps or Python's hash seed; contexts never cross blocks, so
no test passage leaks into training. Caps keep the first examples in file order.

Run it with `python -m tl_jax.data.task_builders OUT_DIR` (or `tl_jax build_tasks`); it writes
`OUT_DIR/names/{train,dev,test}.conll`, `OUT_DIR/cloze_qa/{train,dev,test}.json` and
`OUT_DIR/manifest.json` with counts and md5 digests of every file.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import sys
import time
from typing import Iterator

from tl_jax.data import readers

# Bump when a builder's output changes: the `silver:` cache is keyed by it (see `silver_path`).
BUILDER_VERSION = 2  # 2: no answer also stands elsewhere in its question
SOURCES = ("austen.jsonl", "enwiki_sample.jsonl")  # what the silver tasks are built from
BLOCK = 20  # Consecutive paragraphs that share a split; contexts stay inside a block.
SPLITS = ("train", "dev", "test")
BLANK = "____"
ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Col", "Capt", "Gen", "Lt", "Rev", "Messrs", "Jr",
                 "Sr", "Mt", "Prof", "Sgt", "Hon")
_TOKEN = re.compile(
    r"(?:%s)\.|[^\W\d_]+(?:['’][^\W\d_]+)*|\d+(?:[.,:]\d+)*|[^\w\s]|_+" % "|".join(ABBREVIATIONS))
_QUOTES = set("\"'“”‘’«»(")
_SENTENCE_END = set(".!?")


def split_of(name: str) -> str:
    """train/dev/test (80/10/10) from the md5 of a block name: stable across runs and machines."""
    bucket = int(hashlib.md5(name.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Words and punctuation with character spans: `[(token, start, end), ...]`."""
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def sentences(tokens: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Splits a paragraph's tokens after `.`, `!`, `?` and the closing quotes glued to them."""
    out, current, closing = [], [], False
    for i, token in enumerate(tokens):
        current.append(token)
        closing = token[0] in _SENTENCE_END or (closing and token[0] in _QUOTES)
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        # A quote right after the end mark with no space closes the sentence; one after a
        # space opens the next.
        glued = nxt is not None and nxt[1] == token[2] and (nxt[0] in _QUOTES or nxt[0] in _SENTENCE_END)
        if closing and not glued:
            out.append(current)
            current, closing = [], False
    if current:
        out.append(current)
    return out


def silver_tags(words: list[str]) -> list[str]:
    """BIO `NAME` tags for one sentence by the capitalisation rule in the module docstring."""
    tags, initial, inside, straight_quotes = [], True, False, 0
    for word in words:
        abbreviation = word.endswith(".") and word[:-1] in ABBREVIATIONS
        # SHOUTED words and acronyms are not reliably names; "I" is a pronoun.
        capitalised = word[0].isupper() and not (word.isupper() and len(word) > 1)
        pronoun = word == "I" or word.startswith(("I'", "I’"))
        is_name = not initial and (abbreviation or (capitalised and not pronoun))
        tags.append(("I-NAME" if inside else "B-NAME") if is_name else "O")
        inside = is_name
        if word[0].isalnum():
            initial = False
        # Straight quotes alternate open/close within a sentence; only an opening one starts a
        # capitalised quotation ("Yes," said Elizabeth: Elizabeth is still a name).
        if word in ('"', "'"):
            straight_quotes += 1
        opening = word in ("“", "‘", "«", "(") or (word in ('"', "'") and straight_quotes % 2 == 1)
        if opening or word in (":", "—") or word in _SENTENCE_END:
            initial = True
    return tags


def _paragraphs(data_dir: pathlib.Path) -> Iterator[tuple[str, str]]:
    """(block name, paragraph text) for Austen then Wikipedia, in file order."""
    for filename, key in zip(SOURCES, ("book", "title")):
        path = data_dir / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; is TL_JAX_DATA_DIR the shared data folder?")
        counts: dict[str, int] = {}
        # As the corpus reader takes jsonl (`sources.load_documents`): a byte-order mark and
        # blank lines are fine, a line that is not UTF-8 is named.
        with open(path, encoding="utf-8-sig") as f:
            try:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    doc, text = _paragraph_record(path, line_no, line, key)
                    index = counts.get(doc, 0)
                    counts[doc] = index + 1
                    yield f"{filename.split('.')[0]}/{doc}/{index // BLOCK}", text
            except UnicodeDecodeError as e:
                raise readers.DataFormatError.not_utf8(path, e) from None


def _paragraph_record(path: pathlib.Path, line_no: int, line: str, key: str) -> tuple:
    """(`key` value, text) of one line of a source file, or a DataFormatError naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise readers.DataFormatError(path, line_no, f"bad paragraph record (malformed JSON: "
                                      f"{e.msg.removesuffix(' at')} at column {e.colno})") from None
    if not isinstance(row, dict) or key not in row or "text" not in row:
        has = f"keys {sorted(row)}" if isinstance(row, dict) else f"a {type(row).__name__}"
        raise readers.DataFormatError(path, line_no, f"bad paragraph record: expected an object "
                                      f"with {key!r} and 'text', got {has}")
    doc, text = row[key], row["text"]
    for field, value, types in ((key, doc, (str, int, float)), ("text", text, (str,))):
        if not isinstance(value, types) or isinstance(value, bool):
            kind = "a string" if field == "text" else "a string or a number"
            raise readers.DataFormatError(path, line_no, f"bad paragraph record: {field!r} must "
                                          f"be {kind}, got {json.dumps(value)[:60]}")
    return doc, text


def _blocks(data_dir: pathlib.Path) -> Iterator[tuple[str, list[str]]]:
    block, paragraphs = None, []
    for name, text in _paragraphs(data_dir):
        if name != block and paragraphs:
            yield block, paragraphs
            paragraphs = []
        block = name
        paragraphs.append(text)
    if paragraphs:
        yield block, paragraphs


def _usable(sentence: list[tuple[str, int, int]], min_words: int, max_words: int) -> bool:
    words = [t for t, _, _ in sentence]
    letters = "".join(w for w in words if w[0].isalpha())
    # Chapter headings and title pages are SHOUTED; they carry no name signal.
    return min_words <= len(words) <= max_words and letters and not letters.isupper()


def build_names(data_dir: pathlib.Path, caps: dict[str, int], min_words: int = 5,
                max_words: int = 50) -> dict[str, list[dict]]:
    """Silver name tagging sentences per split: `{"tokens" (lowercased), "tags"}`."""
    out = {s: [] for s in SPLITS}
    for block, paragraphs in _blocks(data_dir):
        if all(len(out[s]) >= caps[s] for s in SPLITS):
            break
        split = split_of(block)
        if len(out[split]) >= caps[split]:
            continue
        for text in paragraphs:
            for sentence in sentences(tokenize(text)):
                if not _usable(sentence, min_words, max_words) or len(out[split]) >= caps[split]:
                    continue
                words = [t for t, _, _ in sentence]
                out[split].append({"tokens": [w.lower() for w in words], "tags": silver_tags(words)})
    return out


def _spans(sentence: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """Character spans of the NAME entities of a sentence (paragraph offsets)."""
    tags = silver_tags([t for t, _, _ in sentence]) + ["O"]
    spans, start = [], None
    for i, tag in enumerate(tags):
        if tag != "I-NAME" and start is not None:
            spans.append((sentence[start][1], sentence[i - 1][2]))
            start = None
        if tag == "B-NAME":
            start = i
    return spans


def build_cloze_qa(data_dir: pathlib.Path, caps: dict[str, int], version: str = "1.1",
                   max_context_chars: int = 1200, min_words: int = 6,
                   max_words: int = 40) -> dict[str, list[dict]]:
    """Cloze QA records (SQuAD shape) per split; see the module docstring."""
    out = {s: [] for s in SPLITS}
    impossible_budget = {s: 0 for s in SPLITS}
    for block, paragraphs in _blocks(data_dir):
        if all(len(out[s]) >= caps[s] for s in SPLITS):
            break
        split = split_of(block)
        for p_index, text in enumerate(paragraphs):
            for s_index, sentence in enumerate(sentences(tokenize(text))):
                if len(out[split]) >= caps[split]:
                    break
                spans = _spans(sentence)
                if not spans or not _usable(sentence, min_words, max_words):
                    continue
                s_start, s_end = sentence[0][1], sentence[-1][2]
                context = " ".join((text[:s_start].strip() + " " + text[s_end:].strip()).split())
                # Widen with neighbouring paragraphs, nearest first, while the passage fits.
                for k in (1, -1, 2, -2):
                    j = p_index + k
                    if 0 <= j < len(paragraphs) and len(context) + len(paragraphs[j]) < max_context_chars:
                        context = (context + "\n\n" + paragraphs[j]) if k > 0 else (paragraphs[j] + "\n\n" + context)
                if len(context) > max_context_chars * 2 or len(context) < 80:
                    continue
                record = _cloze(text, sentence, spans, context)
                qid = hashlib.md5(f"{block}/{p_index}/{s_index}".encode()).hexdigest()[:16]
                if record is not None:
                    record.update(id=qid, title=block)
                    out[split].append(record)
                    impossible_budget[split] += 1
                elif (version.startswith("2") and impossible_budget[split] > 0
                      and not any(_occurrences(text[a:b], context) for a, b in spans)):
                    a, b = spans[0]
                    question = text[s_start:a] + BLANK + text[b:s_end]
                    out[split].append({"id": qid, "title": block, "question": question,
                                       "context": context, "answers": [], "is_impossible": True})
                    impossible_budget[split] -= 1
    return out


def _occurrences(phrase: str, text: str) -> list[int]:
    """Start offsets of `phrase` in `text` as whole words."""
    return [m.start() for m in re.finditer(r"(?<!\w)%s(?!\w)" % re.escape(phrase), text)]


def _cloze(text, sentence, spans, context) -> dict | None:
    """The first span of the sentence that occurs (as whole words) in the context and not again
    in the question, as a record; None if there is none."""
    s_start, s_end = sentence[0][1], sentence[-1][2]
    for a, b in spans:
        answer = text[a:b]
        hits = _occurrences(answer, context)
        question = text[s_start:a] + BLANK + text[b:s_end]
        if hits and not _occurrences(answer, question):
            return {"question": question, "context": context, "is_impossible": False,
                    "answers": [{"text": answer, "answer_start": h} for h in hits]}
    return None


def build_all(out_dir: os.PathLike, data_dir: os.PathLike | None = None,
              names_caps: tuple[int, int, int] = (20000, 2000, 2000),
              qa_caps: tuple[int, int, int] = (10000, 1000, 1000), qa_version: str = "1.1") -> dict:
    """Writes every task under `out_dir` and returns the manifest (also written as JSON).

    The manifest names each built file by its path relative to `out_dir` (so the folder can be
    moved or renamed), and the food reviews, used as shipped, by their path in `data_dir`.

    Args:
      out_dir: where to write `names/`, `cloze_qa/` and `manifest.json`.
      data_dir: the shared data folder; defaults to `$TL_JAX_DATA_DIR`.
      names_caps, qa_caps: maximum examples in (train, dev, test).
      qa_version: "1.1" (answerable only) or "2.0" (unanswerable questions mixed in under the
        same qa_caps, so fewer answerable ones).
    """
    given = bool(data_dir)
    data_dir = pathlib.Path(data_dir or os.environ.get("TL_JAX_DATA_DIR", ""))
    if not (data_dir / "austen.jsonl").exists():
        raise missing_source("austen.jsonl", data_dir, given)
    out_dir = pathlib.Path(out_dir)
    (out_dir / "names").mkdir(parents=True, exist_ok=True)
    (out_dir / "cloze_qa").mkdir(parents=True, exist_ok=True)
    manifest = {"names": {}, "cloze_qa": {"version": qa_version},
                "food_reviews": {s: str((data_dir / f"food_reviews_{s}.jsonl").resolve())
                                 for s in ("train", "test")}}
    # Each task reads and tags the whole text (seconds each on the shared data): a line as
    # each is written, so a build that is busy is not taken for one that hangs.
    start = time.perf_counter()
    names = build_names(data_dir, dict(zip(SPLITS, names_caps)))
    for split in SPLITS:
        path = out_dir / "names" / f"{split}.conll"
        readers.write_conll(path, names[split])
        manifest["names"][split] = {"path": str(path.relative_to(out_dir)),
                                    "sentences": len(names[split]),
                                    "entities": sum(t.count("B-NAME") for t in
                                                    (s["tags"] for s in names[split])),
                                    "md5": _md5(path)}
    _say_built("names", manifest["names"], "sentences", time.perf_counter() - start)
    start = time.perf_counter()
    qa = build_cloze_qa(data_dir, dict(zip(SPLITS, qa_caps)), version=qa_version)
    for split in SPLITS:
        path = out_dir / "cloze_qa" / f"{split}.json"
        readers.write_squad(path, qa[split], version=qa_version)
        manifest["cloze_qa"][split] = {"path": str(path.relative_to(out_dir)),
                                       "questions": len(qa[split]),
                                       "unanswerable": sum(r["is_impossible"] for r in qa[split]),
                                       "md5": _md5(path)}
    _say_built("cloze_qa", manifest["cloze_qa"], "questions", time.perf_counter() - start,
               also="unanswerable" if qa_version.startswith("2") else "")
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _say_built(task: str, counts: dict, unit: str, seconds: float, also: str = "") -> None:
    """Prints e.g. `[tasks] names (train/dev/test): 20000/2000/2000 sentences (4.6s)`."""
    def per_split(key):
        return "/".join(str(counts[split][key]) for split in SPLITS)
    more = f", {per_split(also)} {also}" if also else ""
    print(f"[tasks] {task} ({'/'.join(SPLITS)}): {per_split(unit)} {unit}{more} ({seconds:.1f}s)",
          flush=True)


def _md5(path: pathlib.Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def run(out_dir: str, data_dir: str | None = None, qa_version: str = "1.1") -> dict:
    """CLI entry (`tl_jax build_tasks --out_dir=DIR [--qa_version=2.0]`): builds and prints counts."""
    # The build reads and tags every paragraph of the shared text before it has counts to print
    # (about 10 s on a laptop CPU): said first, so the command is not taken for a hung one.
    print(f"[tasks] Building the silver tasks (names, cloze_qa) into {out_dir}...", flush=True)
    earlier = _built_qa_version(out_dir)
    if earlier is not None and earlier != qa_version:
        # A build over one of another SQuAD version replaced it without a word.
        print(f"[tasks] note: {out_dir} holds a build with cloze_qa as SQuAD v{earlier}; it is "
              f"replaced by this one (cloze_qa as SQuAD v{qa_version})", flush=True)
    manifest = build_all(out_dir, data_dir, qa_version=qa_version)
    for task in ("names", "cloze_qa"):
        for split in SPLITS:
            info = {k: v for k, v in manifest[task][split].items() if k not in ("path", "md5")}
            print(f"{task}/{split}: {info}")
    return manifest


def _built_qa_version(out_dir: str) -> str | None:
    """The cloze_qa SQuAD version of an earlier build in `out_dir` (its manifest.json), or None
    where there is none (or no manifest that says it)."""
    try:
        version = json.loads((pathlib.Path(out_dir) / "manifest.json").read_text())[
            "cloze_qa"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) else None


def cache_dir() -> pathlib.Path:
    """Where `silver:` specs build the tasks once: `$TL_JAX_TASKS_DIR` or ~/.cache/tl_jax/tasks."""
    default = pathlib.Path(os.path.expanduser("~")) / ".cache" / "tl_jax" / "tasks"
    return pathlib.Path(os.environ.get("TL_JAX_TASKS_DIR", default))


def missing_source(name: str, data_dir: pathlib.Path, given: bool) -> FileNotFoundError:
    """The error for a source file not in `data_dir`, naming where that folder came from: a
    `data_dir` given (`tl_jax build_tasks --data_dir=...`) or $TL_JAX_DATA_DIR. "set
    TL_JAX_DATA_DIR" after `--data_dir=/nope` sent the user to the wrong setting."""
    if given:
        return FileNotFoundError(f"no {name} in data_dir={str(data_dir)!r}; it must be the shared "
                                 "data folder")
    if not os.environ.get("TL_JAX_DATA_DIR"):
        return FileNotFoundError(f"no {name}: TL_JAX_DATA_DIR is not set and no data_dir was "
                                 "given; set TL_JAX_DATA_DIR to the shared data folder")
    return FileNotFoundError(f"no {name} in TL_JAX_DATA_DIR={str(data_dir)!r}; set "
                             "TL_JAX_DATA_DIR to the shared data folder")


def silver_build_dir(data_dir: pathlib.Path, given: bool = True) -> pathlib.Path:
    """The subfolder of `cache_dir()` for tasks built from `data_dir` by this builder version
    (`given`: False where `data_dir` is $TL_JAX_DATA_DIR, which a missing file's error names)."""
    key = [f"v{BUILDER_VERSION}"]
    for name in SOURCES:
        source = (data_dir / name).resolve()
        if not source.is_file():
            raise missing_source(name, data_dir, given)
        stat = source.stat()
        key.append(f"{source}:{stat.st_size}:{stat.st_mtime_ns}")
    return cache_dir() / hashlib.md5("|".join(key).encode()).hexdigest()[:12]


def silver_path(task: str, split: str) -> pathlib.Path:
    """The file of a silver task split, building all tasks into `cache_dir()` on first use.

    Each build has its own subfolder of `cache_dir()`, named by a digest of `BUILDER_VERSION`
    and the source files it read (their path, size and modification time): other data in
    `$TL_JAX_DATA_DIR`, or a builder that changed, gets a fresh build instead of an old one.
    The build goes to a temporary folder renamed into place, so concurrent runs never read a
    half-written file.
    """
    suffix = {"names": "conll", "cloze_qa": "json"}
    if task not in suffix or split not in SPLITS:
        raise ValueError(f"unknown silver task {task}:{split}; tasks {sorted(suffix)}, "
                         f"splits {SPLITS}")
    data_dir = pathlib.Path(os.environ.get("TL_JAX_DATA_DIR", ""))
    root = silver_build_dir(data_dir, given=False)
    if not (root / "manifest.json").exists():
        print(f"[tasks] Building the silver tasks (names, cloze_qa) from {data_dir} into {root}, "
              "once; later runs reuse them.", flush=True)
        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
        try:
            build_all(tmp, data_dir)
        except BaseException:  # a bad source line, Ctrl-C: no half-built folder left behind
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # build_all has said what it built, task by task.
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first; its build is identical
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return root / task / f"{split}.{suffix[task]}"


# Last: run as a script, every function above is defined (`build_all` reports a missing source
# with `missing_source`, which stood below this block and raised a NameError instead).
if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m tl_jax.data.task_builders OUT_DIR [QA_VERSION]")
    run(sys.argv[1], qa_version=sys.argv[2] if len(sys.argv) == 3 else "1.1")
