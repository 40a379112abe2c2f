"""Word similarity (Spearman) and 3CosAdd analogies on constructed vectors and the real files."""
import numpy as np
import pytest

from tl_jax.data.vector_formats import WordVectors, load_glove_text
from tl_jax.evaluation import word_vectors as ev


def _angle_vectors(words, angles):
    """2-d unit vectors at the given angles: cosine with angle 0 falls as the angle grows."""
    a = np.asarray(angles, dtype=np.float64)
    return WordVectors(list(words), np.stack([np.cos(a), np.sin(a)], axis=1))


def test_spearman_follows_the_ranking_and_counts_oov():
    vectors = _angle_vectors(["base", "w1", "w2", "w3", "w4"], [0, 0.1, 0.5, 1.0, 2.0])
    human = [("base", "w1", 9.0), ("base", "w2", 7.0), ("base", "w3", 3.0), ("Base", "w4", 1.0)]
    r = ev.word_similarity(vectors, [(a.lower(), b, s) for a, b, s in human])
    assert r.spearman == pytest.approx(1.0) and r.pairs == 4 and r.oov_pairs == 0
    flipped = [(a.lower(), b, -s) for a, b, s in human]
    assert ev.word_similarity(vectors, flipped).spearman == pytest.approx(-1.0)
    with_oov = human[:3] + [("base", "missing", 5.0), ("gone", "missing", 5.0)]
    r = ev.word_similarity(vectors, with_oov)
    assert (r.pairs, r.oov_pairs, r.oov_words) == (3, 2, 2)
    assert np.isnan(ev.word_similarity(vectors, [("a", "b", 1.0)]).spearman)


def test_3cosadd_solves_exact_offsets_and_skips_question_words():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 50))
    gender = rng.normal(size=50)
    words = ["king", "queen", "man", "woman", "prince", "princess", "boy", "girl"]
    rows = []
    for b in base:
        rows += [b, b + gender]
    vectors = WordVectors(words, np.stack(rows))
    questions = [("family", ("man", "woman", "king", "queen")),
                 ("family", ("boy", "girl", "prince", "princess")),
                 ("family", ("man", "woman", "king", "unknownword"))]
    r = ev.analogy_accuracy(vectors, questions, restrict_vocab=None)
    assert (r.correct, r.questions, r.oov_questions) == (2, 2, 1)
    assert r.accuracy == 1.0 and r.by_section == {"family": 1.0}
    # b - a + c is closest to c itself here; excluding the question words is what makes it work.
    same = [("s", ("man", "man", "king", "king"))]
    assert ev.analogy_accuracy(vectors, same, restrict_vocab=None).correct == 0
    # Restricting the vocabulary to the first 4 words makes "princess" questions unanswerable.
    r = ev.analogy_accuracy(vectors, questions, restrict_vocab=4)
    assert (r.questions, r.oov_questions) == (1, 2)


def test_pairs_and_questions_passed_directly_are_lowercased_like_the_files():
    # "Words are lowercased before lookup": also for pairs and questions not read by the readers.
    vectors = _angle_vectors(["paris", "france", "rome", "italy"], [0, 0.1, 1.0, 1.1])
    r = ev.word_similarity(vectors, [("Paris", "France", 9.0), ("Paris", "Italy", 1.0),
                                     ("ROME", "italy", 8.0)])
    assert (r.pairs, r.oov_pairs, r.oov_words) == (3, 0, 0)
    a = ev.analogy_accuracy(vectors, [("c", ("Paris", "France", "Rome", "Italy"))],
                            restrict_vocab=None)
    assert (a.questions, a.oov_questions) == (1, 0)


