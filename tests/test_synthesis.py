"""Synthesizer logic with a scripted LLM (fast, no LLM): rationale parsing, the extrapolation refill, label checks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.utils import instantiate

from s3.config import UserError, compose_config
from s3.filters import FlagFilter, GoldLabelCheck, KindCheck, LLMLabelCheck, QualityRules, build_filter_chain
from s3.llm import LLM, ChatRequest, Completion
from s3.llm.base import skip_too_long
from s3.loop_config import SamplingConfig, SyntheticLoopConfig
from s3.synthesis import Synthesizer, label_quotas

VOCAB = [f"{a}{b}" for a in ("bra", "dul", "fen", "gor", "lim", "mor", "pel", "tas") for b in "aeiouyxz"]


class ScriptedLLM(LLM):
    """Half of its answers are assistant chatter (cleaning drops them), the rest distinct sentences."""

    name = "scripted"

    def __init__(self, rationale: str = "") -> None:
        super().__init__()
        self.rationale = rationale
        self.seen: list[ChatRequest] = []

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        self.seen.extend(units)
        out = []
        for u in units:
            if "List" in u.messages[-1].content:
                out.append(Completion(self.rationale, 3, 3, "stop"))
                continue
            rng = random.Random(u.sampling.seed)
            junk = rng.random() < 0.5
            text = "Sure! Here is a new sentence:" if junk else " ".join(rng.choice(VOCAB) for _ in range(10))
            out.append(Completion(text, 3, 3, "stop"))
        return out


def synthesizer(llm: LLM, embedder: Any = None, gold_check: Any = None, **loop: Any) -> Synthesizer:
    """The loop's own defaults (SyntheticLoopConfig) with the LLM checks off, plus ``loop`` overrides."""
    task = instantiate(compose_config(["task=sst2"]).task)
    cfg = SyntheticLoopConfig(
        **{
            "label_check": "none",
            "gold_check": False,
            "kind_check": False,
            "min_source_similarity": 0.0,
            "sampling": SamplingConfig(max_tokens=16),
            **loop,
        }
    )
    filters = build_filter_chain(cfg, task, protected=[], llm=llm, embedder=embedder, gold_check=gold_check)
    return Synthesizer(llm, task, filters, cfg, seed=0)


class EchoLLM(LLM):
    """Answers an extrapolation prompt with its example plus new words half the time, else unrelated words."""

    name = "echo"

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for u in units:
            rng = random.Random(u.sampling.seed)
            example = u.messages[-1].content.split('"')[3]  # the quoted real example
            words = " ".join(rng.choice(VOCAB) for _ in range(4))
            text = f"{example} {words}" if rng.random() < 0.5 else f"{words} {' '.join(rng.sample(VOCAB, 6))}"
            out.append(Completion(text, 3, 3, "stop"))
        return out


class BagOfWords:
    """A stand-in sentence embedder: normalised word counts (cosine = word overlap)."""

    vocab = {w: i for i, w in enumerate(sorted({*VOCAB, *"a real example number".split(), *map(str, range(10))}))}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for row, text in zip(out, texts):
            for w in text.split():
                row[self.vocab[w]] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


ERRORS = [{"id": f"val-{i}", "text": f"a real example number {i}", "label": i % 2} for i in range(10)]


def test_extrapolation_refills_what_cleaning_dropped_up_to_the_limit() -> None:
    batch = synthesizer(ScriptedLLM(), per_error=3, overgenerate=1.2).extrapolate(ERRORS, round_=1, limit=20)
    assert len(batch.rows) == 20
    assert batch.drops["unparsable"] > 0  # the chatter was dropped and made up for
    sources = Counter(r["source"] for r in batch.rows)
    assert set(sources) <= {f"extrapolated-from-val-{i}" for i in range(10)}
    by_id = {f"extrapolated-from-{e['id']}": e["label"] for e in ERRORS}
    assert all(r["label"] == by_id[r["source"]] for r in batch.rows)  # each row keeps its error's gold label


def test_extrapolation_samples_at_its_own_temperature_and_the_seed_set_at_the_loops() -> None:
    llm = ScriptedLLM()
    synth = synthesizer(llm, sampling=SamplingConfig(temperature=0.9, extrapolation_temperature=0.7, max_tokens=16))
    synth.seed_set(4, kind="zerogen", round_=0)
    seeds = len(llm.seen)
    synth.extrapolate(ERRORS, round_=1, limit=4)
    assert seeds and {u.sampling.temperature for u in llm.seen[:seeds]} == {0.9}
    assert len(llm.seen) > seeds and {u.sampling.temperature for u in llm.seen[seeds:]} == {0.7}


