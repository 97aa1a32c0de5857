"""What a user takes away from a run: the trained classifier and the synthetic data set.

``<run_dir>/model/`` holds the latest round's best-epoch classifier (``s3.classifier.Classifier.load`` or
``python -m s3.predict``) and ``<run_dir>/test_predictions.jsonl`` its predictions on the run's test rows,
in ``s3.predict``'s output format. ``<run_dir>/dataset/`` holds the final synthetic set as a Hugging Face
``datasets`` folder (parquet + dataset card), ready for ``load_dataset`` or ``push_to_hub``. Each round's new rows
(with, for extrapolated rows, the validation error each was written from) and a sample of the answers the checks
dropped (``rounds/round_<k>/dropped.jsonl``) are W&B Tables, to read rather than count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from s3.atomic import atomic_dir, atomic_write_jsonl
from s3.classifier import Classifier
from s3.data import Task
from s3.qa import QA_FIELDS, QATask
from s3.qa_model import QAModel

MODEL_DIR = "model"
DATASET_DIR = "dataset"
TEST_PREDICTIONS = "test_predictions.jsonl"
PROVENANCE_COLUMNS = {
    "id": "row id in this run (syn-<n>, in the order rows were added)",
    "round": "0 = the seed set, k = written in error-extrapolation round k",
    "source": "round 0: the seed prompt kind (rationale, zerogen, goldgen); later: extrapolated-from-<id of the "
    "real validation row it was written like>",
    "prompt_hash": "hash of the prompt that produced it (the run's rounds/round_<k>/prompts.jsonl)",
}


def inspection_tables(
    task: Task | QATask,
    new_rows: Sequence[Mapping[str, Any]],
    dropped: Sequence[Mapping[str, Any]],
    sources: Sequence[Mapping[str, Any]] = (),
) -> dict[str, list[dict[str, Any]]]:
    """A round's rows to look at: ``kept`` (its new rows; an extrapolated row beside the validation error it was
    written like: the error's text, gold and predicted answer) and ``dropped`` (the sampled drops and why)."""
    qa = isinstance(task, QATask)
    errors = {e["id"]: e for e in sources}

    def answer(row: Mapping[str, Any]) -> Any:
        return row.get("answer_text") if qa else (task.labels[row["label"]] if "label" in row else None)

    kept = []
    for row in new_rows:
        error = errors.get(str(row.get("source", "")).removeprefix("extrapolated-from-"), {})
        kept.append(
            {
                **{k: row.get(k) for k in ("id", "round", "source")},
                **{f: row[f] for f in task.fields},
                "answer" if qa else "label": answer(row),
                "source_text": task.text_of(error) if error else None,
                "source_gold": (error.get("answer_text") if qa else error.get("label_text")) if error else None,
                "source_pred": (error.get("pred") if qa else error.get("pred_text")) if error else None,
            }
        )
    drops = [
        {
            **{k: row.get(k) for k in ("round", "source", "reason")},
            "answer" if qa else "label": answer(row),
            "text": task.text_of(row) if all(f in row for f in task.fields) else row.get("llm_text"),  # unparsable
        }
        for row in dropped
    ]
    return {"kept": kept, "dropped": drops}


def prediction_rows(clf: Classifier, rows: Sequence[Mapping[str, Any]], probs: np.ndarray) -> list[dict[str, Any]]:
    """One output row per input row: its id and fields, the predicted label name and every label's probability."""
    out = []
    for row, p in zip(rows, probs):
        keep = {k: row[k] for k in ("id", *clf.fields) if k in row}
        out.append(
            {**keep, "label": clf.labels[int(p.argmax())], "probs": {name: float(x) for name, x in zip(clf.labels, p)}}
        )
    return out


def save_classifier(
    clf: Classifier, test_rows: Sequence[Mapping[str, Any]], test_probs: np.ndarray, run_dir: Path
) -> None:
    clf.save(run_dir / MODEL_DIR)
    atomic_write_jsonl(run_dir / TEST_PREDICTIONS, prediction_rows(clf, test_rows, test_probs))


def save_qa_model(
    model: QAModel, test_rows: Sequence[Mapping[str, Any]], answers: Sequence[str], run_dir: Path
) -> None:
    model.save(run_dir / MODEL_DIR)
    atomic_write_jsonl(
        run_dir / TEST_PREDICTIONS,
        [{"id": r["id"], "question": r["question"], "answer": a} for r, a in zip(test_rows, answers)],
    )


