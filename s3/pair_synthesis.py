"""Sentence-pair synthesis on real contexts, as the paper and ZeroGen do it (``loop.pair_context=train``).

A seed row takes a premise (RTE) or passage (QNLI) from the task's own train split (its text only: the train
labels and second fields are never used), and the LLM writes only the second field for the wanted label.
Error extrapolation keeps the misclassified row's own premise and asks for a new second field like its one.
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
        first = task.fields[0]
        self.contexts = sorted({str(r[first]) for r in train_rows})  # sorted: the same order on every run
        if not self.contexts:
            raise ValueError(f"task {task.name!r}: loop.pair_context=train needs a train split to take contexts from")

    def seed_job(self, template: str, fields: dict[str, Any], label: int, kind: str, rng: random.Random) -> Job:
        context = rng.choice(self.contexts)
        messages = self.book.messages(f"{template}_given", context=self.book.cut(context), **fields)
        return Job(messages, {"label": label, self.task.fields[0]: context}, kind)

    def error_job(self, error: dict[str, Any]) -> Job:
        first, second = self.task.fields
        messages = self.book.messages(
            "extrapolate_given",
            context=self.book.cut(str(error[first])),
            example=self.book.cut(str(error[second])),
            **self.book.label_fields(error["label"]),
        )
        given = {"label": error["label"], first: error[first]}
        return Job(messages, given, f"extrapolated-from-{error['id']}", self.task.text_of(error))

    def parse(self, job: Job, text: str) -> dict[str, Any] | str:
        second = self.task.fields[-1]
        parsed = parse_examples(text, [second], {second: self.task.field_labels[second]}, many=False)
        return {second: parsed[0][second]} if parsed else "unparsable"