class CutOffLLM(EchoLLM):
    """Every other answer is one the engine cut off (vLLM's ``abort`` / ``error``): a plausible row, marked."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        answers = super()._generate_units(units)
        return [c if i % 2 else Completion(f"{c.text} cut", 3, 3, self.reason) for i, c in enumerate(answers)]


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_an_answer_the_engine_cut_off_is_dropped_under_its_reason(reason) -> None:
    batch = synthesizer(CutOffLLM(reason), per_error=2).extrapolate(ERRORS, round_=1, limit=10)
    assert batch.drops[reason] >= batch.generated // 2 > 0 and batch.drops["unparsable"] == 0
    assert batch.rows and not any(r["text"].endswith(" cut") for r in batch.rows)


class ShortContextLLM(ScriptedLLM):
    """A backend whose context only fits short prompts (as backends report it: ``skip_too_long``)."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        lengths = [len(u.messages[-1].content.split()) + 100 * ("LONG" in u.messages[-1].content) for u in units]
        skipped = skip_too_long(units, lengths, context=80)
        rest = iter(super()._generate_units([u for i, u in enumerate(units) if i not in skipped]))
        return [skipped[i] if i in skipped else next(rest) for i in range(len(units))]


def test_prompts_too_long_for_the_context_are_skipped_and_counted(caplog) -> None:
    errors = [dict(e, text=e["text"] + " LONG" * (i % 2)) for i, e in enumerate(ERRORS)]
    with caplog.at_level("WARNING"):
        batch = synthesizer(ShortContextLLM(), per_error=2).extrapolate(errors, round_=1, limit=10)
    assert batch.drops["prompt_too_long"] > 0 and "do not fit the 80-token context" in caplog.text
    assert batch.rows and {r["source"] for r in batch.rows} <= {f"extrapolated-from-{e['id']}" for e in ERRORS[::2]}


def test_extrapolation_without_limit_aims_at_per_error_rows_per_error() -> None:
    llm = ScriptedLLM()
    batch = synthesizer(llm, per_error=3, balance_labels=False).extrapolate(ERRORS, round_=1)
    first = Counter(
        next(e["id"] for e in ERRORS if f'"{e["text"]}"' in u.messages[-1].content) for u in llm.seen[: len(ERRORS) * 3]
    )
    assert first == {e["id"]: 3 for e in ERRORS}  # attempt 0: every error, per_error samples each (the paper)
    assert len(llm.seen) > 30 and len(batch.rows) == 30  # dropped answers re-asked, the batch cut to the target


def test_extrapolated_rows_unlike_their_source_are_dropped_and_made_up_for() -> None:
    synth = synthesizer(EchoLLM(), embedder=BagOfWords(), min_source_similarity=0.5, per_error=2)
    batch = synth.extrapolate(ERRORS, round_=1, limit=16)
    assert len(batch.rows) == 16 and batch.drops["off_source"] > 0
    sources = {f"extrapolated-from-{e['id']}": e["text"] for e in ERRORS}
    assert all(r["text"].startswith(sources[r["source"]]) for r in batch.rows)  # only the echoes were kept
    unchecked = synthesizer(EchoLLM(), per_error=2).extrapolate(ERRORS, round_=1, limit=16)
    assert not all(r["text"].startswith(sources[r["source"]]) for r in unchecked.rows)
    assert unchecked.drops["off_source"] == 0


@pytest.mark.parametrize(
    "errors_per_label, per_error, target, expected",
    [
        ({0: 5, 1: 5}, 3, 20, {0: 10, 1: 10}),
        ({0: 2, 1: 8}, 3, 12, {0: 6, 1: 6}),
        ({0: 2, 1: 8}, 3, 30, {0: 12, 1: 18}),  # label 0 takes at most 2 x 3 rows per error
        ({0: 0, 1: 8}, 3, 12, {1: 12}),
        ({0: 1, 1: 1, 2: 9}, 2, 11, {0: 4, 1: 4, 2: 3}),
    ],
)
def test_label_quotas_split_the_round_evenly(errors_per_label, per_error, target, expected) -> None:
    assert label_quotas(errors_per_label, per_error, target) == expected


