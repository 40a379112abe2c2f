"""Metrics on hand-computed cases: classification, conlleval span F1, official SQuAD EM/F1."""
import math

import numpy as np
import pytest

from tl_jax.evaluation import classification, spans, squad


# -- classification -----------------------------------------------------------------------------

def test_binary_metrics_hand_computed():
    # TP=2 (rows 0,1), FN=1 (row 2), FP=1 (row 3), TN=2 (rows 4,5).
    y_true = [1, 1, 1, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 0, 0]
    assert classification.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert classification.f1_binary(y_true, y_pred, positive=1) == pytest.approx(2 / 3)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert classification.matthews_corrcoef(y_true, y_pred) == pytest.approx(1 / 3)
    # Class 0: TP=2, FP=1, FN=1 -> 2/3 as well.
    assert classification.f1_macro(y_true, y_pred) == pytest.approx(2 / 3)


def test_mcc_extremes_and_constant_prediction():
    assert classification.matthews_corrcoef(list("abab"), list("abab")) == pytest.approx(1.0)
    assert classification.matthews_corrcoef(list("abab"), list("baba")) == pytest.approx(-1.0)
    # A majority-class predictor carries no information: MCC is 0 (defined by convention).
    assert classification.matthews_corrcoef(list("aaab"), list("aaaa")) == 0.0


def test_multiclass_mcc_matches_binary_formula_and_macro_f1():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 2, 200).tolist(), rng.integers(0, 2, 200).tolist()
    tp = sum(t == 1 and p == 1 for t, p in zip(y_true, y_pred))
    tn = sum(t == 0 and p == 0 for t, p in zip(y_true, y_pred))
    fp = sum(t == 0 and p == 1 for t, p in zip(y_true, y_pred))
    fn = sum(t == 1 and p == 0 for t, p in zip(y_true, y_pred))
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert classification.matthews_corrcoef(y_true, y_pred) == pytest.approx(expected)
    # Three classes: per-class F1 of (a: 1.0, b: 2/3, c: 0.0) -> macro 5/9.
    assert classification.f1_macro(list("aabbc"), list("aabcb")) == pytest.approx((1 + 0.5 + 0) / 3)


def test_f1_of_a_class_in_neither_list_is_nan_not_zero():
    # TP = FP = FN = 0: no positive to find and none predicted (scikit-learn: ill-defined).
    assert math.isnan(classification.f1_binary([0, 0, 0], [0, 0, 0], positive=1))
    # One side has it: F1 = 2TP / (2TP + FP + FN) = 0 is a real score.
    assert classification.f1_binary([0, 1, 0], [0, 0, 0], positive=1) == 0.0
    assert classification.f1_binary([0, 0, 0], [0, 1, 0], positive=1) == 0.0
    # A label asked for but in neither list has no F1: left out of the macro mean.
    assert classification.f1_macro(list("aab"), list("aab"), labels=list("abc")) == 1.0
    assert math.isnan(classification.f1_macro(list("aa"), list("aa"), labels=["c"]))
    assert classification.f1_macro(list("aab"), list("aaa")) == pytest.approx((0.8 + 0.0) / 2)


def test_classification_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 labels but y_pred has 2"):
        classification.accuracy([1, 0, 1], [1, 0])


# -- spans (conlleval) ---------------------------------------------------------------------------

def test_chunks_follow_conlleval_rules():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER", "B-ORG"]
    # A stray I-LOC starts a chunk; B-LOC after I-LOC starts a new one; I-PER after B-LOC too.
    assert spans.chunks(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("PER", 6, 6),
                                  ("ORG", 7, 7)]


def test_span_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # gold chunks: PER(0-1), LOC(3), ORG(0) = 3; predicted: PER(0-1), ORG(0), LOC(1) = 3;
    # correct: PER, ORG = 2 -> P = R = F1 = 2/3.
    report = spans.span_f1(gold, pred)
    assert (report["n_gold"], report["n_predicted"], report["n_correct"]) == (3, 3, 2)
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(2 / 3)
    assert report["f1/PER"] == pytest.approx(1.0) and report["f1/LOC"] == 0.0


def test_partial_span_is_wrong_and_empty_prediction_scores_zero():
    gold = [["B-NAME", "I-NAME", "O"]]
    assert spans.span_f1(gold, [["B-NAME", "O", "O"]])["f1"] == 0.0  # boundary must match
    assert spans.span_f1(gold, [["O", "O", "O"]])["f1"] == 0.0
    assert spans.span_f1(gold, gold)["f1"] == 1.0


