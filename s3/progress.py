"""Live progress of the LLM phases (rationales, the seed set, each extrapolation round).

A phase is a ``with llm_phase("seed set", target=200):`` block. Inside it every LLM call reports what it was
asked and what it has answered (``asked``/``answered``, called by ``LLM.generate`` and by the backends per batch),
and the synthesizer reports the rows its checks kept (``kept``). LLM calls inside ``with scoring():`` (the label
check scores rows, it writes nothing) are counted as label scores, apart from the answers. On a terminal that is one
live bar: answers done / asked, tokens per second, label scores, rows kept so far; elsewhere (a log file, CI) a
line every ``LOG_EVERY_S`` seconds. Either way the phase ends with one summary line in the run log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from s3.console import live_console

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # without a terminal: a progress line this often


class Phase:
    """Counters of one LLM phase and how they are shown."""

    def __init__(self, name: str, target: int | None, live: bool) -> None:
        self.name, self.target = name, target
        self.asked = self.answered = self.tokens = self.kept = 0
        self.to_score = self.scored = 0  # label-check scorings: asked, done
        self.started = self.last_line = time.perf_counter()
        self.lock = threading.Lock()  # backends report from worker threads
        self.bar: Any = None
        if live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "answers · {task.fields[rate]} tok/s · {task.fields[scored]} label scores · {task.fields[kept]} kept"
                ),
                TimeElapsedColumn(),
                transient=True,
            )
            self.task = self.bar.add_task(name, total=None, rate="-", scored=0, kept=self._kept_text())
            self.bar.start()
        else:  # a line now, so a log shows the phase began even before its first batch is answered
            log.info("%s: started%s", name, f" (target: {target} rows)" if target is not None else "")

    def _kept_text(self) -> str:
        return f"{self.kept}/{self.target}" if self.target is not None else str(self.kept)

    def report(self, answers: int, tokens: int = 0) -> None:
        with self.lock:
            self.answered += answers
            self.tokens += tokens
            self.update()

    def report_scored(self, scorings: int, tokens: int = 0) -> None:
        with self.lock:
            self.scored += scorings
            self.update()

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task,
                total=self.asked,
                completed=self.answered,
                rate=f"{self.rate():.0f}",
                scored=self.scored,
                kept=self._kept_text(),
            )
        elif time.perf_counter() - self.last_line >= LOG_EVERY_S:
            self.last_line = time.perf_counter()
            log.info("%s: %s", self.name, self.status())

    def status(self) -> str:
        return (
            f"{self.answered}/{self.asked} answers, {self.tokens} tokens ({self.rate():.0f} tok/s), "
            + (f"{self.scored}/{self.to_score} label scores, " if self.to_score else "")
            + f"{self._kept_text()} rows kept, {time.perf_counter() - self.started:.0f} s"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        log.info("%s done: %s", self.name, self.status())


_phase: ContextVar[Phase | None] = ContextVar("s3_llm_phase", default=None)
_scoring: ContextVar[bool] = ContextVar("s3_llm_scoring", default=False)


@contextmanager
def llm_phase(name: str, target: int | None = None, live: bool | None = None) -> Iterator[Phase]:
    """Count and show the LLM work inside the block (``target``: the rows it should keep). ``live``: a bar
    (default: when stderr is a terminal)."""
    phase = Phase(name, target, live_console() if live is None else live)
    token = _phase.set(phase)
    try:
        yield phase
    finally:
        _phase.reset(token)
        phase.close()


@contextmanager
def scoring() -> Iterator[None]:
    """LLM calls in the block score rows (a label check): counted as label scores, not as answers."""
    token = _scoring.set(True)
    try:
        yield
    finally:
        _scoring.reset(token)


def asked(answers: int) -> None:
    """An LLM call was asked for this many answers."""
    if (phase := _phase.get()) is not None:
        if _scoring.get():
            phase.to_score += answers
        else:
            phase.asked += answers
        phase.update()


def answered(answers: int, tokens: int = 0) -> None:
    """This many answers (with this many new tokens) are done."""
    reporter()(answers, tokens)


def reporter() -> Callable[[int, int], None]:
    """``answered`` bound to the current phase, for worker threads (which do not see the caller's context)."""
    phase = _phase.get()
    if phase is None:
        return lambda answers, tokens=0: None
    return phase.report_scored if _scoring.get() else phase.report


def answered_so_far() -> int:
    phase = _phase.get()
    if phase is None:
        return 0
    return phase.scored if _scoring.get() else phase.answered


def kept(rows: int) -> None:
    """The checks kept this many more rows."""
    if (phase := _phase.get()) is not None:
        phase.kept += rows
        phase.update()
