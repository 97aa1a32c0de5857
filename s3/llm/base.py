"""Backend-agnostic LLM interface: requests, completions, usage accounting.

Every backend generates *one sample per unit*: a request with `n` samples is
expanded into `n` single-sample units, each with its own derived seed
(`sample_seed`). That single rule makes each sample's seed independent of
batch composition, lets the cache store and reuse samples one index at a time
(ask n=4 after n=2 and only 2 are generated), and gives vLLM one SamplingParams
per sample (a shared seeded object would correlate them). A sample's numerics
still depend on its batch (a batched backend computes a request differently
beside other requests), so the cache, not the seed, reproduces an answer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace

from s3 import progress
from s3.config import UserError

log = logging.getLogger(__name__)


class LLMUnavailableError(UserError):
    """The backend (e.g. an OpenAI-compatible server) cannot be reached: shown as one line, like bad input."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; hashable so they can go into the cache key."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if self.choices is not None:
            if not self.choices:
                raise ValueError("ChatRequest.choices must be non-empty when given")
            object.__setattr__(self, "choices", tuple(self.choices))

    @classmethod
    def from_messages(
        cls,
        msgs: Iterable[Mapping[str, str] | Message],
        sampling: Sampling | None = None,
        choices: Sequence[str] | None = None,
    ) -> ChatRequest:
        messages = tuple(m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in msgs)
        return cls(messages, sampling or Sampling(), tuple(choices) if choices is not None else None)

    @property
    def answer_started(self) -> bool:
        """The last message is the assistant's: the start of the answer, for the model to continue."""
        return bool(self.messages) and self.messages[-1].role == "assistant"

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def unit(self, index: int) -> ChatRequest:
        """The single-sample request that produces sample `index` of this one."""
        s = self.sampling
        return replace(self, sampling=replace(s, n=1, seed=sample_seed(s.seed, index)))


PROMPT_TOO_LONG = "prompt_too_long"  # a Completion's finish_reason: the prompt and its answer exceed the context
# Finish reasons of a completion that is not an answer: a skipped prompt, or a generation the engine cut off (vLLM
# ends a request it aborted or failed with these). Never cached; the synthesizer drops them under their reason.
NOT_ANSWERS = (PROMPT_TOO_LONG, "abort", "error")


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    # log P(text | prompt) for constrained choices, from backends that score (transformers, vLLM); None elsewhere
    logprob: float | None = None

    @property
    def is_answer(self) -> bool:
        """False for a skipped prompt or a generation the engine cut off (``NOT_ANSWERS``): its text is not used."""
        return self.finish_reason not in NOT_ANSWERS


def skip_too_long(units: Sequence[ChatRequest], lengths: Sequence[int], context: int | None) -> dict[int, Completion]:
    """The units whose prompt (``lengths``, in tokens) leaves no room for their answer in a ``context``-token
    window, as empty completions: a backend skips them (counted, and dropped by the synthesizer) instead of
    failing the whole batch or generating from a cut prompt."""
    if not context:
        return {}
    skipped = {
        i: Completion("", n, 0, PROMPT_TOO_LONG)
        for i, (u, n) in enumerate(zip(units, lengths))
        if n + u.sampling.max_tokens > context
    }
    if skipped:
        log.warning(
            "%d of %d prompts do not fit the %d-token context with their answer: skipped",
            len(skipped),
            len(units),
            context,
        )
    return skipped


@dataclass
class Usage:
    """Counters per call site. `backend_calls` counts requests that reached the backend (cache misses)."""

    requests: int = 0
    backend_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def usage_totals(usage: Mapping[str, Usage]) -> Usage:
    """Sum over call sites."""
    return sum(usage.values(), Usage())


def usage_diff(after: Mapping[str, Usage], before: Mapping[str, Usage]) -> dict[str, Usage]:
    """Per-call-site usage between two `LLM.usage()` snapshots (per-round accounting)."""
    return {k: v - before.get(k, Usage()) for k, v in after.items() if v != before.get(k, Usage())}


