"""Readers of downstream task files: formats, round trips, and errors that name file and line."""
import json

import pytest

from tl_jax.data import readers


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_csv_tsv_give_the_same_records(tmp_path):
    rows = [("a fine day", "x y", "pos"), ('say "hi", then go', "z", "neg")]
    jsonl = _write(tmp_path / "d.jsonl", "".join(
        json.dumps({"sentence": a, "other": b, "gold": c}) + "\n\n" for a, b, c in rows))
    csv_text = "sentence,other,gold\n" + "".join(
        '"%s",%s,%s\n' % (a.replace('"', '""'), b, c) for a, b, c in rows)
    tsv_text = "sentence\tother\tgold\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows)
    fields = dict(text_field="sentence", text_b_field="other", label_field="gold")
    expected = [{"text": a, "text_b": b, "label": c} for a, b, c in rows]
    for path in (jsonl, _write(tmp_path / "d.csv", csv_text), _write(tmp_path / "d.tsv", tsv_text)):
        assert readers.read_classification(path, **fields) == expected, path.suffix


def test_labels_are_one_class_per_value(tmp_path):
    # A jsonl file written by pandas may mix 1 and 1.0; a CSV may have "pos, neg".
    mixed = _write(tmp_path / "m.jsonl", "".join(json.dumps({"text": "t", "label": v}) + "\n"
                                                 for v in (1, 1.0, "0", 0.0, 2.5, " pos ")))
    assert [r["label"] for r in readers.read_classification(mixed)] == [
        "1", "1", "0", "0", "2.5", "pos"]
    # JSON booleans (pandas writes a bool column so) as JSON spells them; they were "True".
    flags = _write(tmp_path / "f.jsonl", "".join(json.dumps({"text": "t", "label": v}) + "\n"
                                                 for v in (True, "true", False, 1)))
    assert [r["label"] for r in readers.read_classification(flags)] == [
        "true", "true", "false", "1"]
    spaced = _write(tmp_path / "s.csv", "text,label\nfine, pos\nbad,neg \n")
    assert [r["label"] for r in readers.read_classification(spaced)] == ["pos", "neg"]
    nested = _write(tmp_path / "n.jsonl", '{"text": "t", "label": "a"}\n{"text": "t", "label": [1]}\n')
    with pytest.raises(readers.DataFormatError, match=r"n.jsonl:2: field 'label' must be a string"):
        readers.read_classification(nested)
    blank = _write(tmp_path / "b.csv", "text,label\nfine,a\nbad, \n")
    with pytest.raises(readers.DataFormatError, match=r"b.csv:3: empty label"):
        readers.read_classification(blank)


def test_a_text_field_that_is_not_a_string_is_named_in_json_words(tmp_path):
    # `true` was read as the text "True" and 5 as "5"; the corpus reader refuses them so.
    for value, words in ((True, "a boolean (true)"), (5, "a number (5)"), (2.5, "a number (2.5)"),
                         (["a", "b"], 'a list (["a", "b"])'), ({"t": 1}, 'an object ({"t": 1})')):
        for field in ("text", "text_b"):
            row = {"text": "fine", "text_b": "also fine", "label": "a", field: value}
            path = _write(tmp_path / "t.jsonl", '{"text": "ok", "text_b": "ok", "label": "a"}\n'
                          + json.dumps(row) + "\n")
            message = f"t.jsonl:2: field '{field}' must be a string, got {words}"
            with pytest.raises(readers.DataFormatError) as error:
                readers.read_classification(path, text_b_field="text_b")
            assert str(error.value).endswith(message), (value, field, str(error.value))
    # A label may be a number or a boolean (one class per value, see above), not a list.
    path = _write(tmp_path / "l.jsonl", '{"text": "ok", "label": {"a": 1}}\n')
    with pytest.raises(readers.DataFormatError, match=r"l.jsonl:1: field 'label' must be a string "
                       r"or a number"):
        readers.read_classification(path)


def test_a_blank_label_cell_is_unlabelled_for_prediction(tmp_path):
    # A spreadsheet of new rows keeps the label column, left empty: `tl_jax predict` failed
    # with "empty label" instead of predicting them (training still requires every label).
    path = _write(tmp_path / "new.csv", "text,label\ngreat snack,\nawful taste, \nfine,pos\n")
    records = readers.read_classification(path, require_labels=False)
    assert [r["label"] for r in records] == [None, None, "pos"]
    with pytest.raises(readers.DataFormatError, match=r"new.csv:2: empty label"):
        readers.read_classification(path)


