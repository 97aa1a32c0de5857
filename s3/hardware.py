"""The device a run computes on, and the number format it can run fast there.

bf16 is the fast format on GPUs that support it and on CPUs with AVX512 or AMX (oneDNN's bf16 kernels). A CPU with
AVX2 only (many AMD EPYC and older Xeon servers, most laptops) has no bf16 kernels: PyTorch emulates them, and a
bf16 matmul there runs many times slower than float32. ``auto`` (the default for the small model's training precision
and the LLM's dtype: transformers, and vLLM on a CPU) picks bf16 where it is native and a full-speed format
elsewhere, and says so once.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


def auto_device() -> str:
    """Where a model goes when the config says ``auto``: the GPU if there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def bf16_is_native(device: str) -> bool:
    """Whether ``device`` (a torch device type: cuda, cpu, ...) runs bf16 with its own kernels."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # the default counts emulation (V100, T4)
    if device == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True  # other accelerators (mps, xpu) bring their own bf16 kernels


@functools.cache
def _fallback(device: str, what: str, chosen: str) -> None:
    log.info("%s: this %s has no bf16 kernels (a CPU needs AVX512 or AMX), so %s", what, device, chosen)


def training_precision(precision: str, device: str | None = None) -> str:
    """Lightning's ``precision`` for ``auto``: bf16-mixed where bf16 is native, else 16-mixed on a GPU with fast
    float16 (compute capability 7.0 or later) and 32-true elsewhere. Any other value is the user's choice, kept."""
    if precision != "auto":
        return precision
    device = torch.device(device or auto_device()).type
    if bf16_is_native(device):
        return "bf16-mixed"
    chosen = "16-mixed" if device == "cuda" and torch.cuda.get_device_capability() >= (7, 0) else "32-true"
    _fallback(device, "small model", f"it trains in {chosen}")
    return chosen


def llm_dtype(dtype: str, device: str) -> torch.dtype:
    """The weights' dtype for ``auto``: bfloat16 where bf16 is native, else float32 (float16 overflows in some
    models, e.g. Gemma 3). Any other value names a torch dtype and stays as given."""
    if dtype != "auto":
        return getattr(torch, dtype)
    device = torch.device(device).type
    if bf16_is_native(device):
        return torch.bfloat16
    _fallback(device, "LLM", "its weights are float32")
    return torch.float32


def autocast_bf16(precision: str, device: str) -> bool:
    """Whether inference autocasts to bf16: as trained (``precision``), where ``device`` has bf16 kernels (a model
    trained on a GPU may predict on an AVX2-only CPU)."""
    return training_precision(precision, device).startswith("bf16") and bf16_is_native(device)
