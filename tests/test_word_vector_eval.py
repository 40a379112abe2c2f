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


def test_non_utf8_evaluation_files_name_file_and_line(tmp_path):
    (tmp_path / "sim.tsv").write_bytes(b"a\tb\t1.0\ncaf\xe9\tcoffee\t7.5\n")  # Latin-1
    with pytest.raises(ValueError, match=r"sim.tsv:2: not UTF-8"):
        ev.read_similarity_pairs(tmp_path / "sim.tsv")
    (tmp_path / "q.txt").write_bytes(b": s\na b c d\n\xe9 b c d\n")
    with pytest.raises(ValueError, match=r"q.txt:3: not UTF-8"):
        ev.read_analogies(tmp_path / "q.txt")


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
