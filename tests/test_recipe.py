"""The whole loop in-process with a scripted LLM (seconds, not minutes): rounds, provenance and artifacts.

The LLM is a stand-in; everything else is real (SST-2 rows, MiniLM training, the cleaner, the gold check).
It also shows the loop runs without Hydra's runtime: a composed config and a run dir are enough.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

import s3.loop
from conftest import NoLLM, read_jsonl
from s3.config import UserError, compose_config
from s3.filters import GoldLabelCheck
from s3.llm import LLM, ChatRequest, Completion, usage_totals
from s3.loop import run_experiment

WORDS = {
    "positive": ["wonderful", "moving", "brilliant", "delightful", "charming", "superb", "funny", "warm"],
    "negative": ["dull", "tedious", "awful", "boring", "clumsy", "lifeless", "bland", "grating"],
}
FILLER = ["the", "film", "cast", "story", "scenes", "director", "script", "ending", "music", "pace", "camera"]
RATIONALE = "1. the acting\n2. the plot\n3. the soundtrack"


class ScriptedSentimentLLM(LLM):
    """Writes seeded sentiment sentences for the prompted label; an extrapolation reshuffles its example's
    words (similar to it, without copying its n-grams); re-labels by its words; lists three rationale items."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for u in units:
            prompt = u.messages[-1].content
            self.prompts.append(prompt)
            rng = random.Random(u.sampling.seed)
            if u.choices is not None:  # re-label by the words, or a channel-score request (no scores here)
                text = (
                    ("positive" if any(w in prompt for w in WORDS["positive"]) else "negative")
                    if set(u.choices) == {"negative", "positive"}
                    else u.choices[0]
                )
            elif prompt.startswith("List") or "\nList" in prompt:
                text = RATIONALE
            else:
                label = re.search(r"\b(positive|negative)\b", prompt).group(1)  # type: ignore[union-attr]
                quoted = re.search(r'"([^"]{10,})"', prompt)
                words = quoted.group(1).split() if quoted else rng.sample(FILLER, 5)
                rng.shuffle(words)
                text = " ".join([*words, *rng.sample(WORDS[label], 2), rng.choice(FILLER)])
            out.append(Completion(text, 10, 10, "stop"))
        return out


TINY = [
    "logger=none",
    "gap.enabled=false",
    "loop.seed_size=16",
    "loop.num_gold_val=24",
    "loop.max_test=40",
    "loop.per_error=1",
    "loop.max_new_per_round=8",
    "loop.rationale_samples=1",
    "small_model.max_epochs=1",
    "small_model.save=true",
]


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, data_dir) -> tuple[Path, ScriptedSentimentLLM]:
    run_dir = tmp_path_factory.mktemp("s3_run")
    cfg = compose_config(
        [
            *TINY,
            "loop=s3",
            "loop.rounds=2",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={tmp_path_factory.mktemp('cache')}",
        ]
    )
    llm = ScriptedSentimentLLM()
    llm.gold_check_rows = []  # what the gold label check was fitted on
    with pytest.MonkeyPatch.context() as mp:
        fit = GoldLabelCheck.__init__

        def record(self, embedder, task, gold_rows, *args, **kwargs):
            llm.gold_check_rows.extend(gold_rows)
            fit(self, embedder, task, gold_rows, *args, **kwargs)

        mp.setattr(GoldLabelCheck, "__init__", record)
        llm.selected_on = []  # the rows each training chose its best epoch on
        train = s3.loop.train_classifier

        def train_recording(train_rows, val_rows, *args, **kwargs):
            llm.selected_on.append({r["id"] for r in val_rows})
            return train(train_rows, val_rows, *args, **kwargs)

        mp.setattr(s3.loop, "train_classifier", train_recording)
        llm.returned = run_experiment(cfg, run_dir=run_dir, llm=llm)
    return run_dir, llm


