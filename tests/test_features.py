"""Feature conversion: classification packing, first-sub-token label alignment, SQuAD windows."""
import numpy as np
import pytest
import tokenizers

from tl_jax.data import features
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.evaluation import squad


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return Tokenizer.load(str(data_dir / "models" / "all-MiniLM-L6-v2"))


def test_hf_tokenizer_unwraps_and_drops_padding(tokenizer, data_dir):
    raw = tokenizers.Tokenizer.from_file(str(data_dir / "models" / "all-MiniLM-L6-v2" /
                                             "tokenizer.json"))
    assert raw.padding is not None  # MiniLM's file pads to 128 ...
    tok = features.hf_tokenizer(raw)
    assert tok.padding is None and tok.truncation is None  # ... the copy does not
    assert features.hf_tokenizer(tokenizer).get_vocab_size() == raw.get_vocab_size()
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        features.hf_tokenizer(object())


def test_classification_pairs_truncate_longest_first(tokenizer):
    records = [{"text": "one two three four five six seven eight", "text_b": "nine ten",
                "label": "b"}]
    out = features.encode_classification(tokenizer, records, {"a": 0, "b": 1}, max_seq_length=9)
    ids = out["input_ids"][0]
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    # [CLS] a(4) [SEP] b(2) [SEP]: the long first sentence lost its tail, the pair survived.
    assert ids[0] == cls and list(np.nonzero(ids == sep)[0]) == [5, 8]
    assert tokenizer.decode(ids[1:5]) == "one two three four"
    assert list(out["segment_ids"][0]) == [0] * 6 + [1] * 3
    assert out["labels"].tolist() == [1] and out["input_mask"].sum() == 9
    with pytest.raises(ValueError, match="label 'c' not in label map"):
        features.encode_classification(tokenizer, [dict(records[0], label="c")], {"a": 0}, 9)
    # Equal lengths: the second sentence loses the token, as in BERT's _truncate_seq_pair
    # (4 + 4 sub-tokens into room for 7 is 4 + 3; it was 3 + 4).
    tied = [{"text": "one two three four", "text_b": "five six seven eight", "label": "a"}]
    ids = features.encode_classification(tokenizer, tied, {"a": 0}, max_seq_length=10)[
        "input_ids"][0]
    assert list(np.nonzero(ids == sep)[0]) == [5, 9]
    assert tokenizer.decode(ids[1:5]) == "one two three four"
    assert tokenizer.decode(ids[6:9]) == "five six seven"


def test_tagging_labels_only_first_subtokens(tokenizer):
    words = ["elizabeth", "visited", "pemberley", "and", "netherfield"]
    tags = ["B-NAME", "O", "B-NAME", "O", "B-NAME"]
    label_map = {"O": 0, "B-NAME": 1, "I-NAME": 2}
    out = features.encode_tagging(tokenizer, [{"tokens": words, "tags": tags}], label_map, 16)
    labels, word_index = out["labels"][0], out["word_index"][0]
    n_sub = int(out["input_mask"][0].sum()) - 2
    assert n_sub > len(words)  # the rare names split into several sub-tokens
    labelled = np.nonzero(labels != features.IGNORE)[0]
    # Exactly one labelled position per word, in order, carrying that word's tag.
    assert len(labelled) == len(words)
    assert word_index[labelled].tolist() == list(range(len(words)))
    assert labels[labelled].tolist() == [label_map[t] for t in tags]
    starts = tokenizer.word_starts(out["input_ids"][0][1:n_sub + 1])
    assert (np.nonzero(starts)[0] + 1).tolist() == labelled.tolist()
    # Decoding maps first-sub-token predictions back to words; truncated words become O.
    back = features.tags_from_predictions(labels.clip(0), word_index, len(words), list(label_map))
    assert back == tags
    short = features.encode_tagging(tokenizer, [{"tokens": words, "tags": tags}], label_map, 4)
    assert features.tags_from_predictions(short["labels"][0].clip(0), short["word_index"][0],
                                          len(words), list(label_map))[2:] == ["O"] * 3


