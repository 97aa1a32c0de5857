"""Structured-config schemas for the groups whose YAML names a class by ``_target_`` (task, llm).

Each schema is made from its class's own signature: the class keeps every default, and the schema adds
types, so ``llm.batch_size=big`` or ``task.max_tokens=many`` is refused when the config is composed, not
after the LLM has worked. A YAML preset lists the schema first in its defaults (``defaults: [qa_schema,
_self_]``) and sets only what differs.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

from hydra.core.config_store import ConfigStore

PLAIN = (str, int, float, bool)


def config_type(hint: Any) -> Any:
    """What OmegaConf can check for a Python annotation; ``Any`` for what it cannot (it then accepts anything)."""
    if hint in PLAIN or dataclasses.is_dataclass(hint):
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = config_type(rest[0])
            return Any if inner is Any else inner | None
        return Any
    if origin is list and args and config_type(args[0]) is not Any:
        return list[config_type(args[0])]
    if origin is dict and len(args) == 2 and args[0] is str:
        value = config_type(args[1])
        return dict[str, value] if value is not Any else dict[str, Any]
    if hint is dict or origin is dict:
        return dict[str, Any]
    return Any


def schema_of(target: type, extra: dict[str, tuple[Any, Any]] | None = None) -> type:
    """A dataclass with ``_target_`` and one typed field per parameter of ``target`` (its dataclass fields, or
    its ``__init__`` arguments), with the class's defaults; ``extra`` adds keys the builder reads itself."""
    path = f"{target.__module__}.{target.__qualname__}"
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=path))]
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        for f in dataclasses.fields(target):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = dataclasses.field(default=f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = dataclasses.field(default_factory=f.default_factory)
            else:
                default = dataclasses.field()
            fields.append((f.name, config_type(hints[f.name]), default))
    else:
        hints = typing.get_type_hints(target.__init__)
        for name, param in inspect.signature(target.__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = dataclasses.field() if param.default is param.empty else dataclasses.field(default=param.default)
            fields.append((name, config_type(hints.get(name, Any)), default))
    for name, (hint, value) in (extra or {}).items():
        fields.append((name, hint, dataclasses.field(default=value)))
    return dataclasses.make_dataclass(f"{target.__name__}Config", fields, kw_only=True)


def register() -> None:
    """Put the task and llm schemas into Hydra's ConfigStore (``conf/task/*.yaml`` and ``conf/llm/*.yaml`` use them)."""
    from s3.data import Task
    from s3.llm.openai_backend import OpenAIBackend
    from s3.llm.transformers_backend import TransformersLLM
    from s3.llm.vllm_backend import VLLMBackend
    from s3.qa import QATask

    store = ConfigStore.instance()
    store.store(group="task", name="classification_schema", node=schema_of(Task))
    store.store(group="task", name="qa_schema", node=schema_of(QATask))
    cache = {"cache": (bool, True)}  # build_llm: wrap the backend in the disk cache
    store.store(group="llm", name="transformers_schema", node=schema_of(TransformersLLM, cache))
    store.store(group="llm", name="vllm_schema", node=schema_of(VLLMBackend, cache))
    store.store(group="llm", name="openai_schema", node=schema_of(OpenAIBackend, cache))