def test_round_zero_is_a_balanced_rationale_guided_seed_set(s3_run) -> None:
    run_dir, llm = s3_run
    seed_rows = read_jsonl(run_dir / "rounds" / "round_0" / "train.jsonl")
    assert Counter(r["label"] for r in seed_rows) == {0: 8, 1: 8}
    assert {r["source"] for r in seed_rows} == {"rationale"}
    rationales = json.loads((run_dir / "rounds" / "round_0" / "rationales.json").read_text())
    assert rationales["labels"]["positive"] == ["the acting", "the plot", "the soundtrack"]
    seed_prompts = [p for p in llm.prompts if p.startswith("Write one") and "Ideas you may use" in p]
    assert {item for p in seed_prompts for item in ("the acting", "the plot", "the soundtrack") if item in p} == {
        "the acting",
        "the plot",
        "the soundtrack",
    }


def test_each_round_extrapolates_from_the_previous_rounds_errors(s3_run) -> None:
    run_dir, _ = s3_run
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for k in (1, 2):
        errors = {e["id"]: e for e in read_jsonl(run_dir / "rounds" / f"round_{k - 1}" / "errors.jsonl")}
        rows = read_jsonl(run_dir / "rounds" / f"round_{k}" / "train.jsonl")
        new = [r for r in rows if r["round"] == k]
        assert 0 < len(new) <= 8 and metrics[k]["n_new"] == len(new)
        for r in new:
            source = errors[r["source"].removeprefix("extrapolated-from-")]
            assert r["label"] == source["label"]  # an extrapolated row keeps its error's gold label
        assert rows[: len(rows) - len(new)] == read_jsonl(run_dir / "rounds" / f"round_{k - 1}" / "train.jsonl")


def test_a_run_leaves_its_summary_model_and_dataset(s3_run) -> None:
    run_dir, _ = s3_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["loop"] == "s3" and summary["llm"]["name"] == "scripted"
    assert summary["n_train"] == read_jsonl(run_dir / "metrics.jsonl")[-1]["n_train"]
    assert (run_dir / "model" / "s3_classifier.json").is_file()
    assert len(read_jsonl(run_dir / "test_predictions.jsonl")) == summary["n_test"] == 40
    assert (run_dir / "dataset" / "README.md").is_file()


def test_goldgen_writes_from_gold_demonstrations(tmp_path, data_dir) -> None:
    cfg = compose_config([*TINY, "loop=goldgen", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'c'}"])
    llm = ScriptedSentimentLLM()
    run_experiment(cfg, run_dir=tmp_path / "run", llm=llm)
    gold = {r["id"] for r in read_jsonl(tmp_path / "run" / "gold_val_ids.jsonl")}
    assert len(gold) == 24
    rows = read_jsonl(tmp_path / "run" / "rounds" / "round_0" / "train.jsonl")
    assert {r["source"] for r in rows} == {"goldgen"} and len(rows) == 16
    few_shot = [p for p in llm.prompts if p.startswith("Here are some examples")]
    assert few_shot and all(p.count('"') >= 8 for p in few_shot)  # four quoted demonstrations each


def test_held_out_selection_rows_are_never_learned_from(s3_run, data_dir) -> None:
    run_dir, llm = s3_run
    parts = read_jsonl(run_dir / "gold_val_ids.jsonl")
    learn = {p["id"] for p in parts if p["part"] == "learn"}
    select = {p["id"] for p in parts if p["part"] == "select"}
    assert len(learn) == 18 and len(select) == 6 and not learn & select  # 25% of 24 held out
    texts = {r["id"]: r["text"] for r in read_jsonl(data_dir / "sst2" / "validation.jsonl")}
    assert not [i for i in select if any(texts[i] in p for p in llm.prompts)]  # in no prompt
    assert {r["id"] for r in llm.gold_check_rows} == learn  # the gold check learns from the learn part only
    assert llm.selected_on == [select] * 3  # every round's best epoch is chosen on the held-out rows
    for k in (0, 1, 2):
        assert {e["id"] for e in read_jsonl(run_dir / "rounds" / f"round_{k}" / "errors.jsonl")} <= learn
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert all(0.0 <= m["select_acc"] <= 1.0 for m in metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["n_gold_val"] == 24
        and summary["n_select"] == 6
        and llm.returned == summary["select_acc"] == metrics[-1]["select_acc"]
    )


def test_a_run_dir_is_resumed_only_with_its_own_config(tmp_path, data_dir) -> None:
    base = [*TINY, "loop=goldgen", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'c'}"]
    run_dir = tmp_path / "run"
    run_experiment(compose_config(base), run_dir=run_dir, llm=ScriptedSentimentLLM())
    saved = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"another config \(loop.seed_size: 16 -> 20\)"):
        run_experiment(compose_config([*base, "loop.seed_size=20"]), run_dir=run_dir, llm=ScriptedSentimentLLM())
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == saved  # nothing overwritten
    llm = ScriptedSentimentLLM()
    run_experiment(compose_config(base), run_dir=run_dir, llm=llm)  # the same config resumes: round 0 is done
    assert not llm.prompts


