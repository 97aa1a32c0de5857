"""Synthetic extractive-QA rows, as the paper makes them: a real passage and an answer span in, a question out.

A seed row takes a passage from the task's train split (its text only: the train questions are never shown) and
an answer span of it, and the LLM writes the question (Table 1 of the paper). Answer spans come from
``loop.answer_spans``: ``candidates`` picks one of the passage's entity, number and content-word phrases;
``llm`` asks the LLM for a phrase and keeps it only when it is a span of the passage; ``train`` takes one of the
train split's real answers for that passage (the paper and ZeroGen condition on real passage + answer pairs;
those answers are annotations, so this mode uses more human labels than the others). Error extrapolation keeps a
missed validation question's passage and answer and asks for another question with the same answer.

The row's passage and answer come from the prompt, not from the LLM, so every synthetic answer is a span of its
passage by construction. The LLM's part, the question, goes through the filter chain like any other row.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

from s3 import progress
from s3.filters import EXTRAPOLATED, FilterChain
from s3.llm import LLM, ChatRequest, Sampling
from s3.loop_config import SyntheticLoopConfig
from s3.parsing import normalize
from s3.qa import QATask
from s3.synthesis import Batch, Job, Synthesizer, derive_seed

STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but as is was were are be been being it its this that these "
    "those which who whom whose what when where why how he she they we you i his her their our your them him not "
    "no there than then also such into over after before during between about under more most other some any out "
    "up down off now through would could should will can may might must do does did done has have had very only "
    "just so all both each many much well even still yet however because while since until if one own same around "
    "among within without across against along toward towards upon onto via per like near".split()
)
META_QUESTION = re.compile(r"\b(this question|your answer|a question|the question|answer to)\b", re.IGNORECASE)
QUESTION_WORDS = (
    "Who|What|When|Where|Why|How|Which|Whose|Whom|Is|Are|Was|Were|Do|Does|Did|Can|Could|Would|Should|Will|Has|"
    "Have|Had|In|On|At|To|For|From|By|With|After|Before|During|Under|According"
)
# a lead-in ("Here is a question: Who ...?") ends with ": " or ". " right before a question word
_LEAD_IN = re.compile(rf"^.*(?::\s+|\.\s+)(?=(?:{QUESTION_WORDS})\b)")
_WORD = re.compile(r"[\w][\w'’.-]*[\w]|[\w]")
_PREFIX = re.compile(r"^\s*(?:question|q)\s*\d*\s*[:.)-]\s*", re.IGNORECASE)


def candidate_spans(context: str, max_words: int = 4) -> list[tuple[int, int]]:
    """Phrases a reading-comprehension question could ask for: runs of up to ``max_words`` words inside one
    clause that neither start nor end with a function word, and hold a name, a number or a word of five or more
    letters (names, numbers, noun phrases), as character spans."""
    spans = []
    for clause in re.finditer(r"[^,;:()\"“”.!?]+", context):
        words = [(m.start() + clause.start(), m.end() + clause.start()) for m in _WORD.finditer(clause.group())]
        for i in range(len(words)):
            for j in range(i, min(i + max_words, len(words))):
                first = context[words[i][0] : words[i][1]].lower()
                last = context[words[j][0] : words[j][1]].lower()
                if first in STOPWORDS or last in STOPWORDS:
                    continue
                phrase = context[words[i][0] : words[j][1]]
                if not re.search(r"[A-Z0-9]|[a-z]{5}", phrase):
                    continue
                spans.append((words[i][0], words[j][1]))
    return spans


def locate(phrase: str, context: str) -> int:
    """Where ``phrase`` occurs in ``context`` (exact, else ignoring case), or -1."""
    found = context.find(phrase)
    return found if found >= 0 else context.lower().find(phrase.lower())


def parse_question(text: str, answer: str) -> str:
    """The first line's question: prefixes, quotes and lead-ins ("Here is a question: ...") stripped, cut after
    its "?"; or the drop reason (``not_a_question``, ``answer_in_question``, ``boilerplate``, ``unparsable``)."""
    for line in text.strip().splitlines():
        line = _PREFIX.sub("", line).strip().strip("\"'“”*").strip()
        if not line:
            continue
        if "?" not in line:
            return "not_a_question"
        question = _LEAD_IN.sub("", line[: line.index("?") + 1]).strip().strip("\"'“”*").strip()
        if META_QUESTION.search(question) or len(question) < 2:
            return "boilerplate"  # a question about the task, not about the passage
        if normalize(answer) and f" {normalize(answer)} " in f" {normalize(question)} ":
            return "answer_in_question"
        return question
    return "unparsable"


class QASynthesizer(Synthesizer):
    """Seed sets over real passages and error extrapolation for extractive QA (the loop's synthesizer for QA tasks)."""

    def __init__(
        self,
        llm: LLM,
        task: QATask,
        filters: FilterChain,
        cfg: SyntheticLoopConfig,
        seed: int,
        train_rows: Sequence[dict[str, Any]],
    ):
        """``train_rows``: the task's train split; its passages (and, for ``answer_spans=train``, its answer
        spans) are what seed rows are written for. Its questions are never used."""
        super().__init__(llm, task, filters, cfg, seed)  # type: ignore[arg-type]
        self.passages = sorted({r["context"] for r in train_rows})  # sorted: the same order on every run
        self.train_answers: dict[str, list[tuple[int, str]]] = {}
        for r in train_rows:
            self.train_answers.setdefault(r["context"], []).append((int(r["answer_start"]), r["answer_text"]))
        if not self.passages:
            raise ValueError("QA synthesis needs passages (the train split's contexts)")

    def rationales(self) -> dict[str, Any]:
        return {}  # the paper's QA seed prompt has no rationale step

    def shown(self, context: str, start: int, end: int) -> str:
        """The passage as the prompt shows it: whole, or a window of ``max_example_chars`` around the answer."""
        limit = self.cfg.max_example_chars
        if limit is None or len(context) <= limit:
            return context
        self.book.truncated += 1
        left = max(0, min(start - (limit - (end - start)) // 2, len(context) - limit))
        return ("… " if left else "") + context[left : left + limit] + (" …" if left + limit < len(context) else "")

    # ---- seed sets ------------------------------------------------------------------------------------------
    def answer_targets(self, count: int, round_: int, attempt: int) -> tuple[list[tuple[str, int, str]], int]:
        """``count`` (passage, answer start, answer text) targets, passages spread evenly; and how many the LLM
        could not give as a span (``llm`` mode)."""
        rng = random.Random(derive_seed(self.seed, round_, "passages", attempt))
        order = list(self.passages)
        rng.shuffle(order)
        chosen = [order[i % len(order)] for i in range(count)]
        if self.cfg.answer_spans == "train":
            picked = [rng.choice(self.train_answers[context]) for context in chosen]
            return [(context, start, answer) for context, (start, answer) in zip(chosen, picked)], 0
        if self.cfg.answer_spans == "candidates":
            targets = []
            for context in chosen:
                spans = candidate_spans(context) or [(0, len(context.split(" ")[0]))]
                start, end = rng.choice(spans)
                targets.append((context, start, context[start:end]))
            return targets, 0
        requests = [
            ChatRequest.from_messages(
                self.book.messages("answer_span", context=self.shown(c, 0, 0)),
                Sampling(
                    n=1,
                    temperature=self.sampling.temperature,
                    top_p=self.sampling.top_p,
                    max_tokens=16,
                    seed=derive_seed(self.seed, round_, "answer_span", attempt, i),
                ),
            )
            for i, c in enumerate(chosen)
        ]
        targets, missed = [], 0
        for context, completions in zip(chosen, self.llm.generate(requests, call_site="answer_span")):
            if not completions[0].is_answer:  # skipped for its length, or cut off by the engine
                missed += 1
                continue
            lines = [ln.strip().strip("\"'“”*.").strip() for ln in completions[0].text.strip().splitlines()]
            phrase = next((ln for ln in lines if ln), "")
            start = locate(phrase, context) if 0 < len(phrase.split()) <= 8 else -1
            if start < 0:
                missed += 1
                continue
            targets.append((context, start, context[start : start + len(phrase)]))
        return targets, missed

    def seed_set(
        self,
        size: int,
        kind: str,
        round_: int,
        rationales: dict[str, Any] | None = None,
        demos: Sequence[dict[str, Any]] = (),
    ) -> Batch:
        """``size`` rows over real passages; re-asks (new seeds, new passages) for what cleaning dropped."""
        template = {"rationale": "seed", "zerogen": "zerogen", "goldgen": "goldgen"}.get(kind)
        if template is None:
            raise ValueError(f"unknown seed prompt kind {kind!r}; expected rationale, zerogen or goldgen")
        out = Batch()
        for attempt in range(self.cfg.max_attempts):
            missing = size - len(out.rows)
            if missing <= 0:
                break
            keep = len(out.rows) / out.generated if out.generated else 1.0
            targets, missed = self.answer_targets(
                math.ceil(missing * self.cfg.overgenerate / max(keep, 0.25)), round_, attempt
            )
            rng = random.Random(derive_seed(self.seed, round_, kind, "demos", attempt))
            jobs = []
            for context, start, answer in targets:
                fields: dict[str, Any] = {"context": self.shown(context, start, start + len(answer)), "answer": answer}
                if template == "goldgen":
                    shots = rng.sample(list(demos), min(4, len(demos)))
                    fields["demonstrations"] = "\n".join(
                        self.book.render("demonstration", question=d["question"], answer=d["answer_text"])
                        for d in shots
                    )
                given = {"context": context, "answer_text": answer, "answer_start": start}
                jobs.append(Job(self.book.messages(template, **fields), given, template))
            batch = self.run_jobs(jobs, samples=1, round_=round_, call_site="seed", attempt=attempt)
            batch.drops["answer_not_span"] += missed
            batch.generated += missed
            if len(batch.rows) > missing:
                batch.drops["over_quota"] += len(batch.rows) - missing
                progress.kept(missing - len(batch.rows))
                batch.rows = batch.rows[:missing]
            out.extend(batch)
        return out

    # ---- error extrapolation ------------------------------------------------------------------------------
    def extrapolate(self, errors: Sequence[dict[str, Any]], round_: int, limit: float = math.inf) -> Batch:
        """``per_error`` new questions for each missed validation question: same passage, same answer."""
        per_error = self.cfg.per_error
        return self._extrapolate(
            errors,
            per_error,
            round_,
            min(limit, len(errors) * per_error),
            self.cfg.overgenerate,
            self.cfg.max_attempts,
        )

    def error_job(self, error: dict[str, Any]) -> Job:
        start, answer = int(error["answer_start"]), error["answer_text"]
        messages = self.book.messages(
            "extrapolate",
            context=self.shown(error["context"], start, start + len(answer)),
            answer=answer,
            question=error["question"],
        )
        given = {"context": error["context"], "answer_text": answer, "answer_start": start}
        return Job(messages, given, f"{EXTRAPOLATED}{error['id']}", error["question"])

    def parse(self, job: Job, text: str) -> dict[str, Any] | str:
        question = parse_question(text, job.given["answer_text"])
        if question in ("unparsable", "not_a_question", "answer_in_question", "boilerplate"):
            return question
        return {"question": question}
