"""The silver downstream tasks built from the real text: deterministic and well-formed."""
import json
import os
import re

import pytest

from tl_jax.data import readers, task_builders as tb

NAMES_CAPS, QA_CAPS = (300, 60, 60), (120, 30, 30)


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    manifest = tb.build_all(out, data_dir, names_caps=NAMES_CAPS, qa_caps=QA_CAPS)
    return out, manifest


def test_silver_tagging_rule():
    words = ['"', "Yes", ",", '"', "said", "Elizabeth", ".", "I", "met", "Mr.", "Darcy", "at",
             "Netherfield", "Park", "in", "MAY", ";", "Jane", "laughed", ":", "Good", "news"]
    # Sentence starts, the words after an opening quote or a colon, "I" and SHOUTED words are not
    # names; "Mr. Darcy" and "Netherfield Park" are one entity each.
    expected = ["O", "O", "O", "O", "O", "B-NAME", "O", "O", "O", "B-NAME", "I-NAME", "O",
                "B-NAME", "I-NAME", "O", "O", "O", "B-NAME", "O", "O", "O", "O"]
    assert tb.silver_tags(words) == expected


def test_sentence_split_keeps_abbreviations_and_closing_quotes():
    text = 'Mr. Bennet came. "Is he rich?" she asked. Yes!'
    got = [" ".join(t for t, _, _ in s) for s in tb.sentences(tb.tokenize(text))]
    assert got == ["Mr. Bennet came .", '" Is he rich ? "', "she asked .", "Yes !"]


def test_build_is_deterministic(built, data_dir, tmp_path):
    _, manifest = built
    again = tb.build_all(tmp_path, data_dir, names_caps=NAMES_CAPS, qa_caps=QA_CAPS)
    for task in ("names", "cloze_qa"):
        for split in tb.SPLITS:
            assert again[task][split]["md5"] == manifest[task][split]["md5"], (task, split)
    assert json.loads((tmp_path / "manifest.json").read_text())["names"]["train"]["sentences"] == 300


def test_names_task_is_well_formed(built):
    out, manifest = built
    for split, cap in zip(tb.SPLITS, NAMES_CAPS):
        sentences = readers.read_conll(out / "names" / f"{split}.conll")
        assert len(sentences) == cap == manifest["names"][split]["sentences"]
        tokens = [t for s in sentences for t in s["tokens"]]
        assert all(t == t.lower() for t in tokens)  # the input is lowercased
        tags = [t for s in sentences for t in s["tags"]]
        assert set(tags) <= {"O", "B-NAME", "I-NAME"}
        assert 0.005 < tags.count("B-NAME") / len(tags) < 0.2  # names present, not everywhere
        assert sum("B-NAME" in s["tags"] for s in sentences) > cap // 5
        for s in sentences:  # IOB2: every entity opens with B-
            assert all(not (t == "I-NAME" and p == "O") for p, t in zip(["O"] + s["tags"], s["tags"]))
    train = {" ".join(s["tokens"]) for s in readers.read_conll(out / "names" / "train.conll")}
    test = {" ".join(s["tokens"]) for s in readers.read_conll(out / "names" / "test.conll")}
    assert len(train & test) <= 2  # blocks split cleanly (only stock phrases can repeat)


def test_cloze_qa_is_well_formed_and_blocks_do_not_leak(built):
    out, manifest = built
    titles = {}
    for split, cap in zip(tb.SPLITS, QA_CAPS):
        records = readers.read_squad(out / "cloze_qa" / f"{split}.json")  # checks answer offsets
        assert len(records) == cap == manifest["cloze_qa"][split]["questions"]
        assert len({r["id"] for r in records}) == cap
        for r in records:
            assert r["question"].count(tb.BLANK) == 1 and not r["is_impossible"]
            answer = r["answers"][0]["text"]
            assert answer[0].isupper() or answer.split(".")[0] in tb.ABBREVIATIONS
            # The question sentence itself was taken out of the passage.
            assert r["question"].replace(tb.BLANK, answer) not in r["context"]
            # ...and the answer cannot be copied from the question.
            assert not tb._occurrences(answer, r["question"]), r["question"]
            assert tb.split_of(r["title"]) == split
        titles[split] = {r["title"] for r in records}
    assert not titles["train"] & titles["test"] and not titles["dev"] & titles["test"]


