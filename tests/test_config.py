"""Every config group option composes into something the code can instantiate."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import REPO, compose_config
from s3.classifier import SmallModelConfig, small_model_config
from s3.config import UserError
from s3.data import Task
from s3.loop_config import GoldLoopConfig, SamplingConfig, SyntheticLoopConfig, loop_config
from s3.qa import QATask


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_default_config_composes():
    cfg = compose_config()
    assert cfg.task.name == "sst2" and cfg.seed == 0
    assert Path(cfg.paths.data_dir).is_dir()


@pytest.mark.parametrize("name", options("task"))
def test_task_configs(name):
    task = instantiate(compose_config([f"task={name}"]).task)
    if name == "adqa":  # extractive QA: no labels, its own prompt set
        assert isinstance(task, QATask) and task.name == name and "extrapolate" in task.prompts
        return
    assert isinstance(task, Task) and task.name == name and len(task.labels) >= 2


@pytest.mark.parametrize("name", options("small_model"))
def test_small_model_configs(name):
    small = small_model_config(compose_config([f"small_model={name}"]).small_model)
    assert isinstance(small, SmallModelConfig) and small.name == name and small.lr > 0


@pytest.mark.parametrize("name", options("loop"))
def test_loop_configs(name):
    loop = loop_config(compose_config([f"loop={name}"]).loop)
    assert isinstance(loop, GoldLoopConfig if name == "gold" else SyntheticLoopConfig)
    assert loop.name == name and loop.num_gold_val > 0


def test_loop_presets_hold_no_defaults_of_their_own():
    """Every default lives in the schema: s3.yaml (the default preset) sets nothing but its name."""
    assert loop_config(compose_config(["loop=s3"]).loop) == SyntheticLoopConfig(
        name="s3",
        sampling=SamplingConfig(max_tokens=64),  # the task's length (sst2)
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.rounds=-1", "loop.rounds must be >= 0"),
        ("loop.num_gold_val=0", "loop.num_gold_val must be >= 1"),
        ("loop.max_test=-5", "loop.max_test must be >= 1"),
        ("loop.seed_size=-5", "loop.seed_size must be >= 1"),
        ("loop.label_check=bogus", "loop.label_check must be one of"),
        ("loop.seed_prompt=fewshot", "loop.seed_prompt must be one of"),
        ("loop.answer_spans=random", "loop.answer_spans must be one of"),
        ("loop.selection_fraction=1.5", "loop.selection_fraction must be between"),
        ("loop.min_source_similarity=2", "loop.min_source_similarity must be between"),
        ("loop.sampling.extrapolation_temperature=-1", "loop.sampling.extrapolation_temperature must be >= 0"),
        ("loop=zerogen loop.rounds=1", "loop=zerogen has no error extrapolation"),
        ("loop=goldgen loop.rounds=2", "loop=goldgen has no error extrapolation"),
        ("loop=s3_no_extrapolation loop.rounds=1", "loop=s3_no_extrapolation has no error extrapolation"),
    ],
)
def test_out_of_range_loop_values_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message):
        loop_config(compose_config(override.split()).loop)


@pytest.mark.parametrize("override", ["loop.rounds=two", "loop.typo=1", "loop.cleaning.leak_ngram=five"])
def test_wrong_types_and_unknown_loop_keys_fail_at_compose_time(override):
    with pytest.raises(Exception, match="loop"):
        compose_config([override])


@pytest.mark.parametrize(
    "overrides",
    [
        ["llm.batch_size=big"],
        ["llm.batchsize=8"],
        ["llm=openai", "llm.max_retries=many"],
        ["llm=smollm2_vllm", "llm.gpu_memory_utilization=half"],
        ["task.max_tokens=many"],
        ["task.labels=positive"],
        ["task=adqa", "task.max_tokens=lots"],
    ],
)
def test_wrong_types_and_unknown_task_and_llm_keys_fail_at_compose_time(overrides):
    """The task and llm schemas (s3/schemas.py) type every argument of the class a preset names."""
    with pytest.raises(Exception, match=overrides[-1].split("=")[0].replace(".", r"\.")):
        compose_config(overrides)


@pytest.mark.parametrize("group", ["task", "llm"])
def test_task_and_llm_presets_set_only_what_differs_from_their_class(group):
    """Every default lives in the class: a preset that repeats one (outside the copyable example) would drift."""
    from omegaconf import OmegaConf

    for name in options(group):
        if name == "custom_example":  # a template that shows every key on purpose
            continue
        preset = OmegaConf.load(REPO / "conf" / group / f"{name}.yaml")
        schema = compose_config([f"{group}={name}"])[group]
        defaults = OmegaConf.to_container(OmegaConf.structured(type(OmegaConf.to_object(schema))))
        assert "_target_" not in preset, name  # the schema names the class
        repeated = [k for k in preset if k != "defaults" and k in defaults and defaults[k] == preset[k]]
        assert not repeated, f"{group}/{name} repeats its class's defaults: {repeated}"


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs(name):
    assert "enabled" in compose_config([f"logger={name}"]).logger


def test_unknown_task_lists_choices():
    with pytest.raises(Exception, match="sst2"):
        compose_config(["task=nope"])


@pytest.mark.parametrize("sweep", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_run_a_wandb_sweep_proposes_composes(sweep):
    """W&B's own sweep engine (the open-source `sweeps` package the server runs) validates the sweep and proposes
    its runs; each proposal, formatted as `wandb agent` hands it to run.py, composes into a valid config."""
    import json
    import math
    import random

    import sweeps
    import yaml
    from omegaconf import OmegaConf
    from sweeps import RunState, SweepRun
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    config = yaml.safe_load(sweep.read_text())
    assert not sweeps.schema_violations_from_proposed_config(config)
    grid = math.prod(len(spec.get("values", [None])) for spec in config["parameters"].values())
    rng, runs, seen = random.Random(0), [], set()
    for _ in range(grid + 1 if config["method"] == "grid" else 20):
        proposal = sweeps.next_run(config, runs, validate=True)
        if proposal is None:  # a grid is exhausted
            break
        params = json.loads(json.dumps(proposal.config, default=lambda v: v.item()))  # as the server sends it
        args = create_sweep_command_args({"args": params})["args_no_hyphens"]
        cfg = compose_config(args)
        loop_config(cfg.loop)
        instantiate(cfg.task)
        for key, spec in params.items():
            if "." in key:  # a setting (a bare key selects a group's preset)
                assert OmegaConf.select(cfg, key) == spec["value"], (sweep.name, args)
        seen.add(tuple(args))
        score = rng.random()
        runs.append(SweepRun(config=proposal.config, state=RunState.finished, summary_metrics={"select_acc": score},
                             history=[{"select_acc": score}]))  # fmt: skip
    if config["method"] == "grid":
        assert len(seen) == len(runs) == grid
    else:  # a search proposes on and on, seldom twice the same
        assert len(runs) == 20 and len(seen) > 15


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_presets_compose_to_valid_loops(name):
    """Ablation presets (conf/experiment, used by benchmarks/quality.py) change the loop they name, validly, or the
    task's prompts."""
    cfg = compose_config([f"+experiment={name}"])
    loop = loop_config(cfg.loop)
    plain = compose_config([f"loop={cfg.loop.name}"])
    assert loop != loop_config(plain.loop) or cfg.task.prompts != plain.task.prompts or name == "no_rationale"


