"""Turning prompts into clean, labelled synthetic rows: rationales, seed sets, error extrapolation.

Every LLM answer is parsed (s3.parsing) and goes through the filter chain (s3.filters), and every row that
does not survive is counted by reason. Seeds for every request derive from the run seed, the round and the row's
position, so a re-run (or a resumed run) asks the LLM exactly the same questions and hits the cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3 import progress
from s3.data import Task
from s3.filters import EXTRAPOLATED, REFERENCE, FilterChain
from s3.llm import LLM, ChatRequest, Completion, Sampling
from s3.loop_config import SyntheticLoopConfig
from s3.parsing import normalize, parse_examples, parse_rationale_items
from s3.prompts import PromptBook, prompt_hash

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


def label_quotas(
    errors_per_label: dict[int, int], per_error: int, target: float, max_per_error_factor: int = 2
) -> dict[int, int]:
    """Split ``target`` rows evenly over the labels with errors; a label with few errors gets at most
    ``max_per_error_factor * per_error`` rows per error and what it cannot take goes to the others."""
    target = int(min(target, sum(errors_per_label.values()) * per_error * max_per_error_factor))
    caps = {k: n * per_error * max_per_error_factor for k, n in errors_per_label.items() if n > 0}
    quotas = dict.fromkeys(caps, 0)
    while (left := target - sum(quotas.values())) > 0:
        open_ = sorted(k for k in caps if quotas[k] < caps[k])
        share, extra = divmod(left, len(open_))
        for i, k in enumerate(open_):
            quotas[k] = min(caps[k], quotas[k] + share + (i < extra))
    return quotas


DROPPED_SAMPLE = 20  # dropped answers kept per reason and round, to look at (rounds/round_<k>/dropped.jsonl, W&B)


@dataclass
class Batch:
    """What one synthesis step produced: kept rows, drop counts by reason (and the first ``DROPPED_SAMPLE``
    dropped answers of each reason, with it), the prompts it sent."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    generated: int = 0

    def extend(self, other: Batch) -> None:
        self.rows += other.rows
        self.drops.update(other.drops)
        self.add_dropped(other.dropped)
        self.prompts.update(other.prompts)
        self.generated += other.generated

    def add_dropped(self, rows: Iterable[dict[str, Any]]) -> None:
        shown = Counter(r["reason"] for r in self.dropped)
        for row in rows:
            if shown[row["reason"]] < DROPPED_SAMPLE:
                shown[row["reason"]] += 1
                self.dropped.append(row)


@dataclass
class Job:
    """One prompt, the fields its rows get from the prompt rather than from the answer (the label; for QA the
    passage and answer span), and the provenance its rows will carry."""

    messages: list[dict[str, str]]
    given: dict[str, Any]
    source: str
    reference: str | None = None  # error extrapolation: the real example its rows should be like


