"""bf16 vs ``auto`` on this machine: small-model training and embedded-LLM generation, side by side.

``auto`` (the default of ``small_model.precision`` and the transformers LLM's ``dtype``) is bf16 where the hardware
has bf16 kernels and float32 on a CPU without them (``s3.hardware``); where bf16 is native both rows are the same
setting. Same rows, model, seed and prompts through both. Last line: ``auto_speedup_train=<x>`` (examples/s of
auto over bf16-mixed).

    .venv/bin/python benchmarks/precision.py [--n-train 48] [--prompts 16] [--max-tokens 32] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import command_line, write_section  # noqa: E402
from benchmarks.synthesis_throughput import make_requests  # noqa: E402
from s3.classifier import small_model_config, train_classifier  # noqa: E402
from s3.config import compose_config, default_data_dir  # noqa: E402
from s3.data import load_real_data, stratified_sample  # noqa: E402
from s3.hardware import bf16_is_native, llm_dtype, training_precision  # noqa: E402
from s3.llm.models import default_cache_dir  # noqa: E402
from s3.llm.transformers_backend import TransformersLLM  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="put the figures into benchmarks/RESULTS.md")
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    cfg = compose_config([f"task={args.task}"])
    task = instantiate(cfg.task)
    base = dataclasses.replace(small_model_config(cfg.small_model), max_epochs=1, head_init="random")
    real = load_real_data(task, default_data_dir(), 32, 32, args.seed, need_train=True)
    train = stratified_sample(real.train, args.n_train, args.seed)
    lines = [f"CPU bf16 kernels: {bf16_is_native('cpu')}; auto = {training_precision('auto', 'cpu')} training, "
             f"{llm_dtype('auto', 'cpu')} LLM weights", ""]  # fmt: skip
    lines += ["| setting | small model ex/s | LLM tok/s |", "|---|---|---|"]
    speed = {}
    for precision, dtype in (("bf16-mixed", "bfloat16"), ("auto", "auto")):
        clf = train_classifier(train, real.gold_val, task, dataclasses.replace(base, precision=precision), args.seed,
                               progress=False)  # fmt: skip
        llm = TransformersLLM("embedded:smollm2", dtype=dtype, batch_size=args.prompts,
                              cache_dir=str(default_cache_dir()))  # fmt: skip
        start = time.perf_counter()
        out = llm.generate(make_requests(args.prompts, args.max_tokens))
        tok_s = sum(c[0].completion_tokens for c in out) / (time.perf_counter() - start)
        llm.close()
        speed[precision] = (clf.examples_per_second, tok_s)
        lines.append(f"| {precision} / {dtype} | {clf.examples_per_second:.1f} | {tok_s:.1f} |")
        print(lines[-1], flush=True)
    (bf16_train, bf16_llm), (auto_train, auto_llm) = speed.values()
    lines += ["", f"{args.n_train} {args.task} rows, 1 epoch; {args.prompts} prompts x {args.max_tokens} new tokens, "
              "one batch", "", f"auto_speedup_llm={auto_llm / bf16_llm:.2f}",
              f"auto_speedup_train={auto_train / bf16_train:.2f}"]  # fmt: skip
    print("\n".join(lines[-4:]))
    if args.write:
        write_section("precision", "bf16 vs auto precision: `benchmarks/precision.py`", command_line(),
                      "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
