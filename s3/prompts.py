"""Rendering the prompt templates kept in config (``task.prompts``) into chat messages.

Templates are ``str.format`` strings so users can edit them in YAML. Fields available to every template:
``description, example_kind, example_kind_title, label_options, num_items, field1, field2`` and, where a
label is involved, ``label, label_description``; plus per-template fields: ``aspect, variation`` (seed),
``demonstrations`` (goldgen), ``example`` (extrapolate, relabel, demonstration); pair tasks on real contexts
(``loop.pair_context=train``) use ``seed_given, zerogen_given, goldgen_given, extrapolate_given`` with ``context``
(the real first field) and write only the second field. Extractive QA tasks have their
own set (``QA_TEMPLATES``, conf/prompts/qa.yaml) with ``context, answer, question`` instead of labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from s3.config import UserError
from s3.data import Task

TEMPLATES = (
    "system",
    "rationale_label",
    "rationale_variation",
    "seed",
    "zerogen",
    "goldgen",
    "demonstration",
    "extrapolate",
    "relabel",
)

QA_TEMPLATES = ("system", "seed", "zerogen", "goldgen", "demonstration", "extrapolate", "answer_span")


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """Short content hash recorded with every synthetic row (provenance)."""
    blob = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PromptBook:
    """The task's templates plus the task-level fields they share."""

    def __init__(self, task: Task, max_example_chars: int | None = None):
        self.max_example_chars = max_example_chars  # real rows shown in prompts are cut to this many characters
        self.truncated = 0  # how many shown fields were cut
        qa = getattr(task, "kind", "") == "extractive_qa"
        missing = [name for name in (QA_TEMPLATES if qa else TEMPLATES) if name not in task.prompts]
        if missing:
            raise UserError(f"task {task.name!r}: prompt templates missing: {missing} (see conf/prompts/)")
        self.task = task
        self.common = {
            "description": task.description,
            "example_kind": task.example_kind,
            "example_kind_title": task.example_kind[:1].upper() + task.example_kind[1:],
        }
        if not qa:
            names = [task.field_labels[f] for f in task.fields]
            self.common.update(label_options=" or ".join(task.labels), num_items=10, field1=names[0], field2=names[-1])

    def label_fields(self, label: int) -> dict[str, str]:
        """``label``, ``label_description`` and ``label_word`` (a prompt set's word for the label, e.g. the paper's
        "correct"/"wrong" for RTE: its ``label_word_<label>`` entry; default: the label name)."""
        name = self.task.labels[label]
        return {
            "label": name,
            "label_description": self.task.label_descriptions.get(name, f"its label is {name}"),
            "label_word": self.task.prompts.get(f"label_word_{name}", name),
        }

    def example(self, row: Mapping[str, Any]) -> str:
        """A row as shown inside a prompt: the text itself, or labelled lines for pairs; each field cut at a word
        boundary to ``max_example_chars`` (a long review would fill the LLM's context and pad its whole batch)."""
        if not self.task.is_pair:
            return self.cut(str(row["text"]))
        return "\n".join(f"{self.task.field_labels[f]}: {self.cut(str(row[f]))}" for f in self.task.fields)

    def cut(self, text: str) -> str:
        """A real text as a prompt shows it: cut at a word boundary to ``max_example_chars`` (counted)."""
        limit = self.max_example_chars
        if limit is None or len(text) <= limit:
            return text
        self.truncated += 1
        return text[:limit].rsplit(" ", 1)[0] + " …"

    def render(self, template: str, **fields: Any) -> str:
        try:
            return self.task.prompts[template].format(**{**self.common, **fields})
        except KeyError as err:
            raise UserError(
                f"prompt template {template!r} of task {self.task.name!r} uses unknown field {err}; "
                f"available: {sorted({**self.common, **fields})}"
            ) from None

    def messages(self, template: str, **fields: Any) -> list[dict[str, str]]:
        system = self.task.prompts["system"]
        user = self.render(template, **fields)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