def sample_seed(seed: int | None, index: int) -> int | None:
    """Seed of sample `index`: index 0 keeps the request seed, others get a hashed, decorrelated one."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def render_plain(messages: Sequence[Message]) -> str:
    """Prompt for base models without a chat template: the message contents as a completion prompt."""
    text = "\n\n".join(m.content.strip() for m in messages)
    return text if messages and messages[-1].role == "assistant" else text + "\n"


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop string (OpenAI semantics); report whether one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _norm(s: str) -> str:
    return re.sub(r"[^\w]+", " ", s.lower()).strip()


def match_choice(text: str, choices: Sequence[str]) -> str | None:
    """Map a free-text answer to one of `choices`, tolerantly.

    Exact match, then case/punctuation-insensitive match, then the choice whose
    normalized form occurs earliest as a whole word in the text (longest wins a
    tie, so "very positive" beats "positive"). None if no choice is mentioned.
    """
    if text in choices:
        return text
    norm = _norm(text)
    for c in choices:
        if _norm(c) == norm:
            return c
    best: tuple[int, int, str] | None = None
    for c in choices:
        nc = _norm(c)
        if not nc:
            continue
        m = re.search(rf"(?<!\w){re.escape(nc)}(?!\w)", norm)
        if m and (best is None or (m.start(), -len(nc)) < best[:2]):
            best = (m.start(), -len(nc), c)
    return best[2] if best else None


def pick_choice(unit: ChatRequest, scores: Sequence[float]) -> int:
    """Which of ``unit.choices`` a backend that scores them answers: greedy takes the best log-likelihood;
    temperature > 0 draws from softmax(score / T) with the unit's seed (the same draw on every backend)."""
    import random

    import torch

    scored = torch.tensor(list(scores))
    if unit.sampling.temperature <= 0:
        return int(scored.argmax())
    seed = unit.sampling.seed if unit.sampling.seed is not None else random.randrange(2**31)
    weights = torch.softmax(scored / unit.sampling.temperature, -1)
    return int(torch.multinomial(weights, 1, generator=torch.Generator().manual_seed(seed)))


class LLM(ABC):
    """A text generator. Subclasses implement `_generate_units` on single-sample requests."""

    name: str
    # whether a request whose last message is the assistant's is continued (an answer started for the model);
    # chat APIs such as OpenAI's answer it as a new turn instead
    continues_answers: bool = False
    # the weights' precision as they run (transformers, vLLM): answers cached under one are not reused under another.
    # None: a server's, which the client cannot see
    precision: str | None = None

    _on_answer: Callable[[int, Completion], None] | None = None  # the running call's, while it runs

    def __init__(self) -> None:
        self._usage: dict[str, Usage] = {}

    def generate(
        self,
        requests: Sequence[ChatRequest],
        call_site: str = "default",
        count: bool = True,
        on_answer: Callable[[int, Completion], None] | None = None,
    ) -> list[list[Completion]]:
        """One list of `n` completions per request, in request order. Progress goes to the current LLM phase
        (``s3.progress``; ``count=False``: a wrapper such as the cache has already counted these answers).

        ``on_answer(i, completion)`` gets sample ``i`` (counted over the requests' samples in order) once, as soon
        as the backend has it: after each batch or request where the backend hands them over (see ``_hand_over``;
        a server backend's worker threads may do so even after a failed call has returned), else at the end. The
        cache stores answers this way, so an interrupted long call keeps what it finished.
        """
        start = time.perf_counter()
        units = [r.unit(i) for r in requests for i in range(r.sampling.n)]
        if count:
            progress.asked(len(units))
        before = progress.answered_so_far()
        handed: set[int] = set()
        lock = threading.Lock()  # server backends hand answers over from worker threads

        def hand(i: int, c: Completion) -> None:
            with lock:
                if i not in handed:
                    if on_answer is not None:
                        on_answer(i, c)
                    handed.add(i)  # after: an answer whose hand-over failed is handed over again below

        self._on_answer = hand
        try:
            flat = self._generate_units(units) if units else []
        finally:
            self._on_answer = None
        for i, c in enumerate(flat):
            if i not in handed:
                hand(i, c)
        unreported = len(units) - (progress.answered_so_far() - before)  # backends may report per batch
        if unreported > 0:
            tokens = sum(c.completion_tokens for c in flat) if unreported == len(units) else 0
            progress.answered(unreported, tokens)
        out, pos = [], 0
        for r in requests:
            out.append(flat[pos : pos + r.sampling.n])
            pos += r.sampling.n
        self._record(
            call_site,
            Usage(
                requests=len(requests),
                backend_calls=len(requests),
                prompt_tokens=sum(c.prompt_tokens for c in flat),
                completion_tokens=sum(c.completion_tokens for c in flat),
                seconds=time.perf_counter() - start,
            ),
        )
        return out

    @abstractmethod
    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        """Generate exactly one completion per unit (`unit.sampling.n == 1`, seed already per sample)."""

    def _hand_over(self, unit: int, completion: Completion) -> None:
        """A backend that has one of its units' answers before the whole call is done hands it to the caller
        (from the calling thread; worker threads take ``self._on_answer`` when their call starts instead)."""
        if (hand := self._on_answer) is not None:
            hand(unit, completion)

    def usage(self) -> dict[str, Usage]:
        """Cumulative usage per call site (a copy: safe to keep as a snapshot)."""
        return {k: replace(v) for k, v in self._usage.items()}

    def _record(self, call_site: str, delta: Usage) -> None:
        self._usage[call_site] = self._usage.get(call_site, Usage()) + delta

    def close(self) -> None:
        """Free model / engine memory. Default: nothing to free."""

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "ChatRequest",
    "Completion",
    "LLM",
    "LLMUnavailableError",
    "NOT_ANSWERS",
    "PROMPT_TOO_LONG",
    "Message",
    "Sampling",
    "Usage",
    "match_choice",
    "render_plain",
    "sample_seed",
    "skip_too_long",
    "truncate_at_stop",
    "usage_diff",
    "usage_totals",
]
