"""LLM layer: one interface (`LLM.generate`) over transformers, in-process vLLM and OpenAI-compatible servers."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from s3.llm.base import (
    LLM,
    NOT_ANSWERS,
    ChatRequest,
    Completion,
    LLMUnavailableError,
    Message,
    Sampling,
    Usage,
    match_choice,
    usage_diff,
    usage_totals,
)
from s3.llm.cache import CachedLLM


def build_llm(llm_cfg: DictConfig, cache_dir: str | Path) -> LLM:
    """Instantiate the backend named by `llm_cfg._target_`; wrap it in the disk cache at `<cache_dir>/llm` unless `cache: false`.

    Backends that convert embedded models get `cache_dir` too (`<cache_dir>/models`) unless the config sets its own.
    """
    from hydra.utils import instantiate

    cfg = OmegaConf.to_container(llm_cfg, resolve=True)
    assert isinstance(cfg, dict)
    use_cache = bool(cfg.pop("cache", True))
    if "cache_dir" in cfg and cfg["cache_dir"] is None:
        cfg["cache_dir"] = str(cache_dir)
    backend: LLM = instantiate(cfg, _convert_="all")
    return CachedLLM(backend, Path(cache_dir) / "llm") if use_cache else backend


__all__ = [
    "LLM",
    "CachedLLM",
    "ChatRequest",
    "Completion",
    "LLMUnavailableError",
    "Message",
    "NOT_ANSWERS",
    "Sampling",
    "Usage",
    "build_llm",
    "match_choice",
    "usage_diff",
    "usage_totals",
]
