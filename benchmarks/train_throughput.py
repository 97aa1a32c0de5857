"""Small-model training speed: our dynamic padding + length bucketing vs fixed padding to 512.

The official S3 training script pads every example to 512 tokens. Same data, model, seed and epochs
through both; prints examples/s, the ratio and test accuracy. Last line: speedup_vs_fixed_padding=<x>.

    .venv/bin/python benchmarks/train_throughput.py [--task sst2] [--n-train 600] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from hydra.utils import instantiate

from s3.classifier import SmallModelConfig, scores, small_model_config, train_classifier
from s3.config import compose_config, default_data_dir
from s3.data import load_real_data, stratified_sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--small-model", default="minilm")
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    cfg = compose_config([f"task={args.task}", f"small_model={args.small_model}"])
    task = instantiate(cfg.task)
    base: SmallModelConfig = small_model_config(cfg.small_model)
    base = dataclasses.replace(base, max_epochs=args.epochs, max_length=512)
    real = load_real_data(task, default_data_dir(), 200, args.max_test, args.seed, need_train=True)
    train = stratified_sample(real.train, args.n_train, args.seed)

    results = {}
    for label, cfg in [
        ("dynamic padding + bucketing (ours)", base),
        ("fixed padding to 512 (official S3 script)", dataclasses.replace(base, pad_to_max_length=True)),
    ]:
        clf = train_classifier(train, real.gold_val, task, cfg, args.seed, progress=False)
        test = scores(clf.predict_proba(real.test), real.test)
        results[label] = (clf.examples_per_second, test["acc"])
        print(
            f"{label:45s} {clf.examples_per_second:8.1f} ex/s  train {clf.train_seconds:7.1f} s  "
            f"test_acc {test['acc']:.4f}",
            flush=True,
        )

    (ours_speed, ours_acc), (fixed_speed, fixed_acc) = results.values()
    print(
        f"task={args.task} model={base.name} n_train={args.n_train} epochs={args.epochs} "
        f"precision={base.precision} test_rows={len(real.test)}"
    )
    print(f"accuracy difference (ours - fixed): {100 * (ours_acc - fixed_acc):+.2f} points")
    print(f"speedup_vs_fixed_padding={ours_speed / fixed_speed:.2f}")


if __name__ == "__main__":
    main()