class RefusingLLM(ScriptedSentimentLLM):
    """Like the scripted LLM, but every third example it writes is a refusal (the quality rules drop it)."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = super()._generate_units(units)
        return [
            Completion("I'm sorry, but I cannot write that review.", 10, 10, "stop")
            if u.choices is None and not u.messages[-1].content.startswith("List") and i % 3 == 0
            else c
            for i, (u, c) in enumerate(zip(units, out))
        ]


def test_a_resumed_run_continues_its_wandb_run_with_tables_of_rows_and_drops(tmp_path, data_dir, monkeypatch) -> None:
    """A run killed after round 0 and resumed is one W&B run (one id) whose summary counts both processes; each
    round logs its new rows (extrapolated ones beside their source error) and its dropped answers as Tables."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(
        [
            *[o for o in TINY if o != "logger=none"],
            "logger=wandb",
            "loop=s3",
            "loop.rounds=1",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
    )
    run_dir = tmp_path / "run"
    extrapolate = s3.loop.Synthesizer.extrapolate

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # the process dies in round 1, after round 0 was written

    monkeypatch.setattr(s3.loop.Synthesizer, "extrapolate", killed)
    first = RefusingLLM()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run_dir=run_dir, llm=first)
    monkeypatch.setattr(s3.loop.Synthesizer, "extrapolate", extrapolate)
    second = RefusingLLM()
    run_experiment(cfg, run_dir=run_dir, llm=second)

    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith(f"-{run_id}") for d in offline)  # one W&B run, two parts

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    requests = [m["llm/requests"] for m in metrics]
    assert summary["llm"]["requests"] == sum(requests) > usage_totals(second.usage()).requests  # both processes
    assert summary["wall_seconds"] >= metrics[-1]["run_seconds"] > metrics[0]["run_seconds"] > 0

    dropped = read_jsonl(run_dir / "rounds" / "round_0" / "dropped.jsonl")
    refusals = [d for d in dropped if d["reason"] == "refusal"]
    assert refusals and all("cannot write" in d["text"] and d["source"] == "rationale" for d in refusals)

    def table(part: Path, name: str) -> list[dict]:
        path = next(part.glob(f"files/media/table/rows/{name}_*.table.json"))
        t = json.loads(path.read_text())
        return [dict(zip(t["columns"], row)) for row in t["data"]]

    assert len(table(offline[0], "round_0/kept")) == metrics[0]["n_new"]
    assert {r["reason"] for r in table(offline[0], "round_0/dropped")} >= {"refusal"}
    errors = {e["id"]: e for e in read_jsonl(run_dir / "rounds" / "round_0" / "errors.jsonl")}
    kept_1 = table(offline[1], "round_1/kept")
    assert len(kept_1) == metrics[1]["n_new"] > 0
    for row in kept_1:
        error = errors[row["source"].removeprefix("extrapolated-from-")]
        assert (row["source_text"], row["source_gold"], row["source_pred"]) == (
            error["text"],
            error["label_text"],
            error["pred_text"],
        )
        assert row["label"] == error["label_text"]


