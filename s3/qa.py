"""Extractive question answering as a task kind: a passage, a question about it, and the answer as a span of it.

A QA row is a plain dict ``{"id", "context", "question", "answer_text", "answer_start"}`` (plus ``answers``, every
accepted answer text, when a data file gives several, as SQuAD does). Files are read by the same loaders as
classification data (s3.data); a record may hold the answer flat (``answer_text`` + ``answer_start`` columns,
the start optional) or SQuAD-style (``answers: {"text": [...], "answer_start": [...]}``). Every answer must be
a span of its passage; a file where one is not fails with one line naming the file and line.

Scores are SQuAD exact match and F1 (torchmetrics: lower case, no punctuation or articles), as fractions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3.data import DataError, HubSource

QA_FIELDS = ("context", "question")


@dataclass
class QATask:
    """An extractive QA task: where its columns are and how it is described to the LLM."""

    name: str
    description: str
    example_kind: str = "question about a passage"
    columns: dict[str, str] = field(default_factory=dict)  # our field (context, question, answer_text,
    # answer_start, answers) -> column in local files
    prompts: dict[str, str] = field(default_factory=dict)  # templates, see conf/prompts/qa.yaml
    max_tokens: int = 48  # LLM tokens that fit one question
    hub: HubSource | None = None
    kind = "extractive_qa"
    fields = list(QA_FIELDS)  # what a synthetic row's LLM part fills in, beside its answer
    is_pair = False

    def __post_init__(self) -> None:
        if isinstance(self.hub, Mapping):
            self.hub = HubSource(**self.hub)
        self.columns = dict(self.columns)

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    def text_of(self, row: Mapping[str, Any]) -> str:
        """The question: what synthesis writes, so what dedup, leak checks and gap metrics compare."""
        return str(row["question"])

    def parse_record(self, record: Mapping[str, Any], where: str, default_id: str) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for f in QA_FIELDS:
            value = record.get(self.column(f))
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"{where}: column {self.column(f)!r} must be a non-empty string, got {value!r} "
                    f"(have {sorted(map(str, record))})"
                )
            row[f] = value if f == "context" else value.strip()  # answer offsets index the context as is
        texts, starts = _answers(record, self, where)
        for text, start in zip(texts, starts):
            check_span(row["context"], text, start, where)
        row["answer_text"], row["answer_start"] = texts[0], starts[0]
        if len(set(texts)) > 1:
            row["answers"] = texts
        row["id"] = str(record.get("id", default_id))
        return row

    def with_columns(self, columns: Mapping[str, str]) -> QATask:
        return QATask(**{**self.__dict__, "columns": dict(columns), "hub": None})


def _answers(record: Mapping[str, Any], task: QATask, where: str) -> tuple[list[str], list[int]]:
    """Answer texts and character starts, from flat columns or a SQuAD ``answers`` dict; a missing start is the
    answer's first occurrence in the passage."""
    context = str(record.get(task.column("context"), ""))
    flat = task.column("answer_text")
    if flat in record:
        texts, starts = [record[flat]], [record.get(task.column("answer_start"))]
    elif isinstance(record.get(task.column("answers")), Mapping):
        nested = record[task.column("answers")]
        texts = list(nested.get("text") or [])
        starts = list(nested.get("answer_start") or [None] * len(texts))
    else:
        raise DataError(
            f"{where}: no answer: expected column {flat!r} (and optionally {task.column('answer_start')!r}) or "
            f"a SQuAD-style {task.column('answers')!r} object (have {sorted(map(str, record))})"
        )
    if not texts or len(starts) != len(texts):
        raise DataError(f"{where}: expected at least one answer with one start each, got {texts!r} / {starts!r}")
    out_starts = []
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: an answer must be a non-empty string, got {text!r}")
        if start is None or start == "":
            found = context.find(text)
            if found < 0:
                raise DataError(f"{where}: answer {text!r} is not a span of its context")
            start = found
        try:
            out_starts.append(int(start))
        except (TypeError, ValueError):
            raise DataError(f"{where}: answer_start must be a character offset, got {start!r}") from None
    return list(texts), out_starts


def check_span(context: str, answer: str, start: int, where: str) -> None:
    """The answer is exactly the passage's characters at ``start``; else one line saying where it does occur."""
    if 0 <= start and context[start : start + len(answer)] == answer:
        return
    found = context.find(answer)
    hint = f"it occurs at {found}" if found >= 0 else "it does not occur in the context"
    raise DataError(f"{where}: answer {answer!r} is not the context's span at answer_start={start} ({hint})")


def gold_answers(row: Mapping[str, Any]) -> list[str]:
    return list(row.get("answers") or [row["answer_text"]])


def qa_scores(predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """SQuAD exact match and F1 (torchmetrics' normalisation), as fractions in [0, 1]."""
    from torchmetrics.functional.text import squad

    if not rows:
        return {"em": 0.0, "f1": 0.0}
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [
        {"answers": {"text": gold_answers(r), "answer_start": [0] * len(gold_answers(r))}, "id": str(i)}
        for i, r in enumerate(rows)
    ]
    out = squad(preds, target)
    return {"em": float(out["exact_match"]) / 100, "f1": float(out["f1"]) / 100}


def exact_match(prediction: str, row: Mapping[str, Any]) -> bool:
    return qa_scores([prediction], [row])["em"] == 1.0