def test_balanced_extrapolation_adds_as_many_rows_of_each_label() -> None:
    errors = ERRORS[:1] + [e for e in ERRORS if e["label"] == 1]  # 1 error of label 0, 5 of label 1
    plain = synthesizer(ScriptedLLM(), per_error=2, balance_labels=False).extrapolate(errors, round_=1, limit=8)
    assert Counter(r["label"] for r in plain.rows) != {0: 4, 1: 4}
    llm = ScriptedLLM()
    balanced = synthesizer(llm, per_error=2, balance_labels=True).extrapolate(errors, round_=1, limit=8)
    assert Counter(r["label"] for r in balanced.rows) == {0: 4, 1: 4}
    assert all(r["source"] == "extrapolated-from-val-0" for r in balanced.rows if r["label"] == 0)
    asked = [u for u in llm.seen if '"a real example number 0"' in u.messages[-1].content]
    assert len(asked) >= 4  # the lone label-0 error is asked for 4 rows (2 x per_error), more if some were dropped


def test_extrapolation_is_deterministic() -> None:
    a = synthesizer(ScriptedLLM(), per_error=2).extrapolate(ERRORS, round_=2, limit=12)
    b = synthesizer(ScriptedLLM(), per_error=2).extrapolate(ERRORS, round_=2, limit=12)
    assert [r["text"] for r in a.rows] == [r["text"] for r in b.rows]


def test_rationales_pool_parsed_items_and_fall_back_to_label_descriptions() -> None:
    llm = ScriptedLLM("1. **Great acting**: the cast shines\n2. Sentence 3: positive\n3. a clever plot")
    rationales = synthesizer(llm, rationale_samples=2).rationales()
    assert rationales["labels"]["positive"] == ["Great acting", "a clever plot"]
    assert rationales["variations"] == ["Great acting", "a clever plot"]
    empty = synthesizer(ScriptedLLM("Here are 10 ways a sentence can vary:"), rationale_samples=1).rationales()
    assert empty["labels"]["negative"] == ["the sentence expresses a negative opinion of the movie"]


class CutOffRationaleLLM(ScriptedLLM):
    """Its second rationale answer (of three per prompt) is one the engine cut off (vLLM's ``abort``), its third one
    that ran out of tokens: both on half an item."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        answers = super()._generate_units(units)
        cut = {1: Completion("1. a clever plot\n2. half an ite", 3, 3, "abort"),
               2: Completion("1. a warm tone\n2. half an ite", 3, 3, "length")}  # fmt: skip
        return [cut.get(i % 3, c) for i, c in enumerate(answers)]


def test_a_rationale_the_engine_cut_off_is_not_used_nor_the_last_item_of_one_out_of_tokens() -> None:
    rationales = synthesizer(CutOffRationaleLLM("1. Great acting"), rationale_samples=3).rationales()
    assert rationales["labels"]["positive"] == ["Great acting", "a warm tone"]
    assert rationales["variations"] == ["Great acting", "a warm tone"]


def test_channel_check_needs_scores_auto_falls_back_to_relabelling() -> None:
    rows = [{"text": "a warm and witty film", "label": 1}]
    llm = ScriptedLLM()
    with pytest.raises(UserError, match="scores text"):
        LLMLabelCheck(llm, sst2_task(), "channel", margin=1.0).keep(rows)
    auto = LLMLabelCheck(llm, sst2_task(), "auto", margin=1.0)
    assert auto(rows) == ([], {"label_disagree": 1})  # the scripted backend answers with text, not a label
    assert auto.mode == "choice" and "relabel" in llm.usage()


def marked_rows(n: int, seed: int, flip: float = 0.0) -> list[dict[str, Any]]:
    """Label 0 rows use the first half of VOCAB, label 1 rows the second: a task the gold check can learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        half = VOCAB[:32] if label == 0 else VOCAB[32:]
        rows.append(
            {"text": " ".join(rng.choice(half) for _ in range(6)), "label": 1 - label if rng.random() < flip else label}
        )
    return rows


def sst2_task() -> Any:
    return instantiate(compose_config(["task=sst2"]).task)


def test_gold_check_keeps_rows_of_the_gold_sets_labels_and_drops_flipped_ones() -> None:
    check = GoldLabelCheck(BagOfWords(), sst2_task(), marked_rows(40, seed=0), seed=0)
    assert check.model is not None and check.cv_accuracy > 0.9
    rows = marked_rows(20, seed=1)
    assert check.agree(rows) == [True] * 20
    assert check.agree([{**r, "label": 1 - r["label"]} for r in rows]) == [False] * 20


