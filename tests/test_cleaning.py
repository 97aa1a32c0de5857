"""Tests for s3.parsing and the text filters of s3.filters: parsing LLM answers, cleaning rows (fast)."""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from s3.filters import DROP_REASONS, Cleaner, CleaningConfig, drop_columns
from s3.parsing import _after_intro_line, _unwrap_framed_quote, normalize, parse_examples, parse_rationale_items

DATA_DIR = Path(os.environ.get("S3_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no data dir at {DATA_DIR}")

SINGLE = (["text"], {"text": "Review"})
PAIR = (["text1", "text2"], {"text1": "Premise", "text2": "Hypothesis"})
# The README's refusal regex (paper_synthetic section): 44 + 16 rows.
README_REFUSAL = re.compile(r"^(I'm sorry|I am sorry|Sorry|As an AI)|I cannot (generate|create|write|fulfill|comply)")
# Regex hits that are real reviews, not refusals.
REGEX_FALSE_POSITIVES = {
    "json1-2750",  # "I'm sorry to say that the latest film adaptation of "The Great Gatsby" falls short …"
    "json2-1240",  # "I'm sorry, but I completely disagree with that positive review. This movie was …"
}


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def single(raw: str, many: bool = False) -> list[str] | None:
    rows = parse_examples(raw, *SINGLE, many=many)
    return None if rows is None else [r["text"] for r in rows]


def cleaner(protected=(), cfg: CleaningConfig | None = None, fields=("text",)) -> Cleaner:
    return Cleaner(
        cfg or CleaningConfig(),
        list(fields),
        ["negative", "positive"],
        protected,
        meta_phrases=["movie review sentence"],
    )


def row(text: str, label: int = 1, **extra) -> dict:
    return {"text": text, "label": label, **extra}


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            "Here is a positive movie review:\n\nA warm, funny film with a great cast.",
            "A warm, funny film with a great cast.",
        ),
        (
            "Sure! Here's a negative review: The plot drags and the jokes fall flat.",
            "The plot drags and the jokes fall flat.",
        ),
        ("Certainly, I'd be happy to help.\n\nReview: A bold and moving story.", "A bold and moving story."),
        ("Sentence 1: the acting is superb .", "the acting is superb ."),
        ('"The pacing is slow but the ending pays off."', "The pacing is slow but the ending pays off."),
        ("**Positive review**\n\nThe **cinematography** is stunning.", "The cinematography is stunning."),
        (
            "## Review\nA tender, funny film.\n\nThis review highlights the film's humor and warmth.",
            "A tender, funny film.",
        ),
        ("A sharp satire with real bite. Note: the review is 8 words long.", "A sharp satire with real bite."),
        ("A gripping thriller from start to finish. (Word count: 7)", "A gripping thriller from start to finish."),
        (
            "Here's a rewritten sentence in a positive style: the film is a joy to watch .",
            "the film is a joy to watch .",
        ),
        # the example it was shown, then its own under a marker, then commentary (SmolLM2 extrapolations)
        (
            '"a grimly competent drama ."\nImproved sentence: "A grimly competent and earnest courtroom drama."',
            "A grimly competent and earnest courtroom drama.",
        ),
        (
            '"i laughed once ."\n\nEdited movie sentence: "I barely laughed once."\n\nIn this case, the tone changed.',
            "I barely laughed once.",
        ),
        (
            "The film is great.\nNew cast members shine: all of them.",
            "The film is great.\nNew cast members shine: all of them.",
        ),
        # the example quoted inside talk about it (SmolLM2 extrapolations that used to survive cleaning whole)
        (
            'The new movie review is "The new film is actually much better than I expected."',
            "The new film is actually much better than I expected.",
        ),
        (
            'I\'d suggest replacing the existing sentence with this: "a clever, almost pedestrian approach to storytelling."',
            "a clever, almost pedestrian approach to storytelling.",
        ),
        (
            'The feedback would be\n "The movie boasted of variety but presented an inconsistent approach."',
            "The movie boasted of variety but presented an inconsistent approach.",
        ),
        (
            '"It moves quickly and without fuss, but it is cold and cruel."\n\nThe original sentence conveys a positive',
            "It moves quickly and without fuss, but it is cold and cruel.",
        ),
        (
            'Original: "the film is dull ."\n\nNew: "A dull, lifeless film that never finds its footing."',
            "A dull, lifeless film that never finds its footing.",
        ),
        # the example after an intro line that ends in a colon, commentary after it cut
        (
            "A review sentence that depicts the movie could be:\nThe cast is strong but the plot is over-engineered.",
            "The cast is strong but the plot is over-engineered.",
        ),
        (
            "This is a bad movie.\nHere is a similar sentence: \nThis movie has a bad style and no laughs.\n\nI kept the tone.",
            "This movie has a bad style and no laughs.",
        ),
        (
            "The movie held my interest from start to finish.\n\nIn this new version, I've added a new sentence.",
            "The movie held my interest from start to finish.",
        ),
        (
            "The movie promises a crowd-pleaser:\nA crime drama replete with a brawl.",
            "The movie promises a crowd-pleaser:\nA crime drama replete with a brawl.",
        ),
        # quotes that are part of the example stay: a title, a short phrase, a line quoted in a longer review
        ('The movie "Sitcom" is a great film by a great team.', 'The movie "Sitcom" is a great film by a great team.'),
        (
            'In the movie, "the plot has a decent moral trying to get out, but it keeps you in your seat."',
            'In the movie, "the plot has a decent moral trying to get out, but it keeps you in your seat."',
        ),
        (
            'The difference between "negative" and "underscoring" in the original sentence is the word "negative" here.',
            'The difference between "negative" and "underscoring" in the original sentence is the word "negative" here.',
        ),
    ],
)
def test_single_text_strips_assistant_framing(raw: str, expected: str) -> None:
    assert single(raw) == [expected]


