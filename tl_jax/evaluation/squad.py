"""SQuAD evaluation: the official v1.1 / v2.0 answer normalisation, EM/F1, and span decoding.

`normalize_answer`, `exact_match` and `f1_score` follow the official `evaluate-v2.0.py` script:
lowercase, strip punctuation, drop the articles a/an/the, squeeze whitespace; F1 is over the bag
of normalised tokens, and an empty gold answer (v2.0 no-answer) matches only an empty prediction.
`evaluate` reports percentages, as the official script does.

`decode_predictions` turns per-window start/end logits back into answer strings: the n best
start and end sub-tokens of each window are paired (start <= end, length <= max_answer_length,
both inside the context), scored by start + end logit, mapped back to character offsets, and the
best span over all windows of a question wins; the n-best list ranks every such pair of every
window and keeps each answer text once, at its best score (BERT's `write_predictions`).
One deliberate difference from BERT's `run_squad.py` (and Hugging Face's `run_qa`): they take
the n best start and end positions of the whole window (question, [CLS] and specials included)
and then drop the pairs that are not allowed; here the n best are taken among the positions
that are allowed (context sub-tokens; for starts, in their max-context window). That is a
superset of BERT's valid pairs, so the best span scores the same or higher: the two differ only
when BERT's top n holds so many disallowed positions that it misses a better span (where BERT
may even answer its nonce "empty"), and for v2.0 that can make a span beat the null score
where BERT would answer "".
Starts follow BERT's max-context rule (`run_squad.py`): a sub-token held by several overlapping
windows may start an answer only in the window where it has the most context on both sides
(`max_context` from `tl_jax.data.features.encode_squad`); ends are not restricted. For v2.0,
the question is answered with "" when the best null score ([CLS] start + end, lowest over
windows) beats the best span by more than `null_threshold`.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, articles and extra whitespace (official SQuAD rules)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 between normalised answers; both empty counts as a match."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def evaluate(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Official SQuAD EM/F1 (percentages) over questions.

    Args:
      gold: question id -> gold answer texts; an empty list means "no answer" (v2.0).
      predictions: question id -> predicted text ("" for no answer). Missing ids score 0, as in
        the official v1.1 script (v2.0's skips them, then fails on its HasAns/NoAns totals).
    Returns:
      `{"exact", "f1", "total"}` plus `HasAns_*` / `NoAns_*` breakdowns when both kinds occur.
    """
    if not gold:
        raise ValueError("no gold questions to evaluate")
    em, f1, has_answer = {}, {}, {}
    for qid, answers in gold.items():
        # HasAns / NoAns as the official script splits them: by whether the question has gold
        # answers at all, not whether they survive normalisation (a gold answer "The" is one).
        has_answer[qid] = bool(answers)
        answers = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in predictions:
            em[qid] = f1[qid] = 0.0
            continue
        prediction = predictions[qid]
        em[qid] = max(exact_match(prediction, a) for a in answers)
        f1[qid] = max(f1_score(prediction, a) for a in answers)
    result = {"exact": 100.0 * np.mean(list(em.values())), "f1": 100.0 * np.mean(list(f1.values())),
              "total": float(len(gold))}
    for name, want in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in gold if has_answer[q] == want]
        if ids and len(ids) < len(gold):
            result[f"{name}_exact"] = 100.0 * np.mean([em[q] for q in ids])
            result[f"{name}_f1"] = 100.0 * np.mean([f1[q] for q in ids])
            result[f"{name}_total"] = float(len(ids))
    return {k: float(v) for k, v in result.items()}


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
               n_best: int = 20, max_answer_length: int = 30,
               max_context: np.ndarray | None = None,
               n_spans: int | None = None) -> list[tuple[float, int, int]]:
    """Candidate spans of one window as `(score, start_char, end_char)`, best first.

    Args:
      start_logits, end_logits: `(T,)` logits over the window's sub-tokens.
      offsets: `(T, 2)` character offsets of each sub-token in the context; `(-1, -1)` for
        tokens outside the context (question, special tokens, padding), which never answer.
      n_best: how many start and how many end positions to pair (the n best allowed ones).
      n_spans: how many spans to return; None: `n_best`. `decode_predictions` keeps them all
        (BERT ranks every valid pair of every window before it takes the n best texts).
      max_answer_length: longest answer in sub-tokens.
      max_context: `(T,)`, nonzero where this window is the sub-token's max-context window;
        only those sub-tokens may start a span. None: every context sub-token may.
    """
    in_context = offsets[:, 0] >= 0
    can_start = in_context
    if max_context is not None:
        if max_context.shape != in_context.shape:
            raise ValueError(f"max_context has shape {max_context.shape} but the window has "
                             f"{len(in_context)} positions (offsets {offsets.shape})")
        can_start = in_context & (max_context != 0)
    # The n best allowed positions, in logit order (ties in argsort's order).
    start_order, end_order = np.argsort(-start_logits), np.argsort(-end_logits)
    starts = start_order[can_start[start_order]][:n_best]
    ends = end_order[in_context[end_order]][:n_best]
    spans = []
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((float(start_logits[s] + end_logits[e]), int(offsets[s, 0]),
                          int(offsets[e, 1])))
    spans.sort(key=lambda x: -x[0])
    return spans[:n_best if n_spans is None else n_spans]


