"""Extractive QA (AdQA): loading with span checks, SQuAD scores, windowing, question synthesis, the loop end to end."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from transformers import AutoTokenizer

from conftest import read_jsonl, run_cli
from s3.config import compose_config
from s3.data import DataError, load_real_data, load_split
from s3.embed import resolve_model
from s3.filters import FilterChain
from s3.llm import LLM, ChatRequest, Completion
from s3.loop import run_experiment
from s3.loop_config import loop_config
from s3.predict import predict_file
from s3.qa import QATask, qa_scores
from s3.qa_model import Windows, best_spans
from s3.qa_synthesis import QASynthesizer, candidate_spans, parse_question
from s3.report import build_report

CONTEXT = "The Tyne Bridge was opened in 1928 by King George V. It links Newcastle and Gateshead."


def qa_task(**kw) -> QATask:
    return QATask(name="myqa", description="answering questions", **kw)


def write(folder: Path, split: str, text: str, suffix: str = "jsonl") -> None:
    (folder / "myqa").mkdir(parents=True, exist_ok=True)
    (folder / "myqa" / f"{split}.{suffix}").write_text(text)


# ---- data ---------------------------------------------------------------------------------------------------


def test_every_loaded_answer_is_a_span_of_its_passage(data_dir) -> None:
    task = instantiate(compose_config(["task=adqa"]).task)
    for split in ("train", "validation", "test"):
        rows = load_split(task, split, data_dir)
        assert all(r["context"][r["answer_start"] :].startswith(r["answer_text"]) for r in rows)
    assert len({r["context"] for r in rows}) < len(rows)  # several questions per passage


def test_an_answer_that_is_not_its_span_names_file_and_line(tmp_path) -> None:
    good = {"context": CONTEXT, "question": "When was it opened?", "answer_text": "1928", "answer_start": 30}
    bad = {**good, "id": "b", "answer_start": 5}
    write(tmp_path, "train", json.dumps({**good, "id": "a"}) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"myqa/train\.jsonl:2: answer '1928' is not the context's span at "
                       r"answer_start=5 \(it occurs at 30\)"):  # fmt: skip
        load_split(qa_task(), "train", tmp_path)
    write(tmp_path, "train", json.dumps({**good, "answer_text": "1929", "answer_start": None}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:1: answer '1929' is not a span of its context"):
        load_split(qa_task(), "train", tmp_path)


def test_user_qa_data_in_squad_form_and_as_csv(tmp_path) -> None:
    squad = {"id": "q1", "context": CONTEXT, "question": "Who opened it?",
             "answers": {"text": ["King George V", "George V"], "answer_start": [38, 43]}}  # fmt: skip
    write(tmp_path, "validation", json.dumps(squad) + "\n")
    [row] = load_split(qa_task(), "validation", tmp_path)
    assert (row["answer_text"], row["answer_start"], row["answers"]) == (
        "King George V",
        38,
        ["King George V", "George V"],
    )
    assert qa_scores(["George V"], [row])["em"] == 1.0  # any accepted answer counts
    write(tmp_path, "test", "passage,q,ans\n" + f'"{CONTEXT}",What does it link?,Newcastle and Gateshead\n', "csv")
    task = qa_task(columns={"context": "passage", "question": "q", "answer_text": "ans"})
    [row] = load_split(task, "test", tmp_path)
    assert row["answer_start"] == CONTEXT.index("Newcastle") and row["id"] == "test-0"  # start found in the passage
    write(tmp_path, "test", "passage,q\n" + f'"{CONTEXT}",What does it link?\n', "csv")
    with pytest.raises(DataError, match=r"test\.csv:2: no answer: expected column 'ans'"):
        load_split(task, "test", tmp_path)


def test_squad_scores_normalise_answers() -> None:
    row = {"answer_text": "the Tyne Bridge", "context": CONTEXT}
    assert qa_scores(["Tyne bridge."], [row]) == {"em": 1.0, "f1": 1.0}  # case, punctuation, articles
    partial = qa_scores(["Tyne"], [row])
    assert partial["em"] == 0.0 and partial["f1"] == pytest.approx(2 / 3)


# ---- the small model's windows ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("embedded:minilm"))


def test_windows_map_answer_tokens_back_to_its_characters(tokenizer, data_dir) -> None:
    task = instantiate(compose_config(["task=adqa"]).task)
    rows = load_split(task, "validation", data_dir)[:40]
    windows = Windows(rows, tokenizer, max_length=64, stride=16, train=True)
    assert len(windows) > 3 * len(rows)  # long passages are read in several windows
    holding = 0
    for i, feat in enumerate(windows.features):
        row, offsets = rows[windows.row_of[i]], windows.offsets[i]
        s, e = feat["start_positions"], feat["end_positions"]
        if (s, e) == (0, 0):
            continue  # this window does not hold the answer
        holding += 1
        start, end = offsets[s][0], offsets[e][1]
        answer_end = row["answer_start"] + len(row["answer_text"])
        assert start <= row["answer_start"] < offsets[s][1] and offsets[e][0] < answer_end <= end
    assert holding >= len(rows)  # every answer is inside at least one window

    # Logits that peak on the answer's tokens in one window (and on nothing elsewhere) give back its text.
    windows = Windows(rows, tokenizer, max_length=64, stride=16, train=False)
    train_feats = Windows(rows, tokenizer, max_length=64, stride=16, train=True).features
    starts = [np.zeros(n) for n in windows.lengths]
    ends = [np.zeros(n) for n in windows.lengths]
    for i, feat in enumerate(train_feats):
        if feat["start_positions"] > 0:
            starts[i][feat["start_positions"]] += 10
            ends[i][feat["end_positions"]] += 10
    predicted = [r["context"][s:e] for r, (s, e) in zip(rows, best_spans(windows, starts, ends, len(rows)))]
    assert qa_scores(predicted, rows)["em"] > 0.9


# ---- question synthesis -------------------------------------------------------------------------------------


def test_candidate_spans_are_content_phrases_of_the_passage() -> None:
    spans = [CONTEXT[s:e] for s, e in candidate_spans(CONTEXT)]
    assert {"Tyne Bridge", "1928", "King George V", "Newcastle and Gateshead"} <= set(spans)
    assert not {"the", "was opened", "in 1928", "It"} & set(spans)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Who opened the Tyne Bridge?", "Who opened the Tyne Bridge?"),
        ('Question: "Who opened the Tyne Bridge?" Answer: King George V', "Who opened the Tyne Bridge?"),
        ("Sure! Here is a question about it: Who opened the bridge?\nKing George V", "Who opened the bridge?"),
        ("What did Mr. Smith open?", "What did Mr. Smith open?"),
        ("King George V opened the bridge.", "not_a_question"),
        ("When did King George V open it?", "answer_in_question"),
        ("What is the answer to this question?", "boilerplate"),
        ("", "unparsable"),
    ],
)
def test_parse_question(answer: str, expected: str) -> None:
    assert parse_question(answer, "King George V") == expected


class ScriptedQuestionLLM(LLM):
    """Copies a passage word as the answer span; writes "What is said about <word>?" for a question prompt."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for u in units:
            prompt = u.messages[-1].content
            self.prompts.append(prompt)
            words = re.findall(r"[A-Za-z]{6,}", prompt.split("\n\n")[0])
            word = random.Random(u.sampling.seed).choice(words)
            out.append(
                Completion(word if "Copy one short phrase" in prompt else f"What is said about {word}?", 5, 5, "stop")
            )
        return out


