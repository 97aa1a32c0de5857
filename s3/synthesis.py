"""Turning prompts into clean, labelled synthetic rows: rationales, seed sets, error extrapolation.

Every LLM answer goes parse -> clean (s3.cleaning) -> optional label check, and every row that does not
survive is counted by reason. Seeds for every request derive from the run seed, the round and the row's
position, so a re-run (or a resumed run) asks the LLM exactly the same questions and hits the cache.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from s3.cleaning import DROP_REASONS, Cleaner, normalize, parse_examples
from s3.data import Task
from s3.llm import LLM, ChatRequest, Sampling
from s3.prompts import PromptBook, prompt_hash

log = logging.getLogger(__name__)

EXTRA_DROP_REASONS = ("unparsable", "label_disagree", "over_quota")


def drop_columns(drops: Counter) -> dict[str, int]:
    """Every drop reason as a ``drop/<reason>`` column (0 when none), so logged tables stay aligned."""
    reasons = (*DROP_REASONS, *EXTRA_DROP_REASONS)
    unknown = set(drops) - set(reasons)
    if unknown:
        raise ValueError(f"unknown drop reasons: {sorted(unknown)}")
    return {f"drop/{r}": int(drops.get(r, 0)) for r in reasons}


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


_LIST_MARKER = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.)]|\d{1,2}\s*-)\s*")


def parse_list_items(text: str, max_words: int = 12) -> list[str]:
    """Short phrases from a list answer (rationales): one per line, markers and quotes stripped."""
    items = []
    for line in text.splitlines():
        item = _LIST_MARKER.sub("", _LIST_MARKER.sub("", line)).strip().strip("\"'*").rstrip(".:;,").strip()
        if item and 1 <= len(item.split()) <= max_words and not item.endswith(":"):
            items.append(item)
    return items


@dataclass
class SamplingConfig:
    temperature: float = 0.9
    top_p: float = 0.95
    max_tokens: int = 160


@dataclass
class Batch:
    """What one synthesis step produced: kept rows, drop counts by reason, the prompts it sent."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    generated: int = 0

    def extend(self, other: Batch) -> None:
        self.rows += other.rows
        self.drops.update(other.drops)
        self.prompts.update(other.prompts)
        self.generated += other.generated


@dataclass
class Job:
    """One prompt that should yield examples of one label, with the provenance its rows will carry."""

    messages: list[dict[str, str]]
    label: int
    source: str