def test_classification_errors_name_file_and_line(tmp_path):
    bad_json = _write(tmp_path / "bad.jsonl", '{"text": "ok", "label": "a"}\n{"text": oops}\n')
    with pytest.raises(readers.DataFormatError, match=r"bad.jsonl:2: invalid JSON"):
        readers.read_classification(bad_json)
    with pytest.raises(readers.DataFormatError) as error:  # was "invalid JSON (Expecting value)"
        readers.read_classification(bad_json)
    assert str(error.value).endswith("bad.jsonl:2: invalid JSON (Expecting value at column 10)")
    # A tab inside a string: json's message ended in a dangling "at" ("character at)").
    tab = _write(tmp_path / "tab.jsonl", '{"text": "ok", "label": "a"}\n{"text": "a\tb"}\n')
    with pytest.raises(readers.DataFormatError) as error:
        readers.read_classification(tab)
    assert str(error.value).endswith(
        "tab.jsonl:2: invalid JSON (Invalid control character at column 12)")
    missing = _write(tmp_path / "missing.jsonl", '{"text": "ok", "label": "a"}\n\n{"text": "x"}\n')
    with pytest.raises(readers.DataFormatError, match=r"missing.jsonl:3: missing field 'label'"):
        readers.read_classification(missing)
    ragged = _write(tmp_path / "ragged.tsv", "text\tlabel\nfine\ta\ntoo\tmany\tcells\n")
    with pytest.raises(readers.DataFormatError, match=r"ragged.tsv:3: 3 columns, header has 2"):
        readers.read_classification(ragged)
    empty = _write(tmp_path / "empty.jsonl", "\n")
    with pytest.raises(readers.DataFormatError, match=r"empty.jsonl: no examples"):
        readers.read_classification(empty)
    for name in ("header.csv", "header.tsv"):  # was "no examples (empty file)"
        header = _write(tmp_path / name,
                        "text,label\n\n" if name.endswith("csv") else "text\tlabel\n")
        with pytest.raises(readers.DataFormatError,
                           match=rf"{name}: no examples: a header row and no rows after it"):
            readers.read_classification(header)
    with pytest.raises(readers.DataFormatError, match="unknown classification format '.txt'"):
        readers.read_classification(_write(tmp_path / "x.txt", "a"))


def test_csv_rows_are_placed_where_they_start(tmp_path):
    # An unclosed quote takes every line up to the next quote into one cell: the error named the
    # line where that swallowed row ended, and a cell past csv's size limit raised a bare
    # csv.Error (a traceback from the command line) naming neither file nor line.
    unclosed = _write(tmp_path / "u.csv", 'text,label\nfine,a\n"he said hi,b\nnext,a\nlast,b\n')
    with pytest.raises(readers.DataFormatError,
                       match=r"u.csv:3: 1 columns, header has 2 .* runs to line 5: an unclosed"):
        readers.read_classification(unclosed)
    huge = _write(tmp_path / "h.csv", 'text,label\nfine,a\n"' + "word " * 30000 + "\nnext,a\n")
    with pytest.raises(readers.DataFormatError, match=r"h.csv:3: field larger than field limit"):
        readers.read_classification(huge)
    # A quoted cell over several lines is fine, and a later error names its own line.
    multi = _write(tmp_path / "m.csv", 'text,label\n"two\nlines",a\nfine,b\nbad\n')
    with pytest.raises(readers.DataFormatError, match=r"m.csv:5: 1 columns, header has 2 \("):
        readers.read_classification(multi)