def test_span_f1_with_no_gold_and_no_predicted_entity_is_nan_not_zero():
    # 0/0 everywhere: conlleval prints its default 0.00, which reads as a model that finds
    # nothing among entities that are there; scikit-learn calls such an F-score ill-defined.
    report = spans.span_f1([["O", "O"], ["O"]], [["O", "O"], ["O"]])
    assert (report["n_gold"], report["n_predicted"], report["n_correct"]) == (0, 0, 0)
    assert all(math.isnan(report[k]) for k in ("precision", "recall", "f1"))
    assert not [k for k in report if k.startswith("f1/")]
    # One side empty: F1 = 2tp / (2tp + fp + fn) = 0 is a real score; the 0/0 side stays
    # conlleval's 0.
    missed = spans.span_f1([["B-PER", "O"]], [["O", "O"]])
    assert (missed["precision"], missed["recall"], missed["f1"]) == (0.0, 0.0, 0.0)
    invented = spans.span_f1([["O", "O"]], [["B-PER", "O"]])
    assert (invented["precision"], invented["recall"], invented["f1"]) == (0.0, 0.0, 0.0)
    assert invented["f1/PER"] == 0.0
    with pytest.raises(ValueError, match="at least one sentence"):
        spans.span_f1([], [])


def test_span_f1_rejects_bad_tags_and_lengths():
    with pytest.raises(ValueError, match="not O, B-X"):
        spans.span_f1([["X-PER"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1"):
        spans.span_f1([["O", "O"]], [["O"]])


# -- SQuAD ---------------------------------------------------------------------------------------

def test_official_normalisation():
    assert squad.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert squad.normalize_answer("an apple, a pear & the fig.") == "apple pear fig"
    # Articles are whole words only; "theatre" keeps its "the".
    assert squad.normalize_answer("Theatre of the Absurd") == "theatre of absurd"


def test_exact_match_and_f1_hand_computed():
    assert squad.exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    # prediction tokens: [eiffel, tower, paris], gold: [eiffel, tower] -> P=2/3, R=1, F1=0.8.
    assert squad.f1_score("Eiffel Tower, Paris", "the Eiffel Tower") == pytest.approx(0.8)
    assert squad.f1_score("London", "Paris") == 0.0
    # v2.0: an empty gold answer matches only an empty prediction.
    assert squad.f1_score("", "") == 1.0 and squad.f1_score("Paris", "") == 0.0


def test_evaluate_takes_best_gold_and_reports_percentages():
    gold = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["Paris"], "q3": []}
    predictions = {"q1": "broncos", "q2": "Paris France", "q3": ""}
    result = squad.evaluate(gold, predictions)
    # q1: EM 1 against "The Broncos"; q2: EM 0, F1 2/3; q3: no-answer correct.
    assert result["exact"] == pytest.approx(100 * 2 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert result["HasAns_total"] == 2 and result["NoAns_exact"] == 100.0
    assert squad.evaluate(gold, {})["exact"] == 0.0  # missing predictions score zero


def test_has_answer_split_follows_the_official_script_for_answers_that_normalise_away():
    """evaluate-v2.0.py counts a question with gold answers as HasAns even when every answer
    normalises to "" (e.g. "The"); it used to be counted as NoAns, moving it between the
    breakdowns (and giving v1.1 data a NoAns breakdown it does not have)."""
    gold = {"q1": ["The"], "q2": ["Paris"], "q3": []}
    predictions = {"q1": "the", "q2": "Paris", "q3": "London"}
    result = squad.evaluate(gold, predictions)
    # Official: q1 and q2 are HasAns (q1 scores EM 1: "" == ""), q3 is NoAns (EM 0).
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 1
    assert result["HasAns_exact"] == 100.0 and result["NoAns_exact"] == 0.0
    assert result["exact"] == pytest.approx(100 * 2 / 3)
    # v1.1-style data (every question answerable): no breakdown at all.
    assert "NoAns_total" not in squad.evaluate({"q1": ["The"], "q2": ["Paris"]}, predictions)


def _window(context, token_spans, start_logits, end_logits, qid="q", max_context=None):
    offsets = np.full((len(start_logits), 2), -1)
    for position, span in token_spans.items():
        offsets[position] = span
    window = dict(id=qid, start_logits=np.array(start_logits, float),
                  end_logits=np.array(end_logits, float), offsets=offsets)
    if max_context is not None:
        window["max_context"] = np.array(max_context)
    return window


def test_decode_respects_order_max_length_and_context():
    context = "Elizabeth met Mr Darcy at Pemberley"
    spans_ = {2: (0, 9), 3: (10, 13), 4: (14, 16), 5: (17, 22), 6: (23, 25), 7: (26, 35)}
    # Position 1 (a question token) has the highest start logit but is not in the context.
    start = [0, 9, 1, 0, 5, 0, 0, 4]
    end = [0, 9, 0, 0, 0, 6, 0, 3]
    w = _window(context, spans_, start, end)
    predictions, nbest = squad.decode_predictions([w], {"q": context}, n_best=5,
                                                  max_answer_length=5)
    assert predictions["q"] == "Mr Darcy"  # start 4 (5) + end 5 (6) = 11 is the best span
    assert all(n["score"] <= nbest["q"][0]["score"] for n in nbest["q"])
    # With a max length of 1 sub-token, only single-token spans are allowed.
    predictions, _ = squad.decode_predictions([w], {"q": context}, max_answer_length=1)
    assert predictions["q"] == "Pemberley"  # 4 + 3 = 7 beats any other single token


def test_decode_picks_best_window_and_v2_null_threshold():
    context = "alpha beta gamma"
    a = _window(context, {1: (0, 5), 2: (6, 10)}, [8, 1, 0, 0], [8, 1, 0, 0])
    b = _window(context, {1: (6, 10), 2: (11, 16)}, [0, 0, 3, 0], [0, 0, 3, 0])
    predictions, _ = squad.decode_predictions([a, b], {"q": context})
    assert predictions["q"] == "gamma"  # 6 in window b beats 2 in window a
    # v2.0: the null score is the lowest [CLS] score over windows: min(16, 0) = 0 < 6: answer.
    predictions, _ = squad.decode_predictions([a, b], {"q": context}, version_2=True)
    assert predictions["q"] == "gamma"
    predictions, _ = squad.decode_predictions([a], {"q": context}, version_2=True)
    assert predictions["q"] == ""  # null 16 - best 2 = 14 > 0
    predictions, _ = squad.decode_predictions([a], {"q": context}, version_2=True,
                                              null_threshold=20.0)
    assert predictions["q"] == "alpha"


def test_nbest_lists_each_answer_text_once_at_its_best_score():
    # Two overlapping windows both see "beta" (and "gamma"); the n-best list once held each
    # text twice. BERT's run_squad de-duplicates by final text, keeping the best score.
    context = "alpha beta gamma"
    a = _window(context, {1: (0, 5), 2: (6, 10)}, [0, 1, 4, 0], [0, 1, 4, 0])
    b = _window(context, {1: (6, 10), 2: (11, 16)}, [0, 3, 2, 0], [0, 3, 2, 0])
    predictions, nbest = squad.decode_predictions([a, b], {"q": context}, n_best=3)
    texts = [n["text"] for n in nbest["q"]]
    assert predictions["q"] == "beta" == texts[0]  # 4 + 4 in window a
    assert len(texts) == len(set(texts)) == 3, nbest["q"]
    assert nbest["q"][0]["score"] == 8.0
    assert [n["score"] for n in nbest["q"]] == sorted((n["score"] for n in nbest["q"]), reverse=True)


def test_nbest_ranks_every_pair_of_a_window_before_taking_the_n_best_texts():
    # "Jane and Jane": with n_best=2 the window's two best pairs are both "Jane" (10 and 9.5);
    # keeping only those two spans of the window lost "Jane and Jane" (9) from the n-best list.
    # BERT's write_predictions ranks every valid pair before it takes the n best texts.
    context = "Jane and Jane"
    w = _window(context, {1: (0, 4), 2: (5, 8), 3: (9, 13)}, [0, 5, 0, 5.5, 0], [0, 5, 0, 4, 0])
    predictions, nbest = squad.decode_predictions([w], {"q": context}, n_best=2)
    assert predictions["q"] == "Jane"
    assert nbest["q"] == [{"text": "Jane", "score": 10.0}, {"text": "Jane and Jane", "score": 9.0}]


def test_decode_starts_only_in_the_max_context_window():
    # Windows a (alpha beta gamma) and b (beta gamma delta) overlap; gamma has more context in
    # b, beta in a. Window a scores "gamma" at 9 + 9, but gamma may only start in b, where
    # "gamma delta" (3 + 3) is its best span. Ends are not restricted: "beta gamma" in a is a
    # span, at -5 + 9 = 4.
    context = "alpha beta gamma delta"
    a = _window(context, {1: (0, 5), 2: (6, 10), 3: (11, 16)}, [0, -5, -5, 9, 0],
                [0, 0, 0, 9, 0], max_context=[0, 1, 1, 0, 0])
    b = _window(context, {1: (6, 10), 2: (11, 16), 3: (17, 22)}, [0, -5, 3, -5, 0],
                [0, 0, 0, 3, 0], max_context=[0, 0, 1, 1, 0])
    predictions, nbest = squad.decode_predictions([a, b], {"q": context}, n_best=5)
    assert predictions["q"] == "gamma delta" and nbest["q"][0]["score"] == 6.0
    scores = {n["text"]: n["score"] for n in nbest["q"]}
    assert scores["gamma"] == 3.0  # from window b (3 + 0), never window a's 18
    assert scores["beta gamma"] == 4.0
    # Without the mask every context sub-token may start: window a's "gamma" wins.
    del a["max_context"], b["max_context"]
    assert squad.decode_predictions([a, b], {"q": context})[0]["q"] == "gamma"
    with pytest.raises(ValueError, match=r"max_context has shape \(4,\) but the window has 5"):
        squad.decode_predictions([dict(a, max_context=np.ones(4))], {"q": context})