def test_a_sweep_agents_parameters_leave_the_rest_of_the_config_in_wandb(tmp_path, data_dir, monkeypatch) -> None:
    """`wandb agent` writes the swept parameters over the run's W&B config by key (here the group choice
    `loop: goldgen`): every other loop setting must still be there."""
    import wandb

    wandb.teardown()  # W&B reads the agent's environment when it is first set up: as in a fresh agent process
    params = tmp_path / "sweep_params.yaml"
    params.write_text("wandb_version: 1\n\nloop:\n  value: goldgen\nloop.seed_size:\n  value: 16\n")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")  # what the agent sets for the runs it starts
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    runs = []
    start = s3.loop.start_wandb
    monkeypatch.setattr(s3.loop, "start_wandb", lambda *a, **k: runs.append(start(*a, **k)) or runs[-1])
    overrides = [o for o in TINY if o != "logger=none"] + ["logger=wandb", "loop=goldgen", "loop.seed_size=16"]
    cfg = compose_config([*overrides, f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'c'}"])
    run_experiment(cfg, run_dir=tmp_path / "run", llm=ScriptedSentimentLLM())
    wandb.teardown()
    config = dict(runs[0].config)
    assert config["loop"] == "goldgen" and config["loop.seed_size"] == 16
    assert config["loop.rounds"] == 0 and config["loop.num_gold_val"] == 24 and config["task.name"] == "sst2"


def test_the_budget_is_shared_across_extrapolation_rounds() -> None:
    """With loop.total_budget, round 1 may take only its share of what is left (even), so round 2 still learns
    from round 1's errors; greedy (the old way) lets round 1 take all its errors ask for."""
    from s3.loop import round_room
    from s3.loop_config import SyntheticLoopConfig

    even, greedy = SyntheticLoopConfig(rounds=3), SyntheticLoopConfig(rounds=3, budget_split="greedy")
    assert [round_room(even, 400, 200, k) for k in (1, 2, 3)] == [67, 100, 200]  # 200 left over 3, 2, 1 rounds
    assert round_room(greedy, 400, 200, 1) == 200
    assert round_room(SyntheticLoopConfig(rounds=3, max_new_per_round=50), 400, 200, 1) == 50
    assert round_room(even, math.inf, 200, 1) == math.inf  # no budget, nothing to share


def test_jobs_run_side_by_side_share_the_cores() -> None:
    from s3.loop import threads_per_job

    assert threads_per_job({"n_jobs": 2}, cores=16) == 8  # hydra/launcher=joblib hydra.launcher.n_jobs=2
    assert threads_per_job({"n_jobs": 4}, cores=2) == 1  # never zero; never more jobs than cores counted
    assert threads_per_job({"n_jobs": -1}, cores=8) == 1  # joblib's "one job per core"
    assert threads_per_job({"n_jobs": 1}, cores=8) is None and threads_per_job({}, cores=8) is None  # one at a time


class ScriptedPairLLM(LLM):
    """Answers a pair prompt with one line of seeded words, ended as a question (QNLI declares that format)."""

    name = "scripted-pair"

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for u in units:
            prompt = u.messages[-1].content
            self.prompts.append(prompt)
            rng = random.Random(u.sampling.seed)
            if prompt.startswith("List"):
                text = RATIONALE
            else:  # the line the prompt asks for ("<written field>: <one sentence>"), or a bare continuation
                asked = re.match(r"(\w+): <one sentence>$", prompt.strip().splitlines()[-1])
                words = " ".join(rng.sample(FILLER, 6)) + f" {rng.randrange(10**6)}?"
                text = f"{asked.group(1)}: {words}" if asked else words
            out.append(Completion(text, 10, 10, "stop"))
        return out


@pytest.mark.parametrize("task, given, written", [("rte", "text1", "text2"), ("qnli", "text2", "text1")])
def test_pair_rows_on_real_contexts_keep_them_and_their_errors_contexts(tmp_path, data_dir, task, given, written):
    """loop.pair_context=train (the default): every synthetic context (RTE premise; QNLI sentence, `context_field`)
    is a train-split text, as given (the LLM writes only the other field); an extrapolated row keeps its error's
    context; the train split's other field is never shown."""
    cfg = compose_config(
        [
            *TINY,
            f"task={task}",
            "loop=s3",
            "loop.rounds=1",
            "loop.label_check=none",
            "loop.gold_check=false",
            "loop.min_source_similarity=0",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={tmp_path / 'c'}",
        ]
    )
    llm = ScriptedPairLLM()
    run_experiment(cfg, run_dir=tmp_path / "run", llm=llm)
    train = read_jsonl(data_dir / task / "train.jsonl")
    contexts = {r[given] for r in train}
    rows = read_jsonl(tmp_path / "run" / "rounds" / "round_1" / "train.jsonl")
    assert rows and all(r[given] in contexts for r in rows if r["round"] == 0)
    errors = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "rounds" / "round_0" / "errors.jsonl")}
    extrapolated = [r for r in rows if r["round"] == 1]
    assert extrapolated and all(r[given] == errors[r["source"].split("from-")[1]][given] for r in extrapolated)
    assert all(r[written].split()[0] in FILLER for r in rows)  # the LLM's text, parsed from its line
    shown = {r[written] for r in read_jsonl(data_dir / task / "validation.jsonl")}  # errors are shown
    others = {r[written] for r in train if len(r[written]) > 30} - shown
    assert not [p for p in llm.prompts if any(o in p for o in others)]  # the train split's other side unseen


