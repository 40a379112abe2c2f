"""Corpus sources: formats, document boundaries, package corpora, tfds, and every error case."""
import bz2
import gzip
import json
import re

import pytest

from tl_jax.data import sources
from tl_jax.data.sources import SourceError, load_documents, split_sentences


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path, objects):
    return _write(path, "".join(json.dumps(o) + "\n" for o in objects))


def test_text_file_paragraphs_and_document_boundaries(tmp_path):
    path = _write(tmp_path / "a.txt", "p1 of d1\n  p2 of d1  \n\n\n p1 of d2\n\np1 of d3")
    assert load_documents(path) == [["p1 of d1", "p2 of d1"], ["p1 of d2"], ["p1 of d3"]]


def test_jsonl_grouping_auto_explicit_and_none(tmp_path):
    rows = [{"title": "A", "book": "x", "text": "a1"}, {"title": "A", "book": "y", "text": "a2"},
            {"title": "B", "book": "y", "text": "b1\nb2"}, {"title": "A", "book": "y", "text": "a3"}]
    path = _jsonl(tmp_path / "c.jsonl", rows)
    # Auto-detect prefers "title"; consecutive equal values group, a later repeat starts anew.
    assert load_documents(path) == [["a1", "a2"], ["b1", "b2"], ["a3"]]
    assert load_documents(path, group_field="book") == [["a1"], ["a2", "b1", "b2", "a3"]]
    plain = _jsonl(tmp_path / "plain.jsonl", [{"text": "one"}, {"text": "two"}])
    assert load_documents(plain) == [["one"], ["two"]]
    other = _jsonl(tmp_path / "o.jsonl", [{"body": "x", "doc_id": 1}, {"body": "y", "doc_id": 1}])
    assert load_documents(other, text_field="body") == [["x", "y"]]


def test_real_jsonl_files_match_their_readme(data_dir):
    wiki = load_documents(str(data_dir / "enwiki_sample.jsonl"))
    assert len(wiki) == 106 and sum(len(d) for d in wiki) == 5579
    austen = load_documents(str(data_dir / "austen.jsonl"))
    assert len(austen) == 6  # one document per novel
    assert austen[0][0] == "SENSE AND SENSIBILITY"


def test_globs_compressed_files_and_comma_lists(tmp_path):
    _write(tmp_path / "b.txt", "second")
    _write(tmp_path / "a.txt", "first")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert load_documents(str(tmp_path / "*.txt")) == [["first"], ["second"]]
    spec = f"{tmp_path / 'c.jsonl.gz'}, {tmp_path / '[b]*.txt'}"
    assert load_documents(spec) == [["zipped"], ["second"]]
    # A file whose name has glob characters is read as named, not matched as a pattern.
    _write(tmp_path / "notes[1].txt", "bracketed")
    assert load_documents(str(tmp_path / "notes[1].txt")) == [["bracketed"]]


def test_package_corpora_need_no_setup():
    lee = load_documents("gensim:lee")
    assert len(lee) == 300 and all(len(d) == 1 for d in lee)
    wiki = sources.load_gensim_enwiki()
    assert 100 <= len(wiki) <= 110  # ~106 articles; redirect pages dropped
    units = [u for d in wiki for u in d]
    assert sum(len(u.split()) for u in units) > 300_000
    # Markup is stripped: no headings, bold/italic quotes or redirects remain.
    assert not any(re.match(r"^=+.*=+$", u) or "''" in u for u in units)
    assert not any(u.lower().startswith("#redirect") for u in units)


def test_tfds_dataset_read_without_tensorflow(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    class TlJaxSourcesTestCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"body": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"body": f"Doc {i} para one.\n\nDoc {i} para two."}

    data = tmp_path / "tfds"
    TlJaxSourcesTestCorpus(data_dir=str(data), file_format="array_record").download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(data))
    docs = load_documents("tfds:tl_jax_sources_test_corpus:train", text_field="body")
    assert sorted(docs) == [[f"Doc {i} para one.", f"Doc {i} para two."] for i in range(4)]
    # Streamed (`tl_jax tokenize`, static vectors), a record is read as its document is taken.
    streams = sources.stream_sources("tfds:tl_jax_sources_test_corpus:train", "body")
    source, size, pairs = next(streams)
    assert (source, size) == ("tfds:tl_jax_sources_test_corpus:train", 4)
    first = next(pairs)
    assert first[1] == 1  # one record read so far
    pairs = [first] + list(pairs)
    assert [d for d, _ in pairs] == docs and [done for _, done in pairs] == [1, 2, 3, 4]
    assert next(streams, None) is None
    from tl_jax.data import tokenized
    meta = tokenized.write("tfds:tl_jax_sources_test_corpus:train", None, str(tmp_path / "tok"),
                           text_field="body", progress=False)
    assert (meta["documents"], meta["units"]) == (4, 8)
    assert list(sources.iter_documents("tfds:tl_jax_sources_test_corpus:train", "body")) == docs
    with pytest.raises(SourceError, match="missing text field 'text'"):
        load_documents("tfds:tl_jax_sources_test_corpus")
    with pytest.raises(SourceError, match="Unknown tfds dataset 'no_such_dataset_xyz'"):
        load_documents("tfds:no_such_dataset_xyz:train")