def test_gold_check_stays_off_when_it_cannot_learn_the_task() -> None:
    noisy = marked_rows(40, seed=0, flip=0.5)  # labels unrelated to the words: cross-validated accuracy ~ chance
    check = GoldLabelCheck(BagOfWords(), sst2_task(), noisy, seed=0, min_accuracy=0.75)
    assert check.model is None and check.cv_accuracy < 0.75
    assert check.agree(marked_rows(6, seed=1)) == [True] * 6
    one_label = [r for r in marked_rows(40, seed=0) if r["label"] == 0]
    assert GoldLabelCheck(BagOfWords(), sst2_task(), one_label, seed=0).model is None


def test_gold_check_works_with_rare_labels_and_leaves_unlearnable_ones_unjudged(caplog) -> None:
    """A label with 3 gold rows (fewer than 5 folds) no longer turns the check off for the whole task; a label
    with a single gold row cannot be learned, so its rows are kept unjudged, and the log says so."""
    from s3.data import Task

    task = Task(name="four", description="d", example_kind="text", labels=["a", "b", "c", "d"])
    rng = random.Random(0)

    def rows(label: int, n: int) -> list[dict[str, Any]]:
        words = VOCAB[16 * label : 16 * (label + 1)]
        return [{"text": " ".join(rng.choice(words) for _ in range(6)), "label": label} for _ in range(n)]

    gold = rows(0, 30) + rows(1, 30) + rows(2, 3) + rows(3, 1)
    with caplog.at_level("INFO"):
        check = GoldLabelCheck(BagOfWords(), task, gold, seed=0)
    assert check.model is not None and check.labels == {0, 1, 2}
    assert "3-fold" in caplog.text and "not judged (under 2 gold rows): d" in caplog.text
    fresh = rows(0, 5) + rows(2, 5) + rows(3, 5)
    assert check.agree(fresh) == [True] * 15  # the rare label c is learned; d is not judged
    wrong = [{**r, "label": 1} for r in rows(2, 5)] + [{**r, "label": 3} for r in rows(0, 5)]
    assert check.agree(wrong) == [False] * 5 + [True] * 5  # c's rows written as b are caught; d's go unjudged


def test_gold_check_with_skip_misjudged_does_not_judge_rows_from_gold_rows_it_gets_wrong(caplog) -> None:
    """A gold row the check misjudges out of fold (label-0 words, label 1: an error the small model makes too):
    rows extrapolated from it are like it, so the check would drop them; skip_misjudged lets them through, and says so."""
    gold = [{**r, "id": f"g{i}"} for i, r in enumerate(marked_rows(40, seed=0))]
    odd = [{**r, "id": f"odd{i}", "label": 1} for i, r in enumerate(marked_rows(6, seed=2)[::2])]  # label-0 words
    with caplog.at_level("INFO"):
        check = GoldLabelCheck(BagOfWords(), sst2_task(), gold + odd, seed=0, skip_misjudged=True)
    assert check.misjudged == {"odd0", "odd1", "odd2"}
    assert "rows extrapolated from the 3 gold rows it misjudges are not judged" in caplog.text
    like_odd = [{**r, "label": 1} for r in marked_rows(6, seed=3)[::2]]  # label-0 words written as label 1
    from_odd = [{**r, "source": "extrapolated-from-odd1"} for r in like_odd]
    from_judged = [{**r, "source": "extrapolated-from-g0"} for r in like_odd]
    assert check.agree(from_odd) == [True] * 3
    assert check.agree(from_judged) == check.agree(like_odd) == [False] * 3  # a seed row or a well-judged source
    strict = GoldLabelCheck(BagOfWords(), sst2_task(), gold + odd, seed=0)  # the default judges every row
    assert strict.misjudged == set() and strict.agree(from_odd) == [False] * 3


class KeepLabel(FlagFilter):
    """A stand-in gold check that agrees only with label 1."""

    reason = "gold_disagree"

    def keep(self, rows: Sequence[dict[str, Any]]) -> list[bool]:
        return [r["label"] == 1 for r in rows]


def test_rows_the_gold_check_rejects_are_counted_and_made_up_for() -> None:
    batch = synthesizer(
        ScriptedLLM(), gold_check=KeepLabel(), per_error=2, balance_labels=False, max_attempts=8
    ).extrapolate(ERRORS, round_=1, limit=8)
    assert batch.drops["gold_disagree"] > 0
    assert len(batch.rows) == 8 and {r["label"] for r in batch.rows} == {1}