def test_saved_config_hides_secrets_and_url_credentials_but_not_counts():
    from s3.tracking import resolved_config

    cfg = compose_config(["+secrets.api_key=sk-SECRET", "llm=openai", "llm.base_url=http://me:pw@host:8000/v1"])
    saved = resolved_config(cfg)
    assert saved["secrets"]["api_key"] == "***" and saved["llm"]["base_url"] == "http://***@host:8000/v1"
    assert saved["loop"]["sampling"]["max_tokens"] == 64 and saved["loop"]["rationale_max_tokens"] == 160


@pytest.mark.parametrize(
    "override",
    ["+logger.api_key=sk-SECRET", "+secrets.hf_token=hf_SECRET", "llm.base_url=http://me:pw@host:8000/v1"],
)
def test_secret_overrides_are_refused(override):
    from s3.config import refuse_secret_overrides

    with pytest.raises(UserError, match="environment variable") as err:
        refuse_secret_overrides(["loop=gold", override])
    assert "SECRET" not in str(err.value) and "pw@" not in str(err.value)


@pytest.mark.parametrize("override", ["loop.sampling.max_tokens=64", "llm.api_key_env=MY_KEY", "+note=token-free"])
def test_ordinary_overrides_are_not_taken_for_secrets(override):
    from s3.config import refuse_secret_overrides

    refuse_secret_overrides([override])


def test_wandb_runs_offline_unless_told_or_started_by_a_sweep_agent(monkeypatch):
    from s3.tracking import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")  # what `wandb agent` sets for the runs it starts
    assert wandb_mode(None) == "online" and wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"


def test_third_party_chatter_is_muted_unless_verbose():
    import logging

    from s3.console import quiet_libraries

    logging.getLogger("pytorch_lightning").setLevel(logging.INFO)
    quiet_libraries(verbose=True)
    assert logging.getLogger("pytorch_lightning").level == logging.INFO
    quiet_libraries()
    assert logging.getLogger("pytorch_lightning").getEffectiveLevel() == logging.WARNING
    import datasets

    assert not datasets.is_progress_bar_enabled()  # "Creating parquet from Arrow format" when the dataset is saved
    assert compose_config().verbose is False


@pytest.mark.parametrize("name", options("hparams_search"))
def test_hparams_search_presets_are_optuna_sweeps_over_valid_settings(name):
    """A server-free search (conf/hparams_search): the Optuna sweeper is installed, its sampler is seeded from the
    config, and every value its search space can propose composes into a valid loop."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
    from hydra.types import RunMode
    from hydra.utils import get_class

    compose_config()  # registers the schemas
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={name}", "seed=7"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.mode == RunMode.MULTIRUN and get_class(sweeper._target_).__name__ == "OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.sampler.seed == 7  # seeded from the config
    parser = OverridesParser.create()
    for key, space in sweeper.params.items():
        sweep = parser.parse_override(f"{key}={space}").value()
        if isinstance(sweep, ChoiceSweep):
            values = list(sweep.list)
        else:
            assert isinstance(sweep, IntervalSweep)
            values = [int(sweep.start), int(sweep.end)]
        for value in values:
            loop = loop_config(
                compose_config([f"{key}={str(value).lower() if isinstance(value, bool) else value}"]).loop
            )
            assert getattr(loop, key.split(".")[-1]) == value