def test_a_tfds_dataset_prepared_as_tfrecord_is_one_line_naming_the_key(tmp_path, monkeypatch):
    # tfds.data_source reads random-access formats only; a copy prepared as TFRECORD (tfds'
    # default where TensorFlow is installed) raised tfds' multi-line NotImplementedError ("Possible
    # root causes:\n\t* ..."), inside a line that named no config key.
    import pathlib
    import socket

    import tensorflow_datasets as tfds

    class TlJaxSourcesTfrecordCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"text": "One document."}

    data = tmp_path / "tfds"
    # Writing TFRECORD needs TensorFlow (not a dependency): an array_record copy whose
    # dataset_info.json then says TFRECORD is what tfds sees of a TFRECORD copy.
    builder = TlJaxSourcesTfrecordCorpus(data_dir=str(data), file_format="array_record")
    builder.download_and_prepare()
    info_path = pathlib.Path(builder.data_dir) / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    monkeypatch.setenv("TFDS_DATA_DIR", str(data))

    def no_network(*args, **kwargs):
        raise AssertionError("reading a prepared tfds copy reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(SourceError) as e:
        load_documents("tfds:tl_jax_sources_tfrecord_corpus", key="data.corpus")
    message = str(e.value)
    assert "\n" not in message and "\t" not in message, message
    assert message.startswith(
        f"data.corpus: tfds dataset 'tl_jax_sources_tfrecord_corpus' is prepared in tfrecord "
        f"format in {builder.data_dir}, which tfds reads only through TensorFlow"), message
    assert "file_format=array_record" in message and "delete that copy" in message, message

def test_an_unknown_tfds_name_is_one_line_naming_the_key_and_tfds_close_match(tmp_path,
                                                                              monkeypatch):
    # tfds' own error listed every registered builder (~250 lines) and a checklist for builder
    # authors, with its "did you mean" at the bottom. tfds looks names up locally: the socket
    # guard shows nothing is downloaded or asked for.
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("an unknown tfds name reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(SourceError) as e:
        load_documents("tfds:imdb_reviewz", key="data.corpus")
    assert str(e.value).startswith(
        "data.corpus: unknown tfds dataset 'imdb_reviewz' (did you mean 'imdb_reviews'?): "
        f"tensorflow_datasets {__import__('tensorflow_datasets').__version__} finds no builder "
        f"of that name, and {tmp_path} holds no prepared copy of it (set TFDS_DATA_DIR to the "
        "folder that does)")
    # Without TensorFlow (as here: it is not a dependency) tfds registers none of the builders
    # whose code imports it, glue's and wikipedia's among them: the message says so, not just
    # "unknown".
    import importlib.util
    assert ("not installed here" in str(e.value)) == (importlib.util.find_spec("tensorflow")
                                                      is None)
    # A name with no close match gets no guess; still one line.
    with pytest.raises(SourceError, match=r"^data.corpus: unknown tfds dataset "
                                          r"'no_such_dataset_xyz': tensorflow_datasets") as e:
        load_documents("tfds:no_such_dataset_xyz:test", key="data.corpus")
    assert "\n" not in str(e.value) and "did you mean" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing prepared or downloaded there either


def test_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(SourceError, match="Corpus file not found: .*nope.txt"):
        load_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(SourceError, match="matches no files"):
        load_documents(str(tmp_path / "*.jsonl"))
    with pytest.raises(SourceError, match="Empty corpus spec"):
        load_documents(" , ")
    empty = _write(tmp_path / "empty.txt", "\n\n  \n")
    with pytest.raises(SourceError, match="empty.txt contains no text"):
        load_documents(empty)
    bad = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:3: malformed JSON"):
        load_documents(bad)
    control = _write(tmp_path / "control.jsonl", '{"text": "a\tb"}\n')  # a raw tab in a string
    with pytest.raises(SourceError) as e:
        load_documents(control)
    assert str(e.value).endswith("control.jsonl:1: malformed JSON (Invalid control character at "
                                 "column 12).")
    with pytest.raises(SourceError, match=r"Corpus file not found: \$TL_JAX_UNSET_DIR_XYZ/a.txt "
                                          r"\(\$TL_JAX_UNSET_DIR_XYZ is not set"):
        load_documents("$TL_JAX_UNSET_DIR_XYZ/a.txt")
    nofield = _jsonl(tmp_path / "nofield.jsonl", [{"text": "ok"}, {"body": "x"}])
    with pytest.raises(SourceError, match=r"nofield.jsonl:2: missing text field 'text' .*"
                                          r"data.text_field in a config, --text_field for "
                                          r"`tl_jax tokenize`\) to the right key"):
        load_documents(nofield)
    # A `tl_jax static` config's field is `text_field` (its corpus key is "corpus"): it was
    # named as data.text_field.
    with pytest.raises(SourceError, match=r"nofield.jsonl:2: missing text field 'text' .*set the "
                                          r"text field \(text_field in the config\) to the"):
        load_documents(nofield, key="corpus")
    with pytest.raises(SourceError, match=r"\(data.text_field in a config, --text_field for"):
        load_documents(nofield, key="data.corpus")
    with pytest.raises(SourceError, match=r"set the text field \(--text_field\) to the"):
        load_documents(nofield, key="--corpus")  # `tl_jax tokenize`
    notstr = _jsonl(tmp_path / "notstr.jsonl", [{"text": 3}])
    with pytest.raises(SourceError, match=r"notstr.jsonl:1: text field 'text' is a number \(3\), "
                                          "expected a string"):
        load_documents(notstr)
    null = _jsonl(tmp_path / "null.jsonl", [{"text": None}])  # it said "NoneType"
    with pytest.raises(SourceError, match=r"null.jsonl:1: text field 'text' is null, expected"):
        load_documents(null)
    array = _write(tmp_path / "array.jsonl", '["text"]\n')
    with pytest.raises(SourceError, match=r"array.jsonl:1: expected a JSON object"):
        load_documents(array)
    nogroup = _jsonl(tmp_path / "nogroup.jsonl", [{"book": "a", "text": "x"}, {"text": "y"}])
    with pytest.raises(SourceError, match=r"nogroup.jsonl:2: missing group field 'book' \(keys: "
                                          r"\['text'\]\) \(the group field, detected on line 1; "
                                          r"set data.group_field"):
        load_documents(nogroup)
    with pytest.raises(SourceError, match=r"nogroup.jsonl:2: missing group field 'book' "
                                          r"\(keys: \['text'\]\).$"):
        load_documents(nogroup, group_field="book")  # asked for: nothing was detected
    with pytest.raises(SourceError, match="Unknown gensim corpus 'gensim:brown'"):
        load_documents("gensim:brown")


def test_broken_compressed_files_name_the_file(tmp_path):
    fake = tmp_path / "fake.txt.gz"
    fake.write_text("Not compressed at all.\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"fake.txt.gz cannot be decompressed as gzip .*"
                                          "not gzip data or it is truncated"):
        load_documents(str(fake))
    whole = gzip.compress(b'{"text": "a paragraph"}\n' * 2000)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])  # a download cut short
    with pytest.raises(SourceError, match=r"cut.jsonl.gz cannot be decompressed as gzip \(EOF"):
        load_documents(str(tmp_path / "cut.jsonl.gz"))
    (tmp_path / "fake.jsonl.bz2").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"fake.jsonl.bz2 cannot be decompressed as bz2"):
        load_documents(str(tmp_path / "fake.jsonl.bz2"))