def test_gold_check_on_real_data_is_on_for_sst2_and_qnli_and_off_for_rte(data_dir) -> None:
    """With the embedded MiniLM: on SST-2 and QNLI (its pair read as the two texts' embeddings compared) it agrees
    with more held-out real rows' gold labels than flipped ones; on RTE it learns little (its cross-validated
    accuracy sits near the bar under which it turns itself off)."""
    from s3.data import load_split, stratified_sample
    from s3.embed import SentenceEmbedder

    embedder = SentenceEmbedder()
    for name, (true_above, flipped_below) in {"sst2": (0.7, 0.3), "qnli": (0.6, 0.4), "rte": (None, None)}.items():
        task = instantiate(compose_config([f"task={name}"]).task)
        val = load_split(task, "validation", data_dir)
        gold = stratified_sample(val, 200, 0)
        ids = {r["id"] for r in gold}
        held_out = stratified_sample([r for r in val if r["id"] not in ids], 200, 1)
        check = GoldLabelCheck(embedder, task, gold, seed=0)
        if name == "rte":
            assert check.cv_accuracy < 0.65 and (check.model is None) == (check.cv_accuracy < 0.6)
            continue
        assert check.model is not None
        kept_true = sum(check.agree(held_out)) / len(held_out)
        kept_flipped = sum(check.agree([{**r, "label": 1 - r["label"]} for r in held_out])) / len(held_out)
        assert kept_true > true_above and kept_flipped < flipped_below, (name, kept_true, kept_flipped)


# ---- answers of the task's kind: the kind check and declared formats ----------------------------------------


class ProseAboutLabelsLLM(LLM):
    """A custom task's LLM that, asked for a bug report, often writes prose about what a bug report is; otherwise
    it answers with a real support message of the asked label (from the train split the gold rows are not in)."""

    name = "prose"
    PROSE = [
        "A bug report is defined as a concise description of a defect, written so that engineers can act on it.",
        "Bug reports are an essential part of the software development lifecycle and quality assurance process.",
        "A good bug report describes the expected behaviour, the observed behaviour and the steps to reproduce.",
        "In customer support, a bug report is a type of ticket that documents an error in a product or service.",
        "The purpose of a bug report is to communicate a problem clearly to the development team.",
        "Writing an effective bug report requires clarity, precision and attention to detail.",
    ]

    def __init__(self, messages: dict[str, list[str]]) -> None:
        super().__init__()
        self.messages = messages

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for u in units:
            rng = random.Random(u.sampling.seed)
            label = "bug_report" if "bug_report" in u.messages[-1].content else "question"
            if label == "bug_report" and rng.random() < 0.5:
                text = f"{rng.choice(self.PROSE)} {rng.choice(['', 'Indeed.', 'This matters.'])}".strip()
            else:
                text = rng.choice(self.messages[label])
            out.append(Completion(text, 3, 3, "stop"))
        return out


def custom_task_and_rows() -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    from s3.data import load_split

    task = instantiate(compose_config(["task=custom_example"]).task)
    data = Path(__file__).parent / "data"
    return task, load_split(task, "validation", data), load_split(task, "train", data)


def test_prose_about_a_label_is_dropped_as_off_kind_and_real_examples_kept() -> None:
    from s3.embed import SentenceEmbedder

    task, gold, train = custom_task_and_rows()
    llm = ProseAboutLabelsLLM(
        {name: [r["text"] for r in train if r["label"] == k] for k, name in enumerate(task.labels)}
    )
    cfg = SyntheticLoopConfig(
        label_check="none", gold_check=False, min_source_similarity=0.0, max_attempts=8, kind_check=True
    )
    filters = build_filter_chain(cfg, task, protected=[], llm=llm, embedder=SentenceEmbedder(), gold_rows=gold)
    batch = Synthesizer(llm, task, filters, cfg, seed=0).seed_set(16, "zerogen", round_=0)
    kept = [r["text"] for r in batch.rows]
    assert batch.drops["off_kind"] > 0  # the prose was dropped under its own reason, and re-asked
    assert not set(kept) & set(ProseAboutLabelsLLM.PROSE)
    assert not any(text.startswith(tuple(ProseAboutLabelsLLM.PROSE)) for text in kept)
    assert Counter(r["label"] for r in batch.rows) == {0: 8, 1: 8}  # every real-looking answer kept