def test_a_tsv_is_read_as_glue_writes_it_one_line_per_row_and_quotes_are_text(tmp_path):
    # With CSV's quoting, a sentence starting with '"' ran to the next line's '"': two
    # examples vanished into one text (tabs, labels and all) under the wrong label, and the
    # quotes of '"Yes," said Elizabeth' were dropped.
    quoted = _write(tmp_path / "q.tsv", 'text\tlabel\nfine\ta\n"he said hi\tb\n'
                                        'then "yes" she said\ta\n"Yes," said Elizabeth\tb\n')
    assert [(r["text"], r["label"]) for r in readers.read_classification(quoted)] == [
        ("fine", "a"), ('"he said hi', "b"), ('then "yes" she said', "a"),
        ('"Yes," said Elizabeth', "b")]
    # So a line break ends a row, quoted or not.
    split = _write(tmp_path / "m.tsv", 'text\tlabel\n"two\nlines"\ta\n')
    with pytest.raises(readers.DataFormatError, match=r"m.tsv:2: 1 columns, header has 2"):
        readers.read_classification(split)


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    # The rows became dicts: text,text,label silently trained on the second text column only.
    twice = _write(tmp_path / "t.csv", "text,text,label\nfirst,second,a\n")
    with pytest.raises(readers.DataFormatError,
                       match=r"t.csv:1: header names column\(s\) \['text'\] more than once"):
        readers.read_classification(twice)


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    # Excel's "CSV UTF-8" and Notepad write one. The CSV's first column was '\ufefftext' (so
    # "missing field 'text'"), a jsonl file was "invalid JSON", and in CoNLL it silently joined
    # the first token ('\ufeff-DOCSTART-' became a one-word sentence tagged O).
    bom = "\ufeff"
    files = {"d.csv": "text,label\nfine,a\n", "d.tsv": "text\tlabel\nfine\ta\n",
             "d.jsonl": '{"text": "fine", "label": "a"}\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(bom + text, encoding="utf-8")
        assert readers.read_classification(tmp_path / name) == [
            {"text": "fine", "text_b": None, "label": "a"}], name
    conll = _write(tmp_path / "d.conll", bom + "-DOCSTART- O\n\nEmma B-PER\nsmiled O\n")
    assert readers.read_conll(conll) == [{"tokens": ["Emma", "smiled"], "tags": ["B-PER", "O"]}]
    squad = tmp_path / "d.json"
    readers.write_squad(squad, [{"id": "q", "title": "t", "question": "Who?", "context": "Emma.",
                                 "answers": [{"text": "Emma", "answer_start": 0}]}])
    squad.write_text(bom + squad.read_text(encoding="utf-8"), encoding="utf-8")
    assert [r["answers"] for r in readers.read_squad(squad)] == [
        [{"text": "Emma", "answer_start": 0}]]


def test_a_text_field_must_hold_text(tmp_path):
    # A list was read as its Python repr ("['a', 'b']") and trained on; null was reported as a
    # "missing" field while the listed fields included it.
    listed = _write(tmp_path / "l.jsonl", '{"text": "ok", "label": "a"}\n{"text": ["a", "b"], '
                                          '"label": "a"}\n')
    with pytest.raises(readers.DataFormatError, match=r"l.jsonl:2: field 'text' must be a string"):
        readers.read_classification(listed)
    null = _write(tmp_path / "n.jsonl", '{"text": "ok", "label": "a", "b": null}\n')
    with pytest.raises(readers.DataFormatError, match=r"n.jsonl:1: field 'b' is null"):
        readers.read_classification(null, text_b_field="b")


def test_files_that_are_not_utf8_name_the_file_and_line(tmp_path):
    # Windows-1252 "café" on line 3 of each: a bare UnicodeDecodeError named neither.
    files = {
        "latin.csv": (b"text,label\nfine,a\ncaf\xe9,b\n", "classification", 3),
        "latin.jsonl": (b'{"text": "ok", "label": "a"}\n\n{"text": "caf\xe9", "label": "b"}\n',
                        "classification", 3),
        "latin.conll": (b"fine O\n\ncaf\xe9 B-X\n", "tagging", 3),
        "latin.json": (b'{"data": [\n{"title": "t",\n "paragraphs": [{"context": "caf\xe9"}]}]}',
                       "squad", 3),
    }
    for name, (content, kind, line) in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(readers.DataFormatError,
                           match=rf"{name}:{line}: not UTF-8 text \(byte b'\\xe9'"):
            readers.read_records(str(tmp_path / name), kind)
    # UTF-16 (Excel's "Unicode Text"): converted from cp1252 as the hint said, every other
    # character of it became a NUL, which was read as text.
    for name, kind in (("wide.tsv", "classification"), ("wide.conll", "tagging"),
                       ("wide.json", "squad")):
        (tmp_path / name).write_text("text\tlabel\ncaf\u00e9\tb\n", encoding="utf-16")
        with pytest.raises(readers.DataFormatError,
                           match=rf"{name}:1: not UTF-8 text \(it starts with a UTF-16 byte-order "
                                 r"mark.*`iconv -f utf-16 -t utf-8`$"):
            readers.read_records(str(tmp_path / name), kind)


def test_real_food_reviews(data_dir):
    train = readers.read_records(str(data_dir / "food_reviews_train.jsonl"), "classification")
    test = readers.read_records(str(data_dir / "food_reviews_test.jsonl"), "classification")
    assert len(train) == 4000 and len(test) == 1000
    assert sum(r["label"] == "great" for r in train) == 2600
    assert sum(r["label"] == "great" for r in test) == 658


def test_gensim_polarity_is_zero_setup_and_balanced():
    train = readers.read_records("gensim:polarity:train", "classification")
    test = readers.read_records("gensim:polarity:test", "classification")
    assert (len(train), len(test)) == (160, 40)
    assert sorted({r["label"] for r in test}) == ["neg", "pos"]
    assert sum(r["label"] == "pos" for r in test) == 20
    assert not {r["text"] for r in train} & {r["text"] for r in test}


def test_conll_round_trip_and_docstart(tmp_path):
    sentences = [{"tokens": ["EU", "rejects", "German", "call"],
                  "tags": ["B-ORG", "O", "B-MISC", "O"]},
                 {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]
    path = tmp_path / "out.conll"
    readers.write_conll(path, sentences)
    assert readers.read_conll(path) == sentences
    # Four CoNLL-2003 columns with a -DOCSTART- header: tokens from column 0, tags from the last.
    four = _write(tmp_path / "four.conll", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n"
                  "rejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    assert readers.read_conll(four) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                                        {"tokens": ["Peter"], "tags": ["B-PER"]}]


def test_conll_columns_are_split_at_ascii_spaces_and_tabs_only(tmp_path, data_dir):
    """A token holding a non-breaking or other Unicode space is one token (str.split() made it
    two columns: "3 columns, expected 2"), CRLF line ends included; a word the tokenizer
    normalises away (a lone U+00A0) gets no sub-token, and the words after it keep their tags."""
    import numpy as np

    from tl_jax.data import features
    from tl_jax.data.tokenizer import Tokenizer

    path = tmp_path / "nbsp.conll"
    path.write_bytes("-DOCSTART- O\r\n\r\nNew\u00a0York\tB-LOC\r\n\u00a0 B-MISC\r\nis\tO\r\n"
                     "x\u2009y  B-PER\r\n\u3000\r\nbig O\r\n".encode("utf-8"))
    tokens = ["New\u00a0York", "\u00a0", "is", "x\u2009y"]
    tags = ["B-LOC", "B-MISC", "O", "B-PER"]
    # A line of only whitespace, Unicode included, still ends the sentence.
    sentences = [{"tokens": tokens, "tags": tags}, {"tokens": ["big"], "tags": ["O"]}]
    assert readers.read_conll(path) == sentences
    assert readers.record_lines(str(path), "tagging", tokens=True) == [[3, 4, 5, 6], [8]]
    assert readers.read_conll(path, require_labels=False) == sentences
    # write_conll keeps such tokens, and still refuses what would split a column or a line.
    readers.write_conll(tmp_path / "out.conll", sentences)
    assert readers.read_conll(tmp_path / "out.conll") == sentences
    for bad in ("a b", "a\tb", "", "a\u2028b", "a\rb"):
        with pytest.raises(ValueError, match="cannot be empty or hold spaces, tabs or line breaks"):
            readers.write_conll(tmp_path / "bad.conll", [{"tokens": [bad], "tags": ["O"]}])

    # The BERT normaliser turns U+00A0 and U+2009 into spaces: "New York" is two sub-tokens of
    # word 0, and the lone U+00A0 becomes no sub-token at all.
    tokenizer = Tokenizer.load(str(data_dir / "models" / "all-MiniLM-L6-v2"))
    label_map = {"O": 0, "B-LOC": 1, "B-MISC": 2, "B-PER": 3}
    out = features.encode_tagging(tokenizer, sentences[:1], label_map, max_seq_length=12)
    assert tokenizer.decode(out["input_ids"][0]) == "new york is x y"
    ignore = features.IGNORE
    #                [CLS]   new    york   is     x      y     [SEP], padding
    assert out["labels"][0].tolist() == [ignore, 1, ignore, 0, 3, ignore] + [ignore] * 6
    assert out["word_index"][0].tolist() == [-1, 0, -1, 2, 3, -1] + [-1] * 6
    # Predicted back onto the words: the word without a sub-token is O, the others their own.
    perfect = np.where(out["labels"][0] >= 0, out["labels"][0], 0)
    assert features.tags_from_predictions(perfect, out["word_index"][0], len(tokens),
                                          list(label_map)) == ["B-LOC", "O", "O", "B-PER"]


def test_conll_errors_name_file_and_line(tmp_path):
    ragged = _write(tmp_path / "ragged.conll", "a O\nb NNP O\n")
    with pytest.raises(readers.DataFormatError, match=r"ragged.conll:2: 3 columns, expected 2"):
        readers.read_conll(ragged)
    bad_tag = _write(tmp_path / "tag.conll", "a O\n\nb PERSON\n")
    with pytest.raises(readers.DataFormatError, match=r"tag.conll:3: tag 'PERSON' is not BIO"):
        readers.read_conll(bad_tag)
    with pytest.raises(readers.DataFormatError, match=r"empty.conll: no sentences"):
        readers.read_conll(_write(tmp_path / "empty.conll", "\n\n"))
    # Plain text given to the tagger (`tl_jax predict`) was only "tag 'Zurich.' is not BIO".
    prose = _write(tmp_path / "prose.txt", "Zoe visited Zurich.\nBob ran home.\n")
    for require_labels in (True, False):
        with pytest.raises(readers.DataFormatError,
                           match=r"prose.txt:1: tag 'Zurich.' is not BIO \(O, B-X or I-X\); this "
                                 r"looks like plain text, .* one token per line"):
            readers.read_conll(prose, require_labels=require_labels)
    # CoNLL-2003's four columns with a tag that is not BIO get no such hint.
    with pytest.raises(readers.DataFormatError, match=r"iobes.conll:1: tag 'S-ORG' is not BIO "
                                                      r"\(O, B-X or I-X\)$"):
        readers.read_conll(_write(tmp_path / "iobes.conll", "EU NNP B-NP S-ORG\n"))


def test_a_conll_file_that_is_one_long_sentence_lacks_its_blank_lines(tmp_path):
    # It was read as one sentence: one training example, or every word past max_seq_length
    # predicted O.
    words = "".join(f"w{i} O\n" for i in range(readers.LONG_SENTENCE + 1))
    one = _write(tmp_path / "one.conll", "-DOCSTART- O\n\n" + words + "\n\n")
    with pytest.raises(readers.DataFormatError,
                       match=r"one.conll:3: the whole file is one sentence of 251 tokens "
                             r"\(lines 3-253\): missing blank lines between sentences\?"):
        readers.read_conll(one)
    tokens_only = _write(tmp_path / "tok.conll", "".join(f"w{i}\n" for i in range(1000)))
    with pytest.raises(readers.DataFormatError, match=r"tok.conll:1: the whole file is one "
                                                      r"sentence of 1,000 tokens"):
        readers.read_conll(tokens_only, require_labels=False)
    # A long sentence among others, or a file of one sentence of a sentence's length, is read.
    assert len(readers.read_conll(_write(tmp_path / "two.conll", "a O\n\n" + words))) == 2
    assert len(readers.read_conll(_write(tmp_path / "s.conll", "a O\n" * 250))[0]["tokens"]) \
        == 250


def test_record_lines_are_where_each_record_starts(tmp_path):
    conll = _write(tmp_path / "d.conll", "-DOCSTART- O\n\nEU B-ORG\nrejects O\n\n\nPeter "
                                         "B-PER\n")
    assert readers.record_lines(str(conll), "tagging") == [3, 7]
    assert readers.record_lines(str(conll), "tagging", tokens=True) == [[3, 4], [7]]
    jsonl = _write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", '
                                         '"label": "y"}\n')
    assert readers.record_lines(str(jsonl), "classification") == [1, 3]
    csv_file = _write(tmp_path / "d.csv", 'text,label\n"two\nlines",x\n\nb,y\n')
    assert readers.record_lines(str(csv_file), "classification") == [2, 5]
    assert readers.record_lines("gensim:polarity:train", "classification") is None
    assert readers.record_lines(str(tmp_path / "gone.jsonl"), "classification") is None


def test_json_given_as_conll_says_so(tmp_path):
    # A jsonl file was "tag '"great"}' is not BIO" (or, without spaces, one-column tokens that
    # predict tagged), a SQuAD file "2 columns, expected 1".
    expected = r"but tagging files are CoNLL columns: one token per line"
    files = {"a.jsonl": ('{"text": "so good", "label": "great"}\n', "JSON lines"),
             "b.jsonl": ('{"text":"good"}\n{"text":"bad"}\n', "JSON lines"),
             "c.json": (json.dumps({"data": []}), r"a JSON document \(SQuAD JSON\?\)"),
             "d.json": (json.dumps({"data": []}, indent=1), r"a JSON document \(SQuAD JSON\?\)")}
    for name, (text, what) in files.items():
        for require_labels in (True, False):
            with pytest.raises(readers.DataFormatError,
                               match=rf"{name}:1: this looks like {what}.*{expected}"):
                readers.read_conll(_write(tmp_path / name, text), require_labels=require_labels)
    # Brackets as tokens are tokens.
    assert readers.read_conll(_write(tmp_path / "ok.conll", "{ O\n[ O\n\n{\"a\": O\n"))[0][
        "tokens"] == ["{", "["]
    assert readers.read_conll(_write(tmp_path / "ok2.conll", "{\nEmma\n"),
                              require_labels=False)[0]["tokens"] == ["{", "Emma"]


def _squad_doc(answer_start=11, impossible=False):
    qa = {"id": "q1", "question": "Who?", "answers": [] if impossible else
          [{"text": "Darcy", "answer_start": answer_start}]}
    if impossible:
        qa["is_impossible"] = True
    return {"version": "2.0", "data": [{"title": "P&P", "paragraphs": [
        {"context": "It was Mr. Darcy.", "qas": [qa]}]}]}


def test_squad_round_trip_v1_and_v2(tmp_path):
    path = _write(tmp_path / "s.json", json.dumps(_squad_doc()))
    records = readers.read_squad(path)
    assert records == [{"id": "q1", "title": "P&P", "question": "Who?",
                        "context": "It was Mr. Darcy.", "is_impossible": False,
                        "answers": [{"text": "Darcy", "answer_start": 11}]}]
    out = tmp_path / "again.json"
    readers.write_squad(out, records)
    assert readers.read_squad(out) == records
    impossible = readers.read_squad(_write(tmp_path / "v2.json", json.dumps(_squad_doc(impossible=True))))
    assert impossible[0]["is_impossible"] and impossible[0]["answers"] == []


def test_squad_errors_name_file_and_line(tmp_path):
    text = json.dumps(_squad_doc(answer_start=3), indent=1)
    path = _write(tmp_path / "off.json", text)
    line = text[: text.index('"q1"')].count("\n") + 1
    with pytest.raises(readers.DataFormatError,
                       match=rf"off.json:{line}: question 'q1': answer 'Darcy' not found") as e:
        readers.read_squad(path)
    assert str(e.value).endswith("(context has 'was M'); the text is at character 11")
    # Offsets of tools that count otherwise: JavaScript's UTF-16 code units (an emoji is 2),
    # or UTF-8 bytes. The message said only that the answer was not there.
    context = "\U0001F600 Caf\u00e9 at Z\u00fcrich."
    for unit, start in (("UTF-16 code units", 11), ("UTF-8 bytes", 14)):
        doc = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
            {"id": "q", "question": "Where?", "answers": [{"text": "Z\u00fcrich",
                                                           "answer_start": start}]}]}]}]}
        with pytest.raises(readers.DataFormatError,
                           match=rf"not found at answer_start {start} .*; answer_start seems to "
                                 rf"count {unit}.*: in characters it is 10$"):
            readers.read_squad(_write(tmp_path / "units.json", json.dumps(doc)))
    broken = _write(tmp_path / "broken.json", '{"data": [\n{"title": }\n]}')
    with pytest.raises(readers.DataFormatError,
                       match=r"broken.json:2: invalid JSON \(Expecting value at column 11\)$"):
        readers.read_squad(broken)
    with pytest.raises(readers.DataFormatError, match=r"shape.json:1: expected a SQuAD object"):
        readers.read_squad(_write(tmp_path / "shape.json", "[]"))