def test_multi_paragraph_review_is_kept_whole() -> None:
    review = 'I loved "Up".\n\nThe opening montage is devastating.\n\nOverall, a classic.'
    assert single(review) == [review]


def test_bare_junk_parses_but_cleaner_drops_it() -> None:
    assert single("comedy") == ["comedy"]
    kept, drops = cleaner().filter([row("comedy")])
    assert kept == [] and drops == Counter(too_short=1)


def test_framing_only_is_unparsable() -> None:
    assert single("Here is a positive movie review:") is None
    assert single("   ") is None


@pytest.mark.parametrize(
    "raw, expected",
    [  # real SmolLM2-135M answers to rationale prompts
        (
            "1. **An effective movie with a compelling storyline**: The movie excels at creating an emotional "
            "connection.\n\n2. **A high-quality cast**: every role is well played.",
            ["An effective movie with a compelling storyline", "A high-quality cast"],
        ),
        (
            "List 10 short reasons for why people like a movie:\n1. Good acting by a skilled and talented director\n"
            "2. Great storyboarding and presentation\n3. Sam &getcwd",
            ["Good acting by a skilled and talented director", "Great storyboarding and presentation"],
        ),
        (
            '1. Sentence 1: "The film has a great story"\n2. Genre: film noir\n3. Here are 10 ways a movie can vary',
            ["The film has a great story", "film noir"],
        ),
        ("1. The acting: crucial to its credibility. 2. The plot: the backbone of a film.", ["The acting", "The plot"]),
        ("Personality Clash - People often find themselves pulled together to create a flawless narrative.", []),
    ],
)
def test_rationale_items_keep_short_phrases_and_drop_chatter(raw: str, expected: list[str]) -> None:
    assert parse_rationale_items(raw) == expected


def test_rationale_items_naming_a_label_are_dropped() -> None:
    raw = "Positive\nfear of failure\npositive_review_sentence\nA negative twist\nhumour"
    assert parse_rationale_items(raw, exclude=["negative", "positive"]) == ["fear of failure", "humour"]


