"""Cost of the per-round gap metrics: compute_gap on 1,000 "synthetic" + 200 real texts, cold embedding cache.

Real SST-2 train sentences stand in for the synthetic set and SST-2 validation for the real one, so the
texts have realistic lengths. Prints seconds per stage; the last line is ``gap_seconds=<float>``.

    .venv/bin/python benchmarks/gap_cost.py [--n-synthetic 1000] [--n-real 200] [--vs-train]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DATA = Path(os.environ.get("S3_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def load(split: str, n: int) -> tuple[list[str], list[int]]:
    rows = [json.loads(line) for line in (DATA / "sst2" / f"{split}.jsonl").read_text().splitlines()[:n]]
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-synthetic", type=int, default=1000)
    ap.add_argument("--n-real", type=int, default=200)
    ap.add_argument("--vs-train", action="store_true", help="also measure gap_train/* against 2,000 train texts")
    args = ap.parse_args()

    from s3.embed import SentenceEmbedder
    from s3.gap import compute_gap

    syn, syn_y = load("train", args.n_synthetic)
    real, real_y = load("validation", args.n_real)
    train_kw = {}
    if args.vs_train:
        train, train_y = load("train", args.n_synthetic + 2000)
        train_kw = {"real_train": train[args.n_synthetic :], "real_train_labels": train_y[args.n_synthetic :]}

    t0 = time.perf_counter()
    embedder = SentenceEmbedder()  # no cache_dir: every text is embedded (cold)
    _ = embedder.dim  # loads the model, so its cost is reported on its own line
    timings: dict[str, float] = {"model load": time.perf_counter() - t0}
    result = compute_gap(
        syn, syn_y, real, real_y, 2, embedder, {"vs_train": args.vs_train}, seed=0, timings=timings, **train_kw
    )
    total = time.perf_counter() - t0

    print(f"texts: synthetic={len(syn)} real={len(real)} embedded={embedder.n_computed} cpu_threads={os.cpu_count()}")
    print("stage seconds:")
    for key, sec in timings.items():
        print(f"  {key:28s} {sec:8.3f}")
    print(f"  {'other (subsampling, glue)':28s} {total - sum(timings.values()):8.3f}")
    print("metrics:")
    for key, val in result.items():
        print(f"  {key:28s} {val:8.4f}")
    print(f"gap_seconds={total:.3f}")


if __name__ == "__main__":
    main()
