"""Synthesis throughput: naive loop vs our batched backend vs vLLM vs a cached re-run.

The same N label-conditioned prompts (max_tokens new tokens, sampled, one seed
per prompt) go through
  (a) a naive loop: plain transformers `generate`, one prompt at a time,
  (b) our batched TransformersLLM (through the disk cache, so cache writes count),
  (c) in-process vLLM (CPU build here; engine start reported separately),
  (d) a re-run of (b) served from the cache,
plus the raw `model.generate` calls (b) makes, to measure our overhead.

The last line printed is `speedup_vs_naive=<float>` (tokens/s of b over a).
Usage: python benchmarks/synthesis_throughput.py [--n 64] [--naive-limit K] [--no-vllm]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

import torch

from s3.llm.base import ChatRequest, Sampling
from s3.llm.cache import CachedLLM
from s3.llm.models import default_cache_dir
from s3.llm.transformers_backend import TransformersLLM

LABELS = ["positive", "negative"]
TOPICS = [
    "a heist thriller",
    "a family cartoon",
    "a war drama",
    "a space opera",
    "a romantic comedy",
    "a slasher film",
    "a biopic",
    "a musical",
]


@dataclass
class Result:
    name: str
    seconds: float
    examples: int
    tokens: int

    def line(self) -> str:
        return (f"{self.name:<34} {self.seconds:8.2f} s  {self.examples:4d} ex  {self.tokens:6d} tok  "
                f"{self.tokens / self.seconds:9.1f} tok/s  {self.examples / self.seconds:7.2f} ex/s")  # fmt: skip


def make_requests(n: int, max_tokens: int) -> list[ChatRequest]:
    return [
        ChatRequest.from_messages(
            [
                {
                    "role": "user",
                    "content": f"Write a {LABELS[i % 2]} movie review of {TOPICS[i // 2 % len(TOPICS)]} (review #{i}).",
                }
            ],
            Sampling(temperature=1.0, max_tokens=max_tokens, seed=i),
        )
        for i in range(n)
    ]


def run_ours(llm: CachedLLM, reqs: list[ChatRequest], name: str) -> Result:
    start = time.perf_counter()
    out = llm.generate(reqs)
    return Result(name, time.perf_counter() - start, len(out), sum(c[0].completion_tokens for c in out))


def generated_tokens(row: list[int], eos_ids: list[int]) -> int:
    """Tokens up to and including the first EOS (what TransformersLLM reports as completion_tokens)."""
    return next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))


@torch.inference_mode()
def run_raw_batches(backend: TransformersLLM, reqs: list[ChatRequest]) -> Result:
    """What (b) costs with nothing of ours around it: the same sorted, padded batches straight into HF generate."""
    prompts = sorted((backend.prompt(r) for r in reqs), key=len, reverse=True)
    start, tokens = time.perf_counter(), 0
    for b in range(0, len(prompts), backend.batch_size):
        inputs = backend._pad_left(prompts[b : b + backend.batch_size])
        gen = backend.model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                                     max_new_tokens=reqs[0].sampling.max_tokens, eos_token_id=backend.eos_ids,
                                     pad_token_id=backend.tokenizer.pad_token_id)  # fmt: skip
        new = gen[:, inputs["input_ids"].shape[1] :]
        tokens += sum(generated_tokens(row, backend.eos_ids) for row in new.tolist())
    return Result("raw HF generate, same batches", time.perf_counter() - start, len(prompts), tokens)


@torch.inference_mode()
def run_naive(backend: TransformersLLM, reqs: list[ChatRequest], dtype: str) -> Result:
    """One prompt at a time, plain transformers (its own model copy in `dtype`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(backend.model.name_or_path, dtype=getattr(torch, dtype)).eval()
    start, tokens = time.perf_counter(), 0
    for r in reqs:
        ids = torch.tensor([backend.prompt(r)])
        torch.manual_seed(r.sampling.seed or 0)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                             max_new_tokens=r.sampling.max_tokens, eos_token_id=backend.eos_ids,
                             pad_token_id=backend.tokenizer.pad_token_id)  # fmt: skip
        tokens += generated_tokens(out[0, ids.shape[1] :].tolist(), backend.eos_ids)
    return Result(f"(a) naive loop ({dtype})", time.perf_counter() - start, len(reqs), tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16", help="dtype of our backend")
    ap.add_argument(
        "--naive-dtype", default="float32", help="float32: on CPU, batch-1 bf16 generate is far slower than fp32"
    )
    ap.add_argument(
        "--naive-limit",
        type=int,
        default=0,
        help="time the naive loop on the first K prompts only and extrapolate (0: all)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for (a)/(b) (0: torch default); fewer thrash less on a shared box",
    )
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reqs = make_requests(args.n, args.max_tokens)
    shared = default_cache_dir()
    backend = TransformersLLM(
        model="embedded:smollm2", dtype=args.dtype, batch_size=args.batch_size, cache_dir=str(shared)
    )
    backend.generate(reqs[:2])  # warm-up (kernel selection, first-call allocations)
    print(
        f"N={args.n} prompts, {args.max_tokens} new tokens, batch_size={args.batch_size}, torch threads={torch.get_num_threads()}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        llm = CachedLLM(backend, tmp)
        ours = run_ours(llm, reqs, f"(b) ours, batched ({args.dtype})")
        print(ours.line(), flush=True)
        cached = run_ours(llm, reqs, "(d) ours, cached re-run")
        print(cached.line(), flush=True)
    raw = run_raw_batches(backend, reqs)
    print(raw.line(), flush=True)

    subset = reqs[: args.naive_limit] if args.naive_limit else reqs
    naive = run_naive(backend, subset, args.naive_dtype)
    print(
        naive.line() + ("" if len(subset) == len(reqs) else f"   (timed on {len(subset)} of {len(reqs)} prompts)"),
        flush=True,
    )
    backend.close()

    vllm_res = None
    if not args.no_vllm:
        from s3.llm.vllm_backend import VLLMBackend

        start = time.perf_counter()
        engine = VLLMBackend("embedded:smollm2", max_model_len=1024, cache_dir=str(shared))
        print(f"(c) vLLM engine start: {time.perf_counter() - start:.1f} s", flush=True)
        engine.generate(reqs[:2])  # warm-up
        start = time.perf_counter()
        out = engine.generate(reqs)
        vllm_res = Result(
            "(c) vLLM in-process (CPU)", time.perf_counter() - start, len(out), sum(c[0].completion_tokens for c in out)
        )
        print(vllm_res.line(), flush=True)
        engine.close()

    tps = lambda r: r.tokens / r.seconds  # noqa: E731
    print(
        f"(b)/(a) tokens/s: {tps(ours) / tps(naive):.1f}x   examples/s: {(ours.examples / ours.seconds) / (naive.examples / naive.seconds):.1f}x"
    )
    if vllm_res:
        print(f"(c)/(b) tokens/s: {tps(vllm_res) / tps(ours):.2f}x")
    print(f"overhead of ours vs raw backend calls (per token): {tps(raw) / tps(ours) - 1:+.1%}")
    print(f"(d) wall time as a share of (b): {cached.seconds / ours.seconds:.2%}")
    print(f"speedup_vs_naive={tps(ours) / tps(naive):.3f}")


if __name__ == "__main__":
    main()
