"""What the console shows: the run's own progress lines. Third-party chatter (transformers load reports and
weight-loading bars, Lightning tips and device lines, deprecation notices, Hub retries, vLLM and faiss info) is
filtered unless ``verbose=true``; warnings and errors of every library still show."""

from __future__ import annotations

import logging
import os
import warnings

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


def quiet_libraries(verbose: bool = False) -> None:
    """Raise third-party loggers to WARNING (ERROR for the Hub's retry notices) and mute known noise."""
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
