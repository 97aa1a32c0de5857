"""``auto`` precision and dtype: bf16 only where the hardware has bf16 kernels (an AVX2-only CPU emulates it)."""

from __future__ import annotations

import logging

import pytest
import torch

from s3 import hardware
from s3.classifier import lightning_trainer, small_model_config
from s3.config import compose_config
from s3.llm.models import default_cache_dir
from s3.llm.transformers_backend import TransformersLLM


@pytest.fixture
def bf16(monkeypatch):
    """Pretend the devices do (True) or do not (False) have bf16 kernels."""

    def pretend(native: bool) -> None:
        monkeypatch.setattr(hardware, "bf16_is_native", lambda device: native)
        hardware._fallback.cache_clear()

    yield pretend
    hardware._fallback.cache_clear()


def test_the_default_small_model_trains_in_float32_on_a_cpu_without_bf16_kernels(bf16, caplog) -> None:
    small = small_model_config(compose_config([]).small_model)
    bf16(False)
    with caplog.at_level(logging.INFO, logger="s3.hardware"):
        assert lightning_trainer(small, 1, progress=False).precision == "32-true"
    assert "this cpu has no bf16 kernels" in caplog.text
    bf16(True)
    assert lightning_trainer(small, 1, progress=False).precision == "bf16-mixed"


@pytest.mark.parametrize("native", [True, False])
def test_a_precision_or_dtype_the_user_names_is_kept(bf16, native) -> None:
    bf16(native)
    assert hardware.training_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert hardware.training_precision("32-true", "cuda") == "32-true"
    assert hardware.llm_dtype("bfloat16", "cpu") is torch.bfloat16
    assert hardware.llm_dtype("float32", "cuda:0") is torch.float32


def test_auto_falls_back_to_the_fast_format_of_each_device(bf16, monkeypatch) -> None:
    bf16(False)
    for capability, precision in (((7, 5), "16-mixed"), ((6, 1), "32-true")):  # a T4; a Pascal card (slow float16)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_, c=capability: c)
        assert hardware.training_precision("auto", "cuda") == precision
    assert hardware.training_precision("auto", "cpu") == "32-true"
    assert hardware.llm_dtype("auto", "cuda:0") is torch.float32
    assert hardware.llm_dtype("auto", "cpu") is torch.float32
    bf16(True)
    assert hardware.training_precision("auto", "cpu") == "bf16-mixed"
    assert hardware.llm_dtype("auto", "cpu") is torch.bfloat16


def test_this_cpu_is_asked_what_it_has() -> None:
    """The real check (oneDNN's), not a guess: its answer decides ``auto`` here."""
    native = hardware.bf16_is_native("cpu")
    assert native == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert hardware.training_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")


@pytest.mark.slow
def test_the_embedded_llm_loads_in_the_dtype_auto_picks(bf16) -> None:
    bf16(False)
    llm = TransformersLLM(model="embedded:smollm2", device="cpu", cache_dir=str(default_cache_dir()))
    assert llm.model.dtype is torch.float32