class ContinuingQuestionLLM(ScriptedQuestionLLM):
    """Continues a started answer ("Question:") and cuts it at a stop string, as transformers and vLLM do; writes an
    answer line after the question."""

    continues_answers = True

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        self.seen = [*getattr(self, "seen", []), *units]
        out = []
        for u in units:
            word = random.Random(u.sampling.seed).choice(re.findall(r"[A-Za-z]{6,}", u.messages[1].content))
            text = f" What is said about {word}?\nAnswer: {word}"
            cut = min((text.index(s) for s in u.sampling.stop if s in text), default=len(text))
            out.append(Completion(text[:cut], 5, 5, "stop"))
        return out


def test_questions_are_started_answers_cut_at_their_line(data_dir) -> None:
    cfg = compose_config(["task=adqa", "loop=zerogen", "loop.answer_spans=candidates"])
    task = instantiate(cfg.task)
    llm = ContinuingQuestionLLM()
    batch = QASynthesizer(
        llm, task, FilterChain([]), loop_config(cfg.loop), 0, load_split(task, "train", data_dir)
    ).seed_set(8, "zerogen", round_=0)
    assert all(u.messages[-1].role == "assistant" and u.messages[-1].content == "Question:" for u in llm.seen)
    assert all(u.sampling.stop == ("\n",) for u in llm.seen)
    assert len(batch.rows) == 8 and all(re.fullmatch(r"What is said about \w+\?", r["question"]) for r in batch.rows)


