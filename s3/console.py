"""What the console shows: the run's own progress lines. Third-party chatter (transformers load reports and
weight-loading bars, Lightning tips and device lines, deprecation notices, Hub retries, vLLM and faiss info) is
filtered unless ``verbose=true``; warnings and errors of every library still show."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

CHATTY_LOGGERS = (
    "pytorch_lightning",
    "lightning",
    "lightning.pytorch",
    "lightning_fabric",
    "transformers",
    "huggingface_hub",
    "datasets",
    "faiss",
    "vllm",
    "urllib3",
    "httpx",
)


_quiet = False  # set by quiet_libraries: whether native libraries' own stderr lines are muted too


def quiet_libraries(verbose: bool = False) -> None:
    """Raise third-party loggers to WARNING (ERROR for the Hub's retry notices) and mute known noise."""
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # "thrown while requesting HEAD ..." when offline
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # "Creating parquet from Arrow format" bars
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's pytree deprecation notice
    warnings.filterwarnings("ignore", message=r".*litlogger.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@contextmanager
def native_output_muted() -> Iterator[None]:
    """Mute what compiled code writes to stderr itself, past Python's logging and warnings (faiss's "WARNING
    clustering 400 points to 40 centroids" from MAUVE on a few hundred rows), unless ``verbose=true``. Errors still
    reach the caller as exceptions."""
    if not _quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def live_console() -> bool:
    """Whether stderr is a terminal: live bars there; elsewhere (a log file, CI) lines instead of redrawn bars."""
    return sys.stderr.isatty()
