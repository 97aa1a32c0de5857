"""One run of the harness, top to bottom: data, (synthesis,) training, evaluation, tracking."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from s3.classifier import SmallModelConfig, TrainedClassifier, scores, train_classifier
from s3.config import UserError
from s3.data import RealData, Task, label_counts, load_real_data, stratified_sample
from s3.tracking import RunRecorder, atomic_write_jsonl, atomic_write_text, resolved_config, start_wandb

log = logging.getLogger(__name__)

__all__ = ["UserError", "run_experiment", "evaluate"]


def evaluate(clf: TrainedClassifier, real: RealData) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Scores on the gold validation and test sets, plus the misclassified gold-validation rows."""
    task = clf.task
    val_probs = clf.predict_proba(real.gold_val)
    test_probs = clf.predict_proba(real.test)
    val, test = scores(val_probs, real.gold_val), scores(test_probs, real.test)
    errors = []
    for row, probs in zip(real.gold_val, val_probs):
        pred = int(probs.argmax())
        if pred != row["label"]:
            errors.append({**{k: row[k] for k in ("id", *task.fields)}, "label": row["label"],
                           "label_text": task.labels[row["label"]], "pred": pred, "pred_text": task.labels[pred],
                           "prob_pred": round(float(probs[pred]), 4),
                           "prob_gold": round(float(probs[row["label"]]), 4)})
    metrics = {"val_acc": val["acc"], "val_f1": val["f1"], "test_acc": test["acc"], "test_f1": test["f1"],
               "n_errors": len(errors)}
    return metrics, errors


def train_and_evaluate(train_rows: Sequence[dict[str, Any]], real: RealData, task: Task, small: SmallModelConfig,
                       seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    clf = train_classifier(train_rows, real.gold_val, task, small, seed)
    metrics, errors = evaluate(clf, real)
    metrics.update(n_train=len(train_rows), train_seconds=round(clf.train_seconds, 2),
                   train_examples_per_second=round(clf.examples_per_second, 1), best_epoch=clf.best_epoch)
    metrics.update({f"labels/{k}": v for k, v in label_counts(train_rows, task).items()})
    return metrics, errors


def run_gold(cfg: DictConfig, task: Task, small: SmallModelConfig, real: RealData, run_dir: Path,
             recorder: RunRecorder) -> dict[str, Any]:
    """The human-annotated baseline: a stratified, seeded sample of the real train split."""
    assert real.train is not None
    train_rows = stratified_sample(real.train, cfg.loop.gold_train_size, cfg.seed)
    metrics, errors = train_and_evaluate(train_rows, real, task, small, cfg.seed)
    atomic_write_jsonl(run_dir / "errors.jsonl", errors)
    recorder.log_round({"round": 0, **metrics})
    return metrics


def run_experiment(cfg: DictConfig) -> float:
    """Build everything from the composed config, run the chosen loop, write the summary; return val acc."""
    start = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = HydraConfig.get().runtime.choices
    config = resolved_config(cfg)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))

    task: Task = instantiate(cfg.task)
    small: SmallModelConfig = instantiate(cfg.small_model)
    real = load_real_data(task, cfg.paths.data_dir, cfg.loop.num_gold_val, cfg.loop.max_test, cfg.seed,
                          need_train=cfg.loop.name == "gold")
    atomic_write_jsonl(run_dir / "gold_val_ids.jsonl", [{"id": r["id"], "label": r["label"]} for r in real.gold_val])

    llm_choice = choices.get("llm", "none")
    wandb_run = None
    if cfg.logger.enabled:
        wandb_run = start_wandb(cfg.logger, config, run_dir, group=f"{task.name}-{cfg.loop.name}-{llm_choice}",
                                name=f"{task.name}-{cfg.loop.name}-{llm_choice}-s{cfg.seed}")
    recorder = RunRecorder(run_dir, wandb_run)
    try:
        if cfg.loop.name == "gold":
            final = run_gold(cfg, task, small, real, run_dir, recorder)
            llm_totals: dict[str, Any] = {}
        else:
            raise UserError(f"unknown loop {cfg.loop.name!r}")
        summary = {"task": task.name, "loop": cfg.loop.name, "seed": cfg.seed, "small_model": small.name,
                   "llm": {"name": llm_choice, **llm_totals},
                   **{k: final[k] for k in ("val_acc", "val_f1", "test_acc", "test_f1", "n_train")},
                   "n_gold_val": len(real.gold_val), "n_test": len(real.test),
                   "wall_seconds": round(time.perf_counter() - start, 2)}
        recorder.write_summary(summary)
        log.info("done: val_acc=%.4f test_acc=%.4f (%s)", summary["val_acc"], summary["test_acc"], run_dir)
        return float(summary["val_acc"])
    finally:
        if wandb_run is not None:
            wandb_run.finish()