def test_analogies_on_cased_vectors_treat_other_spellings_as_the_same_word():
    # Cased vectors (GoogleNews): "Paris", a spelling of the question word "paris", is not an
    # answer, and "London" answers "london" (gensim's case_insensitive=True).
    e = np.eye(5)
    question = [("s", ("france", "paris", "england", "london"))]
    variant_of_question_word = WordVectors(
        ["france", "paris", "england", "london", "Paris"],
        np.stack([e[0], e[1], e[2], e[1] - e[0] + e[2] + 0.3 * e[3], e[1] - e[0] + e[2]]))
    assert ev.analogy_accuracy(variant_of_question_word, question, restrict_vocab=None).correct == 1
    variant_of_answer = WordVectors(
        ["france", "paris", "england", "london", "London"],
        np.stack([e[0], e[1], e[2], e[1] + e[2] + 0.3 * e[3], e[1] - e[0] + e[2]]))
    assert ev.analogy_accuracy(variant_of_answer, question, restrict_vocab=None).correct == 1


@pytest.mark.parametrize("kwargs,match", [(dict(restrict_vocab=0), "restrict_vocab=0"),
                                          (dict(restrict_vocab=-5), "restrict_vocab=-5"),
                                          (dict(batch_size=0), "batch_size=0")])
def test_analogy_sizes_below_one_are_errors_not_all_oov(kwargs, match):
    vectors = _angle_vectors(["a", "b", "c", "d"], [0, 0.1, 1.0, 1.1])
    with pytest.raises(ValueError, match=match):
        ev.analogy_accuracy(vectors, [("s", ("a", "b", "c", "d"))], **kwargs)


def test_readers_parse_the_real_files_and_reject_malformed_ones(data_dir, tmp_path):
    assert len(ev.read_similarity_pairs(data_dir / ev.WORDSIM353)) == 353
    assert len(ev.read_similarity_pairs(data_dir / ev.SIMLEX999)) == 999
    questions = ev.read_analogies(data_dir / ev.GOOGLE_ANALOGIES)
    assert len(questions) == 19_544
    assert questions[0] == ("capital-common-countries", ("athens", "greece", "baghdad", "iraq"))
    (tmp_path / "sim.tsv").write_text("# header\na\tb\t1.0\nc\td\tlots\n")
    with pytest.raises(ValueError, match=r"sim.tsv:3: score 'lots'"):
        ev.read_similarity_pairs(tmp_path / "sim.tsv")
    (tmp_path / "q.txt").write_text(": s\na b c d\na b c\n")
    with pytest.raises(ValueError, match=r"q.txt:3: expected four words"):
        ev.read_analogies(tmp_path / "q.txt")


SIMLEX_OFFICIAL = (  # the first rows of SimLex-999.txt as distributed (tab-separated)
    "word1\tword2\tPOS\tSimLex999\tconc(w1)\tconc(w2)\tconcQ\tAssoc(USF)\tSimAssoc333\tSD(SimLex)\n"
    "old\tnew\tA\t1.58\t2.72\t2.81\t2\t7.25\t1\t0.41\n"
    "smart\tintelligent\tA\t9.2\t1.75\t2.46\t1\t7.11\t1\t0.67\n"
    "Hard\tdifficult\tA\t8.77\t3.76\t2.21\t2\t5.94\t1\t1.19\n")


def test_official_simlex999_layout_reads_the_simlex999_column(tmp_path):
    # The header was "score 'POS' is not a number"; the score is the 4th column, not the 3rd.
    (tmp_path / "SimLex-999.txt").write_text(SIMLEX_OFFICIAL)
    assert ev.read_similarity_pairs(tmp_path / "SimLex-999.txt") == [
        ("old", "new", 1.58), ("smart", "intelligent", 9.2), ("hard", "difficult", 8.77)]


@pytest.mark.parametrize("name,sep,newline", [("combined.csv", ",", "\r\n"),
                                              ("combined.csv", ",", "\n"),
                                              ("combined.tab", "\t", "\n")])
