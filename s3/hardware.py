"""The device a run computes on, and the number format it can run fast there.

bf16 is the fast format on GPUs that support it and on CPUs with AVX512 or AMX (oneDNN's bf16 kernels). A CPU with
AVX2 only (many AMD EPYC and older Xeon servers, most laptops) has no bf16 kernels: PyTorch emulates them, and a
bf16 matmul there runs many times slower than float32. ``auto`` (the default for the small model's training precision
and the transformers LLM's dtype) picks bf16 where it is native and a full-speed format elsewhere, and says so once.
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
        return torch.cuda.is_bf16_supported()
    if device == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True  # other accelerators (mps, xpu) bring their own bf16 kernels


@functools.cache
def _fallback(device: str, what: str, chosen: str) -> None:
    log.info("%s: bf16 is emulated on this %s (no AVX512/AMX), so %s", what, device, chosen)


def training_precision(precision: str, device: str | None = None) -> str:
    """Lightning's ``precision`` for ``auto``: bf16-mixed where bf16 is native, else 16-mixed on a GPU and 32-true on
    a CPU. Any other value is the user's choice and stays as given."""
    if precision != "auto":
        return precision
    device = torch.device(device or auto_device()).type
    if bf16_is_native(device):
        return "bf16-mixed"
    chosen = "16-mixed" if device == "cuda" else "32-true"
    _fallback(device, "small model", f"it trains in {chosen}")
    return chosen


def llm_dtype(dtype: str, device: str) -> torch.dtype:
    """The weights' dtype for ``auto``: bfloat16 where bf16 is native, else float16 on a GPU and float32 on a CPU. Any
    other value names a torch dtype and stays as given."""
    if dtype != "auto":
        return getattr(torch, dtype)
    device = torch.device(device).type
    if bf16_is_native(device):
        return torch.bfloat16
    chosen = torch.float16 if device == "cuda" else torch.float32
    _fallback(device, "LLM", f"its weights are {str(chosen).removeprefix('torch.')}")
    return chosen