def decode_predictions(windows: Iterable[dict], contexts: Mapping[str, str], n_best: int = 20,
                       max_answer_length: int = 30, version_2: bool = False,
                       null_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, list]]:
    """Best answer text per question from per-window logits.

    Args:
      windows: dicts with `"id"` (question id), `"start_logits"`, `"end_logits"` (`(T,)`),
        `"offsets"` (`(T, 2)`, `-1` outside the context), and optionally `"max_context"`
        (`(T,)`, nonzero where a start is allowed: BERT's max-context rule, as `encode_squad`
        gives it; without it any context sub-token may start an answer, which is only right
        for questions whose context fits one window); the [CLS] token must be position 0.
      contexts: question id -> context string (offsets index into it).
      version_2: allow "no answer"; it wins when null_score - best_span_score > null_threshold.
    Returns:
      `(predictions, nbest)`: id -> answer text, and id -> list of `{"text", "score"}`, best
      first, each text once (at its best score over windows).
    """
    candidates: dict[str, list] = collections.defaultdict(list)
    null_scores: dict[str, float] = {}
    for w in windows:
        qid = w["id"]
        start_logits, end_logits = np.asarray(w["start_logits"]), np.asarray(w["end_logits"])
        null = float(start_logits[0] + end_logits[0])
        null_scores[qid] = min(null, null_scores.get(qid, np.inf))
        max_context = w.get("max_context")
        for score, a, b in best_spans(
                start_logits, end_logits, np.asarray(w["offsets"]), n_best, max_answer_length,
                None if max_context is None else np.asarray(max_context), n_spans=n_best * n_best):
            candidates[qid].append((score, contexts[qid][a:b]))
    predictions, nbest = {}, {}
    for qid, null in null_scores.items():
        # One entry per answer text, at its best score: overlapping windows (and repeats of a
        # name in the context) give the same text many times, as in BERT's run_squad.py.
        ranked, seen = [], set()
        for score, text in sorted(candidates[qid], key=lambda x: -x[0]):
            if text not in seen and len(ranked) < n_best:
                seen.add(text)
                ranked.append((score, text))
        nbest[qid] = [{"text": t, "score": s} for s, t in ranked]
        best_text, best_score = (ranked[0][1], ranked[0][0]) if ranked else ("", -np.inf)
        if version_2 and null - best_score > null_threshold:
            best_text = ""
        predictions[qid] = best_text
    return predictions, nbest
