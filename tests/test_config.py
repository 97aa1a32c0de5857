"""Every config group option composes into something the code can instantiate."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import REPO, compose_config
from s3.classifier import SmallModelConfig
from s3.data import Task


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_default_config_composes():
    cfg = compose_config()
    assert cfg.task.name == "sst2" and cfg.seed == 0
    assert Path(cfg.paths.data_dir).is_dir()


@pytest.mark.parametrize("name", options("task"))
def test_task_configs(name):
    task = instantiate(compose_config([f"task={name}"]).task)
    assert isinstance(task, Task) and task.name == name and len(task.labels) >= 2


@pytest.mark.parametrize("name", options("small_model"))
def test_small_model_configs(name):
    small = instantiate(compose_config([f"small_model={name}"]).small_model)
    assert isinstance(small, SmallModelConfig) and small.name == name and small.lr > 0


@pytest.mark.parametrize("name", options("loop"))
def test_loop_configs(name):
    cfg = compose_config([f"loop={name}"])
    assert cfg.loop.name == name and cfg.loop.num_gold_val > 0


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs(name):
    assert "enabled" in compose_config([f"logger={name}"]).logger


def test_unknown_task_lists_choices():
    with pytest.raises(Exception, match="sst2"):
        compose_config(["task=nope"])