def card_facts(cfg: DictConfig, final_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the dataset card states about how the data was made."""
    llm = OmegaConf.to_container(cfg.llm, resolve=True) if "llm" in cfg else {}
    assert isinstance(llm, dict)
    return {
        "task": cfg.task.name,
        "method": cfg.loop.name,
        "seed": cfg.seed,
        "llm": llm.get("model") or llm.get("_target_", "?"),
        "rounds": cfg.loop.rounds,
        "small_model": cfg.small_model.name,
        "scores": {
            k: final_metrics[k]
            for k in ("val_acc", "select_acc", "test_acc", "val_f1", "select_f1", "test_em", "test_f1")
            if k in final_metrics and ("val_em" in final_metrics or not k.endswith("f1"))
        },
        "gap": {k: v for k, v in final_metrics.items() if k.startswith(("gap/", "div/"))},
    }


QA_COLUMNS = {
    "context": "a real passage of the task's train split",
    "question": "the question the LLM wrote about it",
    "answer_text": "the answer, a span of the passage",
    "answer_start": "the answer's character offset in the passage",
}


def dataset_card(task: Task | QATask, rows: Sequence[Mapping[str, Any]], facts: Mapping[str, Any]) -> str:
    per_round: dict[int, int] = {}
    for r in rows:
        per_round[int(r.get("round", 0))] = per_round.get(int(r.get("round", 0)), 0) + 1
    qa = isinstance(task, QATask)
    if qa:
        kind, what, columns = (
            "question-answering",
            "question/answer rows over real passages",
            [f"- `{k}`: {v}" for k, v in QA_COLUMNS.items()],
        )
        about, label_line = f"{task.name} (extractive QA)", []
    else:
        assert isinstance(task, Task)
        per_label = {name: sum(r["label"] == i for r in rows) for i, name in enumerate(task.labels)}
        kind, what = "text-classification", "labelled rows"
        columns = [
            *[f"- `{f}`: the example's {task.field_labels.get(f, f)}" for f in task.fields],
            "- `label`: the label the row was written for (a `ClassLabel`)",
        ]
        about = f"{task.name} (fields: {', '.join(task.fields)}; labels: {', '.join(task.labels)})"
        label_line = [f"| rows per label | {', '.join(f'{k}: {n}' for k, n in per_label.items())} |"]
    lines = [
        "---",  # no `configs:` block: datasets then caches by the resolved files, not by a pattern shared by all runs
        "task_categories:",
        f"- {kind}",
        "tags:",
        "- synthetic",
        "- s3",
        f"- {task.name}",
        "---",
        "",
        f"# Synthetic {task.name} data ({facts['method']}, made with s3)",
        "",
        f"{len(rows)} {what} for *{task.description}*, written by an LLM with the s3 harness "
        "(Synthesis Step by Step: a rationale-guided seed set, then rounds of error extrapolation on a small "
        "real validation set).",
        "",
        "| | |",
        "|---|---|",
        f"| task | {about} |",
        f"| method | {facts['method']} |",
        f"| LLM | {facts['llm']} |",
        f"| rounds | {facts['rounds']} configured; rows per round: "
        f"{', '.join(f'{k}: {n}' for k, n in sorted(per_round.items()))} |",
        *label_line,
        f"| seed | {facts['seed']} |",
        f"| small model trained on it | {facts['small_model']} "
        f"({', '.join(f'{k} {v:.4f}' for k, v in facts['scores'].items())}) |",
        "",
        "## Columns",
        "",
        *columns,
        *[f"- `{k}`: {v}" for k, v in PROVENANCE_COLUMNS.items()],
        "",
        "## Distance to the real validation set (last round)",
        "",
    ]
    if facts["gap"]:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in facts["gap"].items()]]
    else:
        lines.append("Not measured in this run (`gap.enabled=false`).")
    return "\n".join(lines) + "\n"


def export_dataset(
    rows: Sequence[Mapping[str, Any]], task: Task | QATask, run_dir: Path, facts: Mapping[str, Any]
) -> Path:
    """Write ``<run_dir>/dataset/`` (parquet + README.md card) next to itself, then rename it into place."""
    import datasets

    provenance = [c for c in PROVENANCE_COLUMNS if c != "id"]
    if isinstance(task, QATask):
        columns = ["id", *QA_FIELDS, "answer_text", "answer_start", *provenance]
        typed = {"answer_start": datasets.Value("int32")}
    else:
        columns = ["id", *task.fields, "label", *provenance]
        typed = {"label": datasets.ClassLabel(names=list(task.labels))}
    records = [{c: r.get(c) for c in columns} for r in rows]
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in columns if c not in typed and c != "round"},
            **typed,
            "round": datasets.Value("int32"),
        }
    )
    ds = datasets.Dataset.from_list(records, features=features)
    final = run_dir / DATASET_DIR
    with atomic_dir(final) as partial:
        (partial / "data").mkdir()
        ds.to_parquet(str(partial / "data" / "train-00000-of-00001.parquet"))
        (partial / "README.md").write_text(dataset_card(task, rows, facts), encoding="utf-8")
    return final