def test_the_kind_check_drops_about_its_quantile_of_real_rows(data_dir) -> None:
    """Its threshold is a quantile of the gold rows' nearest-gold cosines, so held-out real rows of the task are
    dropped about that often (SST-2, the embedded MiniLM)."""
    from s3.data import load_split, stratified_sample
    from s3.embed import SentenceEmbedder

    task = sst2_task()
    val = load_split(task, "validation", data_dir)
    gold = stratified_sample(val, 150, 0)
    ids = {r["id"] for r in gold}
    held_out = stratified_sample([r for r in val if r["id"] not in ids], 300, 1)
    check = KindCheck(SentenceEmbedder(), task, gold, quantile=0.02)
    assert sum(check.keep(held_out)) / len(held_out) >= 0.94
    off = ["Photosynthesis converts light energy into chemical energy.", "def main(): return 0", "1 2 3 4 5 6 7 8"]
    assert check.keep([{"text": t} for t in off]) == [False, False, False]  # not movie-review sentences at all


def test_the_kind_check_turns_itself_off_when_it_would_drop_most_answers(caplog) -> None:
    """Gold rows far more alike than the LLM's examples (a templated set) would drop nearly every answer: after
    MIN_SEEN answers with more than half dropped, the check keeps everything and says why."""
    gold = [{"text": " ".join(VOCAB[i : i + 4]), "label": i % 2} for i in range(20)]  # neighbours share 3 words
    like = [{"text": " ".join(VOCAB[i : i + 4]), "label": 0} for i in range(2, 8)]
    unlike = [{"text": " ".join(VOCAB[40 + i : 44 + i]), "label": 0} for i in range(14)]
    check = KindCheck(BagOfWords(), sst2_task(), gold, quantile=0.02)
    assert check.keep(like + unlike[:4]) == [True] * 6 + [False] * 4  # under MIN_SEEN answers: judged
    with caplog.at_level("WARNING"):
        assert check.keep(unlike[4:]) == [True] * 10  # 14 of 20 would go: off
    assert "kind check off: it would drop 14 of the 20 answers" in caplog.text
    assert check.keep(unlike) == [True] * 14


def test_a_declared_format_drops_rows_that_break_it_and_is_checked_against_the_gold_rows() -> None:
    from s3.data import DataError, Task
    from s3.filters import CleaningConfig, check_patterns

    task = Task(name="asks", description="d", example_kind="question", labels=["a", "b"],
                patterns={"text": r"\?$"})  # fmt: skip
    rules = QualityRules(CleaningConfig(), task.fields, task.labels, patterns=task.patterns)
    kept, dropped = rules.split(
        [{"text": "how do i reset it?", "label": 0}, {"text": "it is reset now ok", "label": 1}]
    )
    assert [r["text"] for r in kept] == ["how do i reset it?"] and [d[1] for d in dropped] == ["wrong_format"]
    check_patterns(task, [{"text": "why?"}, {"text": "how?"}, {"text": "no"}])  # most gold rows match: fine
    with pytest.raises(UserError, match=r"patterns.text .* matches only 33% of the 3 gold rows"):
        check_patterns(task, [{"text": "why?"}, {"text": "no"}, {"text": "nope"}])
    with pytest.raises(DataError, match="not a regular expression"):
        Task(name="x", description="d", example_kind="q", labels=["a", "b"], patterns={"text": "("})
    with pytest.raises(DataError, match="no such field"):
        Task(name="x", description="d", example_kind="q", labels=["a", "b"], patterns={"question": "."})


# ---- round 0: quotas, rationale sampling, GoldGen demonstrations ------------------------------------------