class Synthesizer:
    """Prompts -> kept rows, with the loop's settings (``SyntheticLoopConfig``: sampling, checks, re-asks)."""

    def __init__(self, llm: LLM, task: Task, filters: FilterChain, cfg: SyntheticLoopConfig, seed: int):
        self.llm, self.task, self.filters, self.cfg = llm, task, filters, cfg
        self.sampling = cfg.sampling
        self.book = PromptBook(task, cfg.max_example_chars)
        self.seed = seed
        # the prompt set's start of every example answer (an opening quote): the LLM continues it instead of
        # talking about the example first; only where the backend continues a started answer
        self.answer_start = task.prompts.get("answer_start", "") if llm.continues_answers else ""
        self.answer_stop = (
            (task.prompts["answer_stop"],) if self.answer_start and task.prompts.get("answer_stop") else ()
        )

    # ---- rationales ---------------------------------------------------------------------------------
    def rationales(self) -> dict[str, Any]:
        """Per label: what characterises it; once: what varies. Falls back to the label description."""
        sampling = Sampling(
            n=self.cfg.rationale_samples,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_tokens=self.cfg.rationale_max_tokens,
            seed=derive_seed(self.seed, "rationale"),
        )
        requests = [
            ChatRequest.from_messages(self.book.messages("rationale_label", **self.book.label_fields(k)), sampling)
            for k in range(len(self.task.labels))
        ]
        requests.append(ChatRequest.from_messages(self.book.messages("rationale_variation"), sampling))
        answers = self.llm.generate(requests, call_site="rationale")
        lists = [_unique(item for c in completions for item in self._whole_items(c)) for completions in answers]
        per_label = {}
        for k, name in enumerate(self.task.labels):
            per_label[name] = lists[k] or [self.book.label_fields(k)["label_description"]]
        variations = lists[-1] or ["short", "long", "detailed", "casual"]
        return {"labels": per_label, "variations": variations}

    def _whole_items(self, answer: Completion) -> list[str]:
        """A rationale answer's list items, less one cut off: an answer the engine cut off (or skipped) is not used,
        and one that ran out of tokens loses its last item."""
        if not answer.is_answer:
            return []
        items = parse_rationale_items(answer.text, exclude=self.task.labels)
        return items[:-1] if answer.finish_reason == "length" else items

    # ---- seed sets -----------------------------------------------------------------------------------
    def seed_jobs(
        self,
        kind: str,
        label: int,
        count: int,
        round_: int,
        attempt: int,
        rationales: dict[str, Any] | None,
        demos: Sequence[dict[str, Any]],
    ) -> list[Job]:
        """``count`` prompts for ``label``: rationale-guided (S3), plain (ZeroGen) or few-shot (GoldGen)."""
        rng = random.Random(derive_seed(self.seed, round_, kind, label, attempt))
        fields = self.book.label_fields(label)
        jobs = []
        for _ in range(count):
            if kind == "rationale":
                assert rationales is not None
                fields = {
                    **fields,
                    "aspect": rng.choice(rationales["labels"][self.task.labels[label]]),
                    "variation": rng.choice(rationales["variations"]),
                }
            elif kind == "goldgen":
                shots = rng.sample(list(demos), min(4, len(demos)))
                fields = {
                    **fields,
                    "demonstrations": "\n".join(
                        self.book.render(
                            "demonstration", example=self.book.example(d), label=self.task.labels[d["label"]]
                        )
                        for d in shots
                    ),
                }
            elif kind != "zerogen":
                raise ValueError(f"unknown seed prompt kind {kind!r}; expected rationale, zerogen or goldgen")
            jobs.append(self.seed_job(kind if kind != "rationale" else "seed", fields, label, kind, rng))
        return jobs

    def seed_job(self, template: str, fields: dict[str, Any], label: int, kind: str, rng: random.Random) -> Job:
        """One seed prompt from its template and fields (a pair task on real contexts adds the context here)."""
        return Job(self.book.messages(template, **fields), {"label": label}, kind)

    def seed_set(
        self,
        size: int,
        kind: str,
        round_: int,
        rationales: dict[str, Any] | None = None,
        demos: Sequence[dict[str, Any]] = (),
    ) -> Batch:
        """A label-balanced set of ``size`` rows; re-asks (new seeds) for labels that fell short after cleaning."""
        overgenerate, max_attempts = self.cfg.overgenerate, self.cfg.max_attempts
        num = len(self.task.labels)
        quota = {k: size // num + (1 if k < size % num else 0) for k in range(num)}
        have: Counter = Counter()
        out = Batch()
        for attempt in range(max_attempts):
            missing = {k: quota[k] - have[k] for k in quota if have[k] < quota[k]}
            if not missing:
                break
            jobs = [
                job
                for k, need in missing.items()
                for job in self.seed_jobs(
                    kind, k, max(1, round(need * overgenerate)), round_, attempt, rationales, demos
                )
            ]
            batch = self.run_jobs(jobs, samples=1, round_=round_, call_site="seed", attempt=attempt)
            for row in batch.rows:  # keep at most the quota per label
                if have[row["label"]] < quota[row["label"]]:
                    have[row["label"]] += 1
                    out.rows.append(row)
                else:
                    batch.drops["over_quota"] += 1
                    progress.kept(-1)
            batch.rows = []
            out.extend(batch)
        if len(out.rows) < size:
            log.warning(
                "seed set: %d of %d rows after %d attempts (see drop counts)", len(out.rows), size, max_attempts
            )
        return out

    # ---- error extrapolation -------------------------------------------------------------------------
    def extrapolate(self, errors: Sequence[dict[str, Any]], round_: int, limit: float = math.inf) -> Batch:
        """For misclassified gold-validation rows: ``per_error`` new examples of each one's gold label, like it.

        The target is ``loop.per_error`` kept rows per error, at most ``limit`` (the room an equal-budget run has
        left). ``loop.balance_labels`` splits that target evenly over the labels that have errors (see :func:`label_quotas`)
        instead of following the errors: a small model's errors are often mostly of one label, and a round that
        adds them tilts the next model to the other label.
        """
        per_error, overgenerate, max_attempts = self.cfg.per_error, self.cfg.overgenerate, self.cfg.max_attempts
        if not self.cfg.balance_labels:
            return self._extrapolate(
                errors, per_error, round_, min(limit, len(errors) * per_error), overgenerate, max_attempts
            )
        by_label: dict[int, list[dict[str, Any]]] = {}
        for e in errors:
            by_label.setdefault(e["label"], []).append(e)
        quotas = label_quotas({k: len(v) for k, v in by_label.items()}, per_error, min(limit, len(errors) * per_error))
        out = Batch()
        for label, quota in sorted(quotas.items()):
            if quota == 0:
                continue
            group = by_label[label]
            out.extend(
                self._extrapolate(
                    group, math.ceil(quota / len(group)), round_, quota, overgenerate, max_attempts, tag=label
                )
            )
        return out

    def _extrapolate(
        self,
        errors: Sequence[dict[str, Any]],
        per_error: int,
        round_: int,
        target: float,
        overgenerate: float,
        max_attempts: int,
        tag: Any = None,
    ) -> Batch:
        """``target`` kept rows from ``errors``, ``per_error`` samples per prompt.

        Attempt 0 asks every error (the paper) or, when that would overshoot the target, a seeded sample. Rows that
        cleaning drops are made up by fresh requests (new seeds; least-asked errors first, sized by the keep rate
        so far), and the batch is cut to the target. A small LLM loses a third of its answers to cleaning, so
        without this an equal-budget S3 run would train on fewer rows than its baselines.
        """
        out = Batch()
        asked: Counter = Counter()
        group = () if tag is None else (tag,)  # per-label calls draw their own seeds
        for attempt in range(max_attempts):
            missing = target - len(out.rows)
            if missing <= 0:
                break
            if attempt == 0 and missing >= len(errors) * per_error:
                chosen = list(errors)
            else:  # a seeded sample, least-asked errors first; sized by the keep rate seen so far
                keep = len(out.rows) / out.generated if out.generated else 1.0
                want = min(len(errors), math.ceil(missing * overgenerate / max(keep, 0.25) / per_error))
                rng = random.Random(derive_seed(self.seed, round_, "errors", *group, attempt))
                chosen = sorted(rng.sample(list(errors), len(errors)), key=lambda e: asked[e["id"]])[:want]
            asked.update(e["id"] for e in chosen)
            jobs = [self.error_job(e) for e in chosen]
            out.extend(
                self.run_jobs(
                    jobs,
                    samples=per_error,
                    round_=round_,
                    call_site="extrapolate",
                    attempt=f"{tag}-{attempt}" if group else attempt,
                )
            )
        if len(out.rows) > target:
            out.drops["over_quota"] += len(out.rows) - int(target)
            progress.kept(int(target) - len(out.rows))
            out.rows = out.rows[: int(target)]
        return out

    def error_job(self, error: dict[str, Any]) -> Job:
        """The prompt for more examples like one misclassified gold row, of its gold label."""
        messages = self.book.messages(
            "extrapolate", example=self.book.example(error), **self.book.label_fields(error["label"])
        )
        return Job(messages, {"label": error["label"]}, f"{EXTRAPOLATED}{error['id']}", self.task.text_of(error))

    def parse(self, job: Job, text: str) -> dict[str, Any] | str:
        """An answer's row fields, or the reason it is dropped."""
        parsed = parse_examples(text, self.task.fields, self.task.field_labels, many=False)
        return {f: parsed[0][f] for f in self.task.fields} if parsed else "unparsable"

    # ---- the shared path: generate -> parse -> clean -> label check ------------------------------------
    def run_jobs(self, jobs: Sequence[Job], samples: int, round_: int, call_site: str, attempt: int | str) -> Batch:
        out = Batch()
        requests, sent = [], []
        temperature = self.sampling.temperature
        if call_site == "extrapolate" and self.sampling.extrapolation_temperature is not None:
            temperature = self.sampling.extrapolation_temperature
        for i, job in enumerate(jobs):
            sampling = Sampling(
                n=samples,
                temperature=temperature,
                top_p=self.sampling.top_p,
                max_tokens=self.sampling.max_tokens,
                seed=derive_seed(self.seed, round_, call_site, attempt, i),
                stop=self.answer_stop,
            )
            messages = job.messages + (
                [{"role": "assistant", "content": self.answer_start}] if self.answer_start else []
            )
            requests.append(ChatRequest.from_messages(messages, sampling))
            sent.append(messages)
            out.prompts[prompt_hash(messages)] = messages
        candidates, unparsed = [], []
        for job, messages, completions in zip(jobs, sent, self.llm.generate(requests, call_site=call_site)):
            provenance = {"round": round_, "source": job.source, "prompt_hash": prompt_hash(messages)}
            for completion in completions:
                out.generated += 1
                parsed = (
                    self.parse(job, self.answer_start + completion.text)
                    if completion.is_answer
                    else completion.finish_reason
                )
                if isinstance(parsed, str):
                    out.drops[parsed] += 1
                    unparsed.append({**job.given, **provenance, "llm_text": completion.text, "reason": parsed})
                    continue
                candidates.append({**parsed, **job.given, **provenance, REFERENCE: job.reference})
        kept, dropped = self.filters.split(candidates)
        out.drops.update(reason for _, reason in dropped)
        for row in kept:
            del row[REFERENCE]
        out.rows = kept
        progress.kept(len(kept))
        out.add_dropped(unparsed)
        out.add_dropped(
            {**{k: v for k, v in row.items() if k != REFERENCE}, "reason": reason} for row, reason in dropped
        )
        log.info(
            "%s (round %d, attempt %s): %d prompts -> %d answers -> %d kept; dropped %s",
            call_site,
            round_,
            attempt,
            len(jobs),
            out.generated,
            len(kept),
            dict(out.drops),
        )
        return out


def _unique(items: Any) -> list[str]:
    seen, out = set(), []
    for item in items:
        key = normalize(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out