@pytest.mark.parametrize(
    "raw",
    [
        "Here are 3 positive reviews:\n1. A delight from start to finish.\n2) Funny, warm and wise.\n3. **The cast shines.**\n\nI hope these help!",
        "- A delight from start to finish.\n- Funny, warm and wise.\n* The cast shines.",
        "Review 1: A delight from start to finish.\nReview 2: Funny, warm and wise.\nReview 3: The cast shines.",
        "A delight from start to finish.\n\nFunny, warm and wise.\n\nThe cast shines.",
        "A delight from start to finish.\nFunny, warm and wise.\nThe cast shines.",
    ],
)
def test_many_splits_list_answers(raw: str) -> None:
    assert single(raw, many=True) == ["A delight from start to finish.", "Funny, warm and wise.", "The cast shines."]


def test_single_takes_first_item_of_a_list_answer() -> None:
    assert single("1. A delight.\n2. Funny and warm.") == ["A delight."]


def test_pair_json_in_fence_and_list() -> None:
    raw = (
        "Sure! Here are two examples:\n```json\n"
        '[{"Premise": "A man plays guitar on stage.", "hypothesis": "\\"A man performs music.\\"", "label": "entailment"},'
        ' {"premise": "Two dogs run in a park.", "HYPOTHESIS": "The dogs are asleep."}]\n```'
    )
    assert parse_examples(raw, *PAIR, many=True) == [
        {"text1": "A man plays guitar on stage.", "text2": "A man performs music."},
        {"text1": "Two dogs run in a park.", "text2": "The dogs are asleep."},
    ]


def test_pair_json_embedded_in_prose_and_field_names() -> None:
    raw = 'Here you go: {"text1": "It rained all day.", "text2": "The ground is wet."} Let me know!'
    assert parse_examples(raw, *PAIR, many=False) == [{"text1": "It rained all day.", "text2": "The ground is wet."}]


def test_pair_labelled_lines_repeated() -> None:
    raw = (
        'Here are the pairs:\n\n1. Premise: The museum opens at nine.\n   Hypothesis: "The museum opens in the morning."\n\n'
        "**Premise:** Sales fell by 10% in May.\n**Hypothesis:** Sales rose in May.\n\nThese pairs show entailment."
    )
    assert parse_examples(raw, *PAIR, many=True) == [
        {"text1": "The museum opens at nine.", "text2": "The museum opens in the morning."},
        {"text1": "Sales fell by 10% in May.", "text2": "Sales rose in May."},
    ]
    assert parse_examples(raw, *PAIR, many=False) == [
        {"text1": "The museum opens at nine.", "text2": "The museum opens in the morning."}
    ]


def test_pair_incomplete_is_unparsable() -> None:
    assert parse_examples("Premise: The museum opens at nine.", *PAIR, many=True) is None
    assert parse_examples("I cannot help with that.", *PAIR, many=False) is None


# ---------------------------------------------------------------------------------------------- filtering


def test_drop_columns_are_stable() -> None:
    assert list(drop_columns(Counter(leak=2))) == [f"drop/{r}" for r in DROP_REASONS]
    assert drop_columns(Counter(leak=2))["drop/leak"] == 2 and drop_columns(Counter())["drop/refusal"] == 0
    with pytest.raises(ValueError, match="bogus"):
        drop_columns(Counter(bogus=1))


def test_normalize_is_punctuation_and_tokenisation_blind() -> None:
    assert normalize("It 's  a GREAT film !") == normalize("it's a great film.<br /><br />") == "it s a great film"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("  ?! ", "empty"),
        ("Loved it", "too_short"),
        ("word " * 401, "too_long"),
        ("I'm sorry, but I can't assist with that request.", "refusal"),
        ("As an AI language model, I do not have opinions about movies, but here is a review.", "refusal"),
        ("Here is a positive movie review:", "boilerplate"),
        ("Sure! The movie was a delight from start to finish.", "boilerplate"),
        ("Certainly, here is the review you wanted: a fine film.", "boilerplate"),
        ("The rewritten sentence is: the film is a joy to watch.", "boilerplate"),
        ("A charming film, written as requested, with great acting.", "boilerplate"),
        # extrapolation chatter from SmolLM2-135M (quality benchmark runs)
        ("Your sentence is a great example of improving the original content.", "boilerplate"),
        ('Instead of "negative", the sentence expresses a positive perception of the characters.', "boilerplate"),
        ("In a unique twist, this review sentence explores a new aspect of the movie.", "boilerplate"),
        ("Here we go: a new negative movie review sentence about a dull heist film.", "boilerplate"),
    ],
)
def test_drop_reasons(text: str, reason: str) -> None:
    kept, drops = cleaner().filter([row(text)])
    assert kept == [] and drops == Counter({reason: 1})


