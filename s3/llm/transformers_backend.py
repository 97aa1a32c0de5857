"""Plain-transformers backend: batched, left-padded generation; no server, works offline.

Sampling is done by a per-row logits processor (temperature, top-p, Gumbel
noise from a per-row `torch.Generator`) under greedy `generate()`, because HF's
own sampler draws from one global RNG: the text of a row would then depend on
which other rows share its batch. Here a sample depends only on its prompt,
its parameters and its seed.
"""

from __future__ import annotations

import copy
import gc
import random
from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from s3 import progress
from s3.hardware import auto_device, llm_dtype
from s3.llm.base import LLM, ChatRequest, Completion, pick_choice, render_plain, skip_too_long, truncate_at_stop
from s3.llm.models import resolve_model


class _RowSampler(LogitsProcessor):
    """Turns greedy decoding into per-row seeded sampling (Gumbel-max trick)."""

    def __init__(self, units: Sequence[ChatRequest]) -> None:
        rng = random.SystemRandom()
        self.rows = [i for i, u in enumerate(units) if u.sampling.temperature > 0]  # others stay greedy
        self.temps = torch.tensor([units[i].sampling.temperature for i in self.rows])[:, None]
        nucleus = [(k, units[i].sampling.top_p) for k, i in enumerate(self.rows) if units[i].sampling.top_p < 1.0]
        self.top_p_rows = torch.tensor([k for k, _ in nucleus], dtype=torch.long)
        self.top_ps = torch.tensor([p for _, p in nucleus])[:, None]
        self.gens = [
            torch.Generator().manual_seed(s if (s := units[i].sampling.seed) is not None else rng.randrange(2**31))
            for i in self.rows
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        scores = scores.float()
        sub = scores[self.rows].cpu() / self.temps
        if len(self.top_p_rows):  # nucleus filter, all rows in one sort (a per-row loop was half the step time)
            rows = sub[self.top_p_rows]
            sorted_logits, idx = torch.sort(rows, descending=True, dim=-1)
            probs = torch.softmax(sorted_logits, -1)
            drop_sorted = probs.cumsum(-1) - probs >= self.top_ps  # keep the smallest prefix whose mass reaches p
            drop = torch.zeros_like(drop_sorted).scatter_(-1, idx, drop_sorted)
            sub[self.top_p_rows] = rows.masked_fill(drop, float("-inf"))
        noise = torch.empty_like(sub)
        for k, g in enumerate(self.gens):  # one generator per row: draws independent of the batch
            noise[k].exponential_(generator=g)
        scores[self.rows] = (sub - noise.log_()).to(scores.device)  # Gumbel-max: argmax samples softmax(sub)
        return scores


class TransformersLLM(LLM):
    """Any HF causal LM (id, local path, or `embedded:<name>`)."""

    continues_answers = True

    def __init__(
        self,
        model: str,  # a Hub id, a local checkpoint, or embedded:<name>
        dtype: str = "auto",  # auto: bfloat16 where the hardware has bf16 kernels, else float32 (s3.hardware)
        batch_size: int = 32,  # rows per generate() call
        device: str = "auto",  # cuda if available, else cpu
        chat_template: bool | None = None,  # None: the tokenizer's chat template when it has one
        cache_dir: str | None = None,  # None: build_llm's cache_dir (embedded models are converted there)
    ) -> None:
        super().__init__()
        self.name = f"transformers:{model}"
        self.model_spec = model
        self.batch_size = batch_size
        self.device = auto_device() if device == "auto" else device
        path = resolve_model(model, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=llm_dtype(dtype, self.device)).to(self.device).eval()
        )
        self.precision = str(self.model.dtype).removeprefix("torch.")
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError(f"{model}: chat_template=true but the tokenizer has no chat template")
        self.use_chat_template = has_template if chat_template is None else chat_template
        self.context = getattr(self.model.config, "max_position_embeddings", None)  # prompt + answer, in tokens
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = sorted({self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})

    def __repr__(self) -> str:
        return f"TransformersLLM(model={self.model_spec!r}, device={self.device!r}, batch_size={self.batch_size})"

    def prompt(self, request: ChatRequest) -> list[int]:
        """Token ids of the rendered prompt (chat template if the model has one, else plain text)."""
        if not self.use_chat_template:
            return self.tokenizer(render_plain(request.messages))["input_ids"]
        cont = request.answer_started
        text = self.tokenizer.apply_chat_template(
            request.as_dicts(), tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(units)
        prompts = [self.prompt(u) for u in units]
        free_units = [i for i, u in enumerate(units) if u.choices is None]  # label checks score short choices
        skipped = {
            free_units[j]: c
            for j, c in skip_too_long(
                [units[i] for i in free_units], [len(prompts[i]) for i in free_units], self.context
            ).items()
        }
        free: dict[tuple[str, ...], list[int]] = defaultdict(list)
        constrained: list[int] = []
        for i, u in enumerate(units):
            if i in skipped:
                out[i] = skipped[i]
            else:
                (constrained if u.choices is not None else free[u.sampling.stop]).append(i)
        for stop, idx in free.items():
            idx.sort(key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b : b + self.batch_size]
                batch = self._generate_batch([units[i] for i in chunk], [prompts[i] for i in chunk], stop)
                for i, c in zip(chunk, batch):
                    out[i] = c
                    self._hand_over(i, c)
                progress.answered(len(batch), sum(c.completion_tokens for c in batch))
        if constrained:
            for i, c in zip(
                constrained, self._choose([units[i] for i in constrained], [prompts[i] for i in constrained])
            ):
                out[i] = c
        return out  # type: ignore[return-value]

    def _pad_left(self, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        return {"input_ids": ids, "attention_mask": mask}

    @torch.inference_mode()
    def _generate_batch(
        self, units: Sequence[ChatRequest], prompts: Sequence[list[int]], stop: tuple[str, ...]
    ) -> list[Completion]:
        inputs = self._pad_left(prompts)
        gen = self.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=max(u.sampling.max_tokens for u in units),
            logits_processor=LogitsProcessorList([_RowSampler(units)]),
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=list(stop) or None,
            tokenizer=self.tokenizer if stop else None,
            top_k=None,
            top_p=None,
            temperature=None,  # silence model-default sampling warnings
        )[:, inputs["input_ids"].shape[1] :].tolist()
        results = []
        for u, p, row in zip(units, prompts, gen):
            row = row[: u.sampling.max_tokens]
            ended = next((k for k, t in enumerate(row) if t in self.eos_ids), None)
            if ended is not None:
                row = row[: ended + 1]
            text, stopped = truncate_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)
            reason = "stop" if ended is not None or stopped else "length"
            results.append(Completion(text, len(p), len(row), reason))
        return results

    @torch.inference_mode()
    def _choose(self, units: Sequence[ChatRequest], prompts: Sequence[list[int]]) -> list[Completion]:
        """Constrained choice: score each choice's log-likelihood (choice + EOS) given the prompt.

        Greedy picks the best; temperature > 0 samples from softmax(loglik / T) with the unit's seed. Choices that
        share a prompt share its forward pass (a label check asks the same per-label prompt for every row).
        """
        eos = self.eos_ids[:1]
        by_prompt: dict[tuple[int, ...], dict[str, float | None]] = defaultdict(dict)
        for u, p in zip(units, prompts):
            by_prompt[tuple(p)].update(dict.fromkeys(u.choices or ()))
        for prompt, choices in by_prompt.items():
            conts = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + eos for c in choices]
            for c, score in zip(choices, self._score_continuations(list(prompt), conts)):
                choices[c] = score
        results = []
        for u, p in zip(units, prompts):
            scores = [by_prompt[tuple(p)][c] for c in u.choices]  # type: ignore[union-attr]
            k = pick_choice(u, scores)  # type: ignore[arg-type]
            choice = u.choices[k]  # type: ignore[index]
            results.append(
                Completion(
                    choice,
                    len(p),
                    len(self.tokenizer(choice, add_special_tokens=False)["input_ids"]),
                    "stop",
                    logprob=float(scores[k]),  # type: ignore[arg-type]
                )
            )
        return results

    def _score_continuations(self, prompt: list[int], conts: Sequence[list[int]]) -> list[float]:
        """log P(cont | prompt) for each continuation: the prompt runs once, its KV cache is copied per batch of
        right-padded continuations (the padding sits after every scored token, so it changes nothing)."""
        out = self.model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        for b in range(0, len(conts), self.batch_size):
            chunk = conts[b : b + self.batch_size]
            width = max(map(len, chunk))
            cache = copy.deepcopy(out.past_key_values)
            cache.batch_repeat_interleave(len(chunk))
            ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], device=self.device)
            mask = torch.tensor([[1] * (len(prompt) + len(c)) + [0] * (width - len(c)) for c in chunk])
            logp = torch.log_softmax(
                self.model(input_ids=ids, attention_mask=mask.to(self.device), past_key_values=cache).logits.float(),
                -1,
            )
            for row, c in enumerate(chunk):
                rest = logp[row, torch.arange(len(c) - 1, device=self.device), torch.tensor(c[1:], device=self.device)]
                scores.append((first[c[0]] + rest.sum()).item())
        return scores

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
