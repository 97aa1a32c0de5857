"""Sentence-pair synthesis on real contexts, as the paper and ZeroGen do it (``loop.pair_context=train``).

A seed row takes a premise (RTE) or passage (QNLI: ``task.context_field``) from the task's own train split (its
text only: the train labels and other fields are never used), and the LLM writes only the other field for the
wanted label. Error extrapolation keeps the misclassified row's own context and asks for a new other field like
its one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from s3.data import Task
from s3.filters import FilterChain
from s3.llm import LLM
from s3.loop_config import SyntheticLoopConfig
from s3.parsing import parse_examples
from s3.synthesis import Job, Synthesizer

GIVEN_TEMPLATES = ("seed_given", "zerogen_given", "goldgen_given", "extrapolate_given")


class PairContextSynthesizer(Synthesizer):
    """The loop's synthesizer for pair tasks when ``loop.pair_context=train``."""

    def __init__(
        self,
        llm: LLM,
        task: Task,
        filters: FilterChain,
        cfg: SyntheticLoopConfig,
        seed: int,
        train_rows: Sequence[dict[str, Any]],
    ):
        super().__init__(llm, task, filters, cfg, seed)
        missing = [t for t in GIVEN_TEMPLATES if t not in task.prompts]
        if missing:
            raise ValueError(f"task {task.name!r}: loop.pair_context=train needs the prompt templates {missing}")
        self.given, self.written = task.given_field, task.written_field  # a real text fills one; the LLM the other
        self.names = {"given_field": task.field_labels[self.given], "written_field": task.field_labels[self.written]}
        self.contexts = sorted({str(r[self.given]) for r in train_rows})  # sorted: the same order on every run
        # The written field is one line: where the backend continues a started answer, the answer starts with its
        # label ("Question:") and ends at the line's end, so chatter around or after it is never written.
        start = task.prompts.get("answer_start_given") or ""
        if start and llm.continues_answers:
            self.answer_start, self.answer_stop = start.format(**self.names), ("\n",)
        if not self.contexts:
            raise ValueError(f"task {task.name!r}: loop.pair_context=train needs a train split to take contexts from")

    def seed_job(self, template: str, fields: dict[str, Any], label: int, kind: str, rng: random.Random) -> Job:
        context = rng.choice(self.contexts)
        messages = self.book.messages(f"{template}_given", context=self.book.cut(context), **self.names, **fields)
        return Job(messages, {"label": label, self.given: context}, kind)

    def error_job(self, error: dict[str, Any]) -> Job:
        messages = self.book.messages(
            "extrapolate_given",
            context=self.book.cut(str(error[self.given])),
            example=self.book.cut(str(error[self.written])),
            **self.names,
            **self.book.label_fields(error["label"]),
        )
        given = {"label": error["label"], self.given: error[self.given]}
        return Job(messages, given, f"extrapolated-from-{error['id']}", str(error[self.written]))  # like its field

    def parse(self, job: Job, text: str) -> dict[str, Any] | str:
        field = self.written
        parsed = parse_examples(text, [field], {field: self.task.field_labels[field]}, many=False)
        return {field: parsed[0][field]} if parsed else "unparsable"