@pytest.mark.parametrize(
    "text",
    [
        "Sure, it may not be the greatest horror film ever made, but it never pretends to be.",
        "I cannot believe how much I enjoyed this film; the cast is wonderful.",
        "I'm sorry, but I can't recommend this movie to anyone. It is plain bad.",
        "Absolutely dreadful. I couldn't stomach the first five minutes.",
        "The evacuation was organised as requested by the U.S. embassy.",
    ],
)
def test_review_phrases_that_look_like_assistant_talk_are_kept(text: str) -> None:
    kept, drops = cleaner().filter([row(text)])
    assert kept == [row(text)] and not drops


def test_duplicates_near_duplicates_and_label_conflicts() -> None:
    base = "The film is a warm, funny and surprisingly moving story about two brothers on a road trip."
    c = cleaner()
    c.add_existing([row(base, 1)])
    candidates = [
        row(base.upper().replace(",", " ,"), 1),  # exact after normalization
        row(base, 0),  # same text, other label
        row(base.replace("surprisingly", "genuinely"), 1),  # 3-shingle Jaccard 12/18: kept
        row(base + " Highly recommended.", 1),  # 15/17: near duplicate
        row("A dull, lifeless thriller with no surprises and a cast that looks bored throughout.", 0),
        row("A dull, lifeless thriller with no surprises and a cast that looks bored throughout!", 0),
    ]
    kept, drops = c.filter(candidates)
    assert drops == Counter(duplicate=2, label_conflict=1, near_duplicate=1)
    assert [r["text"] for r in kept] == [candidates[2]["text"], candidates[4]["text"]]


def test_near_duplicate_threshold_is_jaccard_of_shingles() -> None:
    words = [f"w{i}" for i in range(40)]
    a = " ".join(words)
    b = " ".join(words[:-2] + ["x1", "x2"])  # 38 words in common: shingles 36 shared of 38 + 2 → J = 36/40 = 0.9
    for threshold, dropped in [(0.9, True), (0.91, False)]:
        c = cleaner(cfg=CleaningConfig(near_dup_threshold=threshold))
        c.add_existing([row(a)])
        kept, drops = c.filter([row(b)])
        assert (drops == Counter(near_duplicate=1)) == dropped and len(kept) == (0 if dropped else 1)


def test_kept_rows_are_untouched_and_deduplicated_within_and_across_calls() -> None:
    c = cleaner()
    first = row("An honest, beautifully acted drama about grief.", 1, source="seed", round=0)
    kept, drops = c.filter([first, dict(first)])
    assert kept == [first] and kept[0] is first and drops == Counter(duplicate=1)
    kept, drops = c.filter([dict(first, round=1)])
    assert kept == [] and drops == Counter(duplicate=1)


def test_states_label_only_when_forbidden() -> None:
    text = "This is a positive review of a lovely film."
    assert cleaner().filter([row(text, 1)])[1] == Counter()
    c = cleaner(cfg=CleaningConfig(forbid_label_words=True))
    kept, drops = c.filter([row(text, 1), row("A positively lovely film with a great cast.", 1)])
    assert drops == Counter(states_label=1) and len(kept) == 1


def test_counts_add_up() -> None:
    rng = random.Random(0)
    pool = ["", "ok", "I cannot generate inappropriate content.", "Here is a review:", "A fine film with a great cast."]
    pool += [
        f"A {w} film about {v} and friendship in a small town."
        for w in "bold odd warm cold".split()
        for v in "love loss war".split()
    ]
    candidates = [row(rng.choice(pool), rng.randint(0, 1)) for _ in range(300)]
    kept, drops = cleaner().filter(candidates)
    assert len(kept) + sum(drops.values()) == len(candidates)
    assert set(drops) <= set(DROP_REASONS) and len(drops) >= 6