QA_TINY = [
    "task=adqa",
    "logger=none",
    "gap.enabled=false",
    "loop.num_gold_val=16",
    "loop.max_test=16",
    "small_model.max_epochs=1",
    "small_model.max_length=128",
]
QA_SYNTHETIC = ["loop.seed_size=12", "loop.per_error=1", "loop.max_new_per_round=6"]


@pytest.mark.parametrize("mode", ["candidates", "llm", "train"])
def test_seed_answers_are_spans_of_train_passages(data_dir, mode) -> None:
    cfg = compose_config(["task=adqa", "loop=zerogen", f"loop.answer_spans={mode}"])
    task = instantiate(cfg.task)
    train = load_split(task, "train", data_dir)
    passages = [r["context"] for r in train]
    llm = ScriptedQuestionLLM()
    synth = QASynthesizer(llm, task, FilterChain([]), loop_config(cfg.loop), 0, train)
    targets, missed = synth.answer_targets(20, round_=0, attempt=0)
    assert len(targets) + missed == 20 and len({c for c, _, _ in targets}) == len(targets)  # passages spread out
    assert all(c in passages and c[s:].startswith(a) and a.strip() for c, s, a in targets)
    assert len(llm.prompts) == (20 if mode == "llm" else 0)
    assert synth.answer_targets(20, round_=0, attempt=0) == (targets, missed)  # seeded
    real_answers = {(r["context"], r["answer_start"], r["answer_text"]) for r in train}
    assert (set(targets) <= real_answers) == (mode == "train")  # only `train` uses the annotated answers


