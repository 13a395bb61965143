"""Benchmark scores: VQA exact match and accuracy, option letters, POPE, CHAIR.

Definitions follow the reference evaluators: the EvalAI/VQA answer normalisation (the one
LLaVA's TextVQA evaluator uses), LLaVA's ScienceQA letter parsing and POPE yes/no parsing, and
CHAIR as in Rohrbach et al. 2018 (with a small built-in synonym table instead of theirs).
CIDEr is not here: ``pycocoevalcap``'s CIDEr scorer is pure Python (only its PTB tokenizer
needs Java); see ``docs/datasets.md``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mmlens.errors import MMLensError

_CONTRACTED = (
    "'ow's'at 'twas I'd've I'm I've ain't aren't can't could've couldn't couldn't've didn't doesn't don't "
    "hadn't hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am "
    "might've mightn't mightn't've must've mustn't needn't not've o'clock oughtn't shan't she'd've should've "
    "shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's "
    "something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've "
    "they'll they're they've wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't "
    "wouldn't've y'all y'all'd've y'all'll you'd you'd've you'll you're you've"
).split()
# The official table maps each form with exactly one apostrophe dropped to the full form, plus
# three irregular entries (including its reversed "somebody'd" → "somebodyd").
CONTRACTIONS: dict[str, str] = {
    **{w[:i] + w[i + 1 :]: w for w in _CONTRACTED for i, c in enumerate(w) if c == "'"},
    "let's": "let's", "she's": "she's", "somebody'd": "somebodyd",
}  # fmt: skip
_NUMBERS = "zero one two three four five six seven eight nine ten".split()
NUMBER_WORDS = {"none": "0", **{word: str(i) for i, word in enumerate(_NUMBERS)}}
ARTICLES = ("a", "an", "the")
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_COMMA_IN_NUMBER = re.compile(r"(?<=\d)(,)+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # the official "(?!<=\d)(\.)(?!\d)" lookahead is always true


def normalize_answer(text: str) -> str:
    """The EvalAI VQA answer normalisation (``"Two dogs."`` → ``"2 dogs"``).

    Lower-case; drop ``,``/``?``; split ``'s``; remove punctuation (or turn it into a space when
    it sits between words and no digit group is comma-separated); drop periods not followed by
    a digit; number words → digits; drop articles; restore contractions (``dont`` → ``don't``).
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCTUATION:
        if p + " " in text or " " + p in text or _COMMA_IN_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _check(predictions: Sequence, references: Sequence, what: str) -> None:
    if len(predictions) != len(references):
        raise MMLensError(f"got {len(predictions)} predictions for {len(references)} {what}: give one each.")
    if not predictions:
        raise MMLensError("no predictions to score.")


def exact_match(prediction: str, gold: str) -> bool:
    """Whether the normalised prediction equals the normalised gold answer."""
    return normalize_answer(prediction) == normalize_answer(gold)


def exact_match_accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of predictions that :func:`exact_match` their gold answer (GQA's metric)."""
    _check(predictions, golds, "gold answers")
    return sum(map(exact_match, predictions, golds)) / len(predictions)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (usually ten).

    ``min(#matching humans / 3, 1)`` averaged over the leave-one-out subsets (each human
    answer left out in turn), prediction and answers normalised by :func:`normalize_answer`:
    the official evaluator's definition as LLaVA's TextVQA (M4C) evaluator computes it. (The
    VQA v2 script normalises only when the humans disagree; the M4C one always does.)
    """
    if not answers:
        raise MMLensError("vqa_score needs at least one human answer.")
    pred, gts = normalize_answer(prediction), [normalize_answer(a) for a in answers]
    hits = sum(g == pred for g in gts)
    # Leaving out a matching answer removes one match; leaving out another keeps them all.
    total = sum(min(1.0, (hits - (g == pred)) / 3) for g in gts)
    return total / len(gts)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean :func:`vqa_score` over questions (TextVQA's and VQA v2's metric)."""
    _check(predictions, answers, "answer lists")
    return sum(map(vqa_score, predictions, answers)) / len(predictions)


_LETTER_AT_START = re.compile(r"^\(?([A-Z])(?:[.):,]|$)")
_ANSWER_IS = re.compile(r"(?i:answer)(?: is)?:?\s*\(?([A-Z])\b")


def parse_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a model answered (``"B"``, ``"B."``, ``"(B)"``, ``"The answer is B."``).

    Tried in order: a capital letter alone, or opening the text and followed by ``.``, ``)``,
    ``:`` or ``,`` (not by a space: "A dog" is no choice); ``"answer (is) X"``; the text equal to
    one option (when ``options`` are given, compared after :func:`normalize_answer`). Letters
    beyond the number of options are rejected.

    Returns:
        The letter, or ``None`` when no choice can be read (count it as wrong).
    """
    text = text.strip()
    n = len(options) if options is not None else 26
    for pattern in (_LETTER_AT_START, _ANSWER_IS):
        found = pattern.search(text)
        if found and ord(found.group(1)) - ord("A") < n:
            return found.group(1)
    if options is not None:
        said = normalize_answer(text)
        for i, option in enumerate(options):
            if normalize_answer(option) == said:
                return chr(ord("A") + i)
    return None


def choice_accuracy(
    predictions: Sequence[str], letters: Sequence[str], options: Sequence[Sequence[str]] | None = None
) -> float:
    """Fraction of predictions whose :func:`parse_choice` letter is the gold letter."""
    _check(predictions, letters, "gold letters")
    opts = options if options is not None else [None] * len(predictions)
    return sum(parse_choice(p, o) == g for p, g, o in zip(predictions, letters, opts)) / len(predictions)


def parse_yes_no(text: str) -> str:
    """LLaVA's POPE parsing: ``"no"`` if the first sentence has the word no/No/not, else ``"yes"``."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"no", "No", "not"} & set(words) else "yes"


@dataclass(frozen=True)
class PopeScores:
    """POPE's binary scores, "yes" the positive class (precision, recall, F1 are 0 when undefined)."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> PopeScores:
    """Score free-form answers (parsed by :func:`parse_yes_no`) against ``"yes"``/``"no"`` labels."""
    _check(predictions, labels, "labels")
    pred = [parse_yes_no(p) == "yes" for p in predictions]
    gold = [str(g).strip().lower() == "yes" for g in labels]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    tn = len(pred) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeScores((tp + tn) / len(pred), precision, recall, f1, sum(pred) / len(pred), tp, fp, tn, fn)


_COCO_TABLE = """
person: person, people, man, men, woman, women, boy, girl, child, children, kid, baby, adult, guy, lady
person: player, rider, skier, snowboarder, skateboarder, surfer, pitcher, batter, catcher, tourist, chef
bicycle: bicycle, bike, cycle; car: car, automobile, taxi, cab, sedan, suv, jeep; bus: bus; train: train
motorcycle: motorcycle, motorbike, motor bike, scooter; airplane: airplane, plane, jet, aircraft, airliner
truck: truck, pickup, lorry; boat: boat, ship, canoe, kayak, sailboat, yacht, ferry
traffic light: traffic light, traffic signal, stoplight; fire hydrant: fire hydrant, hydrant
stop sign: stop sign; parking meter: parking meter, meter; bench: bench
bird: bird, pigeon, seagull, gull, duck, goose, parrot; cat: cat, kitten, kitty; dog: dog, puppy, pup
horse: horse, pony, foal; sheep: sheep, lamb, ram; cow: cow, cattle, bull, calf, ox; elephant: elephant
bear: bear; zebra: zebra; giraffe: giraffe; backpack: backpack; umbrella: umbrella, parasol
handbag: handbag, purse; tie: tie, necktie; suitcase: suitcase, luggage; frisbee: frisbee; skis: skis, ski
snowboard: snowboard; sports ball: ball, soccer ball, football, baseball, basketball, volleyball
kite: kite; baseball bat: baseball bat, bat; baseball glove: baseball glove, glove, mitt
skateboard: skateboard; surfboard: surfboard, surf board; tennis racket: tennis racket, racket, racquet
bottle: bottle; wine glass: wine glass; cup: cup, mug; fork: fork; knife: knife, knives; spoon: spoon
bowl: bowl; banana: banana; apple: apple; sandwich: sandwich, burger, sub; orange: orange
broccoli: broccoli; carrot: carrot; hot dog: hot dog, hotdog; pizza: pizza; donut: donut, doughnut
cake: cake, cupcake; chair: chair, stool; couch: couch, sofa; potted plant: potted plant, houseplant, plant
bed: bed; dining table: dining table, table, desk; toilet: toilet; tv: tv, television
laptop: laptop, computer; mouse: mouse; remote: remote; keyboard: keyboard
cell phone: cell phone, phone, cellphone, smartphone; microwave: microwave; oven: oven, stove
toaster: toaster; sink: sink; refrigerator: refrigerator, fridge; book: book, novel; clock: clock
vase: vase; scissors: scissors; teddy bear: teddy bear, teddy; hair drier: hair drier, hair dryer, hairdryer
toothbrush: toothbrush
"""
COCO_SYNONYMS: dict[str, str] = {
    word.strip(): category.strip()
    for entry in _COCO_TABLE.replace("\n", ";").split(";")
    if entry.strip()
    for category, _, words in [entry.partition(":")]
    for word in words.split(",")
}
"""Word or phrase → COCO category (all 80). Smaller than CHAIR's table; pass your own to :func:`chair`."""


def _singular(word: str, vocab: set[str]) -> str:
    """Fold a regular plural onto a known word (skies stays skies: "sky" is not known, "ski" is)."""
    if word in vocab or not word.endswith("s"):
        return word
    if word.endswith("ies"):
        stems = [word[:-3] + "y", word[:-1]]
    elif re.search(r"(s|x|z|ch|sh)es$", word):
        stems = [word[:-2], word[:-1]]
    else:
        stems = [word[:-1]]
    return next((s for s in stems if s in vocab), word)


def caption_objects(caption: str, synonyms: Mapping[str, str] = COCO_SYNONYMS) -> list[tuple[str, str]]:
    """``(word, category)`` for every object mention, longest phrase first, plurals folded."""
    vocab = {t for phrase in synonyms for t in phrase.split()}
    longest = max((len(p.split()) for p in synonyms), default=1)
    words = [_singular(w, vocab) for w in re.findall(r"[a-z]+", caption.lower())]
    found, i = [], 0
    while i < len(words):
        for k in range(min(longest, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + k])
            if phrase in synonyms:
                found.append((phrase, synonyms[phrase]))
                i += k
                break
        else:
            i += 1
    return found


@dataclass(frozen=True)
class ChairScores:
    """CHAIR_s (captions with a hallucinated object) and CHAIR_i (hallucinated mentions).

    Attributes:
        hallucinated: Caption key → its ``(word, category)`` mentions absent from the image.
    """

    chair_s: float
    chair_i: float
    n_captions: int
    n_mentions: int
    n_hallucinated: int
    hallucinated: dict = field(default_factory=dict)


def chair(
    captions: Mapping[Hashable, str],
    objects: Mapping[Hashable, Iterable[str]],
    synonyms: Mapping[str, str] | None = None,
) -> ChairScores:
    """CHAIR (Rohrbach et al. 2018) of generated captions given each image's true objects.

    CHAIR_i = hallucinated mentions / all mentions (every occurrence counts, as in the reference
    code); CHAIR_s = captions with at least one hallucination / captions.

    Args:
        captions: Key (image id) → generated caption.
        objects: The same keys → the image's ground-truth objects (categories or synonyms).
        synonyms: Word or phrase → category; default :data:`COCO_SYNONYMS`.
    """
    synonyms = COCO_SYNONYMS if synonyms is None else synonyms
    missing = [k for k in captions if k not in objects]
    if missing:
        raise MMLensError(f"no ground-truth objects for caption keys {missing[:5]}: give objects for every caption.")
    if not captions:
        raise MMLensError("no captions to score.")
    mentions, bad = 0, {}
    for key, caption in captions.items():
        truth = {synonyms.get(o.lower(), o.lower()) for o in objects[key]}
        found = caption_objects(caption, synonyms)
        mentions += len(found)
        if wrong := [(w, c) for w, c in found if c not in truth]:
            bad[key] = wrong
    n_bad = sum(map(len, bad.values()))
    chair_i = n_bad / mentions if mentions else 0.0
    return ChairScores(len(bad) / len(captions), chair_i, len(captions), mentions, n_bad, bad)


def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> tuple[float, dict[str, float]]:
    """CIDEr-D of captions through ``pycocoevalcap`` (install ``mmlens[cider]``).

    Captions are lower-cased and split on whitespace after stripping punctuation, in place of the
    Java PTB tokenizer, so no Java is needed. Document frequencies come from ``references``:
    scores on a subset are not comparable with full-set numbers.

    Returns:
        The corpus score and the score of each id.
    """
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        raise MMLensError("CIDEr needs pycocoevalcap: pip install 'mmlens[cider]'.") from None

    def tok(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())

    ids = list(predictions)
    gts = {i: [tok(r) for r in references[i]] for i in ids}
    res = {i: [tok(predictions[i])] for i in ids}
    score, per = Cider().compute_score(gts, res)
    return float(score), {i: float(s) for i, s in zip(ids, per)}