def test_a_name_repeated_in_its_sentence_is_not_the_blank():
    context = "Lydia and Kitty walked to Meryton with Mr. Collins, who talked all the way there."

    def cloze(text):
        sentence = tb.sentences(tb.tokenize(text))[0]
        return tb._cloze(text, sentence, tb._spans(sentence), context)

    # "Lydia" is the only span that is in the context, but the question would still hold it.
    assert cloze("Oh, Lydia, Lydia was always the same girl.") is None
    # The next span is tried instead: "Kitty" is in the context and only once in the sentence.
    record = cloze("Then Lydia laughed at Kitty, and Lydia ran off.")
    assert record["question"] == "Then Lydia laughed at ____, and Lydia ran off."
    assert [a["text"] for a in record["answers"]] == ["Kitty"]
    assert context[record["answers"][0]["answer_start"]:].startswith("Kitty")


def test_v2_adds_unanswerable_questions(data_dir):
    qa = tb.build_cloze_qa(data_dir, {"train": 80, "dev": 0, "test": 0}, version="2.0")["train"]
    impossible = [r for r in qa if r["is_impossible"]]
    assert 0 < len(impossible) <= len(qa) - len(impossible)
    for r in impossible:
        assert r["answers"] == [] and tb.BLANK in r["question"]


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no austen.jsonl"):
        tb.build_all(tmp_path / "out", tmp_path)