# ---------------------------------------------------------------------------------------------- leaks


@needs_data
def test_leak_of_sst2_gold_sentences() -> None:
    gold = load(DATA_DIR / "sst2" / "validation.jsonl") + load(DATA_DIR / "sst2" / "test.jsonl")
    c = cleaner([r["text"] for r in gold])
    long_one = next(r["text"] for r in gold if len(r["text"].split()) >= 30)
    words = long_one.split()
    candidates = [
        row(gold[0]["text"]),  # verbatim
        row(gold[5]["text"].replace(" 's", "'s").replace(" ,", ",").capitalize()),  # detokenised, recased
        row("Honestly, " + long_one + " I mean it."),  # wrapped
        row(" ".join(words[:-3] + ["really", "great", "."])),  # tail edited
        row("A warm, funny film about two brothers on a road trip across a country they barely know."),  # novel
    ]
    kept, drops = c.filter(candidates)
    assert drops == Counter(leak=4) and kept == [candidates[-1]]


def test_leak_share_threshold() -> None:
    gold = " ".join(f"g{i}" for i in range(20))
    half = " ".join([f"g{i}" for i in range(10)] + [f"n{i}" for i in range(10)])  # 6 of 16 5-grams shared
    most = " ".join([f"g{i}" for i in range(16)] + [f"n{i}" for i in range(4)])  # 12 of 16 shared
    kept, drops = cleaner([gold]).filter([row(half), row(most)])
    assert drops == Counter(leak=1) and [r["text"] for r in kept] == [half]


def test_a_gold_row_pasted_inside_a_longer_answer_is_a_leak() -> None:
    """The leak guard measures overlap against the gold text's n-grams too: a short gold row quoted inside long
    chatter shares few of the answer's n-grams, but all of its own."""
    gold = "the film is a gorgeous and witty portrait of three sisters growing up in a small town"  # 17 words
    chatter = " ".join(f"w{i}" for i in range(40))
    pasted = f"{chatter} {gold} {chatter}"  # 13 of its 93 5-grams are the gold row's: every one of the gold's
    echo = f"{chatter} a gorgeous and witty portrait of {chatter}"  # 2 of the gold's 13 5-grams: not a copy
    kept, drops = cleaner([gold]).filter([row(pasted), row(echo)])
    assert drops == Counter(leak=1) and [r["text"] for r in kept] == [echo]


@needs_data
def test_rte_premise_reuse_is_not_a_leak_but_hypothesis_copy_is() -> None:
    gold = load(DATA_DIR / "rte" / "validation.jsonl") + load(DATA_DIR / "rte" / "test.jsonl")
    c = cleaner(gold, fields=("text1", "text2"))
    premise = gold[0]["text1"]
    fresh = {"text1": premise, "text2": "The report was published in a national newspaper last year.", "label": 0}
    copied_pair = {"text1": premise, "text2": gold[0]["text2"], "label": gold[0]["label"]}
    copied_hyp = {
        "text1": "Someone wrote an entirely new premise for this example.",
        "text2": gold[1]["text2"],
        "label": 1,
    }
    kept, drops = c.filter([fresh, copied_pair, copied_hyp])
    assert kept == [fresh] and drops == Counter(leak=2)


@needs_data
def test_real_sst2_and_imdb_text_is_not_mistaken_for_assistant_talk() -> None:
    """The meta-talk rules are aimed at LLM chatter; real reviews must pass (67,349 SST-2 + 2,000 IMDb rows)."""
    c = cleaner(cfg=CleaningConfig(min_words=1, max_words=10_000, near_dup_threshold=1.01))
    flagged = 0
    for name in ("sst2", "imdb"):
        for r in load(DATA_DIR / name / "train.jsonl"):
            flagged += bool(c.rules.reason({"text": r["text"], "label": r["label"]}) in ("refusal", "boilerplate"))
    assert flagged <= 5  # measured: 2, both opening with "here is" / "Here's one you can watch"