def test_official_wordsim353_layouts_read(tmp_path, name, sep, newline):
    rows = [["Word 1", "Word 2", "Human (mean)"], ["love", "sex", "6.77"],
            ["tiger", "cat", "7.35"], ["tiger", "tiger", "10.00"]]
    (tmp_path / name).write_bytes("".join(sep.join(r) + newline for r in rows).encode())
    assert ev.read_similarity_pairs(tmp_path / name) == [
        ("love", "sex", 6.77), ("tiger", "cat", 7.35), ("tiger", "tiger", 10.0)]
    # set1.tab / set2.tab: the mean, then each rater's score.
    (tmp_path / "set1.tab").write_text("Word 1\tWord 2\tHuman (mean)\t1\t2\n"
                                       "love\tsex\t6.77\t9\t6\n")
    assert ev.read_similarity_pairs(tmp_path / "set1.tab") == [("love", "sex", 6.77)]


def test_comma_separated_without_header_reads(tmp_path):
    (tmp_path / "sim.csv").write_text("# a comment\nlove,sex,6.77\ntiger,cat,7.35\n")
    assert ev.read_similarity_pairs(tmp_path / "sim.csv") == [("love", "sex", 6.77),
                                                              ("tiger", "cat", 7.35)]


def test_the_real_files_in_the_official_layouts_read_as_the_same_pairs(data_dir, tmp_path):
    wordsim = ev.read_similarity_pairs(data_dir / ev.WORDSIM353)
    simlex = ev.read_similarity_pairs(data_dir / ev.SIMLEX999)
    (tmp_path / "combined.csv").write_text(
        "Word 1,Word 2,Human (mean)\n" + "".join(f"{a},{b},{s}\n" for a, b, s in wordsim))
    (tmp_path / "SimLex-999.txt").write_text(SIMLEX_OFFICIAL.splitlines(True)[0] + "".join(
        f"{a}\t{b}\tN\t{s}\t4.1\t3.2\t3\t0.5\t0\t1.1\n" for a, b, s in simlex))
    assert ev.read_similarity_pairs(tmp_path / "combined.csv") == wordsim
    assert ev.read_similarity_pairs(tmp_path / "SimLex-999.txt") == simlex