def test_the_module_run_as_a_script_reports_a_missing_data_dir(tmp_path):
    # `python -m tl_jax.data.task_builders OUT_DIR` (the module docstring's command) ran its
    # __main__ block before `missing_source` was defined: a NameError instead of the message.
    import subprocess
    import sys

    env = dict(os.environ, TL_JAX_DATA_DIR=str(tmp_path / "nowhere"))
    done = subprocess.run([sys.executable, "-m", "tl_jax.data.task_builders", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "NameError" not in done.stderr, done.stderr
    assert "FileNotFoundError: no austen.jsonl in TL_JAX_DATA_DIR=" in done.stderr, done.stderr


def test_build_tasks_says_what_it_builds_before_the_build(tmp_path, monkeypatch, capsys):
    """`tl_jax build_tasks` printed nothing until every task was built (11 s on the shared
    data): the first line now comes before the build."""
    printed_first = []

    def build_all(out_dir, data_dir, qa_version):
        printed_first.append(capsys.readouterr().out)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tb, "build_all", build_all)
    with pytest.raises(RuntimeError, match="stop here"):
        tb.run(str(tmp_path / "out"))
    assert printed_first == [f"[tasks] Building the silver tasks (names, cloze_qa) into "
                             f"{tmp_path / 'out'}...\n"]


@pytest.mark.parametrize("qa_version", ["1.1", "2.0"])
def test_build_all_says_each_task_as_it_is_built(qa_version, data_dir, tmp_path, monkeypatch,
                                                 capsys):
    """The build took ~10 s between its first line and the counts, saying nothing: each task
    now gets its line (its counts per split) once written, before the next one is built."""
    said_before_qa = []
    build_cloze_qa = tb.build_cloze_qa

    def recording(*args, **kwargs):
        said_before_qa.append(capsys.readouterr().out)
        return build_cloze_qa(*args, **kwargs)

    monkeypatch.setattr(tb, "build_cloze_qa", recording)
    manifest = tb.build_all(tmp_path, data_dir, names_caps=(30, 6, 6), qa_caps=(12, 3, 3),
                            qa_version=qa_version)
    assert re.fullmatch(r"\[tasks\] names \(train/dev/test\): 30/6/6 sentences \(\d+\.\ds\)\n",
                        said_before_qa[0])
    counts = "/".join(str(manifest["cloze_qa"][s]["questions"]) for s in tb.SPLITS)
    unanswerable = "/".join(str(manifest["cloze_qa"][s]["unanswerable"]) for s in tb.SPLITS)
    also = f", {unanswerable} unanswerable" if qa_version == "2.0" else ""
    assert counts == "12/3/3" and (unanswerable != "0/0/0") == (qa_version == "2.0")
    assert re.fullmatch(rf"\[tasks\] cloze_qa \(train/dev/test\): {counts} questions{also} "
                        r"\(\d+\.\ds\)\n", capsys.readouterr().out)


def test_a_missing_data_dir_names_where_it_came_from(tmp_path, monkeypatch, capsys):
    """`tl_jax build_tasks --data_dir=/nope` said "set TL_JAX_DATA_DIR", naming a setting the
    user had not used."""
    from tl_jax import main
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main.main(["build_tasks", f"--out_dir={tmp_path / 'out'}", "--data_dir=/nope"])
    assert str(e.value.code).splitlines()[0] == (
        "tl_jax: error: no austen.jsonl in data_dir='/nope'; it must be the shared data folder")
    with pytest.raises(FileNotFoundError) as e:  # from $TL_JAX_DATA_DIR: that is named
        tb.build_all(tmp_path / "out")
    assert str(e.value) == (f"no austen.jsonl in TL_JAX_DATA_DIR={str(tmp_path)!r}; set "
                            "TL_JAX_DATA_DIR to the shared data folder")
    with pytest.raises(FileNotFoundError, match=f"no {tb.SOURCES[0]} in TL_JAX_DATA_DIR="):
        tb.silver_path("names", "train")
    monkeypatch.delenv("TL_JAX_DATA_DIR")
    with pytest.raises(FileNotFoundError) as e:
        tb.build_all(tmp_path / "out")
    assert str(e.value) == ("no austen.jsonl: TL_JAX_DATA_DIR is not set and no data_dir was "
                            "given; set TL_JAX_DATA_DIR to the shared data folder")


def test_readme_states_what_qa_version_2_builds(data_dir):
    # The README said --qa_version=2.0 "adds unanswerable ones"; under the same caps they
    # replace answerable ones. Its counts must be what the full build gives.
    import pathlib
    import re

    readme = " ".join((pathlib.Path(__file__).parent.parent / "README.md").read_text().split())
    qa = tb.build_cloze_qa(data_dir, {"train": 10000, "dev": 1000, "test": 1000}, version="2.0")
    counts = {s: (sum(not r["is_impossible"] for r in qa[s]), sum(r["is_impossible"] for r in qa[s]))
              for s in tb.SPLITS}
    stated = re.search(r"train ([\d,]+) answerable \+ ([\d,]+) unanswerable, dev ([\d,]+) \+ "
                       r"([\d,]+), test ([\d,]+) \+ ([\d,]+)", readme)
    assert stated, "README does not give the --qa_version=2.0 counts"
    numbers = [int(n.replace(",", "")) for n in stated.groups()]
    assert numbers == [n for s in tb.SPLITS for n in counts[s]], counts


def test_silver_cache_manifest_names_the_files_where_they_are(data_dir, tmp_path, monkeypatch,
                                                               capsys):
    # The cache is built in a temporary folder renamed into place: the manifest's paths are
    # relative to its folder, so they hold after the rename (and after any later move).
    import pathlib

    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TL_JAX_TASKS_DIR", str(tmp_path / "tasks"))
    path = tb.silver_path("cloze_qa", "dev")
    root = tb.silver_build_dir(data_dir)
    # The first use says what it builds, where, and how much; later uses say nothing.
    said = capsys.readouterr().out
    assert f"[tasks] Building the silver tasks (names, cloze_qa) from {data_dir} into {root}" \
        in said
    manifest = json.loads((root / "manifest.json").read_text())
    assert (f"[tasks] cloze_qa (train/dev/test): "
            f"{'/'.join(str(manifest['cloze_qa'][s]['questions']) for s in tb.SPLITS)} questions"
            ) in said
    assert tb.silver_path("names", "train") == root / "names" / "train.conll"
    assert capsys.readouterr().out == ""
    assert root.parent == tmp_path / "tasks" and path == root / "cloze_qa" / "dev.json"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["cloze_qa"]["dev"]["path"] == "cloze_qa/dev.json"
    moved = tmp_path / "moved"
    root.rename(moved)
    for task in ("names", "cloze_qa"):
        for split in tb.SPLITS:
            assert (moved / manifest[task][split]["path"]).is_file(), manifest[task][split]
    assert pathlib.Path(manifest["food_reviews"]["train"]).is_file()


def test_silver_cache_is_keyed_by_the_source_files_and_the_builder_version(tmp_path, monkeypatch):
    # Tasks built from other data, or by a builder that has changed, must not be reused.
    monkeypatch.setenv("TL_JAX_TASKS_DIR", str(tmp_path / "tasks"))
    data = tmp_path / "data"
    data.mkdir()
    for name in tb.SOURCES:
        (data / name).write_text('{"text": "One."}\n')
    first = tb.silver_build_dir(data)
    assert first.parent == tmp_path / "tasks" and tb.silver_build_dir(data) == first
    (data / tb.SOURCES[1]).write_text('{"text": "One."}\n{"text": "Two."}\n')
    second = tb.silver_build_dir(data)
    assert second != first
    monkeypatch.setattr(tb, "BUILDER_VERSION", tb.BUILDER_VERSION + 1)
    assert tb.silver_build_dir(data) not in (first, second)
    (data / tb.SOURCES[0]).unlink()
    with pytest.raises(FileNotFoundError, match=tb.SOURCES[0]):
        tb.silver_build_dir(data)


def test_source_files_are_read_as_the_corpus_reader_reads_them(data_dir, tmp_path, monkeypatch):
    """`tl_jax build_tasks --data_dir=...` on files of one's own: a byte-order mark and blank
    lines are fine (they were 'bad paragraph record' errors), and a line that is not UTF-8 or
    whose text is not a string is named by file and line (they were a UnicodeDecodeError and a
    TypeError from re, with tracebacks), and leaves no half-built silver folder behind."""
    lines = {name: open(data_dir / name, encoding="utf-8").read().splitlines()[:400]
             for name in tb.SOURCES}
    plain, odd = tmp_path / "plain", tmp_path / "odd"
    for folder, prefix, sep in ((plain, "", "\n"), (odd, "\ufeff", "\r\n\r\n")):
        folder.mkdir()
        for name in tb.SOURCES:
            (folder / name).write_text(prefix + sep.join(lines[name]) + sep, encoding="utf-8",
                                       newline="")
    caps = dict(names_caps=(30, 5, 5), qa_caps=(10, 3, 3))
    strip = lambda m: {t: {s: {k: v for k, v in e.items() if k != "path"}  # noqa: E731
                           for s, e in m[t].items() if isinstance(e, dict)}
                       for t in ("names", "cloze_qa")}
    assert strip(tb.build_all(tmp_path / "a", plain, **caps)) == \
        strip(tb.build_all(tmp_path / "b", odd, **caps))

    austen = odd / tb.SOURCES[0]
    original = austen.read_bytes()  # 400 paragraphs, each followed by a blank line: 800 lines
    for bad, message in ((b'{"book": "x", "text": "caf\xe9"}\n', r"austen.jsonl:801: not UTF-8 "
                          r"text \(byte b'\\xe9' at byte \d+ of the line\)"),
                         (b'{"book": "x", "text": null}\n', r"austen.jsonl:801: bad paragraph "
                          r"record: 'text' must be a string, got null"),
                         (b'{"book": ["x"], "text": "Emma."}\n', r"austen.jsonl:801: bad "
                          r"paragraph record: 'book' must be a string or a number")):
        austen.write_bytes(original + bad)
        with pytest.raises(readers.DataFormatError, match=message):
            tb.build_all(tmp_path / "c", odd, names_caps=(10**6, 10**6, 10**6))
    monkeypatch.setenv("TL_JAX_TASKS_DIR", str(tmp_path / "tasks"))
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(odd))
    with pytest.raises(readers.DataFormatError, match="austen.jsonl:801"):
        tb.silver_path("names", "train")
    assert os.listdir(tmp_path / "tasks") == []


@pytest.mark.parametrize("earlier, now, noted", [("1.1", "2.0", True), ("2.0", "1.1", True),
                                                 ("1.1", "1.1", False), (None, "2.0", False)])
def test_build_tasks_notes_an_earlier_build_of_another_qa_version_it_replaces(
        tmp_path, monkeypatch, capsys, earlier, now, noted):
    """`tl_jax build_tasks --qa_version=2.0` over a SQuAD v1.1 build replaced it without a note."""
    import json

    out = tmp_path / "out"
    if earlier:
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"cloze_qa": {"version": earlier}}))

    def build_all(out_dir, data_dir, qa_version):
        raise RuntimeError("stop here")  # the note comes before the build

    monkeypatch.setattr(tb, "build_all", build_all)
    with pytest.raises(RuntimeError, match="stop here"):
        tb.run(str(out), qa_version=now)
    printed = capsys.readouterr().out
    note = (f"[tasks] note: {out} holds a build with cloze_qa as SQuAD v{earlier}; it is "
            f"replaced by this one (cloze_qa as SQuAD v{now})\n")
    assert (note in printed) == noted, printed