def test_a_squad_file_in_another_format_says_which(tmp_path):
    # JSON lines was "invalid JSON (Extra data)", a CoNLL file "invalid JSON (Expecting value)"
    # or "(Invalid control character at)", with nothing saying what a SQuAD file is.
    row = {"id": "q1", "question": "Who?", "context": "It was Mr. Darcy.",
           "answers": {"text": ["Darcy"], "answer_start": [11]}}
    jsonl = _write(tmp_path / "hf.jsonl", json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(readers.DataFormatError,
                       match=r"hf.jsonl:2: invalid JSON \(Extra data at column 1\); this looks like JSON lines "
                             r"\(one object per line\), but a SQuAD file is one JSON document "
                             r"\{\"data\": \[\{\"title\""):
        readers.read_squad(jsonl)
    with pytest.raises(readers.DataFormatError, match=r"one.jsonl:1: expected a SQuAD object with "
                                                      r"a 'data' list; this is one flat question"):
        readers.read_squad(_write(tmp_path / "one.jsonl", json.dumps(row) + "\n"))
    for name, text in (("a.conll", "Emma B-PER\nsmiled O\n"), ("b.conll", '"Oh! O\nEmma B-PER\n')):
        with pytest.raises(readers.DataFormatError, match=rf"{name}:1: invalid JSON .*; this looks "
                                                          r"like CoNLL columns"):
            readers.read_squad(_write(tmp_path / name, text))
    # A token and tag joined by U+00A0 are one column to the tag task ("expected at least 2
    # columns"), so the file is not CoNLL columns; str.split() took it for them.
    joined = _write(tmp_path / "nbsp.conll", "Emma\u00a0B-PER\nsmiled\u00a0O\n")
    with pytest.raises(readers.DataFormatError) as error:
        readers.read_squad(joined)
    assert str(error.value).endswith("nbsp.conll:1: invalid JSON (Expecting value at column 1)")
    with pytest.raises(readers.DataFormatError, match="nbsp.conll:1: expected at least 2 columns"):
        readers.read_conll(joined)
    # A document cut short is only invalid JSON.
    text = json.dumps(_squad_doc(), indent=1)
    with pytest.raises(readers.DataFormatError, match=r"cut.json:\d+: invalid JSON \([^)]*\)$"):
        readers.read_squad(_write(tmp_path / "cut.json", text[:len(text) // 2]))


def test_squad_shape_errors_repeated_ids_and_bad_answers_are_named(tmp_path):
    # Wrong shapes crashed with AttributeError/TypeError and no file name; a repeated id was
    # accepted (its windows were then decoded against the other question's context); a negative
    # answer_start or a blank answer text was accepted and silently dropped from training.
    def doc(**change):
        d = _squad_doc()
        qa = d["data"][0]["paragraphs"][0]["qas"][0]
        for key, value in change.items():
            if key == "data":
                d["data"] = value
            elif key == "paragraphs":
                d["data"][0]["paragraphs"] = value
            elif key == "qas":
                d["data"][0]["paragraphs"][0]["qas"] = value
            else:
                qa[key] = value
        return d

    cases = {
        "data": ([["P&P"]], r"'data' must be a list of objects"),
        "paragraphs": ("It was Mr. Darcy.", r"'paragraphs' must be a list of objects"),
        "qas": ({"id": "q1"}, r"'qas' must be a list of objects"),
        "answers": (None, r"question 'q1': 'answers' must be a list of objects"),
    }
    for key, (value, message) in cases.items():
        path = _write(tmp_path / f"{key}.json", json.dumps(doc(**{key: value})))
        with pytest.raises(readers.DataFormatError, match=rf"{key}.json.*{message}"):
            readers.read_squad(path)
    for name, answer in (("negative", {"text": "Darcy.", "answer_start": -6}),
                         ("blank", {"text": " ", "answer_start": 6})):
        path = _write(tmp_path / f"{name}.json", json.dumps(doc(answers=[answer])))
        with pytest.raises(readers.DataFormatError, match=r"non-blank 'text' and an 'answer_start' "
                                                          r"integer >= 0"):
            readers.read_squad(path)
    twice = _squad_doc()
    twice["data"].append({"title": "S&S", "paragraphs": [
        {"context": "Elinor smiled.", "qas": [{"id": "q1", "question": "Who?",
                                               "answers": [{"text": "Elinor", "answer_start": 0}]}]}]})
    with pytest.raises(readers.DataFormatError, match=r"question id 'q1' occurs twice"):
        readers.read_squad(_write(tmp_path / "twice.json", json.dumps(twice)))


def test_squad_errors_name_the_line_of_the_question_not_a_string_equal_to_its_id(tmp_path):
    # The line was that of the first `"2"` in the file: here question "1"'s answer text, and
    # for a repeated id the first question holding it, not the repeat.
    context = "In 1815 Emma was 21 and had 2 sisters."
    qas = [{"id": "1", "question": "Sisters?", "answers": [{"text": "2", "answer_start": 28}]},
           {"id": "2", "question": "Age?", "answers": [{"text": "21", "answer_start": 16}]}]
    doc = {"data": [{"title": "Emma", "paragraphs": [{"context": context, "qas": qas}]}]}
    text = json.dumps(doc, indent=1)
    line = text[: text.index('"id": "2"')].count("\n") + 1
    with pytest.raises(readers.DataFormatError, match=rf"off.json:{line}: question '2': answer"):
        readers.read_squad(_write(tmp_path / "off.json", text))
    qas[1] = dict(qas[0], question="Again?")
    text = json.dumps(doc, indent=1)
    line = text[: text.rindex('"id": "1"')].count("\n") + 1
    with pytest.raises(readers.DataFormatError, match=rf"twice.json:{line}: question id '1' occurs"):
        readers.read_squad(_write(tmp_path / "twice.json", text))


def test_squad_empty_questions_and_answers_of_unanswerable_questions_are_errors(tmp_path):
    # An empty question was trained on (the model asked nothing); the answers of a question
    # marked is_impossible were dropped, silently (the official v2.0 eval would score them).
    doc = _squad_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["question"] = " "
    text = json.dumps(doc, indent=1)
    line = text[: text.index('"id": "q1"')].count("\n") + 1
    for require_labels in (True, False):
        with pytest.raises(readers.DataFormatError,
                           match=rf"empty.json:{line}: question 'q1' has an empty 'question'"):
            readers.read_squad(_write(tmp_path / "empty.json", text), require_labels)
    doc = _squad_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = True
    text = json.dumps(doc, indent=1)
    with pytest.raises(readers.DataFormatError,
                       match=rf"both.json:{line}: question 'q1' is marked is_impossible but has 1 "
                             r"answer\(s\); an unanswerable question has an empty 'answers'"):
        readers.read_squad(_write(tmp_path / "both.json", text))


def test_squad_is_impossible_must_be_a_boolean(tmp_path):
    # "is_impossible": "false" was read as bool("false"), True: an answerable question became
    # unanswerable, its answers dropped, silently.
    doc = _squad_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = "false"
    text = json.dumps(doc, indent=1)
    line = text[: text.index('"id": "q1"')].count("\n") + 1
    with pytest.raises(readers.DataFormatError,
                       match=rf"str.json:{line}: question 'q1': 'is_impossible' must be true or "
                             r'false, got "false"'):
        readers.read_squad(_write(tmp_path / "str.json", text))
    doc["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = False
    assert not readers.read_squad(_write(tmp_path / "ok.json", json.dumps(doc)))[0]["is_impossible"]


def test_read_records_expands_environment_variables(tmp_path, monkeypatch):
    _write(tmp_path / "t.jsonl", '{"text": "fine", "label": "pos"}\n')
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert readers.read_records("$MY_DATA/t.jsonl", "classification")[0]["label"] == "pos"


def test_read_records_rejects_unknown_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.read_records(str(tmp_path / "nope.jsonl"), "classification")
    with pytest.raises(ValueError, match="unknown gensim data set"):
        readers.read_records("gensim:lee:train", "classification")
    with pytest.raises(ValueError, match="supports glue/\\*, conll2003 and squad"):
        readers.read_tfds("imdb_reviews", "train")
    with pytest.raises(ValueError, match="unknown GLUE config"):
        readers.read_tfds("glue/nope", "train")
    # STS-B's labels are similarity scores: read as class names they made a classifier with
    # one class per distinct score, scored by accuracy instead of Pearson/Spearman.
    with pytest.raises(ValueError, match="glue/stsb is a regression task"):
        readers.read_records("tfds:glue/stsb:train", "classification")
    # A silver task given to the other task kind was built, then read in the wrong format
    # ("tag '365}]}]}' is not BIO", "invalid JSON").
    with pytest.raises(ValueError, match="silver:cloze_qa:train is squad data .* reads tagging"):
        readers.read_records("silver:cloze_qa:train", "tagging")
    with pytest.raises(ValueError, match="silver:names:dev is tagging data .* reads squad"):
        readers.read_records("silver:names:dev", "squad")
    # So is a tfds data set: its records lacked the task's fields (KeyError: 'label').
    with pytest.raises(ValueError, match=r"tfds:squad/v1.1:train is squad data \(glue/\* is "
                                         r"classification.*this task reads classification"):
        readers.read_records("tfds:squad/v1.1:train", "classification")
    with pytest.raises(ValueError, match=r"tfds:glue/sst2:train is classification data .* "
                                         r"reads tagging"):
        readers.read_records("tfds:glue/sst2:train", "tagging")


class _FakeTfdsBuilder:
    """A prepared tfds dataset without TensorFlow: `rows[split]` as `as_dataset` gives it."""

    def __init__(self, features, rows):
        self.info = type("Info", (), {"features": features})()
        self.rows = rows

    def download_and_prepare(self):
        pass

    def as_dataset(self, split):
        return self.rows[split]


def _fake_tfds(monkeypatch, builder):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: builder)
    monkeypatch.setattr(tfds, "as_numpy", lambda dataset: dataset)


def test_glue_test_splits_hidden_labels_are_unlabelled(monkeypatch):
    # GLUE's test splits have label -1: it was read as the class "-1", so `tl_jax predict` on
    # tfds:glue/sst2:test said to remove a labels column tfds does not let one remove.
    names = type("ClassLabel", (), {"names": ["negative", "positive"]})()
    _fake_tfds(monkeypatch, _FakeTfdsBuilder({"label": names}, {
        "test": [{"sentence": "caf\u00e9".encode(), "label": -1},
                 {"sentence": b"fine", "label": -1}],
        "validation": [{"sentence": b"good", "label": 1}]}))
    assert readers.read_records("tfds:glue/sst2:test", "classification",
                                require_labels=False) == [
        {"text": "caf\u00e9", "text_b": None, "label": None},
        {"text": "fine", "text_b": None, "label": None}]
    with pytest.raises(ValueError, match=r"tfds:glue/sst2:test: 2 of 2 records have no label "
                                         r"\(label -1: GLUE's test splits hide their labels\)"):
        readers.read_records("tfds:glue/sst2:test", "classification")
    assert readers.read_records("tfds:glue/sst2:validation", "classification")[0]["label"] == \
        "positive"


def test_a_tfds_dataset_that_cannot_be_loaded_is_a_one_line_error(monkeypatch):
    # Offline, or without TensorFlow, tfds raised from deep inside itself with every dataset
    # name it knows (hundreds of lines), and `tl_jax train` printed the traceback.
    import tensorflow_datasets as tfds

    def not_found(name, data_dir=None):
        raise tfds.core.registered.DatasetNotFoundError(
            f"Dataset {name.split('/')[0]} not found.\nAvailable datasets:\n\t- abstract_reasoning")

    monkeypatch.setattr(tfds, "builder", not_found)
    with pytest.raises(ValueError) as e:
        readers.read_records("tfds:glue/sst2:train", "classification")
    message = str(e.value)
    assert message.startswith("cannot load tfds:glue/sst2:train (DatasetNotFoundError: Dataset "
                              "glue not found.)")
    assert "TFDS_DATA_DIR" in message and "abstract_reasoning" not in message