@pytest.mark.parametrize("text,match", [
    # A header and nothing else: named by file and the header's line.
    (SIMLEX_OFFICIAL.splitlines(True)[0], r"sim.txt:1: score 'POS'.*header.*no similarity pairs"),
    ("# comment\nWord 1,Word 2,Human (mean)\n", r"sim.txt:2: .*header.*no similarity pairs"),
    # Only the first line may be a header: a second one, or a bad score later, is an error.
    ("Word 1,Word 2,Human (mean)\nWord 1,Word 2,Human (mean)\n",
     r"sim.txt:2: score 'Human \(mean\)' \(column 3, 'Human \(mean\)'\) is not a number"),
    ("love,sex,6.77\ntiger,cat,lots\n", r"sim.txt:2: score 'lots' is not a number"),
    # "nan" and "inf" parse as floats, then made the Spearman correlation nan.
    ("love,sex,6.77\ntiger,cat,nan\n",
     r"sim.txt:2: score 'nan' is not a finite number \(nan or inf\) in the pair 'tiger', 'cat'"),
    (SIMLEX_OFFICIAL + "old\tnew\tA\t-inf\t1\t1\t1\t1\t1\t1\n",
     r"sim.txt:5: score '-inf' \(column 4, 'SimLex999'\) is not a finite number"),
    ("love\tsex\tinf\n", r"sim.txt:1: score 'inf' is not a finite number"),  # not a header
    (SIMLEX_OFFICIAL + "old\tnew\tA\tlots\t1\t1\t1\t1\t1\t1\n",
     r"sim.txt:5: score 'lots' \(column 4, 'SimLex999'\) is not a number"),
    # Too few fields for the column the header named; another separator than the first line's.
    (SIMLEX_OFFICIAL + "old\tnew\t1.58\n", r"sim.txt:5: expected .*column 4.*found 3 field"),
    ("Word 1\tWord 2\tHuman (mean)\nlove,sex,6.77\n", r"sim.txt:2: expected 'word1<TAB>word2"),
    ("love sex 6.77\n", r"sim.txt:1: expected .*found 1 field"),
    ("word1\tword2\tSimLex999\tHuman (mean)\na\tb\t1\t2\n", r"sim.txt:1: .*more than one score"),
])
def test_malformed_similarity_files_name_file_and_line(tmp_path, text, match):
    (tmp_path / "sim.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        ev.read_similarity_pairs(tmp_path / "sim.txt")


def test_non_utf8_evaluation_files_name_file_and_line(tmp_path):
    (tmp_path / "sim.tsv").write_bytes(b"a\tb\t1.0\ncaf\xe9\tcoffee\t7.5\n")  # Latin-1
    with pytest.raises(ValueError, match=r"sim.tsv:2: not UTF-8"):
        ev.read_similarity_pairs(tmp_path / "sim.tsv")
    (tmp_path / "q.txt").write_bytes(b": s\na b c d\n\xe9 b c d\n")
    with pytest.raises(ValueError, match=r"q.txt:3: not UTF-8"):
        ev.read_analogies(tmp_path / "q.txt")


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    # Saved by Excel or Notepad: the mark made the first word "\ufeffold" (an OOV pair, without
    # a word) or hid a first "#" comment or ": section" line (an error about the layout).
    sims = tmp_path / "sims.tsv"
    sims.write_text("old\tnew\t1.5\ncat\tdog\t7.0\n", encoding="utf-8-sig")
    assert ev.read_similarity_pairs(sims) == [("old", "new", 1.5), ("cat", "dog", 7.0)]
    sims.write_text("# a comment\nold\tnew\t1.5\n", encoding="utf-8-sig")
    assert ev.read_similarity_pairs(sims) == [("old", "new", 1.5)]
    analogies = tmp_path / "questions-words.txt"
    analogies.write_text(": capital\nathens greece baghdad iraq\n", encoding="utf-8-sig")
    assert ev.read_analogies(analogies) == [("capital", ("athens", "greece", "baghdad", "iraq"))]


def test_real_glove_vectors_score_well_above_chance(data_dir):
    scores = ev.evaluate_all(load_glove_text(data_dir / "glove.6B.50d.top20k.txt"), data_dir)
    # Published GloVe 6B-50d numbers are ~0.5 (WordSim353) and ~0.5 (analogies, full vocab).
    assert scores["wordsim353_spearman"] > 0.45
    assert scores["simlex999_spearman"] > 0.2
    assert scores["analogy_accuracy"] > 0.4
    assert scores["wordsim353_oov_pairs"] == 34 and scores["analogy_oov_questions"] > 0
    # Shuffling which word owns which vector destroys the signal.
    vectors = load_glove_text(data_dir / "glove.6B.50d.top20k.txt")
    perm = np.random.default_rng(0).permutation(len(vectors))
    shuffled = WordVectors(vectors.words, vectors.vectors[perm])
    r = ev.word_similarity(shuffled, ev.read_similarity_pairs(data_dir / ev.WORDSIM353))
    assert abs(r.spearman) < 0.15


def test_evaluate_all_on_the_eval_folder_itself_says_to_give_the_folder_holding_it(data_dir,
                                                                                  tmp_path):
    # It said only "No such file or directory: '.../eval/eval/wordsim353.tsv'".
    vectors = WordVectors(["king", "queen"], np.eye(2, dtype=np.float32))
    with pytest.raises(FileNotFoundError, match=r"'.*/eval' holds wordsim353.tsv, simlex999.txt, "
                                                r"questions-words.txt itself, .* give its parent "
                                                rf"folder, '{data_dir.resolve()}'"):
        ev.evaluate_all(vectors, data_dir / "eval")
    other = tmp_path / "mine"  # the files in a folder of another name: move them into eval/
    other.mkdir()
    (other / "simlex999.txt").write_text("a b 1.0\n")
    with pytest.raises(FileNotFoundError, match=r"holds simlex999.txt itself, .* move them into "
                                                r"'.*mine/eval'"):
        ev.read_all(other)
