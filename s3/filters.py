"""Post-generation checks as a chain of small filters, each counting what it drops (distilabel-style).

A parsed LLM answer becomes a candidate row; the chain decides whether it joins the synthetic set:

    quality rules -> leak guard -> dedup -> source similarity -> kind check -> gold label check -> LLM label check

Every filter has one interface (``split: rows -> kept rows, dropped rows with their reason``; calling it gives
kept rows and drop counts) and names the reasons it drops for; the
cheap text checks run first, the embedding checks next, LLM scoring last. ``build_filter_chain`` assembles the
chain from the loop config; ``Cleaner`` is its text part (the first three), also used on the paper's data.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from s3 import progress
from s3.config import UserError
from s3.data import Task
from s3.llm import LLM, NOT_ANSWERS, ChatRequest, Sampling
from s3.parsing import boilerplate_kind, gram_hashes, normalize, word_hashes
from s3.prompts import PromptBook

log = logging.getLogger(__name__)

EXTRAPOLATED = "extrapolated-from-"  # + the gold row's id: the source of an extrapolated row
REFERENCE = "_reference"  # a candidate's source text (error extrapolation), read by SourceSimilarity, then removed


@dataclass
class CleaningConfig:
    min_words: int = 3
    max_words: int = 400  # per field; for pairs applied to each field
    near_dup_threshold: float = 0.8  # Jaccard of word-shingle sets; >= -> near duplicate (> 1: off)
    leak_threshold: float = 0.5  # n-grams shared with one protected text, as a share of the candidate's or
    # of the protected text's (whichever is smaller); > -> leak
    leak_ngram: int = 5  # words per n-gram of the leak guard
    forbid_label_words: bool = False  # drop examples that state their own label outright
    shingle_size: int = 3  # words per shingle for near-duplicate Jaccard


Dropped = list[tuple[dict, str]]  # rows a filter dropped, each with its reason


class RowFilter(ABC):
    """One check: the rows it keeps (in order) and the rows it drops, each under one of its ``reasons``."""

    reasons: tuple[str, ...]

    @abstractmethod
    def split(self, rows: list[dict]) -> tuple[list[dict], Dropped]: ...

    def __call__(self, rows: list[dict]) -> tuple[list[dict], Counter[str]]:
        """Kept rows and drop counts by reason."""
        kept, dropped = self.split(rows)
        return kept, Counter(reason for _, reason in dropped)


class FlagFilter(RowFilter):
    """A check that judges rows one batch at a time and drops the rows it flags under one reason."""

    reason: str

    @property
    def reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.reason,)

    @abstractmethod
    def keep(self, rows: Sequence[dict]) -> list[bool]: ...

    def split(self, rows: list[dict]) -> tuple[list[dict], Dropped]:
        flags = self.keep(rows) if rows else []
        return [r for r, ok in zip(rows, flags) if ok], [(r, self.reason) for r, ok in zip(rows, flags) if not ok]


class FilterChain(RowFilter):
    """Filters in order, each on what the previous kept; drops summed by reason."""

    def __init__(self, filters: Iterable[RowFilter]):
        self.filters = list(filters)

    @property
    def reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(r for f in self.filters for r in f.reasons)

    def add_existing(self, rows: Iterable[Mapping]) -> None:
        """Rows already in the synthetic set (a resumed run): the filters that remember rows learn them."""
        rows = list(rows)
        for f in self.filters:
            if hasattr(f, "add_existing"):
                f.add_existing(rows)

    def split(self, rows: list[dict]) -> tuple[list[dict], Dropped]:
        dropped: Dropped = []
        for f in self.filters:
            if not rows:
                break
            rows, out = f.split(rows)
            dropped += out
        return rows, dropped


# ---- text checks ----------------------------------------------------------------------------------------


class QualityRules(RowFilter):
    """Per-row rules: empty, refusals, assistant talk, length, the task's declared format (``task.patterns``), and
    (optionally) stating the label outright."""

    reasons = ("empty", "refusal", "boilerplate", "too_short", "too_long", "wrong_format", "states_label")  # type: ignore[assignment]

    def __init__(self, cfg: CleaningConfig, fields: Sequence[str], label_names: Sequence[str],
                 meta_phrases: Iterable[str] = (), patterns: Mapping[str, str] | None = None):  # fmt: skip
        """``patterns``: field -> the regular expression its text must match (the task's declared format)."""
        self.cfg, self.fields = cfg, list(fields)
        self.patterns = {f: re.compile(p) for f, p in (patterns or {}).items()}
        self.label_names = [normalize(n) for n in label_names]
        # The task's own framing ("movie review sentence") inside an example is the LLM talking about the task;
        # real SST-2/IMDb text never contains it. Single words ("tweet") are too common to use this way.
        self.meta = [f" {normalize(p)} " for p in meta_phrases if len(normalize(p).split()) >= 2]

    def reason(self, row: Mapping) -> str | None:
        texts = [str(row.get(f) or "").strip() for f in self.fields]
        norms = [normalize(t) for t in texts]
        if not all(norms):
            return "empty"
        kinds = {boilerplate_kind(t) for t in texts} - {None}
        if not kinds and any(p in f" {n} " for p in self.meta for n in norms):
            kinds = {"boilerplate"}
        if kinds:
            return "refusal" if "refusal" in kinds else "boilerplate"
        lengths = [len(n.split()) for n in norms]
        if min(lengths) < self.cfg.min_words:
            return "too_short"
        if max(lengths) > self.cfg.max_words:
            return "too_long"
        if any(not p.search(str(row.get(f) or "").strip()) for f, p in self.patterns.items()):
            return "wrong_format"
        label = int(row.get("label", -1))  # extractive QA rows have no label
        if self.cfg.forbid_label_words and 0 <= label < len(self.label_names):
            name = f" {self.label_names[label]} "
            if any(name in f" {n} " for n in norms):
                return "states_label"
        return None

    def split(self, rows: list[dict]) -> tuple[list[dict], Dropped]:
        kept, dropped = [], []
        for row in rows:
            reason = self.reason(row)
            if reason:
                dropped.append((row, reason))
            else:
                kept.append(row)
        return kept, dropped


class _NgramIndex:
    """Protected (gold) texts as sorted (n-gram hash, text id) arrays: compact enough for 25k IMDb reviews."""

    def __init__(self, word_arrays: list[np.ndarray], n: int) -> None:
        self.n = n
        lengths = np.array([len(a) for a in word_arrays], dtype=np.int64)
        if not word_arrays or lengths.sum() < n:
            self.hashes = np.empty(0, dtype=np.uint64)
            self.ids = np.empty(0, dtype=np.int64)
            return
        words = np.concatenate(word_arrays)
        doc = np.repeat(np.arange(len(word_arrays)), lengths)
        grams = gram_hashes(words, n)
        same_doc = doc[: len(grams)] == doc[n - 1 :]
        grams, doc = grams[same_doc], doc[: len(same_doc)][same_doc]
        order = np.argsort(grams, kind="stable")  # doc ids are already ascending, so ties stay in doc order
        grams, doc = grams[order], doc[order]
        first = np.ones(len(grams), dtype=bool)
        first[1:] = (grams[1:] != grams[:-1]) | (doc[1:] != doc[:-1])
        self.hashes, self.ids = grams[first], doc[first]
        self.sizes = np.bincount(self.ids, minlength=len(word_arrays))  # distinct n-grams per protected text

    def max_share(self, words: np.ndarray) -> float:
        """Largest overlap with a single protected text, as a share of the text's distinct n-grams or of the
        protected text's (a gold row pasted inside a longer answer is a leak too)."""
        grams = np.unique(gram_hashes(words, self.n))
        if len(grams) == 0 or len(self.hashes) == 0:
            return 0.0
        lo = np.searchsorted(self.hashes, grams)
        hit = self.hashes[np.minimum(lo, len(self.hashes) - 1)] == grams
        if not hit.any():
            return 0.0
        hi = np.searchsorted(self.hashes, grams[hit], "right")
        ids = np.concatenate([self.ids[a:b] for a, b in zip(lo[hit], hi)])
        docs, shared = np.unique(ids, return_counts=True)
        return float(np.max(shared / np.minimum(len(grams), self.sizes[docs])))


class LeakGuard(FlagFilter):
    """Drops copies and near-copies of protected texts (gold validation and test rows): a row whose word n-grams
    are mostly those of one protected text, or that contains most of one (pasted inside chatter).

    Only the last of ``fields`` is compared: for pairs the field the LLM wrote (RTE hypothesis; QNLI sentence, or
    its question when real sentences are given, ``loop.pair_context=train``). RTE reuses premises across
    train/validation/test in the real data, so a shared premise is not a leak; a copied pair always copies the
    written field, so the full-pair exact match is covered too. Pass gold *rows* (mappings with the ``fields``)
    for pair tasks; plain strings are taken as texts of that field.
    """

    reason = "leak"

    def __init__(self, cfg: CleaningConfig, fields: Sequence[str], protected: Iterable[str | Mapping[str, str]]):
        self.cfg, self.field = cfg, list(fields)[-1]
        exact: set[str] = set()
        arrays: list[np.ndarray] = []
        for item in protected:
            norm = normalize(item if isinstance(item, str) else item[self.field])
            if norm and norm not in exact:
                exact.add(norm)
                arrays.append(word_hashes(norm))
        self.exact = exact
        self.ngrams = _NgramIndex(arrays, cfg.leak_ngram)

    def leaks(self, row: Mapping) -> bool:
        last = normalize(str(row.get(self.field) or ""))
        return last in self.exact or self.ngrams.max_share(word_hashes(last)) > self.cfg.leak_threshold

    def keep(self, rows: Sequence[dict]) -> list[bool]:
        return [not self.leaks(r) for r in rows]


class Deduplicator(RowFilter):
    """Drops exact duplicates (and the same text under another label) and near duplicates of the synthetic set
    so far; every kept row joins that set. Near duplicates: datasketch's MinHash LSH proposes candidates
    (bands chosen for >= 99.9% recall at the threshold), the exact Jaccard of word shingles decides."""

    reasons = ("label_conflict", "duplicate", "near_duplicate")  # type: ignore[assignment]
    NUM_PERM = 64

    def __init__(self, cfg: CleaningConfig, fields: Sequence[str]):
        self.cfg, self.fields = cfg, list(fields)
        self.labels_by_key: dict[str, int] = {}
        self.shingles: list[list[frozenset[int]]] = []
        threshold = cfg.near_dup_threshold
        self.lsh: MinHashLSH | None = None
        self.permutations = MinHash(num_perm=self.NUM_PERM, seed=20231013, scheme="affine32").permutations  # once
        if threshold <= 1.0:
            rows = next((r for r in range(8, 0, -1) if 1 - (1 - threshold**r) ** (self.NUM_PERM // r) >= 0.999), 1)
            self.lsh = MinHashLSH(num_perm=self.NUM_PERM, params=(self.NUM_PERM // rows, rows))

    def add_existing(self, rows: Iterable[Mapping]) -> None:
        """Register rows already in the synthetic set (e.g. on resume) so candidates dedup against them."""
        for row in rows:
            norms = self._norms(row)
            self._register(norms, self._shingle_sets(norms), int(row.get("label", 0)))

    def split(self, rows: list[dict]) -> tuple[list[dict], Dropped]:
        kept, dropped = [], []
        for row in rows:
            norms, label = self._norms(row), int(row.get("label", 0))
            seen = self.labels_by_key.get("\x1f".join(norms))
            if seen is not None:
                dropped.append((row, "duplicate" if seen == label else "label_conflict"))
                continue
            shingles = self._shingle_sets(norms)
            if self._near_duplicate(shingles):
                dropped.append((row, "near_duplicate"))
                continue
            self._register(norms, shingles, label)
            kept.append(row)
        return kept, dropped

    def _norms(self, row: Mapping) -> list[str]:
        return [normalize(str(row.get(f) or "")) for f in self.fields]

    def _shingle_sets(self, norms: list[str]) -> list[frozenset[int]]:
        sets = []
        for norm in norms:
            words = word_hashes(norm)
            size = max(1, min(self.cfg.shingle_size, len(words)))
            sets.append(frozenset(gram_hashes(words, size).tolist()))
        return sets

    def _minhash(self, shingles: frozenset[int]) -> MinHash:
        # the shingles are already 64-bit word n-gram hashes: MinHash takes their low 32 bits as they are
        m = MinHash(num_perm=self.NUM_PERM, hashfunc=_low32, permutations=self.permutations, scheme="affine32")
        m.update_batch(sorted(shingles))
        return m

    def _near_duplicate(self, shingles: list[frozenset[int]]) -> bool:
        if self.lsh is None or not all(shingles):
            return False
        threshold = self.cfg.near_dup_threshold
        candidates = self.lsh.query(self._minhash(shingles[-1]))
        return any(
            all(len(a & b) >= threshold * len(a | b) for a, b in zip(shingles, self.shingles[i])) for i in candidates
        )

    def _register(self, norms: list[str], shingles: list[frozenset[int]], label: int) -> None:
        self.labels_by_key.setdefault("\x1f".join(norms), label)
        if self.lsh is None or not all(shingles):
            return
        self.shingles.append(shingles)
        self.lsh.insert(len(self.shingles) - 1, self._minhash(shingles[-1]))


def _low32(value: int) -> int:
    return value & 0xFFFFFFFF


class Cleaner(FilterChain):
    """The text checks: quality rules -> leak guard -> dedup against the synthetic set so far."""

    def __init__(
        self,
        cfg: CleaningConfig,
        fields: Sequence[str],
        label_names: Sequence[str],
        protected_texts: Iterable[str | Mapping[str, str]],
        meta_phrases: Iterable[str] = (),
        leak_field: str | None = None,
        patterns: Mapping[str, str] | None = None,
    ) -> None:
        self.rules = QualityRules(cfg, fields, label_names, meta_phrases, patterns)
        # the leak guard reads the field the LLM wrote (default: the last field); a real text a row was given is not a leak
        self.leak_guard = LeakGuard(cfg, [leak_field] if leak_field else fields, protected_texts)
        self.dedup = Deduplicator(cfg, fields)
        super().__init__([self.rules, self.leak_guard, self.dedup])

    def filter(self, candidates: Sequence[dict]) -> tuple[list[dict], Counter[str]]:
        """Kept rows (unchanged dicts, now part of the existing set) and drop counts by reason."""
        return self(list(candidates))


# ---- embedding and LLM checks ---------------------------------------------------------------------------


class SourceSimilarity(FlagFilter):
    """An extrapolated row must be like the real example it came from (cosine of sentence embeddings).

    A small LLM asked for "a new sentence like this one" often drifts to a generic one; such a row does not
    sample the region of the real distribution where the small model failed, which is the point of
    extrapolation. Rows without a source (seed rows) pass.
    """

    reason = "off_source"

    def __init__(self, embedder: Any, task: Task, min_similarity: float, field: str | None = None):
        """``field``: compare only it (the one the LLM wrote, when the other is a copied real context); the
        reference is then that field of the source."""
        self.embedder, self.task, self.min_similarity, self.field = embedder, task, min_similarity, field

    def keep(self, rows: Sequence[dict]) -> list[bool]:
        text = (lambda r: str(r[self.field])) if self.field else self.task.text_of
        pairs = [(i, text(r), r[REFERENCE]) for i, r in enumerate(rows) if r.get(REFERENCE)]
        ok = [True] * len(rows)
        if pairs:
            new = self.embedder.embed([text for _, text, _ in pairs])
            old = self.embedder.embed([ref for _, _, ref in pairs])
            for (i, _, _), sim in zip(pairs, (new * old).sum(1)):
                ok[i] = bool(sim >= self.min_similarity)
        return ok


class KindCheck(FlagFilter):
    """An answer must be an example of the task's kind: about as like some real (gold) example as real examples are
    to each other.

    A small LLM asked for one example of a label sometimes writes prose about the label instead ("A good question
    is defined as..."), which no text rule catches. The gold rows define the kind: each one's cosine to its nearest
    other gold row is a score a real example gets. A row whose cosine to its nearest gold row is below the
    ``quantile`` of those scores is unlike any real example and is dropped; a real example would be dropped about a
    ``quantile`` of the time (conformal novelty detection on sentence embeddings). Too few gold rows: off. Gold rows
    far more alike than the task's examples can be (a templated data set) would drop nearly every answer: once it
    has judged ``MIN_SEEN`` answers and would drop more than ``MAX_SHARE`` of them, it turns itself off and says so.
    """

    reason = "off_kind"
    MIN_GOLD = 10
    MIN_SEEN = 20
    MAX_SHARE = 0.5
    BLOCK = 2048  # rows compared with the gold set at once

    def __init__(self, embedder: Any, task: Task, gold_rows: Sequence[Mapping[str, Any]], quantile: float,
                 field: str | None = None):  # fmt: skip
        """``field``: compare only it (the one the LLM writes, when the other is a copied real context)."""
        self.embedder, self.task, self.field = embedder, task, field
        self.gold: np.ndarray | None = None
        self.threshold = -1.0
        self.seen = self.dropped = 0  # answers judged so far, and how many of them were off kind
        if len(gold_rows) < self.MIN_GOLD:
            log.warning("kind check off: %d gold rows (needs %d)", len(gold_rows), self.MIN_GOLD)
            return
        self.gold = np.asarray(embedder.embed([self.text(r) for r in gold_rows]), dtype=np.float32)
        nearest = np.empty(len(self.gold), dtype=np.float32)
        for start in range(0, len(self.gold), self.BLOCK):  # in blocks: a whole train split as gold set fits too
            sims = self.gold[start : start + self.BLOCK] @ self.gold.T
            sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf  # not itself
            nearest[start : start + len(sims)] = sims.max(1)
        self.threshold = float(np.quantile(nearest, quantile, method="lower"))
        log.info(
            "kind check on: a row must reach cosine %.3f to its nearest of %d gold rows (%.0f%% of gold rows are "
            "less like their nearest other one)",
            self.threshold,
            len(gold_rows),
            100 * quantile,
        )

    def text(self, row: Mapping[str, Any]) -> str:
        return str(row[self.field]) if self.field else self.task.text_of(row)

    def nearest_gold(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Each row's cosine to its nearest gold row."""
        assert self.gold is not None
        x = np.asarray(self.embedder.embed([self.text(r) for r in rows]), dtype=np.float32)
        return np.concatenate(
            [(x[i : i + self.BLOCK] @ self.gold.T).max(1) for i in range(0, len(x), self.BLOCK)] or [np.empty(0)]
        )

    def of_kind(self, rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """True where a row reaches the threshold (every row while the check is off); counts nothing."""
        if self.gold is None or not rows:
            return [True] * len(rows)
        return [bool(s >= self.threshold) for s in self.nearest_gold(rows)]

    def keep(self, rows: Sequence[dict]) -> list[bool]:
        ok = self.of_kind(rows)
        if self.gold is None:
            return ok
        self.seen, self.dropped = self.seen + len(ok), self.dropped + ok.count(False)
        if self.seen >= self.MIN_SEEN and self.dropped > self.MAX_SHARE * self.seen:
            log.warning(
                "kind check off: it would drop %d of the %d answers so far, so the gold rows are more alike than the "
                "task's examples can be (a templated set?); loop.kind_check=false silences this",
                self.dropped,
                self.seen,
            )
            self.gold = None
            return [True] * len(rows)
        return ok


def check_patterns(task: Task, gold_rows: Sequence[Mapping[str, Any]]) -> None:
    """A declared format the task's own gold rows mostly break is a wrong pattern, not a format: one line, before
    any LLM work; otherwise the log says how many gold rows match."""
    for f, pattern in (getattr(task, "patterns", None) or {}).items():
        if not gold_rows:
            return
        regex = re.compile(pattern)
        share = sum(bool(regex.search(str(r[f]).strip())) for r in gold_rows) / max(1, len(gold_rows))
        if share < 0.5:
            raise UserError(
                f"task {task.name}: patterns.{f} {pattern!r} matches only {share:.0%} of the {len(gold_rows)} gold "
                f"rows; synthetic rows must match it, so it should describe the real ones"
            )
        log.info("format check: %s must match %r (%.0f%% of gold rows do)", f, pattern, 100 * share)


class GoldLabelCheck(FlagFilter):
    """A logistic regression on sentence embeddings of the gold validation rows, as a label check.

    S3 has these rows anyway. The check drops rows it puts in another label than the one they were written
    for, and it is used only where it can learn the task: its cross-validated accuracy on the gold rows must
    reach ``min_accuracy`` (on RTE it is mostly off). A sentence pair is read as its two texts' embeddings compared
    (:meth:`features`). With ``skip_misjudged``, it does not judge rows extrapolated from a gold row that it gets wrong
    itself (out of fold): the small model's errors are often the check's errors too, where a correct row like its
    source could be dropped. Judging them anyway does better on SST-2, so that is the default.
    """

    reason = "gold_disagree"

    def __init__(self, embedder: Any, task: Task, gold_rows: Sequence[dict[str, Any]], seed: int,
                 min_accuracy: float = 0.6, folds: int = 5, skip_misjudged: bool = False):  # fmt: skip
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        self.embedder, self.task = embedder, task
        counts = Counter(r["label"] for r in gold_rows)
        # A rare label (fewer than 2 gold rows) cannot be learned or validated: its rows are not judged, and the
        # others still are; cross-validation uses as many folds as the rarest checked label allows (at most ``folds``).
        self.labels = {k for k, n in counts.items() if n >= 2}
        self.model: Any = None
        self.cv_accuracy = 0.0
        self.misjudged: set[str] = set()  # ids of gold rows the check gets wrong out of fold (skip_misjudged)
        unchecked = [task.labels[k] for k in range(len(task.labels)) if k not in self.labels]
        if len(self.labels) < 2:
            log.warning("gold label check off: fewer than two labels have 2 or more gold rows")
            return
        rows = [r for r in gold_rows if r["label"] in self.labels]
        x = self.features(rows)
        y = [r["label"] for r in rows]
        k = min(folds, min(counts[label] for label in self.labels))
        cv = StratifiedKFold(k, shuffle=True, random_state=seed)
        shown = [counts[label] for label in self.labels]
        # synthetic rows are asked for label-balanced: where the gold labels are far from it (a rare label), weigh
        # them alike, or the rare label's rows would mostly be put in a common one
        model = LogisticRegression(max_iter=2000, class_weight="balanced" if max(shown) > 2 * min(shown) else None)
        out_of_fold = cross_val_predict(model, x, y, cv=cv)
        self.cv_accuracy = float((out_of_fold == y).mean())
        if self.cv_accuracy >= min_accuracy:
            self.model = model.fit(x, y)
        if skip_misjudged:
            self.misjudged = {str(r["id"]) for r, p in zip(rows, out_of_fold) if p != r["label"] and "id" in r}
        log.info(
            "gold label check %s: %d-fold cross-validated accuracy %.3f on %d gold rows (needs %.2f)%s%s",
            "on" if self.model is not None else "off",
            k,
            self.cv_accuracy,
            len(y),
            min_accuracy,
            f"; not judged (under 2 gold rows): {', '.join(unchecked)}" if unchecked else "",
            f"; rows extrapolated from the {len(self.misjudged)} gold rows it misjudges are not judged"
            if self.model is not None and self.misjudged
            else "",
        )

    def agree(self, rows: Sequence[dict[str, Any]]) -> list[bool]:
        """True where the classifier predicts the row's intended label (always True while the check is off, for
        rows of a label it could not learn, and for rows extrapolated from a gold row it misjudges)."""
        judged = [
            i
            for i, r in enumerate(rows)
            if r["label"] in self.labels and str(r.get("source", "")).removeprefix(EXTRAPOLATED) not in self.misjudged
        ]
        out = [True] * len(rows)
        if self.model is None or not judged:
            return out
        predicted = self.model.predict(self.features([rows[i] for i in judged]))
        for i, p in zip(judged, predicted):
            out[i] = int(p) == rows[i]["label"]
        return out

    def features(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """A row's sentence embedding; a sentence pair's: |u - v| and u * v of its two texts' embeddings (how the
        two relate; the joined pair's embedding, or u and v themselves, say more about their topic than that)."""
        if not self.task.is_pair:
            return self.embedder.embed([self.task.text_of(r) for r in rows])
        first, second = self.task.fields
        u, v = (self.embedder.embed([str(r[field]) for r in rows]) for field in (first, second))
        return np.hstack([np.abs(u - v), u * v])

    def keep(self, rows: Sequence[dict]) -> list[bool]:
        return self.agree(rows)


class LLMLabelCheck(FlagFilter):
    """The LLM's judgement of a row's label must agree with the label it was written for.

    ``choice``: the LLM re-labels the row (constrained choice over the label names): direct zero-shot
    classification, which a small LLM does near chance. ``channel``: the noisy-channel direction (Min et al.,
    ACL 2022): score log P(row | "write one <label> example") for every label with the task's ZeroGen prompt,
    and drop the row when another label explains it better by more than ``margin`` nats. ``auto``: channel
    when the backend scores text (transformers, vLLM), else choice (servers).
    """

    reason = "label_disagree"

    def __init__(self, llm: LLM, task: Task, mode: str, margin: float):
        self.llm, self.task, self.mode, self.margin = llm, task, mode, margin
        self.book = PromptBook(task)

    def keep(self, rows: Sequence[dict]) -> list[bool]:
        if self.mode == "choice":
            return self._choice_check(rows)
        scores = self.channel_scores(rows)
        if scores is None:
            if self.mode == "auto":  # servers: re-label instead (fine for the large LLMs they run)
                log.info(
                    "label check: %s returns no log-likelihoods; using the constrained-choice check", self.llm.name
                )
                self.mode = "choice"
                return self._choice_check(rows)
            raise UserError(
                f"loop.label_check=channel needs an LLM backend that scores text (llm=smollm2, "
                f"llm=smollm2_vllm, llm=transformers); {self.llm.name} returns no log-likelihoods. Use auto or choice."
            )
        return [
            max(s[k] for k in range(len(s)) if k != r["label"]) - s[r["label"]] <= self.margin
            for r, s in zip(rows, scores)
        ]

    def channel_scores(self, rows: Sequence[dict]) -> list[list[float]] | None:
        """Per row, log P(row | the task's ZeroGen prompt for label k) for every k; None when the LLM can't score."""
        labels = range(len(self.task.labels))
        prompts = [self.book.messages("zerogen", **self.book.label_fields(k)) for k in labels]
        requests = [
            ChatRequest.from_messages(
                prompts[k], Sampling(temperature=0.0, max_tokens=8), choices=[self.book.example(r)]
            )
            for r in rows
            for k in labels
        ]
        with progress.scoring():
            flat = [a[0].logprob for a in self.llm.generate(requests, call_site="label_check")]
        if any(x is None for x in flat):
            return None
        return [flat[i : i + len(labels)] for i in range(0, len(flat), len(labels))]  # type: ignore[misc]

    def _choice_check(self, rows: Sequence[dict]) -> list[bool]:
        requests = [
            ChatRequest.from_messages(
                self.book.messages("relabel", example=self.book.example(r)),
                Sampling(temperature=0.0, max_tokens=8),
                choices=self.task.labels,
            )
            for r in rows
        ]
        with progress.scoring():
            answers = self.llm.generate(requests, call_site="relabel")
        return [a[0].text == self.task.labels[r["label"]] for r, a in zip(rows, answers)]


# ---- the chain a run uses -------------------------------------------------------------------------------

OTHER_DROP_REASONS = ("unparsable", "over_quota", *NOT_ANSWERS)  # counted by the synthesizer, not a filter
QA_DROP_REASONS = ("not_a_question", "answer_in_question", "answer_not_span")  # s3.qa_synthesis: parsing
DROP_REASONS: tuple[str, ...] = (
    *QualityRules.reasons,
    LeakGuard.reason,
    *Deduplicator.reasons,
    SourceSimilarity.reason,
    KindCheck.reason,
    GoldLabelCheck.reason,
    LLMLabelCheck.reason,
    *OTHER_DROP_REASONS,
    *QA_DROP_REASONS,
)


def drop_columns(drops: Mapping[str, int]) -> dict[str, int]:
    """Every drop reason as a ``drop/<reason>`` column (0 when none), so logged tables stay aligned."""
    unknown = set(drops) - set(DROP_REASONS)
    if unknown:
        raise ValueError(f"unknown drop reasons: {sorted(unknown)}")
    return {f"drop/{r}": int(drops.get(r, 0)) for r in DROP_REASONS}


def build_filter_chain(
    cfg: Any,
    task: Task,
    protected: Iterable[str | Mapping[str, str]],
    llm: LLM | None = None,
    embedder: Any = None,
    gold_check: GoldLabelCheck | None = None,
    gold_rows: Sequence[Mapping[str, Any]] = (),
) -> FilterChain:
    """The loop's chain (``cfg``: a ``SyntheticLoopConfig``): the text checks, then each check it turns on
    (``gold_rows``: the labelled real rows the run learns from, which define the task's kind).

    Extractive QA: the checks read the question (the LLM's part); duplicates are the same question about the same
    passage; the label checks do not apply; the declared format is the parser's (a question)."""
    if getattr(task, "kind", "") == "extractive_qa":
        filters: list[RowFilter] = [
            QualityRules(cfg.cleaning, ["question"], [], [task.example_kind]),
            LeakGuard(cfg.cleaning, ["question"], protected),
            Deduplicator(cfg.cleaning, ["context", "question"]),
        ]
        if (cfg.min_source_similarity > 0 or cfg.kind_check) and embedder is None:
            raise ValueError("loop.min_source_similarity > 0 and loop.kind_check need a sentence embedder")
        if cfg.min_source_similarity > 0:
            filters.append(SourceSimilarity(embedder, task, cfg.min_source_similarity))
        if cfg.kind_check:
            filters.append(KindCheck(embedder, task, gold_rows, cfg.kind_check_quantile, field="question"))
        return FilterChain(filters)
    written = None  # pairs on real contexts: the leak guard reads the field the LLM wrote, not the given context
    if task.is_pair and getattr(cfg, "pair_context", "llm") == "train":
        written = task.written_field
    filters = [
        Cleaner(
            cfg.cleaning, task.fields, task.labels, protected, [task.example_kind], leak_field=written,
            patterns=task.patterns,
        )
    ]  # fmt: skip
    if (cfg.min_source_similarity > 0 or cfg.kind_check) and embedder is None:
        raise ValueError("loop.min_source_similarity > 0 and loop.kind_check need a sentence embedder")
    if cfg.min_source_similarity > 0:
        filters.append(SourceSimilarity(embedder, task, cfg.min_source_similarity, field=written))
    if cfg.kind_check:
        filters.append(KindCheck(embedder, task, gold_rows, cfg.kind_check_quantile, field=written))
    if gold_check is not None:
        filters.append(gold_check)
    if cfg.label_check != "none":
        if llm is None:
            raise ValueError(f"loop.label_check={cfg.label_check} needs the LLM")
        filters.append(LLMLabelCheck(llm, task, cfg.label_check, cfg.label_check_margin))
    return FilterChain(filters)