class Synthesizer:
    def __init__(self, llm: LLM, task: Task, cleaner: Cleaner, sampling: SamplingConfig, seed: int,
                 label_check: bool):
        self.llm, self.task, self.cleaner, self.sampling = llm, task, cleaner, sampling
        self.book = PromptBook(task)
        self.seed = seed
        self.label_check = label_check

    # ---- rationales ---------------------------------------------------------------------------------
    def rationales(self, samples: int) -> dict[str, Any]:
        """Per label: what characterises it; once: what varies. Falls back to the label description."""
        sampling = Sampling(n=samples, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                            max_tokens=self.sampling.max_tokens, seed=derive_seed(self.seed, "rationale"))
        requests = [ChatRequest.from_messages(self.book.messages("rationale_label", **self.book.label_fields(k)),
                                              sampling) for k in range(len(self.task.labels))]
        requests.append(ChatRequest.from_messages(self.book.messages("rationale_variation"), sampling))
        answers = self.llm.generate(requests, call_site="rationale")
        lists = [_unique(item for c in completions for item in parse_list_items(c.text)) for completions in answers]
        per_label = {}
        for k, name in enumerate(self.task.labels):
            per_label[name] = lists[k] or [self.book.label_fields(k)["label_description"]]
        variations = lists[-1] or ["short", "long", "detailed", "casual"]
        return {"labels": per_label, "variations": variations}

    # ---- seed sets -----------------------------------------------------------------------------------
    def seed_jobs(self, kind: str, label: int, count: int, round_: int, attempt: int,
                  rationales: dict[str, Any] | None, demos: Sequence[dict[str, Any]]) -> list[Job]:
        """``count`` prompts for ``label``: rationale-guided (S3), plain (ZeroGen) or few-shot (GoldGen)."""
        rng = random.Random(derive_seed(self.seed, round_, kind, label, attempt))
        fields = self.book.label_fields(label)
        jobs = []
        for _ in range(count):
            if kind == "rationale":
                assert rationales is not None
                fields = {**fields, "aspect": rng.choice(rationales["labels"][self.task.labels[label]]),
                          "variation": rng.choice(rationales["variations"])}
            elif kind == "goldgen":
                shots = rng.sample(list(demos), min(4, len(demos)))
                fields = {**fields, "demonstrations": "\n".join(self.book.render(
                    "demonstration", example=self.book.example(d), label=self.task.labels[d["label"]]) for d in shots)}
            elif kind != "zerogen":
                raise ValueError(f"unknown seed prompt kind {kind!r}; expected rationale, zerogen or goldgen")
            jobs.append(Job(self.book.messages(kind if kind != "rationale" else "seed", **fields), label, kind))
        return jobs

    def seed_set(self, size: int, kind: str, round_: int, rationales: dict[str, Any] | None = None,
                 demos: Sequence[dict[str, Any]] = (), overgenerate: float = 1.5, max_attempts: int = 4) -> Batch:
        """A label-balanced set of ``size`` rows; re-asks (new seeds) for labels that fell short after cleaning."""
        num = len(self.task.labels)
        quota = {k: size // num + (1 if k < size % num else 0) for k in range(num)}
        have: Counter = Counter()
        out = Batch()
        for attempt in range(max_attempts):
            missing = {k: quota[k] - have[k] for k in quota if have[k] < quota[k]}
            if not missing:
                break
            jobs = [job for k, need in missing.items()
                    for job in self.seed_jobs(kind, k, max(1, round(need * overgenerate)), round_, attempt,
                                              rationales, demos)]
            batch = self.run_jobs(jobs, samples=1, round_=round_, call_site="seed", attempt=attempt)
            for row in batch.rows:  # keep at most the quota per label
                if have[row["label"]] < quota[row["label"]]:
                    have[row["label"]] += 1
                    out.rows.append(row)
                else:
                    batch.drops["over_quota"] += 1
            batch.rows = []
            out.extend(batch)
        if len(out.rows) < size:
            log.warning("seed set: %d of %d rows after %d attempts (see drop counts)", len(out.rows), size,
                        max_attempts)
        return out

    # ---- error extrapolation -------------------------------------------------------------------------
    def extrapolate(self, errors: Sequence[dict[str, Any]], per_error: int, round_: int) -> Batch:
        """For each misclassified gold-validation row: ``per_error`` new examples of its gold label like it."""
        jobs = [Job(self.book.messages("extrapolate", example=self.book.example(e),
                                       **self.book.label_fields(e["label"])),
                    e["label"], f"extrapolated-from-{e['id']}") for e in errors]
        return self.run_jobs(jobs, samples=per_error, round_=round_, call_site="extrapolate", attempt=0)

    # ---- the shared path: generate -> parse -> clean -> label check ------------------------------------
    def run_jobs(self, jobs: Sequence[Job], samples: int, round_: int, call_site: str, attempt: int) -> Batch:
        out = Batch()
        requests = []
        for i, job in enumerate(jobs):
            sampling = Sampling(n=samples, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                                max_tokens=self.sampling.max_tokens,
                                seed=derive_seed(self.seed, round_, call_site, attempt, i))
            requests.append(ChatRequest.from_messages(job.messages, sampling))
            out.prompts[prompt_hash(job.messages)] = job.messages
        candidates = []
        for job, completions in zip(jobs, self.llm.generate(requests, call_site=call_site)):
            for completion in completions:
                out.generated += 1
                parsed = parse_examples(completion.text, self.task.fields, self.task.field_labels, many=False)
                if not parsed:
                    out.drops["unparsable"] += 1
                    continue
                candidates.append({**{f: parsed[0][f] for f in self.task.fields}, "label": job.label,
                                   "round": round_, "source": job.source, "prompt_hash": prompt_hash(job.messages)})
        kept, drops = self.cleaner.filter(candidates)
        out.drops.update(drops)
        if self.label_check and kept:
            agree = self.check_labels(kept)
            out.drops["label_disagree"] += agree.count(False)
            kept = [row for row, ok in zip(kept, agree) if ok]
        out.rows = kept
        log.info("%s (round %d, attempt %d): %d prompts -> %d answers -> %d kept; dropped %s", call_site, round_,
                 attempt, len(jobs), out.generated, len(kept), dict(out.drops))
        return out

    def check_labels(self, rows: Sequence[dict[str, Any]]) -> list[bool]:
        """The LLM re-labels each row with a constrained choice; True where it agrees with the intended label."""
        requests = [ChatRequest.from_messages(self.book.messages("relabel", example=self.book.example(r)),
                                              Sampling(temperature=0.0, max_tokens=8), choices=self.task.labels)
                    for r in rows]
        answers = self.llm.generate(requests, call_site="relabel")
        return [a[0].text == self.task.labels[r["label"]] for r, a in zip(rows, answers)]


def _unique(items: Any) -> list[str]:
    seen, out = set(), []
    for item in items:
        key = normalize(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out