def test_extensions_are_read_in_any_case(tmp_path):
    """DATA.JSONL was read as plain text (its braces and keys trained on as prose), EXPORT.JSON
    too instead of being refused, and CORPUS.TXT.GZ as undecodable plain text."""
    rows = [{"title": "A", "text": "one"}, {"title": "A", "text": "two"}]
    assert load_documents(_jsonl(tmp_path / "DATA.JSONL", rows)) == [["one", "two"]]
    with pytest.raises(SourceError, match=r"EXPORT.JSON is .json: .*rename it to .jsonl"):
        load_documents(_jsonl(tmp_path / "EXPORT.JSON", rows))
    (tmp_path / "CORPUS.TXT.GZ").write_bytes(gzip.compress(b"First.\n\nSecond.\n"))
    assert load_documents(str(tmp_path / "CORPUS.TXT.GZ")) == [["First."], ["Second."]]
    (tmp_path / "ROWS.Jsonl.Bz2").write_bytes(bz2.compress(b'{"text": "x"}\n'))
    assert load_documents(str(tmp_path / "ROWS.Jsonl.Bz2")) == [["x"]]


def test_a_json_file_is_not_read_as_plain_text(tmp_path):
    # Hugging Face datasets' to_json writes JSON lines named .json: as plain text, the braces
    # and keys would be trained on.
    path = _jsonl(tmp_path / "export.json", [{"text": "one"}, {"text": "two"}])
    with pytest.raises(SourceError, match=r"export.json is .json: .*rename it to .jsonl"):
        load_documents(path)