class PositiveJunkLLM(ScriptedLLM):
    """Answers every prompt for a positive example with chatter half the time, negative prompts never."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for u in units:
            rng = random.Random(u.sampling.seed)
            junk = "Write one positive" in u.messages[-1].content and rng.random() < 0.5
            text = "Sure! Here is a new sentence:" if junk else " ".join(rng.choice(VOCAB) for _ in range(10))
            out.append(Completion(text, 3, 3, "stop"))
        return out


def test_seed_set_meets_every_labels_quota_and_counts_the_surplus() -> None:
    llm = PositiveJunkLLM()
    batch = synthesizer(llm, overgenerate=1.5).seed_set(7, "zerogen", round_=0)
    assert Counter(r["label"] for r in batch.rows) == {0: 4, 1: 3}  # quotas 4 + 3, though positive loses half
    assert batch.drops["unparsable"] > 0  # the positive chatter was dropped and re-asked
    assert batch.drops["over_quota"] == batch.generated - 7 - sum(
        v for k, v in batch.drops.items() if k != "over_quota"
    )
    assert all(r["source"] == "zerogen" and r["round"] == 0 for r in batch.rows)


RATIONALES = {
    "labels": {"negative": [f"neg-aspect-{i}" for i in range(5)], "positive": [f"pos-aspect-{i}" for i in range(5)]},
    "variations": [f"variation-{i}" for i in range(4)],
}


def test_rationale_prompts_sample_their_labels_items() -> None:
    jobs = synthesizer(ScriptedLLM()).seed_jobs(
        "rationale", 1, count=40, round_=0, attempt=0, rationales=RATIONALES, demos=()
    )
    prompts = [job.messages[-1]["content"] for job in jobs]
    aspects = Counter(a for p in prompts for a in RATIONALES["labels"]["positive"] if a in p)
    variations = Counter(v for p in prompts for v in RATIONALES["variations"] if v in p)
    assert sum(aspects.values()) == 40 and len(aspects) == 5  # one item per prompt, every item drawn
    assert len(variations) == 4 and max(variations.values()) < 40
    assert not any("neg-aspect" in p for p in prompts)  # only the prompted label's items
    assert all(job.given == {"label": 1} and job.source == "rationale" for job in jobs)


def test_goldgen_prompts_show_gold_rows_as_demonstrations() -> None:
    demos = [{"id": f"val-{i}", "text": f"gold demonstration number {i}", "label": i % 2} for i in range(10)]
    jobs = synthesizer(ScriptedLLM()).seed_jobs(
        "goldgen", 0, count=12, round_=0, attempt=0, rationales=None, demos=demos
    )
    shown = [[d for d in demos if f'"{d["text"]}"' in job.messages[-1]["content"]] for job in jobs]
    assert all(len(s) == 4 for s in shown)  # four demonstrations per prompt
    assert len({tuple(d["id"] for d in s) for s in shown}) > 1  # sampled per prompt, not one fixed set
    labelled = [f'{["negative", "positive"][d["label"]]}: "{d["text"]}"' for s in shown for d in s]
    assert all(line in "".join(job.messages[-1]["content"] for job in jobs) for line in labelled)


def test_the_filter_chain_follows_the_loop_config() -> None:
    task = sst2_task()

    def kinds(**loop: Any) -> list[str]:
        cfg = SyntheticLoopConfig(**loop)
        gold = KeepLabel() if cfg.gold_check else None
        chain = build_filter_chain(cfg, task, [], llm=ScriptedLLM(), embedder=BagOfWords(), gold_check=gold)
        return [type(f).__name__ for f in chain.filters]

    assert kinds() == ["Cleaner", "SourceSimilarity", "KeepLabel", "LLMLabelCheck"]  # the defaults
    assert "KindCheck" in kinds(kind_check=True)
    zerogen = {"label_check": "none", "gold_check": False, "kind_check": False, "min_source_similarity": 0.0}
    assert kinds(**zerogen) == ["Cleaner"]
    with pytest.raises(ValueError, match="embedder"):
        build_filter_chain(SyntheticLoopConfig(), task, [], llm=ScriptedLLM())


def test_each_filter_counts_its_own_drops_and_later_filters_see_only_survivors() -> None:
    rows = [
        {"text": "Sure! Here is a positive review:", "label": 1},  # boilerplate (text rules)
        {"text": "a real example number 3", "label": 1},  # a copy of a protected text (leak)
        {"text": "brae dula fene gori limu", "label": 0},  # label 0: the stand-in gold check drops it
        {"text": "brae dula fene gori limu", "label": 0},  # its duplicate: dedup sees it before the gold check
        {"text": "mora pela tasy brax dulo", "label": 1},  # kept
    ]
    cfg = SyntheticLoopConfig(label_check="none", min_source_similarity=0.0, kind_check=False)
    chain = build_filter_chain(cfg, sst2_task(), ["a real example number 3"], gold_check=KeepLabel())
    kept, drops = chain([dict(r) for r in rows])
    assert [r["text"] for r in kept] == ["mora pela tasy brax dulo"]
    assert drops == {"boilerplate": 1, "leak": 1, "duplicate": 1, "gold_disagree": 1}
    assert set(chain.reasons) >= set(drops)


def test_long_real_rows_are_cut_in_prompts_and_counted() -> None:
    llm = ScriptedLLM()
    long_error = {"id": "val-long", "text": "word " * 2_000 + "END", "label": 1}  # 10,000 characters
    synth = synthesizer(llm, per_error=1, max_example_chars=500)
    synth.extrapolate([long_error, *ERRORS[:3]], round_=1, limit=4)
    prompt = next(u.messages[-1].content for u in llm.seen if "word word" in u.messages[-1].content)
    assert len(prompt) < 1_000 and "END" not in prompt and "word …" in prompt
    assert synth.book.truncated >= 1 and not any(e["text"] in prompt for e in ERRORS[:3])


class ContinuingLLM(LLM):
    """A backend that continues a started answer: it writes the example and closes the quote, then chatter."""

    name = "continuing"
    continues_answers = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ChatRequest] = []

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        self.seen.extend(units)
        out = []
        for u in units:
            text = " ".join(random.Random(u.sampling.seed).sample(VOCAB, 8))
            if u.messages[-1].role != "assistant":  # no answer started: it talks about the example first
                text = f"Here is a new sentence that captures the idea:\n{text}\nThis sentence keeps the tone."
            out.append(Completion(text, 3, 3, "stop"))  # a stop string is cut off by the backend (answer_stop)
        return out


def test_answers_start_with_the_prompt_sets_answer_start_where_the_backend_continues_them() -> None:
    llm = ContinuingLLM()
    batch = synthesizer(llm).extrapolate(ERRORS, round_=1, limit=12)
    asked = llm.seen
    assert asked and all(u.messages[-1].role == "assistant" and u.messages[-1].content == '"' for u in asked)
    assert all(u.sampling.stop == ('"\n',) for u in asked)
    assert len(batch.rows) == 12 and all(not r["text"].startswith('"') for r in batch.rows)  # the prefix is parsed
    recorded = next(iter(batch.prompts.values()))
    assert recorded[-1] == {"role": "assistant", "content": '"'}  # the prompt as sent is what the run records


def test_chat_apis_that_answer_a_new_turn_get_no_started_answer() -> None:
    llm = ContinuingLLM()
    llm.continues_answers = False  # e.g. the OpenAI backend
    synthesizer(llm).extrapolate(ERRORS, round_=1, limit=6)
    assert llm.seen and all(u.messages[-1].role == "user" and u.sampling.stop == () for u in llm.seen)


class ContinuingQuestionLLM(ContinuingLLM):
    """A backend that continues a started answer and cuts it at a stop string, as transformers and vLLM do: it
    writes a question, then (on the next lines) chatter about it."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        self.seen.extend(units)
        out = []
        for u in units:
            rng = random.Random(u.sampling.seed)
            text = f" What did the {' '.join(rng.sample(VOCAB, 4))} do?\n\nThe answer is in the sentence."
            if u.messages[-1].role != "assistant":
                text = "Question:" + text
            cut = min((text.index(s) for s in u.sampling.stop if s in text), default=len(text))
            out.append(Completion(text[:cut], 3, 3, "stop"))
        return out


