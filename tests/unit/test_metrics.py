"""Benchmark metrics against hand-worked examples."""

from __future__ import annotations

import pytest

from mmlens.errors import MMLensError
from mmlens.metrics import (
    COCO_SYNONYMS,
    CONTRACTIONS,
    caption_objects,
    chair,
    choice_accuracy,
    exact_match,
    exact_match_accuracy,
    normalize_answer,
    parse_choice,
    parse_yes_no,
    pope_scores,
    vqa_accuracy,
    vqa_score,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("Two dogs.", "2 dogs"), ("The Cat!", "cat"), ("dont know", "don't know"), ("1,000", "1000"),
     ("a man's hat", "man 's hat"), ("3.5", "3.5"), ("left-hand side", "left hand side"), ("yes - no", "yes no"),
     ("none", "0")],
)
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_contraction_table_matches_the_official_quirks() -> None:
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["couldnt've"] == CONTRACTIONS["couldn'tve"] == "couldn't've"
    assert "couldntve" not in CONTRACTIONS and CONTRACTIONS["somebody'd"] == "somebodyd"


def test_exact_match_accuracy() -> None:
    assert exact_match("A red bus.", "red bus") and not exact_match("red", "dark red")
    assert exact_match_accuracy(["Yes", "two", "blue"], ["yes", "2", "red"]) == pytest.approx(2 / 3)
    with pytest.raises(MMLensError, match="2 predictions for 1"):
        exact_match_accuracy(["a", "b"], ["a"])


def test_vqa_score_ten_answers() -> None:
    answers = ["red"] * 3 + ["dark red"] * 7
    # "red": 3 of the 10 leave-one-out subsets lose a match (2/3), the other 7 keep 3 (1).
    assert vqa_score("Red.", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    two = ["red"] * 2 + ["maroon"] * 8  # 2 subsets with 1 match, 8 with 2 matches
    assert vqa_score("red", two) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_score("maroon", two) == 1.0 and vqa_score("blue", two) == 0.0
    assert vqa_accuracy(["red", "maroon"], [answers, two]) == pytest.approx((0.9 + 1.0) / 2)


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B", "B"), ("B.", "B"), ("(B)", "B"), ("The answer is B.", "B"), ("B. whale", "B"), ("Answer: C", "C"),
     ("A dog", None), ("whale", "B"), ("E", None), ("I think so", None)],
)
def test_parse_choice(text: str, letter: str | None) -> None:
    assert parse_choice(text, ["frog", "whale", "shark"]) == letter


def test_choice_accuracy() -> None:
    assert choice_accuracy(["B", "(A)", "The answer is C."], ["B", "B", "C"]) == pytest.approx(2 / 3)


def test_pope_scores_confusion_matrix() -> None:
    labels = ["yes"] * 4 + ["no"] * 6
    preds = ["Yes, there is a dog.", "yes", "Yes.", "No, there is not.",  # TP TP TP FN
             "Yes", "yes", "no", "There is no dog.", "No.", "It is not."]  # FP FP TN TN TN TN  # fmt: skip
    s = pope_scores(preds, labels)
    assert (s.tp, s.fp, s.tn, s.fn) == (3, 2, 4, 1)
    assert (s.accuracy, s.precision, s.recall, s.yes_ratio) == pytest.approx((0.7, 0.6, 0.75, 0.5))
    assert s.f1 == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))  # 2/3
    # LLaVA's rule, verbatim: only the first sentence, and capitalised "Not" is not a no.
    assert parse_yes_no("I see no cat. Yes.") == "no" and parse_yes_no("Not at all.") == "yes"
    assert pope_scores(["no", "no"], ["yes", "no"]).precision == 0.0  # no positive predictions


def test_chair_two_captions() -> None:
    captions = {1: "A man riding a horse next to a dog.", 2: "Two cats sleeping on a couch."}
    objects = {1: ["person", "horse"], 2: ["cat", "couch"]}
    s = chair(captions, objects)
    # Mentions: man→person, horse, dog | cats→cat, couch; only "dog" is not in its image.
    assert (s.n_mentions, s.n_hallucinated, s.chair_s, s.chair_i) == (5, 1, 0.5, 0.2)
    assert s.hallucinated == {1: [("dog", "dog")]}
    mine = chair(captions, objects, synonyms={"dog": "dog", "horse": "horse", "man": "person"})
    assert (mine.n_mentions, mine.chair_i) == (3, pytest.approx(1 / 3))
    with pytest.raises(MMLensError, match="no ground-truth objects"):
        chair({3: "A cat."}, objects)


def test_caption_objects_phrases_and_plurals() -> None:
    found = caption_objects("Two men with wine glasses near a hot dog stand under blue skies, skis and buses.")
    assert found == [("men", "person"), ("wine glass", "wine glass"), ("hot dog", "hot dog"), ("skis", "skis"),
                     ("bus", "bus")]  # fmt: skip
    assert len(set(COCO_SYNONYMS.values())) == 80


def test_cider_known_values():
    from mmlens.metrics import cider

    refs = {"1": ["A red circle, on the left."], "2": ["a blue square"], "3": ["two green stars"]}
    score, per = cider({"1": "a red circle on the left", "2": "a blue square", "3": "nothing here"}, refs)
    # A caption equal to its only reference scores 10 (CIDEr-D's scale, mean over n = 1..4); a
    # 3-word one has no 4-grams, so 3 of 4 orders match: 7.5; one sharing no n-gram scores 0.
    assert per["1"] == pytest.approx(10.0) and per["2"] == pytest.approx(7.5) and per["3"] == 0.0
    assert score == pytest.approx(17.5 / 3)