@needs_data
def test_real_sst2_and_imdb_text_is_not_unframed() -> None:
    """Unframing (single-text tasks) leaves every real review whole: measured 0 of 67,349 + 2,000 changed."""
    texts = [r["text"] for name in ("sst2", "imdb") for r in load(DATA_DIR / name / "train.jsonl")]
    assert sum('"' in t for t in texts) > 500  # the check sees real quotes (titles, dialogue lines)
    assert [t for t in texts if _unwrap_framed_quote(_after_intro_line(t)) != t] == []


@needs_data
def test_paper_rte_synthetic_premises_do_not_count_as_leaks() -> None:
    gold = load(DATA_DIR / "rte" / "validation.jsonl") + load(DATA_DIR / "rte" / "test.jsonl")
    rows = load(DATA_DIR / "paper_synthetic" / "rte" / "rte_additional_1.jsonl")
    gold_premises = {normalize(r["text1"]) for r in gold}
    shared = [r for r in rows if normalize(r["text1"]) in gold_premises]
    assert len(shared) >= 18  # README: 18 premises of this file also occur in the test set
    kept, drops = cleaner(gold, fields=("text1", "text2")).filter(shared)
    # one hypothesis of this file is LLM talk ('Based on the given description, the sentence "…" is correct.'),
    # and three are a gold test hypothesis with one phrase changed ("NTSB" -> "The Federal Aviation
    # Administration", "It seems unlikely" -> "It is highly probable", "Hoover" -> "Hoover's director"):
    # leaks by their hypothesis, not by the shared premise
    assert drops["leak"] <= 3 and drops["boilerplate"] <= 1 and len(kept) >= len(shared) - 4


# ---------------------------------------------------------------------------------------------- paper data


@needs_data
def test_paper_imdb_refusals_flagged_reviews_kept_copies_gone() -> None:
    files = [load(f) for f in sorted((DATA_DIR / "paper_synthetic" / "imdb").glob("*.jsonl"))]
    copies = [sum(n - 1 for n in Counter(normalize(r["text"]) for r in rows).values()) for rows in files]
    assert copies == [11, 8]  # README
    rows = [r for rows in files for r in rows]
    regex_hits = {r["id"] for r in rows if README_REFUSAL.search(r["text"])}
    assert len(regex_hits) == 60
    c = cleaner(cfg=CleaningConfig(max_words=10_000))
    reasons = {}
    for r in rows:  # one row at a time so that each row gets its own reason
        kept, drops = c.filter([r])
        reasons[r["id"]] = next(iter(drops), None)
    refusals = {i for i, reason in reasons.items() if reason == "refusal"}
    assert regex_hits - REGEX_FALSE_POSITIVES <= refusals
    assert all(reasons[i] is None for i in REGEX_FALSE_POSITIVES)
    assert len(refusals - regex_hits) <= 5  # refusals the regex misses are rare
    others = [i for i in reasons if i not in regex_hits]
    assert sum(reasons[i] is None for i in others) >= 0.99 * len(others)
    kept_texts = [normalize(r["text"]) for r in rows if reasons[r["id"]] is None]
    assert len(kept_texts) == len(set(kept_texts))  # every copy (all of them refusals) is gone


# ---------------------------------------------------------------------------------------------- scale


def test_scale_thousands_of_rows_in_seconds() -> None:
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(5000)]

    def sentence() -> str:
        return " ".join(rng.choices(vocab, k=rng.randint(8, 30)))

    protected = [sentence() for _ in range(30_000)]
    existing = [row(sentence(), rng.randint(0, 1)) for _ in range(5_000)]
    candidates = [row(sentence(), rng.randint(0, 1)) for _ in range(4_900)]
    candidates += [dict(r) for r in existing[:50]] + [row(t) for t in protected[:50]]
    start = time.perf_counter()
    c = cleaner(protected)
    c.add_existing(existing)
    kept, drops = c.filter(candidates)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    assert drops["duplicate"] + drops["label_conflict"] == 50 and drops["leak"] == 50
    assert len(kept) + sum(drops.values()) == len(candidates)