def test_tagged_words_the_tokenizer_drops_are_noted_once_per_file(tokenizer, capsys):
    """A lone U+00A0 or control character has no sub-token, so it is always predicted O: with a
    gold tag other than O it is a missed entity, and recall was capped with no word said."""
    label_map = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3}
    records = [{"tokens": ["Emma", "\u00a0", "went", "\x07", "home"],
                "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]},
               {"tokens": ["\u00a0", "Emma"], "tags": ["O", "B-PER"]}]
    out = features.encode_tagging(tokenizer, records, label_map, 16, source="train.conll")
    assert out["word_index"][0][:4].tolist() == [-1, 0, 2, 4]  # words 1 and 3: no sub-token
    back = features.tags_from_predictions(out["labels"][0].clip(0), out["word_index"][0], 5,
                                          list(label_map))
    assert back == ["B-PER", "O", "O", "O", "O"]  # the scores are as before
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["[tag] Note: 2 words in train.conll with a tag other than O are reduced to "
                     "nothing by the tokenizer (the first: '\\xa0', tagged I-PER, word 2 of "
                     "sentence 1), so they are always predicted O and counted as missed in the "
                     "span F1: recall cannot reach 1 (Hugging Face's token classification drops "
                     "such words the same way)."]
    # Dropped words tagged O, and unlabelled sentences (tl_jax predict), change no score.
    features.encode_tagging(tokenizer, [records[1], dict(records[0], tags=None)], label_map, 16)
    assert capsys.readouterr().out == ""


def test_squad_windows_cover_the_answer_and_map_back_to_characters(tokenizer):
    context = ("Elizabeth walked to Meryton with her sisters. " * 6) + \
              "Later she visited Pemberley in Derbyshire with her aunt. " + \
              ("They talked about Mr. Darcy at length. " * 4)
    start = context.index("Pemberley")
    record = {"id": "q", "question": "Where did she go later?", "context": context,
              "answers": [{"text": "Pemberley", "answer_start": start}]}
    out = features.encode_squad(tokenizer, [record], max_seq_length=48, doc_stride=16,
                                max_query_length=16)
    n = len(out["input_ids"])
    assert n > 3 and out["example_index"].tolist() == [0] * n
    with_answer = np.nonzero(out["start_positions"] > 0)[0]
    assert len(with_answer) >= 1
    covered = set()
    for i in range(n):
        offsets = out["offsets"][i]
        in_context = offsets[:, 0] >= 0
        # Context tokens sit in segment 1 and never in the question or specials.
        assert (out["segment_ids"][i][in_context] == 1).all()
        covered |= {tuple(o) for o in offsets[in_context]}
        s, e = out["start_positions"][i], out["end_positions"][i]
        if s > 0:
            assert context[offsets[s, 0]:offsets[e, 1]] == "Pemberley"
    # Windows overlap (doc stride) and together cover every context sub-token.
    n_context = len(features.hf_tokenizer(tokenizer).encode(context, add_special_tokens=False).ids)
    assert len(covered) == n_context
    # An oracle decoder on the windows' gold positions recovers the answer text exactly.
    windows = []
    for i in range(n):
        logits = np.zeros((2, 48))
        logits[0, out["start_positions"][i]] = logits[1, out["end_positions"][i]] = 10.0
        windows.append(dict(id="q", start_logits=logits[0], end_logits=logits[1],
                            offsets=out["offsets"][i], max_context=out["max_context"][i]))
    predictions, _ = squad.decode_predictions(windows, {"q": context}, version_2=True)
    assert predictions["q"] == "Pemberley"


def test_squad_answer_keeps_the_combining_marks_that_end_it(tokenizer):
    # Decomposed (NFD) text: MiniLM's uncased tokenizer strips the accents, and a word's last
    # sub-token used to end before them, so the answer came back as "Cafe", not "Cafe\u0301".
    context = "We met at Cafe\u0301 Zoe\u0308 in Zu\u0308rich, then at Ame\u0301lie\u0301."
    answers = ["Cafe\u0301 Zoe\u0308", "Zu\u0308rich", "Ame\u0301lie\u0301"]
    records = [{"id": f"q{i}", "question": "Where?", "context": context,
                "answers": [{"text": a, "answer_start": context.index(a)}]}
               for i, a in enumerate(answers)]
    out = features.encode_squad(tokenizer, records, max_seq_length=48, doc_stride=16,
                                max_query_length=8)
    windows = []
    for i in range(len(out["input_ids"])):
        logits = np.zeros((2, 48))
        logits[0, out["start_positions"][i]] = logits[1, out["end_positions"][i]] = 10.0
        windows.append(dict(id=records[out["example_index"][i]]["id"], start_logits=logits[0],
                            end_logits=logits[1], offsets=out["offsets"][i],
                            max_context=out["max_context"][i]))
    predictions, _ = squad.decode_predictions(windows, {r["id"]: context for r in records})
    assert predictions == {f"q{i}": a for i, a in enumerate(answers)}


def test_squad_max_context_is_berts_one_window_per_context_token(tokenizer):
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    context = " ".join(words)  # 12 sub-tokens, one per word
    record = {"id": "q", "question": "Who?", "context": context, "answers": None}
    # [CLS] who ? [SEP] window [SEP]: 13 - 5 = 8 context sub-tokens a window, 3 apart, so the
    # windows hold context sub-tokens [0, 8), [3, 11) and [6, 12) (the last one shorter).
    out = features.encode_squad(tokenizer, [record], max_seq_length=13, doc_stride=3,
                                max_query_length=8)
    assert len(out["input_ids"]) == 3 and out["max_context"].shape == (3, 13)
    in_context = out["offsets"][..., 0] >= 0
    assert not out["max_context"][~in_context].any()  # question, specials, padding
    owner = {}
    for w in range(3):
        for position in np.nonzero(out["max_context"][w])[0]:
            word = context[out["offsets"][w, position, 0]:out["offsets"][w, position, 1]]
            assert word not in owner, f"{word} is max-context in windows {owner[word]} and {w}"
            owner[word] = w
    assert sorted(owner) == sorted(words)  # every context sub-token in exactly one window
    # BERT's score min(left, right) + 0.01 * window length, by hand:
    #   five (4): w0 min(4, 3) + .08 = 3.08; w1 min(1, 6) + .08 = 1.08          -> w0
    #   six (5):  w0 min(5, 2) + .08 = 2.08; w1 min(2, 5) + .08 = 2.08 (a tie)  -> w0, the first
    #   seven (6): w0 1.08; w1 min(3, 4) + .08 = 3.08; w2 min(0, 5) + .06 = .06 -> w1
    #   nine (8): w1 min(5, 2) + .08 = 2.08; w2 min(2, 3) + .06 = 2.06          -> w1
    #   ten (9):  w1 min(6, 1) + .08 = 1.08; w2 min(3, 2) + .06 = 2.06          -> w2
    assert [owner[w] for w in words] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    # A context that fits one window is max-context there throughout.
    short = features.encode_squad(tokenizer, [dict(record, context="one two")], 13, 3, 8)
    assert (short["max_context"][0] == (short["offsets"][0, :, 0] >= 0)).all()


def test_squad_unanswerable_points_at_cls(tokenizer):
    record = {"id": "q", "question": "Who?", "context": "Nobody was there.", "answers": []}
    out = features.encode_squad(tokenizer, [record], max_seq_length=32, doc_stride=8,
                                max_query_length=8)
    assert out["start_positions"].tolist() == [0] and out["end_positions"].tolist() == [0]
    with pytest.raises(ValueError, match="too short for max_query_length=8"):
        features.encode_squad(tokenizer, [record], max_seq_length=10, max_query_length=8)


def test_squad_window_points_at_any_gold_answer_it_holds(tokenizer):
    # Only the first gold answer was used: a window holding another one (the silver cloze_qa
    # lists every occurrence of the name; 40% of its [CLS] windows at seq 256) was labelled
    # "no answer", which v2.0 trains on and v1.1 throws away.
    context = ("Darcy rode out early. " + "The weather was grey and cold that day. " * 8 +
               "Later Darcy came back.")
    answers = [{"text": "Darcy", "answer_start": 0},
               {"text": "Darcy", "answer_start": context.rindex("Darcy")}]
    record = {"id": "q", "question": "Who rode?", "context": context, "answers": answers}
    out = features.encode_squad(tokenizer, [record], max_seq_length=32, doc_stride=12,
                                max_query_length=8)
    for i in range(len(out["input_ids"])):
        offsets, s, e = out["offsets"][i], out["start_positions"][i], out["end_positions"][i]
        in_context = offsets[:, 0] >= 0
        lo, hi = offsets[in_context, 0].min(), offsets[in_context, 1].max()
        holds = [a for a in answers if a["answer_start"] >= lo and
                 a["answer_start"] + len(a["text"]) <= hi]
        if holds:
            assert context[offsets[s, 0]:offsets[e, 1]] == "Darcy", i
            assert offsets[s, 0] == holds[0]["answer_start"]
        else:
            assert s == e == 0
    assert (out["start_positions"] > 0).sum() >= 2  # the first window and the last