@pytest.mark.parametrize("task", ["rte", "qnli"])
def test_the_papers_pair_prompts_run_verbatim_on_real_contexts(tmp_path, data_dir, task) -> None:
    """prompts@task.prompts=paper_<task>: the Table 1 seed and extrapolation prompts, with the paper's label words,
    filled with real contexts; a run with loop.pair_context=llm is refused before any LLM call."""
    base = [
        *TINY,
        f"task={task}",
        f"prompts@task.prompts=paper_{task}",
        "loop=s3",
        "loop.rounds=1",
        "loop.label_check=none",
        "loop.gold_check=false",
        "loop.min_source_similarity=0",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={tmp_path / 'c'}",
    ]
    with pytest.raises(UserError, match="written for loop.pair_context=train"):
        run_experiment(compose_config([*base, "loop.pair_context=llm"]), run_dir=tmp_path / "refused", llm=NoLLM())
    llm = ScriptedPairLLM()
    run_experiment(compose_config(base), run_dir=tmp_path / "run", llm=llm)
    words = {"rte": ("is definitely correct:", "is definitely wrong:"), "qnli": ("has answers in the", "not in the")}
    seeds = [p for p in llm.prompts if p.endswith(("correct:", "wrong:", "information paragraph"))]
    assert seeds and all(any(w in p for w in words[task]) for p in seeds)
    assert any("Now write a sentence similar" in p or "Please write another question" in p for p in llm.prompts)


def test_the_papers_gold_set_from_the_train_split(tmp_path, data_dir) -> None:
    """loop.gold_split=train (the paper's D_gold(eval) is its train split): the gold rows, and so the errors the
    LLM sees, are train rows; the test split is still only scored."""
    cfg = compose_config(
        [*TINY, "loop=goldgen", "loop.gold_split=train", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path}"]
    )
    run_experiment(cfg, run_dir=tmp_path / "run", llm=ScriptedSentimentLLM())
    parts = read_jsonl(tmp_path / "run" / "gold_val_ids.jsonl")
    train_ids = {r["id"] for r in read_jsonl(data_dir / "sst2" / "train.jsonl")}
    assert len(parts) == 24 and {p["id"] for p in parts} <= train_ids


def test_a_declared_format_the_gold_rows_break_is_refused_before_the_llm_loads(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr("s3.loop.load_llm", lambda cfg: pytest.fail("the LLM was loaded"))
    cfg = compose_config(
        [*TINY, "task=qnli", "loop=s3", "task.patterns={text1:zzz}", f"paths.data_dir={data_dir}",
         f"paths.cache_dir={tmp_path / 'c'}"]
    )  # fmt: skip
    with pytest.raises(UserError, match="patterns.text1 'zzz' matches only 0% of the 18 gold rows"):
        run_experiment(cfg, run_dir=tmp_path / "run")