class CutOffSpanLLM(ScriptedQuestionLLM):
    """Every other answer-span answer is one the engine cut off (vLLM's ``abort``): a real passage word, marked."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        answers = super()._generate_units(units)
        return [c if i % 2 else Completion(c.text, 5, 5, "abort") for i, c in enumerate(answers)]


def test_an_answer_span_the_engine_cut_off_is_missed_not_used(data_dir) -> None:
    cfg = compose_config(["task=adqa", "loop=zerogen", "loop.answer_spans=llm"])
    task = instantiate(cfg.task)
    synth = QASynthesizer(
        CutOffSpanLLM(), task, FilterChain([]), loop_config(cfg.loop), 0, load_split(task, "train", data_dir)
    )
    targets, missed = synth.answer_targets(20, round_=0, attempt=0)
    assert missed >= 10 and len(targets) + missed == 20 and targets


def test_qa_loop_writes_questions_for_real_passages_and_keeps_held_out_questions_unseen(tmp_path, data_dir) -> None:
    cfg = compose_config([*QA_TINY, *QA_SYNTHETIC, "loop=s3", "loop.rounds=1", "loop.answer_spans=llm",
                          f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    llm = ScriptedQuestionLLM()
    objective = run_experiment(cfg, run_dir=tmp_path / "run", llm=llm)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["objective"] == "select_f1" and objective == summary["select_f1"]
    assert {"val_em", "val_f1", "test_em", "test_f1"} <= set(summary)
    task = instantiate(cfg.task)
    train_passages = {r["context"] for r in load_split(task, "train", data_dir)}
    rows = read_jsonl(tmp_path / "run" / "rounds" / "round_1" / "train.jsonl")
    assert {r["round"] for r in rows} == {0, 1}
    for r in rows:
        assert r["context"][r["answer_start"] :].startswith(r["answer_text"])  # a span, by construction
        assert r["question"].endswith("?")
    assert {r["context"] for r in rows if r["round"] == 0} <= train_passages  # seed rows: train passages only
    real = load_real_data(task, data_dir, 16, 16, 0, selection_fraction=0.25)
    errors = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "rounds" / "round_0" / "errors.jsonl")}
    assert errors and set(errors) <= {r["id"] for r in real.gold_val}  # errors only from the learned-from part
    for r in rows:
        if r["round"] == 1:  # extrapolated: the error's own passage and answer
            source = errors[r["source"].removeprefix("extrapolated-from-")]
            assert (r["context"], r["answer_text"]) == (source["context"], source["answer_text"])
    # No held-out selection question and no test question is ever shown to the LLM; no train question either.
    unseen = [r["question"] for r in real.select + load_split(task, "test", data_dir)]
    unseen += [r["question"] for r in load_split(task, "train", data_dir)]
    assert not any(q in p for p in llm.prompts for q in unseen)
    assert (tmp_path / "run" / "dataset" / "README.md").read_text().count("question-answering") == 1
    # The saved QA model answers new questions as it answered the run's test questions (python -m s3.predict).
    by_id = {r["id"]: r for r in load_split(task, "test", data_dir)}
    predicted = read_jsonl(tmp_path / "run" / "test_predictions.jsonl")  # all, in run order: the same batches
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({k: by_id[p["id"]][k] for k in ("id", "context", "question")}) + "\n"
                                 for p in predicted))  # fmt: skip
    assert predict_file(tmp_path / "run", questions) == predicted
    _, report = build_report([tmp_path / "run"], tmp_path / "report")  # QA runs get their own table: EM and F1
    assert "| adqa | s3 | 1 |" in report and "test EM (%)" in report and "acc" not in report.split("\n\n## ")[0]


@pytest.mark.slow
def test_adqa_with_the_real_llm_and_small_model(tmp_path) -> None:
    """`task=adqa loop=gold` and `task=adqa loop=s3 loop.rounds=1` as a user runs them (SmolLM2 + MiniLM)."""
    cache = {"S3_CACHE_DIR": str(tmp_path / "cache")}
    gold = run_cli([*QA_TINY, "loop=gold", "loop.gold_train_size=32", f"hydra.run.dir={tmp_path / 'gold'}"], cache)
    assert gold.returncode == 0, gold.stderr[-2000:]
    summary = json.loads((tmp_path / "gold" / "summary.json").read_text())
    assert summary["n_train"] == 32 and 0.0 <= summary["test_f1"] <= 1.0
    s3 = run_cli([*QA_TINY, *QA_SYNTHETIC, "loop=s3", "loop.rounds=1", "loop.seed_size=6", "loop.max_new_per_round=3",
                  f"hydra.run.dir={tmp_path / 's3'}"], cache)  # fmt: skip
    assert s3.returncode == 0, s3.stderr[-2000:]
    run = tmp_path / "s3"
    rows = read_jsonl(run / "rounds" / "round_1" / "train.jsonl")
    assert rows and all(r["context"][r["answer_start"] :].startswith(r["answer_text"]) for r in rows)
    prompts = [
        m["content"] for line in read_jsonl(run / "rounds" / "round_1" / "prompts.jsonl") for m in line["messages"]
    ]
    prompts += [
        m["content"] for line in read_jsonl(run / "rounds" / "round_0" / "prompts.jsonl") for m in line["messages"]
    ]
    task = instantiate(compose_config(["task=adqa"]).task)
    held_out = {r["id"] for r in read_jsonl(run / "gold_val_ids.jsonl") if r["part"] == "select"}
    validation = load_split(task, "validation", Path(compose_config([]).paths.data_dir))
    test = load_split(task, "test", Path(compose_config([]).paths.data_dir))
    unseen = [r["question"] for r in validation if r["id"] in held_out] + [r["question"] for r in test]
    assert prompts and not any(q in p for p in prompts for q in unseen)