def test_files_that_are_not_utf8_name_the_file_and_line(tmp_path):
    # A Windows-1252 export (e.g. "café"): a bare UnicodeDecodeError named neither.
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"First paragraph.\n\nCaf\xe9 society.\n")
    with pytest.raises(SourceError, match=r"latin.txt:3: not UTF-8 text \(byte b'\\xe9'"):
        load_documents(str(latin))
    packed = tmp_path / "latin.jsonl.gz"
    with gzip.open(packed, "wb") as f:
        f.write(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=r"latin.jsonl.gz:2: not UTF-8 text"):
        load_documents(str(packed))
    wide = tmp_path / "wide.txt"  # UTF-16: not "iconv -f cp1252", which gave NULs as text
    wide.write_text("Caf\u00e9 society.\n", encoding="utf-16")
    with pytest.raises(SourceError, match=r"wide.txt:1: not UTF-8 text \(it starts with a UTF-16 "
                                          r"byte-order mark.*`iconv -f utf-16 -t utf-8`\.$"):
        load_documents(str(wide))


def test_byte_order_mark_is_not_text(tmp_path):
    # Windows editors start UTF-8 files with a BOM; the task readers skip it, so must corpora.
    lines = json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n"
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + lines.encode("utf-8"))
    assert load_documents(str(bom)) == [["first"], ["second"]]
    with gzip.open(tmp_path / "bom.jsonl.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + lines.encode("utf-8"))
    assert load_documents(str(tmp_path / "bom.jsonl.gz")) == [["first"], ["second"]]
    text = tmp_path / "bom.txt"
    text.write_bytes(b"\xef\xbb\xbfHello there.\n\nSecond.\n")
    assert load_documents(str(text)) == [["Hello there."], ["Second."]]


def test_sentence_splitter_keeps_all_text(data_dir):
    lines = (data_dir / "austen.jsonl").read_text(encoding="utf-8").splitlines()[:400]
    norm = lambda s: " ".join(s.split())  # noqa: E731
    total = 0
    for line in lines:
        text = json.loads(line)["text"]
        sentences = split_sentences(text)
        total += len(sentences)
        # Splitting only happens at whitespace: rejoining loses no character.
        assert norm(" ".join(sentences)) == norm(text)
        assert all(s == s.strip() and s for s in sentences)
    assert total > len(lines) * 1.5  # paragraphs really are split


def test_sentence_splitter_examples():
    assert split_sentences('He said "Stop." Then Mr. Darcy left! Why? (Nobody knew.) 3 cats.') == [
        'He said "Stop."', "Then Mr. Darcy left!", "Why?", "(Nobody knew.)", "3 cats."]
    assert split_sentences("no end punctuation") == ["no end punctuation"]
    assert split_sentences("  ") == []


def test_every_corpus_reading_task_names_its_key_for_an_unknown_tfds_name(tmp_path,
                                                                          monkeypatch):
    # BERT/ELECTRA pretraining named data.corpus; GPT, the biLM and static vectors said only
    # "Unknown tfds dataset".
    from tl_jax import config as config_lib, static_train
    from tl_jax.data import word_vectors
    from tl_jax.tasks import bilm, clm

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    corpus = "tfds:no_such_dataset_xyz"
    with pytest.raises(SourceError, match=r"^corpus: unknown tfds dataset 'no_such_dataset_xyz'"):
        word_vectors.load_sentences(corpus, key="corpus")
    static = config_lib.load_config("configs/word2vec.py:tiny", [f"corpus={corpus}"])
    with pytest.raises(SourceError, match=r"^corpus: unknown tfds dataset"):
        static_train.run(static, str(tmp_path / "w2v"))
    for spec, task in (("configs/gpt_pretrain.py:tiny", clm.Task),
                       ("configs/elmo_pretrain.py:tiny", bilm.Task)):
        config = config_lib.load_config(spec, [f"data.corpus={corpus}"])
        with pytest.raises(SourceError, match=r"^data.corpus: unknown tfds dataset"):
            task(config, str(tmp_path / "run"))


def test_documents_one_at_a_time_are_load_documents_and_read_as_they_are_given(tmp_path,
                                                                               data_dir):
    """`iter_documents` (static vectors' reader) and `stream_sources` (`tl_jax tokenize`'s)
    give `load_documents`' documents, or its error, for every kind of file and mistake; they
    read a file as the documents are taken, so a huge file is never held whole, and a malformed
    line surfaces when it is reached."""
    _write(tmp_path / "a.txt", "p1\n  p2  \n\n\n d2\n")
    _jsonl(tmp_path / "b.jsonl", [{"title": "A", "text": "a1"}, {"title": "A", "text": "a2\nx"},
                                  {"title": "B", "text": "b1"}])
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    _write(tmp_path / "empty.txt", "\n \n")
    _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "broken"\n')
    (tmp_path / "latin.txt").write_bytes(b"First.\n\nCaf\xe9.\n")
    (tmp_path / "fake.txt.gz").write_text("plain\n")
    specs = [f"{tmp_path}/a.txt,{tmp_path}/b.jsonl,{tmp_path}/c.jsonl.gz",
             f"{tmp_path}/*.txt", f"{tmp_path}/empty.txt", f"{tmp_path}/bad.jsonl",
             f"{tmp_path}/latin.txt", f"{tmp_path}/fake.txt.gz", f"{tmp_path}/none.txt", " , ",
             f"{data_dir}/austen.jsonl,{data_dir}/enwiki_sample.jsonl"]
    def streamed(spec, key):  # `stream_sources`' documents, checking how far each was read
        for source, size, documents in sources.stream_sources(spec, key=key):
            done = 0
            for document, done_now in documents:
                assert done <= done_now <= size, spec
                done = done_now
                yield document
            assert done == size, spec  # a file's bytes, compressed ones too; or its documents

    for spec in specs + ["gensim:lee"]:
        try:
            want = load_documents(spec, key="corpus")
        except SourceError as e:
            for read in (sources.iter_documents, streamed):
                with pytest.raises(SourceError) as got:
                    list(read(spec, key="corpus"))
                assert str(got.value) == str(e), spec
        else:
            assert list(sources.iter_documents(spec, key="corpus")) == want, spec
            assert list(streamed(spec, key="corpus")) == want, spec
    # The first documents of a file with a malformed line further on come without the error (a
    # document is given once the line after it has been read).
    _write(tmp_path / "late.jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": "3"}\n{"t\n')
    documents = sources.iter_documents(str(tmp_path / "late.jsonl"))
    assert next(documents) == ["one"] and next(documents) == ["two"]
    with pytest.raises(SourceError, match=r"late.jsonl:4: malformed JSON"):
        next(documents)


def test_an_unfinished_tokenize_folder_is_named_as_such(tmp_path):
    """A `tl_jax tokenize` folder without its corpus.json (interrupted, damaged), the
    `.partial` one an interrupted run leaves, and the finished name when only that exists:
    each named as unfinished, not as "not a file"."""
    damaged = tmp_path / "nometa.tok"
    damaged.mkdir()
    (damaged / "tokens.int32").write_bytes(b"\0" * 8)
    with pytest.raises(SourceError) as e:
        load_documents(str(damaged))
    assert str(e.value) == (f"Corpus folder {damaged} has no corpus.json: not a finished "
                            "`tl_jax tokenize` folder (it was interrupted or is damaged); "
                            "tokenise the corpus again")
    partial = tmp_path / "big.tok.partial"
    partial.mkdir()  # kill -9 can leave it before anything is written into it
    with pytest.raises(SourceError, match=r"big.tok.partial has no corpus.json: not a finished "
                                          r"`tl_jax tokenize` folder"):
        load_documents(str(partial))
    with pytest.raises(SourceError) as e:
        load_documents(str(tmp_path / "big.tok"))
    assert str(e.value) == (f"Corpus file not found: {tmp_path / 'big.tok'} (only {partial} is "
                            "there: an unfinished `tl_jax tokenize` folder, left when it was "
                            "interrupted; tokenise again)")


def test_a_folder_of_text_files_is_pointed_to_a_glob(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    with pytest.raises(SourceError, match=r"^Corpus path is not a file: .*corpus$"):
        load_documents(str(folder))  # empty: no glob to suggest
    _write(folder / "a.txt", "one")
    _write(folder / "b.txt", "two")
    _write(folder / "README.md", "about")
    with pytest.raises(SourceError) as e:
        load_documents(str(folder))
    assert str(e.value) == (f"Corpus path is a folder, not a file: {folder}; name its files "
                            f"with a glob such as {str(folder / '*.txt')!r}")
    assert load_documents(str(folder / "*.txt")) == [["one"], ["two"]]
