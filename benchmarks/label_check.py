"""How well can each embedded LLM check a synthetic row's label? Measured on real, gold-labelled rows.

The noisy-channel check (``loop.label_check=channel``) scores log P(text | "write one <label> ...") per label.
For each LLM in --llms, and for their sum (an ensemble), on --rows stratified validation rows: accuracy as a
classifier (argmax), and at each margin the share of rows kept with their true label and with a flipped one
(a good check keeps the first and drops the second).

    .venv/bin/python benchmarks/label_check.py [--task sst2] [--llms smollm2,gemma3_270m] [--rows 200]
"""

from __future__ import annotations

import argparse
import time

from hydra.utils import instantiate

from s3.config import compose_config, default_data_dir
from s3.data import load_split, stratified_sample
from s3.filters import LLMLabelCheck
from s3.llm import build_llm


def report(name: str, scores: list[list[float]], labels: list[int], margins: list[float]) -> None:
    # gap > 0: another label explains the row better than its own, by that many nats
    gaps = [max(v for k, v in enumerate(s) if k != y) - s[y] for s, y in zip(scores, labels)]
    n = len(labels)
    acc = sum(g < 0 for g in gaps) / n
    cells = []
    for m in margins:  # binary tasks: the flipped label's gap is -gap
        cells.append(f"{100 * sum(g <= m for g in gaps) / n:.0f}/{100 * sum(-g <= m for g in gaps) / n:.0f}")
    print(f"| {name} | {100 * acc:.1f} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--llms", default="smollm2,gemma3_270m")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--margins", default="0,0.5,1,2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    margins = [float(m) for m in args.margins.split(",")]
    cfg = compose_config([f"task={args.task}"])
    task = instantiate(cfg.task)
    rows = stratified_sample(load_split(task, "validation", default_data_dir()), args.rows, args.seed)
    labels = [r["label"] for r in rows]
    per_llm = {}
    for name in args.llms.split(","):
        llm_cfg = compose_config([f"task={args.task}", f"llm={name}", "llm.cache=false"])  # time the scoring itself
        start = time.perf_counter()
        llm = build_llm(llm_cfg.llm, llm_cfg.paths.cache_dir)
        scores = LLMLabelCheck(llm, task, "channel", margin=1.0).channel_scores(rows)
        if scores is None:
            raise SystemExit(f"{name}: this backend returns no log-likelihoods")
        per_llm[name] = scores
        print(f"{name}: scored {len(rows)} rows x {len(task.labels)} labels in {time.perf_counter() - start:.0f} s")
        llm.close()
    print(
        f"\n{args.task}, {len(rows)} validation rows; kept right/flipped (%) at margin " + ", ".join(map(str, margins))
    )
    print("| checker | accuracy | " + " | ".join(f"m={m}" for m in margins) + " |")
    print("|---|---|" + "---|" * len(margins))
    for name, scores in per_llm.items():
        report(name, scores, labels, margins)
    if len(per_llm) > 1:
        summed = [[sum(v) for v in zip(*per_row)] for per_row in zip(*per_llm.values())]
        report(" + ".join(per_llm), summed, labels, margins)


if __name__ == "__main__":
    main()
