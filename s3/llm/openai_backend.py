"""OpenAI-compatible HTTP backend (e.g. a `vllm serve` endpoint).

The API key is read from the environment variable *named* in the config at
client construction and lives only inside the `openai` client: never in the
config, our repr, or our logs. Retries are ours (tenacity; the client's are
disabled) so that an unreachable server turns into one `LLMUnavailableError`
within a bounded time instead of a stack of client tracebacks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from functools import partial

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from s3 import progress
from s3.config import URL_CREDENTIALS
from s3.llm.base import LLM, ChatRequest, Completion, LLMUnavailableError, match_choice

log = logging.getLogger(__name__)

_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)


class OpenAIBackend(LLM):
    def __init__(
        self,
        model: str,  # the served model name
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str = "OPENAI_API_KEY",  # the env var holding the key (the key never goes in a config)
        max_concurrency: int = 16,
        max_retries: int = 4,
        backoff_s: float = 0.5,  # exponential: 0.5, 1, 2, 4 s
        request_timeout_s: float = 120.0,
        total_timeout_s: float = 3600.0,  # bound on one generate() call
        structured_choices: bool = True,  # vLLM structured_outputs {"choice": [...]}; free-text matching if rejected
    ) -> None:
        super().__init__()
        self.name = f"openai:{model}"  # not the URL: a restarted server on another port keeps its cache
        self.model = model
        self.base_url = base_url
        self.shown_url = URL_CREDENTIALS.sub(r"\1***@", base_url)  # for messages and logs: no credentials
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.total_timeout_s = total_timeout_s
        self.structured_choices = structured_choices
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",  # local vLLM servers accept any key
            timeout=request_timeout_s,
            max_retries=0,
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.shown_url!r}, api_key_env={self.api_key_env!r})"

    def _unavailable(self, why: object) -> LLMUnavailableError:
        return LLMUnavailableError(
            URL_CREDENTIALS.sub(
                r"\1***@", f"LLM server at {self.shown_url} is unavailable: {type(why).__name__}: {why}".splitlines()[0]
            )
        )

    def _create(self, kwargs: dict, deadline: float, stop: threading.Event, warned: set[int]) -> object:
        """One chat completion; connection errors, timeouts, rate limits and 5xx are retried with exponential
        back-off (``max_retries`` times, never past ``deadline``, never after ``stop``: another request of the
        batch has failed), then become one ``LLMUnavailableError``. Each retry round is logged once per batch
        (``warned``), not once per concurrent request."""

        def past_deadline(state: RetryCallState) -> bool:
            return time.monotonic() + self.backoff_s * 2 ** (state.attempt_number - 1) > deadline

        def first_to_say(attempt: int) -> bool:
            with self._lock:
                fresh = attempt not in warned
                warned.add(attempt)
            return fresh

        retrying = Retrying(
            retry=retry_if_exception_type(_RETRYABLE),
            wait=wait_exponential(multiplier=self.backoff_s, exp_base=2, min=self.backoff_s),
            stop=stop_after_attempt(self.max_retries + 1) | past_deadline | (lambda _: stop.is_set()),
            sleep=stop.wait,  # a back-off wakes up as soon as the batch has failed
            before_sleep=lambda state: (
                stop.is_set()
                or not first_to_say(state.attempt_number)
                or log.warning(
                    "%s: %s, retry %d/%d",
                    self.shown_url,
                    type(state.outcome.exception()).__name__,
                    state.attempt_number,
                    self.max_retries,
                )
            ),
            reraise=True,
        )
        try:
            return retrying(self._client.chat.completions.create, **kwargs)
        except _RETRYABLE as e:
            raise self._unavailable(e) from None

    def _call(
        self,
        unit: ChatRequest,
        deadline: float,
        stop: threading.Event,
        warned: set[int],
        report: Callable[[int, int], None] = lambda answers, tokens=0: None,
    ) -> Completion:
        s = unit.sampling
        kwargs = dict(
            model=self.model,
            messages=unit.as_dicts(),
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
        )
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if s.stop:
            kwargs["stop"] = list(s.stop)
        constrained = unit.choices is not None and self.structured_choices
        if constrained:
            kwargs["extra_body"] = {"structured_outputs": {"choice": list(unit.choices)}}  # type: ignore[arg-type]
        while True:
            try:
                resp = self._create(kwargs, deadline, stop, warned)
                break
            except openai.BadRequestError as e:
                if not constrained:
                    raise
                log.warning(
                    "%s rejected structured choices (%s); matching free text instead", self.shown_url, e.status_code
                )
                with self._lock:
                    self.structured_choices = constrained = False
                kwargs.pop("extra_body")
        choice = resp.choices[0]
        text = choice.message.content or ""
        reason = choice.finish_reason or "stop"
        if unit.choices is not None and text not in unit.choices:
            matched = match_choice(text, unit.choices)
            if matched is None:
                log.warning("answer %r matches none of %s", text[:80], list(unit.choices))
                reason = "unmatched_choice"
            text = matched or text
        usage = resp.usage
        done = Completion(text, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, reason)
        report(1, done.completion_tokens)  # before the future completes: the caller's count then already has it
        return done

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        deadline = time.monotonic() + self.total_timeout_s
        stop = threading.Event()  # set when the batch is over: requests still retrying give up quietly
        warned: set[int] = set()  # retry rounds already logged for this batch
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(units))))
        try:
            report = progress.reporter()  # requests finish in worker threads, which report before they return
            futures = [pool.submit(self._call, u, deadline, stop, warned, report) for u in units]
            hand = self._on_answer  # this call's, also for answers that arrive after it has failed
            for i, f in enumerate(futures):  # each answer to the caller as it arrives (the cache keeps it)
                f.add_done_callback(partial(hand_over_done, hand, i))
            done, pending = wait(futures, timeout=self.total_timeout_s, return_when=FIRST_EXCEPTION)
            for f in done:
                if (e := f.exception()) is not None:
                    raise e
            if pending:
                raise self._unavailable(
                    TimeoutError(f"{len(pending)} requests unfinished after {self.total_timeout_s:.0f}s")
                )
            return [f.result() for f in futures]
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)  # running requests stop retrying (stop is set)


def hand_over_done(hand: Callable[[int, Completion], None] | None, unit: int, future: Future) -> None:
    if hand is not None and not future.cancelled() and future.exception() is None:
        hand(unit, future.result())
