"""Content-addressed, multi-process-safe completion cache.

Storage is one small JSON file per sample, `<dir>/<key[:2]>/<key>.json`,
written to a unique temp file and `os.replace`d into place. Why not sqlite:
sweeps run many processes (joblib / SLURM) against one cache dir, often on
NFS/Lustre, where sqlite's WAL mode is unsupported and its locks unreliable;
an atomic rename is safe on every POSIX filesystem, needs no lock, readers never
see a partial file, and two writers of the same key write the same content, so
last-writer-wins is harmless.

Keys are per *sample index*: asking n=4 after n=2 reuses the 2 cached samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from s3 import progress
from s3.atomic import atomic_write_text
from s3.llm.base import LLM, ChatRequest, Completion, Usage

log = logging.getLogger(__name__)

KEY_VERSION = 2  # 2: the backend's precision is part of the key


def cache_key(llm_name: str, request: ChatRequest, index: int, precision: str | None = None) -> str:
    """sha256 over everything that determines sample `index` of `request` (n excluded), ``precision`` (the
    weights' dtype as run) included: a bfloat16 answer is not a float32 one."""
    s = request.sampling
    greedy = s.temperature == 0
    payload = {
        "v": KEY_VERSION,
        "llm": llm_name,
        "precision": precision,
        "messages": request.as_dicts(),
        # v2 of choice entries: they carry the choice's log-likelihood (Completion.logprob)
        "choices": {"v": 2, "options": list(request.choices)} if request.choices is not None else None,
        "temperature": s.temperature,
        # Greedy decoding ignores top_p and the seed: share those entries.
        "top_p": None if greedy else s.top_p,
        "seed": None if greedy else s.seed,
        "max_tokens": s.max_tokens,
        "stop": list(s.stop),
        "index": index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class DiskCache:
    """Key -> Completion store on disk (see module docstring for the design)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        try:
            return Completion(**json.loads(self._path(key).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # a damaged entry: a miss, rewritten when the answer is generated again
            log.warning("LLM cache entry %s is damaged; generating it again", self._path(key))
            return None

    def put(self, key: str, completion: Completion) -> None:
        atomic_write_text(self._path(key), json.dumps(asdict(completion), ensure_ascii=False), fsync=False)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("??/*.json"))


class CachedLLM(LLM):
    """Wraps a backend; only samples missing from the cache reach it.

    Usage here is per *request*: `cache_hits` are requests served entirely
    from disk, `backend_calls` those with at least one missing sample; token
    counts cover freshly generated samples only (what the run actually paid).
    """

    def __init__(self, backend: LLM, directory: str | Path) -> None:
        super().__init__()
        self.backend = backend
        self.name = backend.name
        self.continues_answers = backend.continues_answers
        self.precision = backend.precision
        self.store = DiskCache(directory)

    def generate(self, requests: Sequence[ChatRequest], call_site: str = "default") -> list[list[Completion]]:
        start = time.perf_counter()
        out: list[list[Completion | None]] = []
        missing: dict[str, list[tuple[int, int]]] = {}  # key -> (request idx, sample idx); duplicates generated once
        for ri, r in enumerate(requests):
            row: list[Completion | None] = []
            for si in range(r.sampling.n):
                key = cache_key(self.name, r, si, self.precision)
                hit = None if key in missing else self.store.get(key)
                row.append(hit)
                if hit is None:
                    missing.setdefault(key, []).append((ri, si))
            out.append(row)
        progress.asked(sum(r.sampling.n for r in requests))
        progress.answered(sum(r.sampling.n for r in requests) - sum(len(slots) for slots in missing.values()))  # hits
        fresh: list[Completion] = []
        if missing:
            keys = list(missing)
            units = [requests[ri].unit(si) for ri, si in (slots[0] for slots in missing.values())]

            def store(i: int, c: Completion) -> None:  # as each answer arrives: an interrupted call keeps them
                if c.is_answer:  # a later call (a larger context, a live engine) may answer
                    self.store.put(keys[i], c)

            fresh = [c[0] for c in self.backend.generate(units, call_site, count=False, on_answer=store)]
            progress.answered(sum(len(slots) - 1 for slots in missing.values()))  # duplicates within the call
            for slots, c in zip(missing.values(), fresh):
                for ri, si in slots:
                    out[ri][si] = c
        called = len({ri for slots in missing.values() for ri, _ in slots})
        self._record(
            call_site,
            Usage(
                requests=len(requests),
                backend_calls=called,
                cache_hits=len(requests) - called,
                prompt_tokens=sum(c.prompt_tokens for c in fresh),
                completion_tokens=sum(c.completion_tokens for c in fresh),
                seconds=time.perf_counter() - start,
            ),
        )
        return out  # type: ignore[return-value]

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        raise NotImplementedError("CachedLLM overrides generate()")

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"CachedLLM({self.backend!r}, dir={str(self.store.dir)!r})"