@pytest.mark.parametrize("continues", [True, False])
def test_a_pair_field_on_a_real_context_is_one_started_line(continues) -> None:
    """loop.pair_context=train (QNLI): the answer starts with the written field's label and ends at its line, so
    the chatter after a question is never part of it; a chat API gets the plain prompt."""
    from s3.pair_synthesis import PairContextSynthesizer

    task = instantiate(compose_config(["task=qnli"]).task)
    llm = ContinuingQuestionLLM()
    llm.continues_answers = continues
    cfg = SyntheticLoopConfig(label_check="none", gold_check=False, min_source_similarity=0.0, pair_context="train")
    filters = build_filter_chain(cfg, task, protected=[], llm=llm)
    train = [
        {"text1": "?", "text2": f"The city of Paris number {i} lies on the river Seine.", "label": 0} for i in range(9)
    ]
    batch = PairContextSynthesizer(llm, task, filters, cfg, 0, train).seed_set(6, "zerogen", round_=0)
    if continues:
        assert all(u.messages[-1].role == "assistant" and u.messages[-1].content == "Question:" for u in llm.seen)
        assert all(u.sampling.stop == ("\n",) for u in llm.seen)
        assert len(batch.rows) == 6 and all(r["text1"].startswith("What did") for r in batch.rows)
        assert all(r["text1"].endswith("do?") for r in batch.rows)
    else:
        assert all(u.messages[-1].role == "user" and u.sampling.stop == () for u in llm.seen)
